//! Go-style flags: etcd users write `-name infra0` and `-data-dir=x`; clap wants two dashes.
//! Before clap sees argv, a single-dash argument that names one of rota's long flags gets its
//! second dash. Values are never rewritten: an argument right after a flag that takes a
//! value (and has no `=value`) is left alone, and so is everything after `--`.

use std::ffi::OsString;

/// Long flags that take a value (`--name infra0`).
const VALUE_FLAGS: &[&str] = &[
    "name",
    "data-dir",
    "listen-client-urls",
    "advertise-client-urls",
    "listen-peer-urls",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "heartbeat-interval",
    "election-timeout",
    "max-history",
    "snapshot-count",
    "endpoints",
    "ttl",
    "swap-with-value",
    "swap-with-index",
    "with-value",
    "with-index",
    "after-index",
    "host-whitelist",
    "cors",
    "log-level",
];

/// Long flags without a value (Go's bools also accept `-flag=true`).
const SWITCH_FLAGS: &[&str] = &[
    "enable-v2",
    "recursive",
    "dir",
    "forever",
    "in-order",
    "quorum",
    "sort",
    "help",
    "version",
];

/// etcd 3.4 flags that mean nothing to rota (the v3 API, zap logging, gRPC, profiling, bbolt),
/// and whether each takes a value: `rota serve` takes them, so that an etcd command line
/// (or unit file) starts rota, and names the ones given in a warning. (`--force-new-cluster`
/// is not among them: it changes what a member does, and rota refuses it as unknown.)
const IGNORED_SERVE_FLAGS: &[(&str, bool)] = &[
    ("logger", true),
    ("log-outputs", true),
    ("quota-backend-bytes", true),
    ("auto-compaction-retention", true),
    ("auto-compaction-mode", true),
    ("max-request-bytes", true),
    ("max-txn-ops", true),
    ("listen-metrics-urls", true),
    ("metrics", true),
    ("max-snapshots", true),
    ("max-wals", true),
    ("backend-batch-interval", true),
    ("backend-batch-limit", true),
    ("grpc-keepalive-min-time", true),
    ("grpc-keepalive-interval", true),
    ("grpc-keepalive-timeout", true),
    ("debug", false),
    ("enable-pprof", false),
    ("strict-reconfig-check", false),
    ("enable-grpc-gateway", false),
    ("pre-vote", false),
];

/// etcd 3.4's TLS flags. rota serves plain HTTP only, and a command line or unit file that
/// asks for TLS must not start a node that answers in the clear: `rota serve` refuses them
/// (flag or `ETCD_*` variable) and says what to do instead.
pub const TLS_SERVE_FLAGS: &[&str] = &[
    "cert-file",
    "key-file",
    "client-cert-auth",
    "client-crl-file",
    "trusted-ca-file",
    "auto-tls",
    "peer-cert-file",
    "peer-key-file",
    "peer-client-cert-auth",
    "peer-crl-file",
    "peer-trusted-ca-file",
    "peer-auto-tls",
    "peer-cert-allowed-cn",
    "peer-cert-allowed-hostname",
    "cipher-suites",
    "tls-min-version",
    "tls-max-version",
];

/// The refusal of a TLS flag, for the flag (or variable) as it was given.
pub fn tls_refusal(given: &str) -> String {
    format!(
        "Error:  {given}: rota serves plain HTTP only (no TLS for clients or peers). \
         Listen on loopback or a private network, and put a TLS-terminating proxy \
         (nginx, haproxy, stunnel) in front of the client port if clients cross an \
         untrusted network: see docs/cli.md (\"TLS\")"
    )
}

/// The first TLS flag of a `rota serve` command line (after [`rewrite_go_flags`]), as given.
pub fn tls_flag_given(args: &[OsString]) -> Option<String> {
    serve_flag_given(args, TLS_SERVE_FLAGS)
}

/// `--force-new-cluster` on a `rota serve` command line, as given.
pub fn force_new_cluster_given(args: &[OsString]) -> Option<String> {
    serve_flag_given(args, &["force-new-cluster"])
}

/// Why `--force-new-cluster` (or `ETCD_FORCE_NEW_CLUSTER`, as `given`) is refused.
pub fn force_new_cluster_refusal(given: &str) -> String {
    format!(
        "Error:  {given} is not supported: rota does not restart a cluster from one member's data. \
         After losing a majority, read what you need from a surviving member (GET /v2/keys \
         answers from the member itself; /v1 reads with ?consistency=local) and load it into \
         a new cluster: see the README (\"Back up and restore\")"
    )
}

/// The first of `names` given as a flag on a `rota serve` command line, as given.
fn serve_flag_given(args: &[OsString], names: &[&str]) -> Option<String> {
    if args.get(1).is_none_or(|arg| arg != "serve") {
        return None;
    }
    args.iter()
        .skip(2)
        .take_while(|arg| *arg != "--")
        .filter_map(|arg| arg.to_str())
        .find(|arg| {
            // Go's single dash too (`-cert-file`): not one of rota's flags, so not rewritten.
            arg.strip_prefix("--")
                .or_else(|| arg.strip_prefix('-'))
                .map(|rest| rest.split_once('=').map_or(rest, |(name, _)| name))
                .is_some_and(|name| names.contains(&name))
        })
        .map(str::to_owned)
}

/// What `ETCD_*` environment variables say to `rota serve` beyond the flags it reads from
/// them (`known`, clap's): variables of the ignored flags (named in the same warning as
/// the flags), ones etcd does not know either (etcd warns "unrecognized environment
/// variable"), and `ETCD_FORCE_NEW_CLUSTER`, refused as the flag is.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EtcdEnvironment {
    pub ignored: Vec<String>,
    /// Variables of [`TLS_SERVE_FLAGS`] that are set (to anything but empty or `false`).
    pub tls: Vec<String>,
    pub unrecognized: Vec<String>,
    pub force_new_cluster: bool,
}

pub fn etcd_environment<'a>(
    vars: impl IntoIterator<Item = (String, String)>,
    known: impl IntoIterator<Item = &'a str> + Clone,
) -> EtcdEnvironment {
    let mut found = EtcdEnvironment::default();
    let mut vars: Vec<(String, String)> = vars.into_iter().filter(|(name, _)| name.starts_with("ETCD_")).collect();
    vars.sort();
    for (name, value) in vars {
        if known.clone().into_iter().any(|known| known == name) || name == "ETCD_ENABLE_V2" {
            continue;
        }
        let flag = name["ETCD_".len()..].to_ascii_lowercase().replace('_', "-");
        if TLS_SERVE_FLAGS.contains(&flag.as_str()) {
            let off = value.trim().is_empty() || value.trim().eq_ignore_ascii_case("false");
            if !off {
                found.tls.push(name);
            }
        } else if flag == "force-new-cluster" {
            found.force_new_cluster |= value.trim().eq_ignore_ascii_case("true") || value.trim() == "1";
        } else if IGNORED_SERVE_FLAGS.iter().any(|(ignored, _)| *ignored == flag)
            || flag.starts_with("grpc-keepalive-")
            || flag.starts_with("experimental-")
        {
            found.ignored.push(name);
        } else {
            found.unrecognized.push(name);
        }
    }
    found
}

/// Takes the [`IGNORED_SERVE_FLAGS`] out of a `rota serve` command line (after
/// [`rewrite_go_flags`]); returns the rest and the flags taken, as given.
pub fn take_ignored_serve_flags(args: Vec<OsString>) -> (Vec<OsString>, Vec<String>) {
    if args.get(1).is_none_or(|arg| arg != "serve") {
        return (args, Vec::new());
    }
    let mut kept = Vec::new();
    let mut ignored = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            kept.push(arg);
            kept.extend(args.by_ref());
            break;
        }
        let flag = arg.to_str().and_then(|text| text.strip_prefix("--")).and_then(|rest| {
            let (name, value) = match rest.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (rest, None),
            };
            IGNORED_SERVE_FLAGS
                .iter()
                .find(|(ignored, _)| *ignored == name)
                .map(|(_, takes_value)| (*takes_value, value.is_none()))
        });
        match flag {
            Some((takes_value, without_value)) => {
                let mut given = arg.to_string_lossy().into_owned();
                if takes_value && without_value {
                    if let Some(value) = args.next() {
                        given = format!("{given} {}", value.to_string_lossy());
                    }
                }
                ignored.push(given);
            }
            None => kept.push(arg),
        }
    }
    (kept, ignored)
}

/// Rewrites `-flag` / `-flag=value` to `--flag` / `--flag=value` for rota's long flags.
pub fn rewrite_go_flags(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut next_is_value = false;
    let mut after_double_dash = false;
    for (position, arg) in args.into_iter().enumerate() {
        if position == 0 || after_double_dash {
            out.push(arg);
            continue;
        }
        if next_is_value {
            next_is_value = false;
            out.push(arg);
            continue;
        }
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            after_double_dash = true;
            out.push(arg);
            continue;
        }
        let (dashes, rest) = if let Some(rest) = text.strip_prefix("--") {
            (2, rest)
        } else if let Some(rest) = text.strip_prefix('-') {
            (1, rest)
        } else {
            out.push(arg);
            continue;
        };
        let (name, has_value) = match rest.split_once('=') {
            Some((name, _)) => (name, true),
            None => (rest, false),
        };
        let ignored = IGNORED_SERVE_FLAGS.iter().find(|(ignored, _)| *ignored == name);
        let takes_value = VALUE_FLAGS.contains(&name) || ignored.is_some_and(|(_, takes_value)| *takes_value);
        let known = takes_value || SWITCH_FLAGS.contains(&name) || ignored.is_some();
        if known && takes_value && !has_value {
            next_is_value = true;
        }
        if known && dashes == 1 {
            out.push(OsString::from(format!("-{text}")));
        } else {
            out.push(arg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(args: &[&str]) -> Vec<String> {
        rewrite_go_flags(args.iter().map(OsString::from))
            .into_iter()
            .map(|arg| arg.into_string().expect("utf-8"))
            .collect()
    }

    #[test]
    fn single_dash_long_flags_get_a_second_dash() {
        assert_eq!(
            rewrite(&[
                "rota",
                "serve",
                "-name",
                "infra0",
                "-data-dir=x",
                "--initial-cluster-token",
                "t"
            ]),
            [
                "rota",
                "serve",
                "--name",
                "infra0",
                "--data-dir=x",
                "--initial-cluster-token",
                "t"
            ]
        );
    }

    #[test]
    fn values_that_look_like_flags_are_left_alone() {
        assert_eq!(
            rewrite(&["rota", "kv", "set", "/k", "-ttl", "-endpoints"]),
            ["rota", "kv", "set", "/k", "--ttl", "-endpoints"]
        );
        assert_eq!(
            rewrite(&["rota", "serve", "-name", "-data-dir"]),
            ["rota", "serve", "--name", "-data-dir"]
        );
    }

    #[test]
    fn short_and_unknown_flags_and_arguments_after_double_dash_stay() {
        assert_eq!(
            rewrite(&["rota", "kv", "ls", "-p", "-x"]),
            ["rota", "kv", "ls", "-p", "-x"]
        );
        assert_eq!(
            rewrite(&["rota", "kv", "set", "--", "/k", "-name"]),
            ["rota", "kv", "set", "--", "/k", "-name"]
        );
    }

    #[test]
    fn etcd_flags_rota_has_no_use_for_are_taken_out_of_serve_only() {
        let args = rewrite_go_flags(
            [
                "rota", "serve", "-name", "n1", "--logger=zap", "-log-outputs", "stderr", "--debug",
                "--quota-backend-bytes", "8589934592", "--data-dir", "d", "--enable-pprof=true",
            ]
            .map(OsString::from),
        );
        let (kept, ignored) = take_ignored_serve_flags(args);
        let kept: Vec<String> = kept.into_iter().map(|arg| arg.into_string().expect("utf-8")).collect();
        assert_eq!(kept, ["rota", "serve", "--name", "n1", "--data-dir", "d"]);
        assert_eq!(
            ignored,
            ["--logger=zap", "--log-outputs stderr", "--debug", "--quota-backend-bytes 8589934592", "--enable-pprof=true"]
        );
        let other = vec![OsString::from("rota"), OsString::from("kv"), OsString::from("--debug")];
        assert_eq!(take_ignored_serve_flags(other.clone()).0, other);
    }

    #[test]
    fn tls_flags_are_found_to_be_refused_in_either_spelling_and_only_for_serve() {
        let args = |list: &[&str]| rewrite_go_flags(list.iter().map(OsString::from));
        let given = tls_flag_given(&args(&["rota", "serve", "--name", "n1", "--cert-file=/x.pem"]));
        assert_eq!(given.as_deref(), Some("--cert-file=/x.pem"));
        let given = tls_flag_given(&args(&["rota", "serve", "-peer-auto-tls"]));
        assert_eq!(given.as_deref(), Some("-peer-auto-tls"));
        assert_eq!(tls_flag_given(&args(&["rota", "serve", "--name", "cert-file"])), None);
        assert_eq!(tls_flag_given(&args(&["rota", "kv", "--cert-file", "x"])), None);
        assert_eq!(force_new_cluster_given(&args(&["rota", "serve", "-force-new-cluster"])).as_deref(), Some("-force-new-cluster"));
        assert_eq!(force_new_cluster_given(&args(&["rota", "serve", "--force-new-cluster=true"])).as_deref(), Some("--force-new-cluster=true"));
        assert_eq!(force_new_cluster_given(&args(&["rota", "serve", "--name", "n1"])), None);
        let env = |pairs: &[(&str, &str)]| {
            etcd_environment(pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())), ["ETCD_NAME"])
        };
        assert_eq!(env(&[("ETCD_CERT_FILE", "/x.pem"), ("ETCD_NAME", "n1")]).tls, ["ETCD_CERT_FILE"]);
        assert!(env(&[("ETCD_CLIENT_CERT_AUTH", "false"), ("ETCD_KEY_FILE", "")]).tls.is_empty());
        assert!(tls_refusal("--cert-file=/x.pem").contains("plain HTTP only"));
    }

    #[test]
    fn go_bool_switches_with_values_are_rewritten() {
        assert_eq!(
            rewrite(&["rota", "serve", "-enable-v2=true"]),
            ["rota", "serve", "--enable-v2=true"]
        );
    }
}
