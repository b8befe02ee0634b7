//! `rota worker --queue q --concurrency N -- CMD ARGS...`: leases jobs and runs CMD once per
//! job (see docs/worker.md).
//!
//! Invariants:
//! - At most `concurrency` commands run at once (a semaphore slot per running job), and the
//!   worker never asks for more jobs than it has free slots (nor, with `--max-jobs`, more
//!   than it still may take).
//! - A job's outcome is reported at most once and only by the holder of its lease: every
//!   report carries the lease token and one idempotency key, re-sent unchanged while the
//!   server is unreachable, so a report that reached the server before a crash is answered
//!   again, never applied twice. A heartbeat answered `stale_lease`/`not_found` means the
//!   job went elsewhere: its command is killed and nothing is reported.
//! - Each command runs in its own process group, so killing a job kills everything it
//!   started, and a Ctrl-C at the terminal reaches the worker only (which then drains).
//!   The group is led by a [`job_supervisor`] (the rota binary again), which SIGKILLs the
//!   group when the worker dies, however it dies: a job never outlives its worker, so a
//!   lease that expires after a worker's crash cannot lead to two runs of one job at once.
//! - A command never outlives its lease: the supervisor also SIGKILLs the group at the lease's
//!   end (minus [`lease_margin`]) unless told of a renewal first, so a worker frozen or cut off
//!   from the servers for longer than the ttl cannot overlap the job's next attempt. Only the
//!   task that waits for the supervisor signals it (never after reaping it: no pid reuse).
//! - Captured output is bounded: stdout at four times the result limit, stderr to its last
//!   4 KiB.
//! - Shutdown (SIGTERM/SIGINT/SIGHUP): no new leases; running commands get `--grace`, then are
//!   killed and their leases released (on a queue with a concurrency limit, only just before
//!   each lease would end: [`hold_slot_after_kill`]). A lease answer arriving after the
//!   signal is released at once. A second signal ends the grace period at once; any signal
//!   after the first ends the wait for those leases.
//! - Logging never panics: a worker whose terminal went away (SIGHUP) still drains.

use std::ffi::OsString;
use std::io::Write;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rota_client::jobs::{self, FailRequest, Job, JobsError, LeaseNext, LeaseRequest, RawJson};
use rota_client::{idempotency_key, Client, Reachability};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::job_cli::{duration_for_people, parse_duration, EXIT_BAD_ARGS};
use crate::job_supervisor;

/// The result limit counts JSON without the whitespace between its tokens, so stdout is
/// read up to 4 times that (pretty-printed JSON, `jq .`'s output, is about twice its compact
/// size) and measured as the server measures it.
const STDOUT_BYTES_MAX: usize = 4 * rota_core::jobs::limits::RESULT_BYTES_MAX;
/// The end of stderr kept for a failure's error text (the server keeps up to 8 KiB).
const STDERR_TAIL_BYTES: usize = 4 << 10;
/// After the command exits (and its process group is killed), its pipes get this long to
/// reach end of file. Only a process it started outside its group (`setsid`, a daemon)
/// holds them longer: the job's output is then what was written until this ran out.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_millis(500);
/// How long an outcome (complete, fail, release) keeps being re-sent while no server
/// answers. Past it the lease will have expired and the server retries the job.
const REPORT_RETRY_FOR: Duration = Duration::from_secs(600);
/// Pause between rounds of a call that found no server (the client itself already retried).
const UNREACHABLE_PAUSE: Duration = Duration::from_secs(1);
/// A call still unanswered after this long is reported (the client keeps retrying).
const SLOW_ANSWER_NOTICE: Duration = Duration::from_secs(3);
/// Between lease requests while the server refuses them for lack of disk space.
const NO_SPACE_PAUSE: Duration = Duration::from_secs(5);
/// Heartbeats never come more often than this, whatever the lease ttl.
const HEARTBEAT_EVERY_MIN: Duration = Duration::from_millis(10);
/// The most the supervisor's deadline is set before the lease's end (for clock skew between
/// worker and leader, and for the kill itself); less for short ttls (see [`lease_margin`]).
const LEASE_MARGIN_MAX: Duration = Duration::from_secs(1);
/// The lease ttl when neither `--lease-ttl` nor the queue says (the server's default).
const LEASE_TTL_DEFAULT: Duration = Duration::from_secs(30);
/// After a signal, a lease request still out this long past its wait is abandoned.
const LEASE_ANSWER_MARGIN: Duration = Duration::from_secs(2);
/// The server's longest lease long-poll.
const POLL_WAIT_MAX: Duration = Duration::from_secs(60);
/// The shortest lease long-poll: an idle worker asks the server at most this often per slot
/// (a wait of zero would have it ask nonstop).
const POLL_WAIT_MIN: Duration = Duration::from_millis(100);

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Comma-separated client URLs, tried in order.
    #[arg(long, env = "ROTA_ENDPOINTS", default_value = "http://127.0.0.1:2379")]
    pub endpoints: String,
    /// The queue to take jobs from.
    #[arg(long)]
    pub queue: String,
    // Counts and durations take a leading `-` as their value, so that a negative one is
    // refused by its parser ("-1 is not in 1..=1000") instead of read as an unknown flag.
    /// Commands run at once.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub concurrency: u32,
    /// Exit after this many jobs (counting every job leased).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_max_jobs)]
    pub max_jobs: Option<u64>,
    /// Lease ttl asked for (default: the queue's at start); heartbeats come every third of it.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_lease_ttl)]
    pub lease_ttl: Option<Duration>,
    /// On SIGTERM/SIGINT/SIGHUP, how long running commands may still take before they are
    /// killed and their jobs released.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_flag_duration, default_value = "30s")]
    pub grace: Duration,
    /// Kill a command that runs longer than this and fail its attempt (retried as any
    /// failure). Without it a command may run as long as its heartbeats keep the lease.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// This worker's name in leases (default: HOSTNAME/PID).
    #[arg(long, value_parser = parse_worker_id)]
    pub worker_id: Option<String>,
    /// How long one lease request waits for a job on the server (100ms to 60s).
    #[arg(long, allow_hyphen_values = true, value_parser = parse_poll_wait, default_value = "10s")]
    pub poll_wait: Duration,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `--worker-id`: not empty (the server refuses an empty worker name at the first lease).
fn parse_worker_id(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("a worker id cannot be empty (default: HOSTNAME/PID)".to_string());
    }
    Ok(text.to_string())
}

/// Where the worker is in its life; only ever moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Running,
    /// A signal came: lease nothing more, let running commands finish.
    Draining,
    /// The grace period is over: kill running commands and release their jobs.
    Killing,
}

/// What every job task needs.
struct Context {
    client: Arc<Client>,
    queue: String,
    worker_id: String,
    command: Vec<OsString>,
    heartbeat_every: Duration,
    phase: watch::Receiver<Phase>,
    /// `--endpoints`, for messages.
    endpoints: String,
    /// Jobs leased so far, counted against `max_jobs` (by the lease loop and by completes
    /// that lease the next job).
    leased: AtomicU64,
    max_jobs: Option<u64>,
    /// The ttl leases ask for.
    lease_ttl: Duration,
    /// `--timeout`: how long a command may run.
    timeout: Option<Duration>,
    /// How long before the lease's end the supervisor kills the command ([`lease_margin`]).
    lease_margin: Duration,
    /// This process's pid, which each job supervisor checks is still its parent.
    worker_pid: u32,
    /// What a job supervisor writes to stderr, before the reason, when it could not start
    /// the command (random, so no command's own stderr is taken for it).
    start_error_marker: String,
    /// What is under way, for the message at a signal.
    activity: Arc<Activity>,
}

/// What the worker is doing, as the signal handler tells it.
#[derive(Debug)]
struct Activity {
    /// Slots running jobs (a job and the ones its completes leased next).
    running: std::sync::atomic::AtomicUsize,
    /// Of those, slots whose command was killed and that hold its concurrency slot until
    /// the lease's end ([`hold_slot_after_kill`]).
    holding: std::sync::atomic::AtomicUsize,
    /// A lease request is out.
    leasing: std::sync::atomic::AtomicBool,
    /// Stop signals received so far.
    signals: watch::Sender<u32>,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            running: Default::default(),
            holding: Default::default(),
            leasing: Default::default(),
            signals: watch::Sender::new(0),
        }
    }
}

/// Counts a slot as running while it lives.
struct Running(Arc<Activity>);

impl Running {
    fn new(activity: &Arc<Activity>) -> Running {
        activity.running.fetch_add(1, Ordering::SeqCst);
        Running(Arc::clone(activity))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Context {
    fn log(&self, line: std::fmt::Arguments<'_>) {
        log_line(format_args!("rota worker {}: {line}", self.worker_id));
    }

    /// Takes up to `want` jobs from what `--max-jobs` leaves; `give_back` returns what a
    /// lease did not use.
    fn take_budget(&self, want: u64) -> u64 {
        let Some(max) = self.max_jobs else {
            return want;
        };
        let mut taken = 0;
        let _ = self
            .leased
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |leased| {
                taken = want.min(max.saturating_sub(leased));
                Some(leased + taken)
            });
        taken
    }

    fn give_back(&self, count: u64) {
        if self.max_jobs.is_some() {
            self.leased.fetch_sub(count, Ordering::SeqCst);
        }
    }

    fn budget_spent(&self) -> bool {
        self.max_jobs
            .is_some_and(|max| self.leased.load(Ordering::SeqCst) >= max)
    }
}

/// Why `program` cannot be started, if it cannot (checked once, at start: otherwise every
/// job leased would spend its attempts on "No such file or directory" and die): a path
/// must name an executable file; a bare name must be one in `PATH`, as the shell finds it.
fn runnable(program: &std::ffi::OsStr) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &std::path::Path| {
        std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    if program.as_bytes().contains(&b'/') {
        let path = std::path::Path::new(program);
        return match std::fs::metadata(path) {
            Err(error) => Err(format!(
                "{error}{}",
                if path.is_relative() {
                    std::env::current_dir().map(|dir| format!(" (relative to {})", dir.display())).unwrap_or_default()
                } else {
                    String::new()
                }
            )),
            Ok(meta) if !meta.is_file() => Err("not a file".to_owned()),
            Ok(_) if !executable(path) => Err(format!("not executable (chmod +x {})", path.display())),
            Ok(_) => Ok(()),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|dir| executable(&dir.join(program))) {
        Ok(())
    } else {
        Err("not found in PATH (give a path, e.g. ./script.sh, for a program in this directory)".to_owned())
    }
}

pub async fn run(args: WorkerArgs) -> ExitCode {
    if args.command.is_empty() {
        eprintln!("Error:  give the command to run after `--`");
        return ExitCode::from(EXIT_BAD_ARGS);
    }
    if let Err(why) = runnable(&args.command[0]) {
        eprintln!("Error:  cannot run {:?}: {why}", args.command[0]);
        return ExitCode::from(EXIT_BAD_ARGS);
    }
    let worker_id = args.worker_id.clone().unwrap_or_else(default_worker_id);
    let client = match Client::new(args.endpoints.split(',')) {
        Ok(client) => client.on_reachability(log_reachability(worker_id.clone())),
        Err(error) => {
            eprintln!("Error:  {error}");
            return ExitCode::from(EXIT_BAD_ARGS);
        }
    };
    // Each call gives up after this and the worker says so ("no server answers ...; still
    // trying"), then goes on: with the clients' 30 s a worker said nothing through a 20 s
    // election. Reports and leases are retried beyond it with their idempotency keys.
    jobs::set_v1_retry_for(CALL_RETRY_FOR);
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let activity = Arc::new(Activity::default());
    let stop = Stopping {
        grace: args.grace,
        answer_bound: args.poll_wait + LEASE_ANSWER_MARGIN,
        worker_id: worker_id.clone(),
        activity: Arc::clone(&activity),
    };
    if let Err(error) = watch_signals(phase_tx, stop) {
        eprintln!("Error:  cannot handle signals: {error}");
        return ExitCode::FAILURE;
    }
    let mut context = Context {
        client: Arc::new(client),
        queue: args.queue.clone(),
        worker_id,
        command: args.command.clone(),
        heartbeat_every: Duration::ZERO,
        phase: phase_rx,
        endpoints: args.endpoints.clone(),
        leased: AtomicU64::new(0),
        max_jobs: args.max_jobs,
        lease_ttl: Duration::ZERO,
        timeout: args.timeout,
        lease_margin: Duration::ZERO,
        worker_pid: std::process::id(),
        start_error_marker: format!("rota job supervisor {}: ", idempotency_key()),
        activity,
    };
    let lease_ttl = match resolve_lease_ttl(&context, args.lease_ttl).await {
        Resolved::Ttl(lease_ttl) => lease_ttl,
        Resolved::Stopped => return ExitCode::SUCCESS, // A signal before the first lease.
        Resolved::Refused => return ExitCode::FAILURE,
    };
    if lease_ttl < LEASE_TTL_WORKABLE_MIN {
        context.log(format_args!(
            "warning: queue {}'s lease ttl is {}, shorter than a worker can use (at least {}): \
             its jobs may end \"lease expired\" without running; give the queue a longer one \
             (rota queue set {} --lease-ttl 30s) or pass --lease-ttl",
            context.queue,
            duration_for_people(lease_ttl),
            duration_for_people(LEASE_TTL_WORKABLE_MIN),
            context.queue
        ));
    }
    context.heartbeat_every = (lease_ttl / 3).max(HEARTBEAT_EVERY_MIN);
    context.lease_ttl = lease_ttl;
    context.lease_margin = lease_margin(lease_ttl);
    let command_text: Vec<String> = args
        .command
        .iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    context.log(format_args!(
        "leasing from {} (concurrency {}, lease ttl {}) to run {}",
        args.queue,
        args.concurrency,
        duration_for_people(lease_ttl),
        command_text.join(" ")
    ));
    let context = Arc::new(context);
    let code = lease_loop(&context, &args, lease_ttl).await;
    context.log(format_args!("exiting"));
    code
}

/// How long one request to the servers is retried before the worker logs that none
/// answers and tries again.
const CALL_RETRY_FOR: Duration = Duration::from_secs(5);

/// Logs the moment the servers stop answering (once, whichever request noticed) and the
/// moment one answers again, so an outage shows in the log as a pair of lines.
fn log_reachability(worker_id: String) -> impl Fn(Reachability<'_>) + Send + Sync + 'static {
    move |event| match event {
        Reachability::Lost { unreachable, .. } => log_line(format_args!(
            "rota worker {worker_id}: no answer from {unreachable}; retrying until a server answers"
        )),
        Reachability::Switched { from, error, to } => log_line(format_args!(
            "rota worker {worker_id}: {from} did not answer ({error}); going on with {to}"
        )),
        Reachability::Regained { endpoint, after } => {
            // Whole seconds past the first: the outage's length, not a measurement.
            let after = if after >= Duration::from_secs(1) {
                Duration::from_secs(after.as_secs())
            } else {
                Duration::from_millis(u64::try_from(after.as_millis()).unwrap_or(u64::MAX))
            };
            log_line(format_args!(
                "rota worker {worker_id}: reconnected: {endpoint} answered after {}",
                duration_for_people(after)
            ))
        }
    }
}

/// Leases while running, hands each job to a task, then waits for all tasks.
async fn lease_loop(context: &Arc<Context>, args: &WorkerArgs, lease_ttl: Duration) -> ExitCode {
    let slots = Arc::new(Semaphore::new(args.concurrency as usize));
    let mut tasks = JoinSet::new();
    let mut phase = context.phase.clone();
    let mut code = ExitCode::SUCCESS;
    let mut unanswered: Option<(String, LeaseRequest)> = None;
    let mut said_paused = false;
    loop {
        // Reap finished tasks as we go so the set stays bounded by the concurrency.
        while tasks.try_join_next().is_some() {}
        if *phase.borrow() != Phase::Running {
            break;
        }
        if context.budget_spent() {
            // A running job's complete may give back what it took for a next job that did
            // not come: look again when a task ends, stop when none is left.
            if tasks.join_next().await.is_none() {
                break;
            }
            continue;
        }
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // Never closed; nothing sensible to do if it were.
            },
            _ = phase.changed() => continue,
        };
        let mut permits = vec![first];
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            permits.push(permit);
        }
        // A job task that completes with `lease_next` takes from the budget too.
        let budget = context.take_budget(permits.len() as u64);
        if budget == 0 {
            drop(permits);
            // Spent, or a running task holds the rest: wait for a slot to come back.
            continue;
        }
        permits.truncate(budget as usize);
        let request = LeaseRequest {
            worker: context.worker_id.clone(),
            max: u32::try_from(budget).unwrap_or(1),
            wait: args.poll_wait,
            lease_ttl: Some(lease_ttl),
        };
        // An in-flight lease is not abandoned at a signal: the server may grant jobs to it at
        // any moment, and they would sit leased to nobody until they expire. Its answer is
        // awaited and the jobs released instead. A server answers within `poll_wait`; a lease
        // still out well after that (no server answers, the client is retrying) is dropped,
        // and so is any lease at the end of the grace period.
        // A lease no server answered may have been granted all the same: asked again with
        // the same key (and so the same request), a server answers what it granted instead
        // of leaving those jobs leased to nobody until their ttl ends.
        let key = match unanswered.take() {
            Some((key, asked)) if asked == request => key,
            _ => idempotency_key(),
        };
        let answer_bound = request.wait + LEASE_ANSWER_MARGIN;
        context.activity.leasing.store(true, Ordering::SeqCst);
        let leased = tokio::select! {
            leased = context.client.lease_keyed(&key, &context.queue, &request) => leased,
            _ = wait_for_phase(context.phase.clone(), Phase::Killing) => break,
            _ = async {
                wait_for_phase(context.phase.clone(), Phase::Draining).await;
                tokio::time::sleep(answer_bound).await;
            } => break,
        };
        context.activity.leasing.store(false, Ordering::SeqCst);
        let got = leased.as_ref().map_or(0, |leased| leased.jobs.len() as u64);
        context.give_back(budget.saturating_sub(got));
        match leased {
            Ok(leased) => {
                // A paused queue leases nothing: said once, so an idle worker is explained.
                let paused = leased.jobs.is_empty()
                    && leased.extra.get("blocked").and_then(|blocked| blocked.get("reason")).and_then(serde_json::Value::as_str)
                        == Some("paused");
                if paused != said_paused {
                    said_paused = paused;
                    if paused {
                        context.log(format_args!(
                            "queue {} is paused: waiting until it is resumed (rota queue set {} --resume)",
                            context.queue, context.queue
                        ));
                    } else {
                        context.log(format_args!("queue {} is no longer paused", context.queue));
                    }
                }
                for job in leased.jobs {
                    let context = Arc::clone(context);
                    if *phase.borrow() == Phase::Running {
                        let permit = permits.pop();
                        let running = Running::new(&context.activity);
                        tasks.spawn(async move {
                            run_jobs(&context, job).await;
                            drop((permit, running));
                        });
                    } else {
                        tasks.spawn(async move { release_unstarted(&context, &job, "leased while stopping").await });
                    }
                }
            }
            Err(JobsError::Unavailable(unreachable)) => {
                unanswered = Some((key, request));
                context.log(format_args!(
                    "no server answers: {unreachable}; still trying"
                ));
                pause_unless_stopping(&mut phase, UNREACHABLE_PAUSE).await;
            }
            // The server's disk is short of space: it leases again once space is freed
            // (running jobs still complete meanwhile).
            Err(error) if error.code() == Some("no_space") => {
                context.log(format_args!("{error}; still trying"));
                pause_unless_stopping(&mut phase, NO_SPACE_PAUSE).await;
            }
            Err(error) => {
                // A refusal of the lease itself (bad queue name, bad ttl) will not change by
                // asking again.
                context.log(format_args!("lease refused: {error}; stopping"));
                code = ExitCode::FAILURE;
                break;
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    code
}

/// Finds the lease ttl to ask for: the flag, else the queue's (a queue that does not exist
/// yet has the default). `None` when a signal came first.
async fn resolve_lease_ttl(context: &Context, flag: Option<Duration>) -> Resolved {
    if let Some(lease_ttl) = flag {
        return Resolved::Ttl(lease_ttl);
    }
    let mut phase = context.phase.clone();
    loop {
        if *phase.borrow() != Phase::Running {
            return Resolved::Stopped;
        }
        // The client retries an unreachable cluster for a while on its own: say so, and
        // stop at a signal instead of waiting for it.
        let mut ask = std::pin::pin!(context.client.get_queue(&context.queue));
        let mut still_waiting = std::pin::pin!(tokio::time::sleep(SLOW_ANSWER_NOTICE));
        let answer = loop {
            tokio::select! {
                answer = &mut ask => break answer,
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow() != Phase::Running {
                        return Resolved::Stopped;
                    }
                }
                () = &mut still_waiting => {
                    context.log(format_args!("no answer yet from {}; still trying", context.endpoints));
                    still_waiting.set(tokio::time::sleep(SLOW_ANSWER_NOTICE));
                }
            }
        };
        match answer {
            Ok(queue) => {
                let text = queue.config.lease_ttl.unwrap_or_default();
                return Resolved::Ttl(parse_duration(&text).unwrap_or(LEASE_TTL_DEFAULT));
            }
            Err(error) if error.code() == Some("not_found") => {
                // Often a misspelt name: this worker would wait for ever without a word.
                context.log(format_args!(
                    "queue {} does not exist yet (`rota queue ls` lists those that do): waiting for its first job; \
                     its leases last {} (--lease-ttl), whatever the queue is later set to",
                    context.queue,
                    duration_for_people(LEASE_TTL_DEFAULT)
                ));
                return Resolved::Ttl(LEASE_TTL_DEFAULT);
            }
            // A refusal (a bad queue name) will not change by asking again.
            Err(error @ JobsError::Api(_))
                if error
                    .status()
                    .is_some_and(|status| (400..500).contains(&status) && status != 429) =>
            {
                context.log(format_args!(
                    "cannot read queue {}: {error}; stopping",
                    context.queue
                ));
                return Resolved::Refused;
            }
            Err(error) => {
                context.log(format_args!(
                    "cannot read queue {}: {error}; still trying",
                    context.queue
                ));
                pause_unless_stopping(&mut phase, UNREACHABLE_PAUSE).await;
            }
        }
    }
}

/// What the worker leases with, or why it does not start.
enum Resolved {
    Ttl(Duration),
    /// A signal came first.
    Stopped,
    /// The server refused the queue (its name).
    Refused,
}

/// `--max-jobs`: a whole number, at least 1 (a negative one is refused as such, not as "an
/// invalid digit").
fn parse_max_jobs(text: &str) -> Result<u64, String> {
    match text.trim().parse::<i128>() {
        Ok(count) if count >= 1 => {
            u64::try_from(count).map_err(|_| format!("at most {}", u64::MAX))
        }
        Ok(_) => Err("at least 1".to_string()),
        Err(_) => Err("not a whole number".to_string()),
    }
}

/// A duration flag's value; a negative one is refused in so many words.
fn parse_flag_duration(text: &str) -> Result<Duration, String> {
    if text.trim_start().starts_with('-') {
        return Err("a duration cannot be negative".to_string());
    }
    parse_duration(text)
}

/// `--timeout`: a positive duration.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_flag_duration(text)?;
    if timeout.is_zero() {
        return Err("a timeout must be longer than 0".to_string());
    }
    Ok(timeout)
}

/// The shortest lease ttl this worker works with: a lease must outlive the lease request's
/// round trip and the command's start, and heartbeats come every third of it. The server
/// takes down to 1ms (for workers of one's own); with `--lease-ttl 1ms` an audit's jobs all
/// went dead ("lease expired") without their command ever running.
const LEASE_TTL_WORKABLE_MIN: Duration = Duration::from_millis(100);

/// `--lease-ttl`: within the server's bounds, so that a ttl it would refuse stops the worker
/// before it starts rather than at its first lease, and no shorter than this worker can use.
fn parse_lease_ttl(text: &str) -> Result<Duration, String> {
    use rota_core::jobs::limits::LEASE_TTL_MAX_MS;
    let lease_ttl = parse_flag_duration(text)?;
    let (min, max) = (LEASE_TTL_WORKABLE_MIN, Duration::from_millis(LEASE_TTL_MAX_MS));
    if lease_ttl < min {
        return Err(format!(
            "{} is too short for a worker: a lease must outlive a request to the server and the \
             command's start; at least {}",
            duration_for_people(lease_ttl),
            duration_for_people(min)
        ));
    }
    if lease_ttl > max {
        return Err(format!(
            "{} is over {} (the server's bound)",
            duration_for_people(lease_ttl),
            duration_for_people(max)
        ));
    }
    Ok(lease_ttl)
}

fn parse_poll_wait(text: &str) -> Result<Duration, String> {
    let wait = parse_flag_duration(text)?;
    if wait > POLL_WAIT_MAX {
        return Err(format!("at most {}", duration_for_people(POLL_WAIT_MAX)));
    }
    if wait < POLL_WAIT_MIN {
        return Err(format!(
            "at least {} (a shorter wait has an idle worker ask the server nonstop)",
            duration_for_people(POLL_WAIT_MIN)
        ));
    }
    Ok(wait)
}

/// How one run of the command ended.
enum Ending {
    Exited {
        status: ExitStatus,
    },
    /// A heartbeat said the lease is gone; the command was killed.
    LeaseLost(JobsError),

    /// The grace period ended; the command was killed.
    Interrupted,
    /// It ran past `--timeout`; the command was killed.
    TimedOut,
    CannotStart(std::io::Error),
}

/// Runs `job`, then each job its complete leased next (`lease_next`), in one slot.
async fn run_jobs(context: &Context, job: Job) {
    let mut next = run_job(context, job).await;
    while let Some(job) = next {
        if *context.phase.borrow() != Phase::Running {
            release_unstarted(context, &job, "leased while stopping").await;
            return;
        }
        next = run_job(context, job).await;
    }
}

/// Runs one job and reports its outcome; on success, while running and within
/// `--max-jobs`, the complete also leases this slot's next job, which is returned.
async fn run_job(context: &Context, job: Job) -> Option<Job> {
    let Some(token) = job.lease_token else {
        context.log(format_args!(
            "job {} came without a lease token; ignored",
            job.id
        ));
        return None;
    };
    let lease_deadline_ms = job
        .lease_expires_at
        .as_deref()
        .and_then(|expires_at| supervisor_deadline_ms(context, expires_at))
        // Never missing from a lease; if it were, the lease began before now.
        .unwrap_or_else(|| {
            unix_ms(std::time::SystemTime::now()) + duration_ms(context.lease_ttl)
                - duration_ms(context.lease_margin)
        });
    if lease_deadline_ms <= unix_ms(std::time::SystemTime::now()) {
        // The lease was granted while this worker could not take it up (frozen with a lease
        // request out, or stuck): starting the command now could overlap whoever the server
        // has leased the job, or the queue's slot, to since.
        context.log(format_args!(
            "job {} attempt {}: its lease ends at {} (less the {}ms margin), before the command \
             could start (was this worker paused, or is the lease ttl, {}, too short?); not run",
            job.id,
            job.attempts,
            job.lease_expires_at.as_deref().unwrap_or("?"),
            context.lease_margin.as_millis(),
            duration_for_people(context.lease_ttl)
        ));
        release_unstarted(context, &job, "its lease ended before it could start").await;
        return None;
    }
    let started = Instant::now();
    context.log(format_args!(
        "job {} attempt {} started (lease {token})",
        job.id, job.attempts
    ));
    let mut command = supervised_command(context, lease_deadline_ms);
    command
        .env("ROTA_JOB_ID", job.id.to_string())
        .env("ROTA_JOB_ATTEMPT", job.attempts.to_string())
        .env("ROTA_JOB_PRIORITY", job.priority.to_string())
        .env("ROTA_QUEUE", &job.queue)
        .env("ROTA_LEASE_TOKEN", token.to_string())
        .env("ROTA_WORKER_ID", &context.worker_id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(expires_at) = &job.lease_expires_at {
        command.env("ROTA_LEASE_EXPIRES_AT", expires_at);
    }
    let (ending, stdout, stderr, lease_deadline_ms) = match command.spawn() {
        Err(error) => (
            Ending::CannotStart(std::io::Error::new(
                error.kind(),
                format!("cannot start the job supervisor (/proc/self/exe): {error}"),
            )),
            Captured::default(),
            Captured::default(),
            lease_deadline_ms,
        ),
        Ok(mut child) => {
            let group = child.id();
            // The payload's text as the server sent it (as submitted, less the whitespace
            // between tokens), not re-encoded.
            let payload = job.payload.get().as_bytes().to_vec();
            if let Some(mut stdin) = child.stdin.take() {
                // A command that never reads stdin must not block the worker: write aside,
                // and ignore a broken pipe.
                tokio::spawn(async move {
                    let _ = stdin.write_all(&payload).await;
                    let _ = stdin.shutdown().await;
                });
            }
            let stdout_task = child.stdout.take().map(|out| Reading::start(out, Keep::Head(STDOUT_BYTES_MAX)));
            let stderr_task = child.stderr.take().map(|err| Reading::start(err, Keep::Tail(STDERR_TAIL_BYTES)));
            let (renewed_tx, mut renewed) = watch::channel(lease_deadline_ms);
            let mut heartbeats = tokio::spawn(keep_lease(
                Arc::clone(&context.client),
                job.id,
                token,
                context.heartbeat_every,
                context.lease_margin,
                renewed_tx,
            ));
            let timeout = context.timeout;
            let timed_out = async move {
                match timeout {
                    Some(timeout) => tokio::time::sleep(timeout).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(timed_out);
            let ending = loop {
                tokio::select! {
                    status = child.wait() => break match status {
                        Ok(status) => Ending::Exited { status },
                        Err(error) => Ending::CannotStart(error),
                    },
                    lost = &mut heartbeats => {
                        kill_group(group);
                        let _ = child.wait().await;
                        break match lost {
                            Ok(error) => Ending::LeaseLost(error),
                            Err(join) => Ending::LeaseLost(JobsError::Client(format!("heartbeat task failed: {join}"))),
                        };
                    }
                    _ = wait_for_phase(context.phase.clone(), Phase::Killing) => {
                        kill_group(group);
                        let _ = child.wait().await;
                        break Ending::Interrupted;
                    }
                    () = &mut timed_out => {
                        kill_group(group);
                        let _ = child.wait().await;
                        break Ending::TimedOut;
                    }
                    Ok(()) = renewed.changed() => {
                        // `child.id()` is `None` once reaped: a reused pid is never signalled.
                        let deadline_ms = *renewed.borrow_and_update();
                        tell_supervisor(child.id(), deadline_ms);
                    }
                }
            };
            heartbeats.abort();
            let lease_deadline_ms = *renewed.borrow();
            // Whatever the command left running dies with the job (and lets go of the pipes).
            kill_group(group);
            let drained_by = tokio::time::Instant::now() + OUTPUT_DRAIN_TIMEOUT;
            let (stdout, stdout_held) = collect(stdout_task, drained_by).await;
            let (stderr, stderr_held) = collect(stderr_task, drained_by).await;
            let held: Vec<&str> = [(stdout_held, "stdout"), (stderr_held, "stderr")]
                .into_iter()
                .filter_map(|(held, name)| held.then_some(name))
                .collect();
            if !held.is_empty() {
                context.log(format_args!(
                    "job {}: its {} stayed open after the command exited (held by a process it started \
                     outside its group, e.g. with setsid or as a daemon; redirect that process's output): \
                     the job's output is what was written until {}ms later",
                    job.id,
                    held.join(" and "),
                    OUTPUT_DRAIN_TIMEOUT.as_millis()
                ));
            }
            (ending, stdout, stderr, lease_deadline_ms)
        }
    };
    let took = format!("{}ms", started.elapsed().as_millis());
    match ending {
        Ending::Exited { status } if status.success() => {
            let result = match result_of(&stdout) {
                Ok(result) => result,
                Err(error) => {
                    report_failure(context, &job, token, error, &took).await;
                    return None;
                }
            };
            let key = idempotency_key();
            let lease_next =
                *context.phase.borrow() == Phase::Running && context.take_budget(1) == 1;
            let next = LeaseNext {
                worker: context.worker_id.clone(),
                max: 1,
                lease_ttl: Some(context.lease_ttl),
            };
            let completed = report_holding_lease(context, job.id, token, || async {
                if lease_next {
                    let completed = context
                        .client
                        .complete_next_keyed(&key, job.id, token, &result, &next)
                        .await?;
                    Ok(completed.leased.jobs.into_iter().next())
                } else {
                    context
                        .client
                        .complete_keyed(&key, job.id, token, &result)
                        .await
                        .map(|_| None)
                }
            })
            .await;
            if lease_next && !matches!(completed, Ok(Some(_))) {
                context.give_back(1);
            }
            match completed {
                Ok(next) => {
                    context.log(format_args!("job {} succeeded in {took}", job.id));
                    return next;
                }
                Err(error) if refuses_the_result(&error) => {
                    report_failure(
                        context,
                        &job,
                        token,
                        format!("the result was refused: {error}"),
                        &took,
                    )
                    .await;
                }
                Err(error) => {
                    log_lost_report(context, &job, "its result", &error);
                    let_go_if_refused(context, &job, token, &error).await;
                }
            }
        }
        Ending::Exited { status } => {
            let error = if let Some(reason) = start_error(context, status, &stderr.bytes) {
                format!(
                    "cannot run {}: {reason}",
                    context.command[0].to_string_lossy()
                )
            } else if let Some(stderr_tail) = lease_ended(context, status, &stderr.bytes) {
                // The lease may be gone already: then the report is refused and logged as
                // discarded, like any report of a lost lease.
                failure_text(LEASE_ENDED_ERROR, stderr_tail)
            } else {
                failure_text(&describe_status(status), &stderr.bytes)
            };
            report_failure(context, &job, token, error, &took).await;
        }
        Ending::TimedOut => {
            let limit = duration_for_people(context.timeout.unwrap_or_default());
            let error = failure_text(&format!("timed out: killed after {limit} (--timeout)"), &stderr.bytes);
            if hold_slot_after_kill(context, job.id, lease_deadline_ms).await {
                report_failure(context, &job, token, error, &took).await;
            }
        }
        Ending::CannotStart(error) => {
            let text = format!(
                "cannot run {}: {error}",
                context.command[0].to_string_lossy()
            );
            report_failure(context, &job, token, text, &took).await;
        }
        Ending::LeaseLost(error) => {
            context.log(format_args!(
                "job {} lease lost ({error}); command killed after {took}, nothing reported",
                job.id
            ));
            // A cancelled job's lease holds its slot: let go only once a call the command
            // had in flight has had its lease's time to end.
            if error.code() == Some("stale_lease") && hold_slot_after_kill(context, job.id, lease_deadline_ms).await {
                let_go_if_refused(context, &job, token, &error).await;
            }
        }
        Ending::Interrupted => {
            if !hold_slot_after_kill(context, job.id, lease_deadline_ms).await {
                return None;
            }
            let key = idempotency_key();
            match report(context, job.id, || {
                context.client.release_keyed(&key, job.id, token)
            })
            .await
            {
                Ok(_) => context.log(format_args!(
                    "job {} released (grace period over; command killed after {took})",
                    job.id
                )),
                Err(error) => log_lost_report(context, &job, "its release", &error),
            }
        }
    }
    None
}

async fn report_failure(context: &Context, job: &Job, token: u64, error: String, took: &str) {
    let fail = FailRequest {
        error: error.clone(),
        retry: None,
        retry_after: None,
    };
    let key = idempotency_key();
    match report_holding_lease(context, job.id, token, || {
        context.client.fail_keyed(&key, job.id, token, &fail)
    })
    .await
    {
        Ok(after) => context.log(format_args!(
            "job {} failed in {took} ({}); now {}",
            job.id,
            one_line(&error),
            after.state
        )),
        Err(error) => {
            log_lost_report(context, job, "its failure", &error);
            let_go_if_refused(context, job, token, &error).await;
        }
    }
}

/// After the worker killed a command that was still running, on a queue with a concurrency
/// limit: waits until the lease's deadline (its end less the margin) before the job is
/// reported, so that its slot stays taken meanwhile. A killed command cannot take back a
/// call it already sent: that call may still be under way at the API, and the slot is what
/// keeps the next job's call from starting beside it. A call given a timeout well under the
/// lease ttl (docs/worker.md) has ended by then: the last renewal left at least two thirds
/// of the ttl, and a cancelled job's refused renewals no longer move the deadline. Returns
/// false when a stop signal after the first ends the wait: the worker then leaves the lease
/// to run out on the server.
async fn hold_slot_after_kill(context: &Context, job_id: u64, deadline_ms: i64) -> bool {
    let wait_ms = deadline_ms - unix_ms(std::time::SystemTime::now());
    if wait_ms <= 0 {
        return true;
    }
    // Without a concurrency limit there is no slot to keep: report at once. If the queue
    // cannot be read, keep the slot.
    let limited = match context.client.get_queue(&context.queue).await {
        Ok(queue) => queue.config.concurrency.is_some(),
        Err(_) => true,
    };
    if !limited {
        return true;
    }
    let wait = Duration::from_millis(wait_ms as u64);
    // The next stop signal ends the wait, but not the first: that one asks the worker to
    // stop gracefully, which this wait is part of.
    let mut signals = context.activity.signals.subscribe();
    let signals_at_start = *signals.borrow_and_update();
    let ends_at = (signals_at_start + 1).max(2);
    context.log(format_args!(
        "job {job_id}: its command was killed; holding its concurrency slot for {} until its lease \
         ends, so that a call the command had in flight ends first{}",
        duration_for_people(wait),
        if signals_at_start > 0 { " (another signal: exit now and leave the lease to run out)" } else { "" }
    ));
    context.activity.holding.fetch_add(1, Ordering::SeqCst);
    let waited = tokio::select! {
        () = tokio::time::sleep(wait) => true,
        _ = signals.wait_for(|count| *count >= ends_at) => false,
    };
    context.activity.holding.fetch_sub(1, Ordering::SeqCst);
    if !waited {
        context.log(format_args!("job {job_id} left to its lease, which runs out on the server"));
    }
    waited
}

/// After the server refused this lease's token (the command is gone by now): a job
/// cancelled while leased keeps its concurrency slot until its worker lets go or the lease
/// ends, so the worker lets go at once. Any other refusal (the lease ended or moved on)
/// leaves nothing to let go of, and the release is refused too, silently.
async fn let_go_if_refused(context: &Context, job: &Job, token: u64, error: &JobsError) {
    if error.code() != Some("stale_lease") {
        return;
    }
    let key = idempotency_key();
    if report(context, job.id, || context.client.release_keyed(&key, job.id, token))
        .await
        .is_ok()
    {
        context.log(format_args!(
            "job {} was cancelled; its concurrency slot given back",
            job.id
        ));
    }
}

/// Whether the server refused a `complete` for its result (too large, too deeply nested,
/// not portable JSON): the attempt then failed, and the worker says so with `fail` instead
/// of leaving the lease to expire.
fn refuses_the_result(error: &JobsError) -> bool {
    match error {
        JobsError::Api(refusal) => {
            refusal.code == "too_large" || refusal.field.as_deref() == Some("result")
        }
        _ => false,
    }
}

fn log_lost_report(context: &Context, job: &Job, what: &str, error: &JobsError) {
    if error.code() == Some("stale_lease") || error.code() == Some("not_found") {
        context.log(format_args!(
            "job {} lease lost before {what} was stored ({error}); discarded",
            job.id
        ));
    } else {
        context.log(format_args!("job {}: cannot store {what}: {error}", job.id));
    }
}

/// Gives back a job whose command never ran (`why` says when it came): queued again at once
/// with the attempt not counted, if the server still holds the lease; if the lease has
/// ended, the server counted it as a failed attempt and the refusal is logged.
async fn release_unstarted(context: &Context, job: &Job, why: &str) {
    let Some(token) = job.lease_token else { return };
    let key = idempotency_key();
    match report(context, job.id, || {
        context.client.release_keyed(&key, job.id, token)
    })
    .await
    {
        Ok(_) => context.log(format_args!("job {} released ({why})", job.id)),
        Err(error) => log_lost_report(context, job, "its release", &error),
    }
}

/// [`report`], and while the server refuses it for lack of disk space (a node nearly out of
/// space refuses even results: docs/limits.md), keeps the lease with heartbeats and sends
/// the report again, until it is taken, the lease is lost or [`REPORT_RETRY_FOR`] passed.
/// A result given up here would have the job run again once its lease ended.
async fn report_holding_lease<T, F, Fut>(context: &Context, id: u64, token: u64, mut send: F) -> Result<T, JobsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, JobsError>>,
{
    let deadline = Instant::now() + REPORT_RETRY_FOR;
    let mut said = false;
    loop {
        match report(context, id, &mut send).await {
            Err(error) if error.code() == Some("no_space") && Instant::now() < deadline => {
                if !said {
                    context.log(format_args!(
                        "job {id}: the server is short of disk space ({error}); keeping the lease and \
                         sending the outcome again until it is taken"
                    ));
                    said = true;
                }
                tokio::time::sleep(context.heartbeat_every.min(NO_SPACE_PAUSE)).await;
                if let Err(lost) = context.client.heartbeat(id, token, None).await {
                    if matches!(lost.code(), Some("stale_lease" | "not_found")) {
                        return Err(lost);
                    }
                }
            }
            other => return other,
        }
    }
}

/// Re-sends one report (same key each time) while no server answers, for up to
/// [`REPORT_RETRY_FOR`]; the first real answer is returned.
async fn report<T, F, Fut>(context: &Context, id: u64, mut send: F) -> Result<T, JobsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, JobsError>>,
{
    let deadline = Instant::now() + REPORT_RETRY_FOR;
    loop {
        match send().await {
            Err(JobsError::Unavailable(unreachable)) if Instant::now() < deadline => {
                context.log(format_args!(
                    "job {id}: no server answers: {unreachable}; retrying its report"
                ));
                tokio::time::sleep(UNREACHABLE_PAUSE).await;
            }
            other => return other,
        }
    }
}

/// Heartbeats every `every` until the lease is refused; returns why. Network trouble is not
/// a refusal: the lease may still be valid when the server is back. Each renewal's new
/// supervisor deadline (the lease's new end less `margin`) goes to `renewed`.
async fn keep_lease(
    client: Arc<Client>,
    id: u64,
    token: u64,
    every: Duration,
    margin: Duration,
    renewed: watch::Sender<i64>,
) -> JobsError {
    let mut wait = every;
    loop {
        tokio::time::sleep(wait).await;
        match client.heartbeat(id, token, None).await {
            Ok(job) => {
                wait = every;
                let deadline_ms = job
                    .lease_expires_at
                    .as_deref()
                    .and_then(|expires_at| deadline_before(expires_at, margin));
                if let Some(deadline_ms) = deadline_ms {
                    renewed.send_replace(deadline_ms);
                }
            }
            Err(error @ JobsError::Api(_))
                if matches!(error.code(), Some("stale_lease" | "not_found")) =>
            {
                return error
            }
            Err(error) => {
                log_line(format_args!("rota worker: job {id}: heartbeat failed ({error}); will try again"));
                // Soon, not a third of the ttl later: the lease still runs, and a cluster
                // back from an outage (a new leader renews every lease) should hear from
                // this job before its deadline here passes (an audit lost a job 0.6 s after
                // the cluster was back, its next try 6 s away).
                wait = HEARTBEAT_RETRY.min(every);
            }
        }
    }
}

/// How soon a heartbeat that failed (after its own retries over the endpoints) is tried again.
const HEARTBEAT_RETRY: Duration = Duration::from_secs(1);

/// Captured output and whether some of it was dropped.
#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    overflowed: bool,
}

type SharedCapture = Arc<std::sync::Mutex<Captured>>;

fn lock(captured: &SharedCapture) -> std::sync::MutexGuard<'_, Captured> {
    captured.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Which bytes of a pipe are kept; the rest is read and dropped, so the command never
/// blocks on a full pipe.
#[derive(Clone, Copy, Debug)]
enum Keep {
    /// The first this many (stdout: beyond it the result is too big anyway).
    Head(usize),
    /// The last this many (stderr: the end says what went wrong).
    Tail(usize),
}

impl Captured {
    fn take_in(&mut self, bytes: &[u8], keep: Keep) {
        match keep {
            Keep::Head(bytes_max) => {
                let room = bytes_max.saturating_sub(self.bytes.len());
                self.bytes.extend_from_slice(&bytes[..bytes.len().min(room)]);
                self.overflowed |= bytes.len() > room;
            }
            Keep::Tail(bytes_max) => {
                self.bytes.extend_from_slice(bytes);
                if self.bytes.len() > bytes_max {
                    let cut = self.bytes.len() - bytes_max;
                    self.bytes.drain(..cut);
                    self.overflowed = true;
                }
            }
        }
    }
}

/// Reads to the end into `into`, keeping what `keep` says.
async fn read_into<R: AsyncRead + Unpin>(mut reader: R, keep: Keep, into: &SharedCapture) {
    let mut buffer = vec![0u8; 16 << 10];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => lock(into).take_in(&buffer[..n], keep),
        }
    }
}

/// A pipe read by a task of its own into a buffer that stays readable while the pipe is
/// open: a pipe that never ends (held by a process the command left) still yields what
/// was written.
struct Reading {
    task: tokio::task::JoinHandle<()>,
    captured: SharedCapture,
}

impl Reading {
    fn start<R: AsyncRead + Unpin + Send + 'static>(reader: R, keep: Keep) -> Reading {
        let captured = SharedCapture::default();
        let into = Arc::clone(&captured);
        let task = tokio::spawn(async move { read_into(reader, keep, &into).await });
        Reading { task, captured }
    }
}

#[cfg(test)]
async fn read_all<R: AsyncRead + Unpin>(reader: R, keep: Keep) -> Captured {
    let into = SharedCapture::default();
    read_into(reader, keep, &into).await;
    let captured = std::mem::take(&mut *lock(&into));
    captured
}

/// What a pipe yielded by `deadline`, and whether it was still open then. A reader still
/// going is left to drain the pipe into the void (closing it would kill the process that
/// holds it with SIGPIPE at its next write, and that process is no longer the job's): what it
/// reads later goes to a buffer nobody reads, bounded as before.
async fn collect(reading: Option<Reading>, deadline: tokio::time::Instant) -> (Captured, bool) {
    let Some(Reading { task, captured }) = reading else {
        return (Captured::default(), false);
    };
    let held_open = tokio::time::timeout_at(deadline, task).await.is_err();
    let output = std::mem::take(&mut *lock(&captured));
    (output, held_open)
}

/// The job's result from its stdout ([`result_from_stdout`]), or, when the server would
/// refuse it for its size, why: the attempt then fails with that, once, instead of with
/// a refusal of the complete.
fn result_of(stdout: &Captured) -> Result<RawJson, String> {
    let result_bytes_max = rota_core::jobs::limits::RESULT_BYTES_MAX;
    if stdout.overflowed {
        return Err(format!(
            "stdout is over {STDOUT_BYTES_MAX} bytes; the result limit is {result_bytes_max} bytes \
             (of JSON without the whitespace between its tokens)"
        ));
    }
    let (result, is_json) = parse_stdout(&stdout.bytes);
    // As the server measures it: without the whitespace between tokens.
    let bytes = rota_core::jobs::compact_json(result.get()).map_or(result.get().len(), |compact| compact.len());
    if bytes > result_bytes_max {
        return Err(if !is_json {
            format!("stdout is not JSON and is {bytes} bytes as a JSON string, over the {result_bytes_max} byte result limit")
        } else {
            format!(
                "the result is {bytes} bytes without the whitespace between its tokens, over the \
                 {result_bytes_max} byte result limit"
            )
        });
    }
    Ok(result)
}

/// stdout as the job's result: if it is JSON the server takes (surrounding whitespace
/// allowed), its text as written (not re-encoded: key order and big numbers stay); else
/// (not JSON, or JSON the server refuses such as `1e400` or nesting deeper than its limit)
/// the text as a JSON string without its final newline; empty stdout is `null`.
#[cfg(test)]
fn result_from_stdout(stdout: &[u8]) -> RawJson {
    parse_stdout(stdout).0
}

/// [`result_from_stdout`], and whether stdout was JSON (or empty).
fn parse_stdout(stdout: &[u8]) -> (RawJson, bool) {
    let text = String::from_utf8_lossy(stdout);
    if text.trim().is_empty() {
        return (RawJson::null(), true);
    }
    match RawJson::from_text(text.trim()) {
        Ok(json) => (json, true),
        Err(_) => {
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            (RawJson::from(serde_json::Value::String(text.to_string())), false)
        }
    }
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// `exit status 3: <the last 4 KiB of stderr>`, at most [`STDERR_TAIL_BYTES`] of it even
/// after invalid UTF-8 was replaced.
fn failure_text(status: &str, stderr_tail: &[u8]) -> String {
    let tail = String::from_utf8_lossy(stderr_tail);
    let mut tail = tail.trim_end();
    while tail.len() > STDERR_TAIL_BYTES {
        let mut cut = tail.len() - STDERR_TAIL_BYTES;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = &tail[cut..];
    }
    if tail.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {tail}")
    }
}

fn one_line(text: &str) -> String {
    crate::job_cli::brief_error(text, 120)
}

/// Resolves when the phase reaches `target` (never, if the sender is gone first).
async fn wait_for_phase(mut phase: watch::Receiver<Phase>, target: Phase) {
    if phase.wait_for(|now| *now >= target).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn pause_unless_stopping(phase: &mut watch::Receiver<Phase>, pause: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(pause) => {}
        _ = phase.wait_for(|now| *now != Phase::Running) => {}
    }
}

/// What the signal handler needs to know to stop the worker and to say what stopping takes.
struct Stopping {
    grace: Duration,
    /// How long a lease request out at the signal is awaited.
    answer_bound: Duration,
    worker_id: String,
    activity: Arc<Activity>,
}

impl Stopping {
    /// The line logged at the first signal: what the worker waits for before it exits.
    fn notice(&self) -> String {
        let holding = self.activity.holding.load(Ordering::SeqCst);
        let running = self.activity.running.load(Ordering::SeqCst).saturating_sub(holding);
        let mut line = String::from("stopping: no new jobs");
        if running > 0 {
            line += &format!(
                "; {running} running job(s) get {} to finish (a second signal ends them now)",
                duration_for_people(self.grace)
            );
        }
        if holding > 0 {
            line += &format!(
                "; {holding} killed job(s) hold their concurrency slot until their leases end (a second \
                 signal stops waiting and leaves the leases to run out)"
            );
        }
        if self.activity.leasing.load(Ordering::SeqCst) {
            line += &format!(
                "; the lease request out is awaited (at most {}) and any job it brings released",
                duration_for_people(self.answer_bound)
            );
        }
        line
    }
}

/// First SIGTERM/SIGINT/SIGHUP: drain, and kill after `grace`. A second one: kill now. Each
/// is counted: one after the first also ends the waits of [`hold_slot_after_kill`].
/// SIGHUP (the terminal or SSH session went away) is a request to stop like the others,
/// not a reason to drop running jobs on the floor; under `nohup` it stays ignored.
fn watch_signals(phase: watch::Sender<Phase>, stop: Stopping) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = crate::signals::hangup()?;
    tokio::spawn(async move {
        let counted = |signals: &watch::Sender<u32>| signals.send_modify(|count| *count += 1);
        next_stop_signal(&mut terminate, &mut interrupt, &mut hangup).await;
        counted(&stop.activity.signals);
        log_line(format_args!("rota worker {}: {}", stop.worker_id, stop.notice()));
        phase.send_replace(Phase::Draining);
        tokio::select! {
            _ = tokio::time::sleep(stop.grace) => {}
            () = next_stop_signal(&mut terminate, &mut interrupt, &mut hangup) => counted(&stop.activity.signals),
        }
        phase.send_replace(Phase::Killing);
        loop {
            next_stop_signal(&mut terminate, &mut interrupt, &mut hangup).await;
            counted(&stop.activity.signals);
        }
    });
    Ok(())
}

async fn next_stop_signal(
    terminate: &mut tokio::signal::unix::Signal,
    interrupt: &mut tokio::signal::unix::Signal,
    hangup: &mut Option<tokio::signal::unix::Signal>,
) {
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
        () = crate::signals::next_hangup(hangup) => {}
    }
}

/// One line to stderr, after the time (UTC, to the millisecond), so that an outage's lines
/// can be put next to the servers' logs. Unlike `eprintln!`, never panics: after SIGHUP the
/// terminal may be gone (writes fail with EIO), and the worker must still drain and release
/// its jobs.
fn log_line(line: std::fmt::Arguments<'_>) {
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
    let _ = writeln!(std::io::stderr().lock(), "{now} {line}");
}

/// The error of an attempt whose command the supervisor killed at the lease deadline.
const LEASE_ENDED_ERROR: &str =
    "killed: the lease ended before the job finished (no heartbeat got through)";

/// How long before the lease's end the command is killed: [`LEASE_MARGIN_MAX`], or a tenth
/// of a short ttl (heartbeats come every third of it, so a renewal normally arrives with
/// over half the ttl to spare).
fn lease_margin(lease_ttl: Duration) -> Duration {
    (lease_ttl / 10).min(LEASE_MARGIN_MAX)
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn unix_ms(time: std::time::SystemTime) -> i64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, duration_ms)
}

/// The supervisor's deadline (ms since the Unix epoch) for a lease ending at `expires_at`
/// (the server's RFC 3339 time): `margin` earlier. `None` if the time does not parse.
fn deadline_before(expires_at: &str, margin: Duration) -> Option<i64> {
    let expires_at = humantime::parse_rfc3339_weak(expires_at).ok()?;
    Some(unix_ms(expires_at) - duration_ms(margin))
}

fn supervisor_deadline_ms(context: &Context, expires_at: &str) -> Option<i64> {
    deadline_before(expires_at, context.lease_margin)
}

/// Gives the supervisor `pid` (unless already reaped) its new deadline. The deadline is
/// absolute, so a worker frozen between the heartbeat's answer and this signal cannot make
/// it later than the server said.
fn tell_supervisor(pid: Option<u32>, deadline_ms: i64) {
    let Some(pid) = pid.and_then(|pid| libc::pid_t::try_from(pid).ok()) else {
        return;
    };
    let value = libc::sigval {
        sival_ptr: deadline_ms as usize as *mut libc::c_void,
    };
    // SAFETY: sigqueue takes plain values; the pointer is a number here, never dereferenced.
    // The pid is our own unreaped child's, so it cannot name another process.
    unsafe {
        libc::sigqueue(pid, job_supervisor::RENEWED_SIGNAL, value);
    }
}

/// When the supervisor killed the command at the lease deadline: the stderr before its
/// notice (the command's own tail).
fn lease_ended<'a>(context: &Context, status: ExitStatus, stderr: &'a [u8]) -> Option<&'a [u8]> {
    if status.code() != Some(i32::from(job_supervisor::EXIT_LEASE_ENDED)) {
        return None;
    }
    let notice = format!(
        "\n{}{}\n",
        context.start_error_marker,
        job_supervisor::LEASE_ENDED
    );
    stderr.strip_suffix(notice.as_bytes())
}

/// `rota __job-supervisor WORKER_PID MARKER LEASE_DEADLINE_MS CMD ARGS...` (see
/// [`job_supervisor`]). No `pre_exec` here, so std can still spawn it with posix_spawn
/// (vfork) rather than fork the worker.
fn supervised_command(context: &Context, lease_deadline_ms: i64) -> Command {
    // /proc/self/exe is resolved in the new process, whose executable is still this one: it
    // works even if the file was replaced or deleted since the worker started.
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0("rota")
        .arg(job_supervisor::SUBCOMMAND)
        .arg(context.worker_pid.to_string())
        .arg(&context.start_error_marker)
        .arg(lease_deadline_ms.to_string())
        .args(&context.command);
    command
}

/// The reason a job supervisor gave for not starting the command: all it wrote to stderr,
/// after the marker, and exit status [`job_supervisor::EXIT_CANNOT_START`]. The command
/// never ran then, so nothing else can be in that stderr.
fn start_error(context: &Context, status: ExitStatus, stderr: &[u8]) -> Option<String> {
    if status.code() != Some(i32::from(job_supervisor::EXIT_CANNOT_START)) {
        return None;
    }
    let reason = stderr.strip_prefix(context.start_error_marker.as_bytes())?;
    Some(String::from_utf8_lossy(reason).trim_end().to_string())
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".to_string());
    format!("{host}/{}", std::process::id())
}

/// SIGKILLs the process group led by the command (`pid` = its group id).
fn kill_group(pid: Option<u32>) {
    let Some(group) = pid
        .and_then(|pid| i32::try_from(pid).ok())
        .filter(|pid| *pid > 1)
    else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names the group our
    // own child leads (it was spawned with process_group(0)).
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_ttl_shorter_than_a_worker_can_use_is_refused() {
        let error = parse_lease_ttl("1ms").unwrap_err();
        assert!(error.starts_with("1ms is too short for a worker"), "{error}");
        assert!(error.ends_with("at least 100ms"), "{error}");
        assert_eq!(parse_lease_ttl("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_lease_ttl("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_lease_ttl("25h").unwrap_err(), "25h is over 24h (the server's bound)");
    }

    #[test]
    fn stdout_becomes_json_when_it_parses_else_a_string() {
        let result = |stdout: &[u8]| result_from_stdout(stdout).get().to_string();
        assert_eq!(result(b"{\"a\": 1}\n"), r#"{"a": 1}"#);
        assert_eq!(result(b" 42 "), "42");
        assert_eq!(result(b"hello\n"), r#""hello""#);
        assert_eq!(result(b"two\nlines\n"), r#""two\nlines""#);
        assert_eq!(result(b"say \"hi\"\r\n"), r#""say \"hi\"""#);
        assert_eq!(result(b""), "null");
        assert_eq!(result(b" \n"), "null");
        // Numbers beyond a double's range are not JSON the server takes: text, as before.
        assert_eq!(result(b"1e400\n"), r#""1e400""#);
    }

    #[test]
    fn stdout_nested_deeper_than_the_server_takes_is_a_string() {
        let depth_max = rota_core::jobs::limits::JSON_DEPTH_MAX;
        let nested = |depth: usize| format!("{}{}\n", "[".repeat(depth), "]".repeat(depth));
        let deepest = nested(depth_max);
        assert_eq!(result_from_stdout(deepest.as_bytes()).get(), deepest.trim());
        let too_deep = nested(depth_max + 1);
        assert_eq!(
            result_from_stdout(too_deep.as_bytes()).get(),
            format!("\"{}\"", too_deep.trim())
        );
    }

    #[test]
    fn stdout_over_the_result_limit_fails_the_attempt_saying_so() {
        let limit = rota_core::jobs::limits::RESULT_BYTES_MAX;
        let captured = |bytes: Vec<u8>, overflowed| Captured { bytes, overflowed };
        let error = result_of(&captured(vec![b'1'; STDOUT_BYTES_MAX], true)).expect_err("overflowed");
        assert_eq!(
            error,
            format!(
                "stdout is over {STDOUT_BYTES_MAX} bytes; the result limit is {limit} bytes (of JSON \
                 without the whitespace between its tokens)"
            )
        );
        let array = format!("[{}]", vec!["1"; limit / 2].join(","));
        assert_eq!(array.len(), limit + 1);
        let error = result_of(&captured(array.into_bytes(), false)).expect_err("an array too long");
        assert_eq!(
            error,
            format!("the result is {} bytes without the whitespace between its tokens, over the {limit} byte result limit", limit + 1)
        );
        // Within the limit as text, over it once every quote is escaped.
        let quotes = captured(vec![b'"'; limit / 2 + 1], false);
        let error = result_of(&quotes).expect_err("escaped");
        assert!(error.starts_with("stdout is not JSON and is "), "{error}");
        assert!(
            error.ends_with(&format!("over the {limit} byte result limit")),
            "{error}"
        );
        let fits = captured(vec![b'x'; limit - 2], false);
        assert_eq!(result_of(&fits).map(|json| json.get().len()), Ok(limit));
        // Measured as the server measures it: pretty-printed JSON (as `jq .` prints) twice
        // the limit, and a JSON string of exactly the limit with print()'s newline, fit.
        let items = limit / 4;
        let pretty = format!("[\n{}\n]\n", vec!["  1"; items].join(",\n"));
        assert!(pretty.len() > limit && items * 2 < limit);
        assert!(result_of(&captured(pretty.into_bytes(), false)).is_ok());
        let string = format!("\"{}\"\n", "s".repeat(limit - 2));
        assert_eq!(result_of(&captured(string.into_bytes(), false)).map(|json| json.get().len()), Ok(limit));
    }

    #[test]
    fn json_stdout_is_the_result_as_written() {
        let stdout = "\n {\"z\":1,\"a\":123456789012345678901234567890,\"f\":1.0,\"e\":1E2}\n";
        assert_eq!(
            result_from_stdout(stdout.as_bytes()).get(),
            stdout.trim(),
            "keys unsorted, the big integer whole, the numbers spelt as written"
        );
    }

    #[test]
    fn failure_text_keeps_the_end_of_stderr_within_the_bound() {
        assert_eq!(failure_text("exit status 3", b""), "exit status 3");
        assert_eq!(
            failure_text("exit status 3", b"boom\n"),
            "exit status 3: boom"
        );
        let long: Vec<u8> = std::iter::repeat_n(0xffu8, STDERR_TAIL_BYTES).collect();
        let text = failure_text("exit status 1", &long);
        assert!(
            text.len() <= STDERR_TAIL_BYTES + "exit status 1: ".len(),
            "{}",
            text.len()
        );
    }

    #[tokio::test]
    async fn captured_output_is_bounded_at_the_head_or_the_tail() {
        let data: Vec<u8> = (0..100u8).collect();
        let head = read_all(&data[..], Keep::Head(10)).await;
        assert_eq!(head.bytes, (0..10u8).collect::<Vec<_>>());
        assert!(head.overflowed);
        let tail = read_all(&data[..], Keep::Tail(10)).await;
        assert_eq!(tail.bytes, (90..100u8).collect::<Vec<_>>());
        let small = read_all(&data[..5], Keep::Head(10)).await;
        assert!(!small.overflowed);
    }
}
