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
        let takes_value = VALUE_FLAGS.contains(&name);
        let known = takes_value || SWITCH_FLAGS.contains(&name);
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
    fn go_bool_switches_with_values_are_rewritten() {
        assert_eq!(
            rewrite(&["rota", "serve", "-enable-v2=true"]),
            ["rota", "serve", "--enable-v2=true"]
        );
    }
}
