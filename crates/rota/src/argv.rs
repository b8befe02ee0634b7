//! Go-style flags: etcd users write `-name infra0` and `-data-dir=x`; clap wants two dashes.
//! Before clap sees argv, a single-dash argument that names one of rota's long flags gets its
//! second dash. Values are never rewritten: an argument right after a flag that takes a
//! value (and has no `=value`) is left alone, and so is everything after `--`.

use std::ffi::OsString;

/// rota's long flags, from its clap definition (every subcommand's): whether each takes a
/// value from the next argument (`--name infra0`) or not (a switch, or a flag whose value
/// must be attached, as `--wait=10s`).
#[derive(Debug, Default)]
pub struct LongFlags {
    takes_value: std::collections::BTreeMap<String, bool>,
    /// Short flags (`-p`, `-o json`), and whether each takes a value.
    shorts: std::collections::BTreeMap<char, bool>,
}

impl LongFlags {
    pub fn of(command: &clap::Command) -> LongFlags {
        let mut flags = LongFlags::default();
        flags.add(command);
        for builtin in ["help", "version"] {
            flags.takes_value.entry(builtin.to_string()).or_insert(false);
        }
        for builtin in ['h', 'V'] {
            flags.shorts.entry(builtin).or_insert(false);
        }
        flags
    }

    fn add(&mut self, command: &clap::Command) {
        for arg in command.get_arguments() {
            let takes_value = takes_next_argument(arg);
            for long in arg.get_long_and_visible_aliases().into_iter().flatten() {
                // A name that takes a value anywhere takes one everywhere: a switch of the
                // same name elsewhere would otherwise swallow that value (a test keeps them apart).
                *self.takes_value.entry(long.to_string()).or_insert(takes_value) |= takes_value;
            }
            if let Some(short) = arg.get_short() {
                *self.shorts.entry(short).or_insert(takes_value) |= takes_value;
            }
        }
        for sub in command.get_subcommands() {
            self.add(sub);
        }
    }

    /// `Some(takes a value)` for one of rota's long flags, `None` for any other name.
    fn get(&self, name: &str) -> Option<bool> {
        self.takes_value.get(name).copied()
    }

    /// Whether `-{rest}` reads as short flags (`-p`, `-pr`, `-ojson`): switches, the last
    /// of which may take a value, attached or next.
    fn is_short_cluster(&self, rest: &str) -> bool {
        for short in rest.chars() {
            match self.shorts.get(&short) {
                Some(true) => return true,
                Some(false) => {}
                None => return false,
            }
        }
        true
    }

    /// Names that take a value in one subcommand and not in another.
    #[cfg(test)]
    fn conflicts(command: &clap::Command) -> Vec<String> {
        let mut seen: std::collections::BTreeMap<String, bool> = Default::default();
        let mut conflicts = Vec::new();
        fn walk(command: &clap::Command, seen: &mut std::collections::BTreeMap<String, bool>, conflicts: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let takes_value = takes_next_argument(arg);
                for long in arg.get_long_and_visible_aliases().into_iter().flatten() {
                    if *seen.entry(long.to_string()).or_insert(takes_value) != takes_value {
                        conflicts.push(format!("{} --{long}", command.get_name()));
                    }
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, seen, conflicts);
            }
        }
        walk(command, &mut seen, &mut conflicts);
        conflicts
    }
}

/// Whether `arg`, given without `=value`, takes the next argument as its value.
fn takes_next_argument(arg: &clap::Arg) -> bool {
    arg.get_action().takes_values()
        && !arg.is_require_equals_set()
        && arg.get_num_args().is_none_or(|range| range.min_values() > 0)
}

/// etcd 3.4 flags that mean nothing to rota (the v3 API and its auth, zap logging, gRPC,
/// profiling, bbolt, a separate WAL dir: rota keeps everything in --data-dir), and whether
/// each takes a value: `rota serve` takes them, so that an etcd command line (or unit file)
/// starts rota, and names the ones given in a warning. Flags that change what a member does
/// and that rota cannot do are refused instead: see [`serve_refusal`].
const IGNORED_SERVE_FLAGS: &[(&str, bool)] = &[
    ("logger", true),
    ("log-outputs", true),
    ("log-package-levels", true),
    ("wal-dir", true),
    ("quota-backend-bytes", true),
    ("auto-compaction-retention", true),
    ("auto-compaction-mode", true),
    ("max-request-bytes", true),
    ("max-txn-ops", true),
    ("max-concurrent-streams", true),
    ("listen-metrics-urls", true),
    ("metrics", true),
    ("max-snapshots", true),
    ("max-wals", true),
    ("backend-batch-interval", true),
    ("backend-batch-limit", true),
    ("grpc-keepalive-min-time", true),
    ("grpc-keepalive-interval", true),
    ("grpc-keepalive-timeout", true),
    ("auth-token", true),
    ("auth-token-ttl", true),
    ("bcrypt-cost", true),
    // Only used with --discovery, which is refused when given a value.
    ("discovery-fallback", true),
    ("discovery-proxy", true),
    ("discovery-srv-name", true),
    // Only used with --proxy on|readonly, which is refused.
    ("proxy-failure-wait", true),
    ("proxy-refresh-interval", true),
    ("proxy-dial-timeout", true),
    ("proxy-write-timeout", true),
    ("proxy-read-timeout", true),
    ("experimental-corrupt-check-time", true),
    ("experimental-enable-v2v3", true),
    ("experimental-backend-bbolt-freelist-type", true),
    ("experimental-compaction-batch-limit", true),
    ("experimental-watch-progress-notify-interval", true),
    ("experimental-warning-apply-duration", true),
    ("debug", false),
    ("enable-pprof", false),
    ("strict-reconfig-check", false),
    ("enable-grpc-gateway", false),
    ("pre-vote", false),
    ("initial-election-tick-advance", false),
    ("experimental-initial-corrupt-check", false),
    ("experimental-enable-lease-checkpoint", false),
    ("experimental-peer-skip-client-san-verification", false),
];

/// etcd 3.4's TLS flags. rota serves plain HTTP only, and a command line or unit file that
/// asks for TLS must not start a node that answers in the clear: `rota serve` refuses them
/// (flag or `ETCD_*` variable) and says what to do instead.
pub const TLS_SERVE_FLAGS: &[&str] = &[
    "cert-file",
    "key-file",
    "client-cert-auth",
    "client-crl-file",
    "client-cert-allowed-hostname",
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

/// etcd flags that change what a member does and that rota cannot do, with a value that
/// turns them on: `rota serve` refuses them (flag or `ETCD_*` variable) with what to do
/// instead, rather than start a member that does something else. Each with the values
/// that leave it off (Go's false spellings for a switch, empty or `off` for a value).
const REFUSED_SERVE_FLAGS: &[(&str, &[&str])] = &[
    ("discovery", &[""]),
    ("discovery-srv", &[""]),
    ("proxy", &["off", ""]),
    ("config-file", &[""]),
];

/// Whether `value` turns on a refused flag whose values in `off` leave it off.
fn turns_on(off: &[&str], value: &str) -> bool {
    !off.iter().any(|off| value.trim().eq_ignore_ascii_case(off))
}

/// `Some(takes a value)` for an etcd flag `rota serve` takes out of its command line: an
/// ignored one, or a refused one given a value that leaves it off (`--proxy off`).
fn etcd_only_flag(name: &str) -> Option<bool> {
    IGNORED_SERVE_FLAGS
        .iter()
        .find(|(ignored, _)| *ignored == name)
        .map(|(_, takes_value)| *takes_value)
        .or_else(|| REFUSED_SERVE_FLAGS.iter().any(|(refused, _)| *refused == name).then_some(true))
}

/// Why `rota serve` refuses `flag` (one of [`REFUSED_SERVE_FLAGS`]), given as `given`.
fn refusal(flag: &str, given: &str) -> String {
    match flag {
        "discovery" | "discovery-srv" => format!(
            "Error:  {given} is not supported: rota starts a cluster from a static list; give every \
             member the same --initial-cluster (name=peer URL, ...) and --initial-cluster-token: \
             see the README (\"Run a 3- or 5-node cluster\")"
        ),
        "proxy" => format!(
            "Error:  {given} is not supported: rota has no proxy mode. Give clients the members' \
             client URLs: any member answers reads and passes writes to the leader"
        ),
        _ => format!(
            "Error:  {given} is not supported: rota does not read etcd's configuration file; give \
             its settings as flags or ETCD_* variables (docs/cli.md)"
        ),
    }
}

/// The refusal of the first flag of [`REFUSED_SERVE_FLAGS`] that a `rota serve` command
/// line (after [`rewrite_go_flags`]) turns on, if any.
pub fn serve_refusal(args: &[OsString]) -> Option<String> {
    if args.get(1).is_none_or(|arg| arg != "serve") {
        return None;
    }
    let args: Vec<&str> = args.iter().skip(2).take_while(|arg| *arg != "--").filter_map(|arg| arg.to_str()).collect();
    for (at, arg) in args.iter().enumerate() {
        let Some(rest) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else { continue };
        let (name, value) = match rest.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (rest, None),
        };
        let Some((flag, off)) = REFUSED_SERVE_FLAGS.iter().find(|(flag, _)| *flag == name) else { continue };
        // Each takes the next argument as its value.
        let value = match value {
            Some(value) => value,
            None => args.get(at + 1).copied().unwrap_or(""),
        };
        if turns_on(off, value) {
            let given = if value == "true" || arg.contains('=') { arg.to_string() } else { format!("{arg} {value}") };
            return Some(refusal(flag, given.trim_end()));
        }
    }
    None
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
/// variable"), and those of the refused flags, refused as the flags are.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EtcdEnvironment {
    pub ignored: Vec<String>,
    /// Variables of [`TLS_SERVE_FLAGS`] that are set (to anything but empty or `false`).
    pub tls: Vec<String>,
    pub unrecognized: Vec<String>,
    /// The refusal of a variable of [`REFUSED_SERVE_FLAGS`] that turns its flag on.
    pub refused: Option<String>,
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
        } else if let Some((flag, off)) = REFUSED_SERVE_FLAGS.iter().find(|(refused, _)| *refused == flag) {
            if turns_on(off, &value) && found.refused.is_none() {
                found.refused = Some(refusal(flag, &format!("{name}={value}")));
            }
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
            etcd_only_flag(name).map(|takes_value| (takes_value, value.is_none()))
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
pub fn rewrite_go_flags(args: impl IntoIterator<Item = OsString>, flags: &LongFlags) -> Vec<OsString> {
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
        let Some(takes_value) = flags.get(name).or_else(|| etcd_only_flag(name)) else {
            // A Go-style word that is none of rota's flags (`-data-dri`): given a second dash,
            // clap names it whole and suggests the flag meant, rather than refusing `-d`.
            let word = dashes == 1
                && name.len() > 1
                && name.starts_with(|c: char| c.is_ascii_alphabetic())
                && !flags.is_short_cluster(name)
                && !TLS_SERVE_FLAGS.contains(&name);
            out.push(if word { OsString::from(format!("-{text}")) } else { arg });
            continue;
        };
        if takes_value && !has_value {
            next_is_value = true;
        }
        if dashes == 1 {
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

    fn cli_flags() -> LongFlags {
        LongFlags::of(&crate::cli_command())
    }

    #[test]
    fn every_long_flag_of_every_command_takes_one_dash_too() {
        assert_eq!(
            rewrite(&["rota", "job", "submit", "q", "-priority", "5", "-payload", "1", "-wait=10s"]),
            ["rota", "job", "submit", "q", "--priority", "5", "--payload", "1", "--wait=10s"]
        );
        assert_eq!(
            rewrite(&["rota", "worker", "-queue", "q", "-max-jobs", "1", "--", "true", "-queue"]),
            ["rota", "worker", "--queue", "q", "--max-jobs", "1", "--", "true", "-queue"]
        );
        assert_eq!(
            rewrite(&["rota", "serve", "-min-free-mb", "0", "-client-rate-limit", "5", "-max-connections", "100"]),
            ["rota", "serve", "--min-free-mb", "0", "--client-rate-limit", "5", "--max-connections", "100"]
        );
        // `--wait` takes its value attached only: the next argument is not its value.
        assert_eq!(rewrite(&["rota", "job", "get", "7", "-wait", "-o", "json"]), ["rota", "job", "get", "7", "--wait", "-o", "json"]);
    }

    #[test]
    fn no_long_flag_is_a_switch_in_one_command_and_takes_a_value_in_another() {
        assert_eq!(LongFlags::conflicts(&crate::cli_command()), Vec::<String>::new());
    }

    fn rewrite(args: &[&str]) -> Vec<String> {
        rewrite_go_flags(args.iter().map(OsString::from), &cli_flags())
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
    fn a_mistyped_go_style_flag_is_named_whole() {
        assert_eq!(rewrite(&["rota", "serve", "-data-dri", "x"]), ["rota", "serve", "--data-dri", "x"]);
        let error = <crate::Cli as clap::Parser>::try_parse_from(rewrite(&["rota", "serve", "-data-dri", "x"]))
            .map(|_| ())
            .expect_err("not a flag");
        let message = error.to_string();
        assert!(message.contains("'--data-dri'") && message.contains("--data-dir"), "{message}");
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
        assert_eq!(rewrite(&["rota", "job", "ls", "-ojson", "-7"]), ["rota", "job", "ls", "-ojson", "-7"]);
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
            &cli_flags(),
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
        let args = |list: &[&str]| rewrite_go_flags(list.iter().map(OsString::from), &cli_flags());
        let given = tls_flag_given(&args(&["rota", "serve", "--name", "n1", "--cert-file=/x.pem"]));
        assert_eq!(given.as_deref(), Some("--cert-file=/x.pem"));
        let given = tls_flag_given(&args(&["rota", "serve", "-peer-auto-tls"]));
        assert_eq!(given.as_deref(), Some("-peer-auto-tls"));
        assert_eq!(tls_flag_given(&args(&["rota", "serve", "--name", "cert-file"])), None);
        assert_eq!(tls_flag_given(&args(&["rota", "kv", "--cert-file", "x"])), None);
        let env = |pairs: &[(&str, &str)]| {
            etcd_environment(pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())), ["ETCD_NAME"])
        };
        let refused = |list: &[&str]| serve_refusal(&args(list));
        // rota does that one (the README's "Back up and restore").
        assert_eq!(refused(&["rota", "serve", "-force-new-cluster"]), None);
        assert_eq!(refused(&["rota", "serve", "--name", "n1", "--force-new-cluster=false", "--proxy", "off", "--discovery="]), None);
        assert!(refused(&["rota", "serve", "-discovery", "https://discovery.etcd.io/x"])
            .is_some_and(|r| r.starts_with("Error:  --discovery https://discovery.etcd.io/x is not supported") && r.contains("--initial-cluster")));
        assert!(refused(&["rota", "serve", "--proxy=readonly"]).is_some_and(|r| r.contains("no proxy mode")));
        assert!(refused(&["rota", "serve", "--config-file", "/etc/etcd.yml"]).is_some_and(|r| r.contains("configuration file")));
        assert_eq!(refused(&["rota", "kv", "--proxy", "on"]), None);
        // Off, they are taken out of the command line as the ignored flags are.
        let (kept, ignored) = take_ignored_serve_flags(args(&["rota", "serve", "--proxy", "off", "--discovery=", "-name", "n"]));
        assert_eq!(kept, args(&["rota", "serve", "--name", "n"]));
        assert_eq!(ignored, ["--proxy off", "--discovery="]);
        let env_refusal = |name: &str, value: &str| env(&[(name, value)]).refused;
        assert!(env_refusal("ETCD_DISCOVERY", "https://discovery.etcd.io/x").is_some_and(|r| r.contains("ETCD_DISCOVERY=https")));
        assert_eq!(env_refusal("ETCD_PROXY", "off"), None);
        assert_eq!(env(&[("ETCD_WAL_DIR", "/wal"), ("ETCD_AUTH_TOKEN", "simple"), ("ETCD_EXPERIMENTAL_X", "1")]).ignored, ["ETCD_AUTH_TOKEN", "ETCD_EXPERIMENTAL_X", "ETCD_WAL_DIR"]);
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
