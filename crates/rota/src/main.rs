//! The `rota` binary: `rota serve` runs a node, `rota kv ...` talks to one. Flags follow
//! etcd's and etcdctl's (v2) names; Go's single-dash spelling works too (see `argv`).

mod argv;
mod job_cli;
mod job_supervisor;
mod kv;
mod member;
mod serve;
mod signals;
mod status;
mod worker;

/// The stack of every runtime thread (see its use in `main`).
const THREAD_STACK_BYTES: usize = rota_raft::THREAD_STACK_BYTES;

/// mimalloc: a write at 64 clients costs 6-8% less CPU than with glibc's allocator, most of
/// it in the many small allocations an HTTP request and its Raft entry make and free on
/// different threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "rota",
    version,
    about = "An etcd-compatible key-value store and durable job queue",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node in the foreground (etcd's flags).
    Serve(serve::ServeArgs),
    /// Read and write keys, like `etcdctl` v2.
    Kv(kv::KvArgs),
    /// Configure, inspect and delete job queues.
    Queue(job_cli::QueueArgs),
    /// Submit, inspect, cancel and retry jobs.
    Job(job_cli::JobArgs),
    /// Lease jobs from a queue and run a command for each.
    Worker(worker::WorkerArgs),
    /// List, add, remove and update cluster members, like `etcdctl member`.
    Member(member::MemberArgs),
    /// Each endpoint's id, name, leadership, Raft term and indexes, like `etcdctl endpoint status`.
    Status(status::StatusArgs),
}

fn main() -> ExitCode {
    // `rota worker`'s per-job supervisor: hidden from the parser and its `--help`, and kept
    // clear of the async runtime (it is a small blocking process started once per job).
    let mut raw_args = std::env::args_os();
    if raw_args
        .nth(1)
        .is_some_and(|arg| arg == job_supervisor::SUBCOMMAND)
    {
        return job_supervisor::run(raw_args);
    }
    let args = argv::rewrite_go_flags(std::env::args_os(), &argv::LongFlags::of(&cli_command()));
    if let Some(given) = argv::tls_flag_given(&args) {
        eprintln!("{}", argv::tls_refusal(&given));
        return ExitCode::from(2);
    }
    if let Some(refusal) = argv::serve_refusal(&args) {
        eprintln!("{refusal}");
        return ExitCode::from(2);
    }
    let (args, ignored_etcd_flags) = argv::take_ignored_serve_flags(args);
    let mut cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            if let Some(hint) = attached_value_hint(&args) {
                eprintln!("{hint}");
            }
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    // `rota job submit --wait 10s ...` parses: a bare --wait and a queue named `10s`. It
    // would wait a day on a job in the wrong queue; refuse it before anything is sent.
    if let (Command::Job(_), Some(hint)) = (&cli.command, attached_value_hint(&args)) {
        eprintln!("Error:  `--wait` and a duration apart are a bare --wait and an argument");
        eprintln!("{hint}");
        return ExitCode::from(job_cli::EXIT_BAD_ARGS);
    }
    if let Command::Serve(serve) = &mut cli.command {
        serve.ignored_etcd_flags = ignored_etcd_flags;
    }
    if !matches!(cli.command, Command::Serve(_) | Command::Worker(_)) {
        stdout_closed_ends_quietly();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // Room for the deepest tree a request can make: keys are at most 4 KiB, so a directory
    // chain is at most 2,048 deep, and a recursive GET renders it by recursion (2 MiB, the
    // default, overflowed at ~1,850 levels and aborted the process). Only the pages used
    // are ever resident.
    builder.thread_stack_size(THREAD_STACK_BYTES);
    if matches!(cli.command, Command::Serve(_)) {
        if let Some(threads) = serve::http_worker_threads() {
            builder.worker_threads(threads);
        }
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error:  cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve::run(args)),
        Command::Kv(args) => runtime.block_on(kv::run(args)),
        Command::Queue(args) => runtime.block_on(job_cli::run_queue(args)),
        Command::Job(args) => runtime.block_on(job_cli::run_job(args)),
        Command::Worker(args) => runtime.block_on(worker::run(args)),
        Command::Member(args) => runtime.block_on(member::run(args)),
        Command::Status(args) => runtime.block_on(status::run(args)),
    }
}

/// The clap definition of rota's command line.
fn cli_command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// A client command whose output goes to a pipe closed early (`rota kv ls / | head`) ends
/// as other Unix tools (etcdctl among them) do, killed by SIGPIPE, instead of panicking in
/// `println!`. Rust ignores SIGPIPE by default; sockets are unaffected (std sends with
/// `MSG_NOSIGNAL`). Not for `serve` and `worker`, which write to sockets and child pipes
/// that may close at any time.
fn stdout_closed_ends_quietly() {
    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: restores the default disposition of one signal before any thread is started
    // by this program's code; no handler function is installed.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

/// The URLs of an `--endpoints` list (comma-separated, blanks dropped); `None`, with the
/// error printed, if it names none.
fn endpoint_urls(endpoints: &str) -> Option<Vec<String>> {
    let urls: Vec<String> = endpoints
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        eprintln!("Error:  {}", rota_client::Error::NoEndpoints);
        return None;
    }
    // As the client crate's commands say it.
    if let Some(bad) = urls.iter().find(|url| !url.starts_with("http://") || reqwest::Url::parse(url).is_err()) {
        eprintln!("Error:  bad endpoint {bad:?}: expected http://host:port");
        return None;
    }
    Some(urls)
}

/// Tries to send a request this many times while the server answers `429 Too Many Requests`.
const TOO_MANY_TRIES: u32 = 5;

/// Sends the request that `build` makes; while the server answers 429 (its client rate
/// limit), waits its `Retry-After` (at most `rota_client::RETRY_AFTER_MAX`, 1 s without
/// one) and sends it again, up to [`TOO_MANY_TRIES`] times; the last answer is returned.
async fn send_waiting_out_429(
    build: impl Fn() -> reqwest::RequestBuilder,
) -> reqwest::Result<reqwest::Response> {
    let mut tries = 1;
    loop {
        let response = build().send().await?;
        if response.status() != reqwest::StatusCode::TOO_MANY_REQUESTS || tries == TOO_MANY_TRIES {
            return Ok(response);
        }
        let wait = rota_client::retry_after(response.headers())
            .unwrap_or(std::time::Duration::from_secs(1))
            .clamp(std::time::Duration::from_millis(100), rota_client::RETRY_AFTER_MAX);
        tokio::time::sleep(wait).await;
        tries += 1;
    }
}

/// `--wait` takes its value attached (`--wait=10s`: bare `--wait` waits the default), so
/// `--wait 10s` reads `10s` as a stray argument and clap says only that; this says why.
fn attached_value_hint(args: &[std::ffi::OsString]) -> Option<String> {
    let args: Vec<&str> = args.iter().filter_map(|arg| arg.to_str()).collect();
    args.windows(2).find_map(|pair| match pair {
        ["--wait", value] if job_cli::parse_duration(value).is_ok() => {
            Some(format!("tip: --wait takes its value attached: --wait={value}"))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn a_wait_value_given_apart_gets_a_tip() {
        let args = |list: &[&str]| list.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            attached_value_hint(&args(&["rota", "job", "submit", "api", "--wait", "10s"])).as_deref(),
            Some("tip: --wait takes its value attached: --wait=10s")
        );
        assert_eq!(attached_value_hint(&args(&["rota", "job", "submit", "api", "--wait", "--payload", "1"])), None);
        assert_eq!(attached_value_hint(&args(&["rota", "job", "get", "7", "--wait=10s"])), None);
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(argv::rewrite_go_flags(
            args.iter().map(std::ffi::OsString::from),
            &argv::LongFlags::of(&cli_command()),
        ))
        .expect("parses")
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_takes_etcds_flags_in_go_spelling_and_the_last_repeat_wins() {
        let cli = parse(&[
            "rota",
            "serve",
            "-name",
            "infra0",
            "--name=infra1",
            "-data-dir",
            "/tmp/x",
            "-initial-cluster-state=new",
        ]);
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        assert_eq!(args.name, "infra1");
        assert_eq!(
            args.data_dir.as_deref(),
            Some(std::path::Path::new("/tmp/x"))
        );
    }

    #[test]
    fn serve_without_flags_is_one_default_node() {
        let Command::Serve(args) = parse(&["rota", "serve"]).command else {
            panic!("serve")
        };
        assert_eq!(args.name, "default");
        assert_eq!(args.data_dir(), std::path::PathBuf::from("default.rota"));
        assert_eq!(args.listen_client_urls, "http://127.0.0.1:2379");
        assert_eq!(args.initial_cluster(), "default=http://127.0.0.1:2380");
    }

    #[test]
    fn kv_takes_endpoints_before_or_after_the_command() {
        for args in [
            &[
                "rota",
                "kv",
                "--endpoints",
                "http://127.0.0.1:1",
                "get",
                "/a",
            ][..],
            &["rota", "kv", "get", "/a", "--endpoints=http://127.0.0.1:1"][..],
        ] {
            let Command::Kv(kv) = parse(args).command else {
                panic!("kv")
            };
            assert_eq!(kv.endpoints, "http://127.0.0.1:1");
        }
    }
}
