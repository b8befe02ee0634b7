//! `rota queue ...` and `rota job ...`: the `/v1` job API from the command line, through
//! `rota-client` (which retries unreachable endpoints with one idempotency key per command,
//! so a command that rides out a server restart never applies twice).
//!
//! Output: a readable line, block or table on stdout by default; `-o json` prints the
//! server's JSON, one object per line. Errors go to stderr as `Error:  <message>`, and so
//! does, at once, a line saying the command is retrying when no endpoint answers (a wrong
//! `--endpoints` must not look like a hang for `--retry-for`). Exit status: 0 success,
//! 1 bad arguments or an unexpected answer, 2 no endpoint reachable, 3 a `--wait` ended
//! without the job having succeeded (it is dead, cancelled, or still unfinished), 4 the
//! server refused the request.
//!
//! Payloads and results are JSON text ([`RawJson`]) from end to end: `job submit` checks
//! that the payload is JSON and sends its text unchanged (key order, big integers, number
//! spelling), so the same command with the same `--idempotency-key` is the same request
//! every time, and the same as a `curl` of that payload; `job get` and `job ls` print the
//! text the server sent.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use rota_client::jobs::{
    self, Backoff, BackoffPatch, Job, JobFilter, JobId, JobState, JobsError, NewJob, Queue,
    QueueConfig, QueuePatch, Rate, RatePatch, RawJson,
};
use rota_client::{Client, Reachability};

pub const EXIT_BAD_ARGS: u8 = 1;
pub const EXIT_UNREACHABLE: u8 = 2;
pub const EXIT_NOT_SUCCEEDED: u8 = 3;
pub const EXIT_SERVER_ERROR: u8 = 4;

/// Largest payload read from a file or stdin (the server's own limit is 256 KiB; a little
/// more lets the server, not the CLI, say what is wrong with an oversized one).
const PAYLOAD_BYTES_MAX: u64 = 1 << 20;
/// `--wait` without a value waits this long at most.
const WAIT_DEFAULT: &str = "24h";

/// Flags shared by every client command, before or after the subcommand.
#[derive(Debug, Args)]
pub struct ClientFlags {
    /// Comma-separated client URLs, tried in order.
    #[arg(
        long,
        global = true,
        env = "ROTA_ENDPOINTS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// How long to keep retrying when no endpoint answers (e.g. during a server restart).
    #[arg(long, global = true, value_parser = parse_duration, default_value = "30s", allow_hyphen_values = true)]
    pub retry_for: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Lines and tables for people.
    Table,
    /// The objects as JSON, one per line (the server's fields in its order; payloads and
    /// results as the server sent them).
    Json,
}

#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(flatten)]
    pub flags: ClientFlags,
    #[command(subcommand)]
    pub command: QueueCommand,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Create a queue or change the settings given (the others keep their current values).
    Set(QueueSet),
    /// List the queues with their job counts.
    Ls {
        /// Read from the member reached, without a quorum (e.g. after losing a majority):
        /// what it holds, perhaps behind the leader.
        #[arg(long)]
        local: bool,
    },
    /// Show one queue's settings, job counts and rate tokens.
    Stats {
        /// The queue's name.
        queue: String,
        /// Read from the member reached, without a quorum (e.g. after losing a majority):
        /// what it holds, perhaps behind the leader.
        #[arg(long)]
        local: bool,
    },
    /// Queue the queue's dead jobs again (oldest first), each with a fresh allowance of
    /// attempts: all of them, in rounds of up to 1,000, or the oldest --max.
    Retry {
        /// The queue's name.
        queue: String,
        /// At most this many.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..), allow_hyphen_values = true)]
        max: Option<u64>,
    },
    /// Delete a queue and all its jobs.
    Rm {
        /// The queue's name.
        queue: String,
        /// Also while it has scheduled or queued jobs (never while jobs are leased: cancel
        /// them and wait for their workers to let go).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct QueueSet {
    /// The queue's name.
    pub queue: String,
    /// Jobs leased at once, cluster-wide.
    #[arg(long, conflicts_with = "unlimited", allow_hyphen_values = true, value_parser = parse_count::<u64>)]
    pub concurrency: Option<u64>,
    /// No concurrency limit.
    #[arg(long)]
    pub unlimited: bool,
    /// Rate limit: LIMIT/PER, e.g. `5/1s`, `5/s`, `100/1m`.
    #[arg(long, value_parser = parse_rate, conflicts_with = "no_rate", allow_hyphen_values = true)]
    pub rate: Option<(u64, Duration)>,
    /// Tokens the rate bucket holds (default: the rate's limit, also when --rate replaces a
    /// rate that had another burst).
    #[arg(long, allow_hyphen_values = true, value_parser = parse_count::<u64>)]
    pub burst: Option<u64>,
    /// No rate limit.
    #[arg(long)]
    pub no_rate: bool,
    /// How long a lease lasts without a heartbeat.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub lease_ttl: Option<Duration>,
    /// Attempts given to each new job.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_count::<u32>)]
    pub max_attempts: Option<u32>,
    /// Delay before the first retry (doubling after each failed attempt).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub backoff_base: Option<Duration>,
    /// Longest delay between retries.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub backoff_max: Option<Duration>,
    /// How long finished jobs are kept.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub retention: Option<Duration>,
    /// Lease nothing until resumed.
    #[arg(long, conflicts_with = "resume")]
    pub paused: bool,
    /// Lease again.
    #[arg(long)]
    pub resume: bool,
    /// Start from the defaults instead of the queue's current settings.
    #[arg(long)]
    pub reset: bool,
}

#[derive(Debug, Args)]
pub struct JobArgs {
    #[command(flatten)]
    pub flags: ClientFlags,
    #[command(subcommand)]
    pub command: JobCommand,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job; the payload is --payload, --payload-file, or stdin.
    Submit(JobSubmit),
    /// Show a job (with --wait, once it has finished).
    Get {
        /// The job's id.
        id: JobId,
        /// Wait until the job has finished, at most this long (`--wait=30s`; bare: 24h).
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = WAIT_DEFAULT, value_parser = parse_duration)]
        wait: Option<Duration>,
        /// Read from the member reached, without a quorum (e.g. after losing a majority):
        /// what it holds, perhaps behind the leader.
        #[arg(long)]
        local: bool,
    },
    /// List a queue's jobs, ids ascending, one page at a time.
    Ls {
        /// The queue's name.
        queue: String,
        /// Only jobs in this state.
        #[arg(long)]
        state: Option<JobState>,
        /// Jobs per page (server's default 100, at most 1000).
        #[arg(long)]
        limit: Option<u32>,
        /// Start after this job id (the `next` of the previous page).
        #[arg(long)]
        after: Option<JobId>,
        /// Read from the member reached, without a quorum (e.g. after losing a majority):
        /// what it holds, perhaps behind the leader.
        #[arg(long)]
        local: bool,
    },
    /// Cancel scheduled, queued or leased jobs.
    Cancel {
        /// The jobs' ids.
        #[arg(required = true, num_args = 1..)]
        ids: Vec<JobId>,
    },
    /// Queue dead jobs again, each with a fresh allowance of attempts (a queue's dead jobs
    /// all at once: `rota queue retry QUEUE`).
    Retry {
        /// The jobs' ids.
        #[arg(required = true, num_args = 1..)]
        ids: Vec<JobId>,
    },
}

#[derive(Debug, Args)]
pub struct JobSubmit {
    /// The queue's name.
    pub queue: String,
    /// The payload as JSON text (sent as written).
    #[arg(long, conflicts_with = "payload_file", allow_negative_numbers = true)]
    pub payload: Option<String>,
    /// Read the payload JSON from this file (`-` for stdin).
    #[arg(long)]
    pub payload_file: Option<std::path::PathBuf>,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i64,
    /// Run no earlier than this from now.
    #[arg(long, value_parser = parse_duration, conflicts_with = "run_at", allow_hyphen_values = true)]
    pub delay: Option<Duration>,
    /// Run no earlier than this time: RFC 3339 with Z or an offset (2026-01-02T03:04:05Z,
    /// 2026-01-02T05:04:05+02:00); a time without one is refused.
    #[arg(long)]
    pub run_at: Option<String>,
    /// Attempts for this job (default: the queue's).
    #[arg(long, allow_hyphen_values = true, value_parser = parse_count::<u32>)]
    pub max_attempts: Option<u32>,
    /// Wait for the job to finish, at most this long (`--wait=30s`; bare: 24h).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = WAIT_DEFAULT, value_parser = parse_duration)]
    pub wait: Option<Duration>,
    /// Use this idempotency key (default: a fresh one): re-running the same command with the
    /// same key gives the same job instead of a second one.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

/// A humantime duration in whole milliseconds: `500ms`, `30s`, `1h30m`. A fraction of a
/// millisecond (`1500us`) is refused, as the server refuses it, instead of being rounded
/// down to something the user did not write (`--lease-ttl 1500us` was 1 ms).
/// A count flag's value: a whole number (the server checks its range, with the range in
/// its answer). `-1` is refused here as a number, not as an unknown flag.
fn parse_count<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.trim().parse().map_err(|_| format!("{text:?} is not a whole number"))
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim().starts_with('-') {
        return Err(format!("{text:?}: a duration cannot be negative (write durations like 500ms, 30s, 5m, 1h)"));
    }
    let duration = humantime::parse_duration(text.trim())
        .map_err(|error| format!("{error} (write durations like 500ms, 30s, 5m, 1h)"))?;
    if duration.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!(
            "{text:?} is not a whole number of milliseconds (write durations like 500ms, 30s, 5m, 1h)"
        ));
    }
    Ok(duration)
}

/// `5/1s`, `5/s`, `100/1m`: a limit and the period it refills in.
fn parse_rate(text: &str) -> Result<(u64, Duration), String> {
    let (limit, per) = text
        .split_once('/')
        .ok_or_else(|| format!("rate {text:?}: expected LIMIT/PER, e.g. 5/1s"))?;
    let limit: u64 = limit
        .trim()
        .parse()
        .map_err(|_| format!("rate {text:?}: the limit must be a whole number"))?;
    let per = per.trim();
    let per = if per.starts_with(|c: char| c.is_ascii_digit()) {
        parse_duration(per)?
    } else {
        parse_duration(&format!("1{per}"))?
    };
    if per.is_zero() {
        return Err(format!("rate {text:?}: the period must be more than zero"));
    }
    Ok((limit, per))
}

/// Turns a client error into the message and exit status every client command uses.
pub fn report_error(error: &JobsError) -> ExitCode {
    eprintln!("Error:  {error}");
    if let JobsError::Unavailable(unreachable) = error {
        if unreachable.maybe_applied {
            eprintln!(
                "(a member took the request but could not say whether it was applied: it may have been, \
                 or may be once a leader commits it; look before doing it again)"
            );
        }
        let no_leader = |failure: &rota_client::EndpointFailure| failure.error.contains("no_leader");
        if !unreachable.failures.is_empty() && unreachable.failures.iter().all(no_leader) {
            eprintln!(
                "(the members answered but know no leader: a majority may be down; `--local` on `job get|ls` and \
                 `queue ls|stats` reads what the member reached holds)"
            );
        }
    }
    ExitCode::from(match error {
        JobsError::Api(_) => EXIT_SERVER_ERROR,
        JobsError::Unavailable { .. } => EXIT_UNREACHABLE,
        _ => EXIT_BAD_ARGS,
    })
}

fn connect(flags: &ClientFlags) -> Result<Client, ExitCode> {
    jobs::set_v1_retry_for(flags.retry_for);
    let client = Client::new(flags.endpoints.split(',')).map_err(|error| {
        eprintln!("Error:  {error}");
        ExitCode::from(EXIT_BAD_ARGS)
    })?;
    Ok(client.on_reachability(say_retrying))
}

/// Says on stderr, when a command first finds no endpoint answering, what failed and that it
/// retries (stdout stays the answer's alone). The client tells this once per outage.
fn say_retrying(event: Reachability<'_>) {
    match event {
        Reachability::Lost { unreachable, retry_for } => {
            let _ = writeln!(
                std::io::stderr(),
                "rota: no answer from {unreachable}; retrying for up to {} (--retry-for)",
                duration_for_people(retry_for)
            );
        }
        Reachability::Switched { from, error, to } => {
            let _ = writeln!(std::io::stderr(), "rota: {from} did not answer ({error}); going on with {to}");
        }
        Reachability::Regained { .. } => {}
    }
}

/// A duration for a message, in the units a person writes: `25h`, `1h30m`, `500ms`, `30s`
/// (the wire form, [`jobs::duration_text`], is seconds or milliseconds only).
pub fn duration_for_people(duration: Duration) -> String {
    rota_core::jobs::format_duration_ms(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

pub async fn run_queue(args: QueueArgs) -> ExitCode {
    let local = matches!(args.command, QueueCommand::Ls { local: true } | QueueCommand::Stats { local: true, .. });
    let client = match connect(&args.flags) {
        Ok(client) => client.local_reads(local),
        Err(code) => return code,
    };
    let output = args.flags.output;
    let outcome = match args.command {
        QueueCommand::Set(set) => queue_set(&client, set)
            .await
            .map(|queue| print_queue(&queue, output)),
        QueueCommand::Ls { .. } => client
            .list_queues()
            .await
            .map(|queues| print_queues(&queues, output)),
        QueueCommand::Stats { queue, .. } => client
            .get_queue(&queue)
            .await
            .map(|queue| print_queue(&queue, output)),
        QueueCommand::Retry { queue, max } => queue_retry(&client, &queue, max, output).await,
        QueueCommand::Rm { queue, force } => {
            client
                .delete_queue(&queue, force)
                .await
                .map(|deleted| match output {
                    Output::Json => println!("{}", json_line(serde_json::to_string(&deleted))),
                    Output::Table => println!(
                        "queue {} deleted with {} jobs",
                        deleted.queue, deleted.jobs_removed
                    ),
                })
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report_error(&error),
    }
}

/// `rota queue retry`: rounds of `POST /v1/queues/{q}/retry`, each after the last id the
/// one before took, until no dead job follows it or `max` were queued again. A job that
/// dies again meanwhile has an id already passed, so it is not taken twice (and is counted
/// in the dead left at the end).
async fn queue_retry(client: &Client, queue: &str, max: Option<u64>, output: Output) -> Result<(), JobsError> {
    const ROUND_MAX: u64 = 1_000;
    let mut retried = 0u64;
    let mut after = None;
    let mut dead;
    loop {
        let round = max.map_or(ROUND_MAX, |max| (max - retried).min(ROUND_MAX));
        let answer = client.retry_dead(queue, Some(round as u32), after).await?;
        let count = answer.retried.len() as u64;
        retried += count;
        dead = answer.dead;
        after = answer.retried.last().copied().or(after);
        if count < round || max.is_some_and(|max| retried >= max) {
            break;
        }
        if output == Output::Table {
            eprintln!("queued again {retried} so far; {dead} still dead");
        }
    }
    match output {
        // In the documented order (json! would sort the keys).
        Output::Json => println!(
            "{{\"queue\":{},\"retried\":{retried},\"dead\":{dead}}}",
            serde_json::Value::from(queue)
        ),
        Output::Table => println!(
            "queue {queue}: {retried} dead job{} queued again; {dead} still dead",
            if retried == 1 { "" } else { "s" }
        ),
    }
    Ok(())
}

/// Changes the settings given and keeps the others: one `PATCH`, merged by the server
/// against the queue's settings when it applies, so two `queue set` of different settings
/// at the same moment both take effect. `--reset` replaces the whole configuration with the
/// defaults plus the settings given (`PUT`).
async fn queue_set(client: &Client, set: QueueSet) -> Result<Queue, JobsError> {
    let burst_needs_rate = || JobsError::Client("--burst needs a rate: give --rate too".into());
    if set.burst.is_some() && set.rate.is_none() && (set.no_rate || set.reset) {
        return Err(burst_needs_rate());
    }
    let patch = queue_patch(&set);
    if set.reset {
        return client.put_queue(&set.queue, &reset_config(patch)).await;
    }
    match client.patch_queue(&set.queue, &patch).await {
        // `--burst` alone changes the queue's rate, and this queue has none.
        Err(JobsError::Api(error))
            if set.burst.is_some()
                && set.rate.is_none()
                && error.field.as_deref() == Some("rate.limit") =>
        {
            Err(burst_needs_rate())
        }
        other => other,
    }
}

/// The settings given on the command line, as a patch.
fn queue_patch(set: &QueueSet) -> QueuePatch {
    let concurrency = match (set.unlimited, set.concurrency) {
        (true, _) => Some(None),
        (false, Some(concurrency)) => Some(Some(concurrency)),
        (false, None) => None,
    };
    let rate = match (set.no_rate, set.rate, set.burst) {
        (true, _, _) => Some(None),
        // Without --burst the server makes the burst the new limit.
        (false, Some((limit, per)), burst) => Some(Some(RatePatch {
            limit: Some(limit),
            per: Some(jobs::duration_text(per)),
            burst,
        })),
        (false, None, Some(burst)) => Some(Some(RatePatch {
            burst: Some(burst),
            ..RatePatch::default()
        })),
        (false, None, None) => None,
    };
    let backoff = (set.backoff_base.is_some() || set.backoff_max.is_some()).then(|| BackoffPatch {
        base: set.backoff_base.map(jobs::duration_text),
        max: set.backoff_max.map(jobs::duration_text),
    });
    let paused = match (set.paused, set.resume) {
        (true, _) => Some(true),
        (false, true) => Some(false),
        (false, false) => None,
    };
    QueuePatch {
        concurrency,
        rate,
        lease_ttl: set.lease_ttl.map(jobs::duration_text),
        max_attempts: set.max_attempts,
        backoff,
        retention: set.retention.map(jobs::duration_text),
        paused,
    }
}

/// `--reset`: the defaults with `patch` applied (a `--burst` without `--rate` was refused
/// before). A backoff base over the default max raises the max to it, as the server does.
fn reset_config(patch: QueuePatch) -> QueueConfig {
    let rate = patch.rate.flatten().and_then(|rate| {
        let limit = rate.limit?;
        Some(Rate {
            limit,
            per: rate.per?,
            burst: rate.burst.unwrap_or(limit),
        })
    });
    let backoff = patch.backoff.map(|backoff| {
        let base = backoff.base.unwrap_or_else(|| "1s".into());
        let max = backoff.max.unwrap_or_else(|| {
            let over_default =
                humantime::parse_duration(&base).is_ok_and(|base| base > Duration::from_secs(3600));
            if over_default {
                base.clone()
            } else {
                "1h".into()
            }
        });
        Backoff { base, max }
    });
    QueueConfig {
        concurrency: patch.concurrency.flatten(),
        rate,
        lease_ttl: patch.lease_ttl,
        max_attempts: patch.max_attempts,
        backoff,
        retention: patch.retention,
        paused: patch.paused,
    }
}

pub async fn run_job(args: JobArgs) -> ExitCode {
    let local = matches!(args.command, JobCommand::Get { local: true, .. } | JobCommand::Ls { local: true, .. });
    let client = match connect(&args.flags) {
        Ok(client) => client.local_reads(local),
        Err(code) => return code,
    };
    let output = args.flags.output;
    let outcome = match args.command {
        JobCommand::Submit(submit) => job_submit(&client, submit, output).await,
        JobCommand::Get { id, wait, .. } => {
            let job = match wait {
                Some(wait) => client.wait_job(id, wait).await,
                None => client.get_job(id).await,
            };
            job.map(|job| {
                print_job(&job, output);
                waited_exit(&job, wait.is_some())
            })
        }
        JobCommand::Ls {
            queue,
            state,
            limit,
            after,
            ..
        } => client
            .list_jobs(
                &queue,
                &JobFilter {
                    state,
                    limit,
                    after,
                },
            )
            .await
            .map(|page| {
                print_jobs(&page.jobs, page.next, output);
                ExitCode::SUCCESS
            }),
        JobCommand::Cancel { ids } => {
            let client = &client;
            return for_each_job(&ids, |id| async move {
                let job = client.cancel_job(id).await?;
                print_job(&job, output);
                if let (Some(worker), Some(expires)) = (&job.worker, &job.lease_expires_at) {
                    // Said on stderr: the job's JSON on stdout stays as the server gave it.
                    eprintln!(
                        "job {id} was running on {worker}: it stops the job at its next heartbeat; on a queue \
                         with a concurrency limit the job's slot stays taken until that worker lets go or its \
                         lease ends ({expires})"
                    );
                }
                Ok(())
            })
            .await
        }
        JobCommand::Retry { ids } => {
            let client = &client;
            return for_each_job(&ids, |id| async move {
                print_job(&client.retry_job(id).await?, output);
                Ok(())
            })
            .await
        }
    };
    match outcome {
        Ok(code) => code,
        Err(error) => report_error(&error),
    }
}

/// Runs `each` for every id in turn. A refusal is reported and the others still go; the
/// exit status is the first failure's (an unreachable cluster stops the rest: they would
/// wait out the same retry budget one by one).
async fn for_each_job<F, Fut>(ids: &[JobId], each: F) -> ExitCode
where
    F: Fn(JobId) -> Fut,
    Fut: std::future::Future<Output = Result<(), JobsError>>,
{
    let mut first_failure = None;
    for &id in ids {
        if let Err(error) = each(id).await {
            if ids.len() > 1 {
                eprint!("job {id}: ");
            }
            first_failure.get_or_insert(report_error(&error));
            if matches!(error, JobsError::Unavailable(_)) {
                break;
            }
        }
    }
    first_failure.unwrap_or(ExitCode::SUCCESS)
}

async fn job_submit(
    client: &Client,
    submit: JobSubmit,
    output: Output,
) -> Result<ExitCode, JobsError> {
    // The server refuses the same text; refusing here says it in the flag's own words.
    if let Some(run_at) = &submit.run_at {
        rota_core::jobs::parse_rfc3339_ms(run_at)
            .map_err(|error| JobsError::Client(format!("--run-at {run_at:?}: {error}")))?;
    }
    let payload = read_payload(&submit).map_err(JobsError::Client)?;
    let job = NewJob {
        payload,
        priority: submit.priority,
        delay: submit.delay,
        run_at: submit.run_at.clone(),
        max_attempts: submit.max_attempts,
    };
    let key = submit
        .idempotency_key
        .clone()
        .unwrap_or_else(rota_client::idempotency_key);
    let mut submitted = match client.submit_keyed(&key, &submit.queue, &job, None).await {
        Ok(submitted) => submitted,
        Err(JobsError::Unavailable(unreachable)) if unreachable.maybe_applied => {
            // Said before the error: the key is the way to learn the outcome without a
            // second job.
            eprintln!(
                "rota: the job may have been submitted; run the same command with --idempotency-key {key} \
                 to get it (and not a second one) once the cluster answers"
            );
            return Err(JobsError::Unavailable(unreachable));
        }
        Err(error) => return Err(error),
    };
    let replayed = if submitted.replayed {
        " (replayed: submitted before with this key)"
    } else {
        ""
    };
    if let Some(wait) = submit.wait {
        // Named first, so that a wait cut short (Ctrl-C) leaves the job's id behind.
        if !submitted.job.state.is_terminal() {
            eprintln!(
                "job {} {} in {}{replayed}; waiting up to {} for it to finish",
                submitted.job.id,
                submitted.job.state,
                submitted.job.queue,
                duration_for_people(wait)
            );
            submitted.job = client.wait_job(submitted.job.id, wait).await?;
        }
    }
    let job = &submitted.job;
    match output {
        Output::Json => println!("{}", json_line(serde_json::to_string(job))),
        Output::Table if submit.wait.is_some() => print_job(job, output),
        Output::Table => {
            println!(
                "job {} {} in {} (priority {}){replayed}",
                job.id, job.state, job.queue, job.priority
            );
        }
    }
    Ok(waited_exit(job, submit.wait.is_some()))
}

fn waited_exit(job: &Job, waited: bool) -> ExitCode {
    if waited && job.state != JobState::Succeeded {
        if job.state.is_terminal() {
            eprintln!("job {} ended {}", job.id, job.state);
        } else {
            eprintln!("job {} is still {}: the wait ended before it finished", job.id, job.state);
        }
        ExitCode::from(EXIT_NOT_SUCCEEDED)
    } else {
        ExitCode::SUCCESS
    }
}

/// The payload's text, checked to be JSON and otherwise as given (less surrounding
/// whitespace): never decoded and re-encoded, which would sort its keys and round its big
/// numbers.
fn read_payload(submit: &JobSubmit) -> Result<RawJson, String> {
    let text = if let Some(text) = &submit.payload {
        if text.trim().is_empty() {
            // Given, but empty: a mistake (an unset shell variable), not "no payload".
            return Err("the payload is empty: give JSON text (`--payload null` for none)".into());
        }
        text.clone()
    } else if let Some(path) = submit
        .payload_file
        .as_deref()
        .filter(|path| path.as_os_str() != "-")
    {
        let file = std::fs::File::open(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        read_bounded(file).map_err(|error| format!("cannot read {}: {error}", path.display()))?
    } else if submit.payload_file.is_some() || !std::io::stdin().is_terminal() {
        read_bounded(std::io::stdin())
            .map_err(|error| format!("cannot read the payload from stdin: {error}"))?
    } else {
        // Nothing given and nobody typing into a pipe: a job without a payload.
        return Ok(RawJson::null());
    };
    if text.trim().is_empty() {
        // An empty file or stdin (a script's `< /dev/null`): a job without a payload.
        return Ok(RawJson::null());
    }
    // Checked here too (RawJson would refuse it as well), so as not to call it "not JSON".
    if let Err(too_deep) = rota_core::jobs::check_json_depth(&text) {
        return Err(format!("the payload {too_deep}, the server's limit"));
    }
    RawJson::from_text(&text).map_err(|error| {
        let message = error.to_string();
        match rota_core::jobs::unreadable_json_reason(&message) {
            Some(why) => format!("the payload holds {why}, which the server refuses ({message})"),
            None => format!("the payload is not JSON: {message}"),
        }
    })
}

/// Reads a payload of at most [`PAYLOAD_BYTES_MAX`] bytes; a longer one is an error (cut
/// off, it would only fail as "not JSON").
fn read_bounded(reader: impl Read) -> Result<String, String> {
    let mut text = String::new();
    reader
        .take(PAYLOAD_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|error| error.to_string())?;
    if text.len() as u64 > PAYLOAD_BYTES_MAX {
        return Err(format!(
            "the payload is over {PAYLOAD_BYTES_MAX} bytes (the server takes at most {})",
            rota_core::jobs::limits::PAYLOAD_BYTES_MAX
        ));
    }
    Ok(text)
}

/// One line of JSON (`rendered` is `serde_json::to_string` of a job or queue).
fn json_line(rendered: serde_json::Result<String>) -> String {
    rendered.unwrap_or_else(|error| format!("{{\"error\": \"cannot render: {error}\"}}"))
}

fn print_job(job: &Job, output: Output) {
    if output == Output::Json {
        println!("{}", json_line(serde_json::to_string(job)));
        return;
    }
    println!("id:           {}", job.id);
    println!("queue:        {}", job.queue);
    println!("state:        {}", job.state);
    println!("priority:     {}", job.priority);
    println!("attempts:     {}/{}", job.attempts, job.max_attempts);
    let times = [
        ("created_at", &job.created_at),
        ("run_at", &job.run_at),
        ("finished_at", &job.finished_at),
    ];
    for (name, time) in times {
        if let Some(time) = time {
            println!("{:<13} {time}", format!("{name}:"));
        }
    }
    if let (Some(worker), Some(token)) = (&job.worker, job.lease_token) {
        let expires = job.lease_expires_at.as_deref().unwrap_or("?");
        println!("lease:        {worker}, token {token}, expires {expires}");
    }
    println!("payload:      {}", job.payload);
    if !job.result.is_null() || job.state == JobState::Succeeded {
        println!("result:       {}", job.result);
    }
    // Each error whole (a command's stderr tail is at most 4 KiB), its later lines indented.
    for error in &job.errors {
        let mut lines = error.error.trim_end().lines();
        println!("error:        attempt {} at {}: {}", error.attempt, error.at, lines.next().unwrap_or_default());
        for line in lines {
            println!("              {line}");
        }
    }
}

fn print_jobs(jobs: &[Job], next: Option<JobId>, output: Output) {
    if output == Output::Json {
        // Fields in the server's order (a `json!` object would sort them).
        #[derive(serde::Serialize)]
        struct Page<'a> {
            jobs: &'a [Job],
            next: Option<JobId>,
        }
        println!("{}", json_line(serde_json::to_string(&Page { jobs, next })));
        return;
    }
    // Who holds each lease and until when, when the page has leased jobs.
    let leases = jobs.iter().any(|job| job.worker.is_some());
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            let mut row = vec![
                job.id.to_string(),
                job.state.to_string(),
                job.priority.to_string(),
                format!("{}/{}", job.attempts, job.max_attempts),
                job.created_at.clone().unwrap_or_default(),
            ];
            if leases {
                row.push(match (&job.worker, &job.lease_expires_at) {
                    (Some(worker), Some(expires)) => format!("{worker} until {expires}"),
                    (Some(worker), None) => worker.clone(),
                    _ => String::new(),
                });
            }
            row.push(
                job.errors
                    .last()
                    .map(|error| brief_error(&error.error, 60))
                    .unwrap_or_default(),
            );
            row
        })
        .collect();
    let mut header = vec!["ID", "STATE", "PRIORITY", "ATTEMPTS", "CREATED"];
    if leases {
        header.push("LEASE");
    }
    header.push("LAST ERROR");
    print_table(&header, &rows);
    if rows.is_empty() {
        // Said on stderr: stdout stays the table a script reads.
        eprintln!("no jobs on this page");
    }
    if let Some(next) = next {
        eprintln!("more: --after {next}");
    }
}

fn print_queue(queue: &Queue, output: Output) {
    if output == Output::Json {
        println!("{}", json_line(serde_json::to_string(queue)));
        return;
    }
    let config = &queue.config;
    let counts = &queue.counts;
    println!("name:         {}", queue.name);
    println!("concurrency:  {}", concurrency_text(config));
    println!("rate:         {}", rate_text(config));
    if let Some(tokens) = &queue.rate_tokens {
        println!("rate tokens:  {tokens}");
    }
    if let Some(held) = queue.leases_held {
        // Differs from the leased count when cancelled jobs still hold their slots.
        println!("leases held:  {held}");
    }
    println!(
        "lease_ttl:    {}",
        config.lease_ttl.as_deref().unwrap_or("-")
    );
    println!(
        "max_attempts: {}",
        config
            .max_attempts
            .map(|n| n.to_string())
            .unwrap_or_else(|| "-".into())
    );
    if let Some(backoff) = &config.backoff {
        println!("backoff:      {} doubling to {}", backoff.base, backoff.max);
    }
    println!(
        "retention:    {}",
        config.retention.as_deref().unwrap_or("-")
    );
    println!("paused:       {}", config.paused.unwrap_or(false));
    println!(
        "jobs:         {} scheduled, {} queued, {} leased, {} succeeded, {} dead, {} cancelled",
        counts.scheduled,
        counts.queued,
        counts.leased,
        counts.succeeded,
        counts.dead,
        counts.cancelled
    );
}

fn print_queues(queues: &[Queue], output: Output) {
    if output == Output::Json {
        #[derive(serde::Serialize)]
        struct Queues<'a> {
            queues: &'a [Queue],
        }
        println!("{}", json_line(serde_json::to_string(&Queues { queues })));
        return;
    }
    let rows: Vec<Vec<String>> = queues
        .iter()
        .map(|queue| {
            let counts = &queue.counts;
            vec![
                queue.name.clone(),
                concurrency_text(&queue.config),
                rate_text(&queue.config),
                if queue.config.paused.unwrap_or(false) {
                    "yes"
                } else {
                    "no"
                }
                .to_string(),
                counts.scheduled.to_string(),
                counts.queued.to_string(),
                counts.leased.to_string(),
                counts.succeeded.to_string(),
                counts.dead.to_string(),
                counts.cancelled.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "CONCURRENCY",
            "RATE",
            "PAUSED",
            "SCHEDULED",
            "QUEUED",
            "LEASED",
            "SUCCEEDED",
            "DEAD",
            "CANCELLED",
        ],
        &rows,
    );
}

fn concurrency_text(config: &QueueConfig) -> String {
    config
        .concurrency
        .map(|n| n.to_string())
        .unwrap_or_else(|| "unlimited".into())
}

fn rate_text(config: &QueueConfig) -> String {
    match &config.rate {
        Some(rate) => format!("{}/{} burst {}", rate.limit, rate.per, rate.burst),
        None => "none".into(),
    }
}

/// The first line of `text`, at most `chars_max` characters.
fn one_line(text: &str, chars_max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    let mut out: String = line.chars().take(chars_max).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// An attempt's error in one line of at most `chars_max` chars (and a `…`). A worker's
/// error is `exit status N: ` (or `killed by signal N: `) and the tail of the command's
/// stderr, whose last line says most (a traceback ends with the exception): that prefix and
/// the last non-blank line. Any other error: its first line.
pub(crate) fn brief_error(text: &str, chars_max: usize) -> String {
    let from_command = ["exit status ", "killed by signal "].iter().find_map(|start| {
        let rest = text.strip_prefix(start)?;
        let (number, tail) = rest.split_once(": ")?;
        number.bytes().all(|b| b.is_ascii_digit()).then(|| (&text[..start.len() + number.len() + 2], tail))
    });
    match from_command {
        Some((prefix, tail)) if tail.trim_end().contains('\n') => {
            let last = tail.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or_default().trim();
            one_line(&format!("{prefix}… {last}"), chars_max)
        }
        // One line too long: its end says most (an error message after a long log line).
        Some((prefix, tail)) if text.chars().count() > chars_max => {
            let room = chars_max.saturating_sub(prefix.chars().count() + 1);
            let tail = tail.trim();
            let skip = tail.chars().count().saturating_sub(room);
            let end: String = tail.chars().skip(skip).collect();
            format!("{prefix}…{end}")
        }
        _ => one_line(text, chars_max),
    }
}

/// Left-aligned columns, two spaces apart.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|name| name.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let render = |cells: Vec<&str>| {
        let mut line = String::new();
        for (at, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if at + 1 == cells.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        println!("{}", line.trim_end());
    };
    render(header.to_vec());
    for row in rows {
        render(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_negative_count_or_duration_is_refused_as_a_value_not_taken_for_a_flag() {
        for (args, expected) in [
            (&["rota", "queue", "set", "q", "--concurrency", "-1"][..], "\"-1\" is not a whole number"),
            (&["rota", "job", "submit", "q", "--max-attempts", "-2"][..], "\"-2\" is not a whole number"),
            (&["rota", "queue", "ls", "--retry-for", "-1s"][..], "a duration cannot be negative"),
        ] {
            let error = <crate::Cli as clap::Parser>::try_parse_from(args).map(|_| ()).expect_err("refused");
            let message = error.to_string();
            assert!(message.contains(expected) && !message.contains("tip:"), "{args:?}: {message}");
        }
    }

    #[test]
    fn rates_parse_with_or_without_a_period_count() {
        assert_eq!(parse_rate("5/1s"), Ok((5, Duration::from_secs(1))));
        assert_eq!(parse_rate("5/s"), Ok((5, Duration::from_secs(1))));
        assert_eq!(
            parse_rate("100/500ms"),
            Ok((100, Duration::from_millis(500)))
        );
        assert_eq!(parse_rate("10/m"), Ok((10, Duration::from_secs(60))));
        assert!(parse_rate("5").is_err());
        assert!(parse_rate("x/1s").is_err());
        assert!(parse_rate("5/0s").is_err());
    }

    #[test]
    fn durations_are_whole_milliseconds_or_refused() {
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 1h30m "), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("2000us"), Ok(Duration::from_millis(2)));
        for fraction in ["1500us", "500us", "1ns", "1ms 1us"] {
            let error = parse_duration(fraction).expect_err(fraction);
            assert!(
                error.contains("whole number of milliseconds"),
                "{fraction}: {error}"
            );
        }
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("-1s").is_err_and(|error| error.contains("cannot be negative")));
        assert!(parse_rate("5/1500us").is_err());
    }

    #[test]
    fn a_commands_error_is_told_by_its_last_line() {
        let traceback = "exit status 7: Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: bad \"thing\"\n\n";
        assert_eq!(brief_error(traceback, 200), "exit status 7: … ValueError: bad \"thing\"");
        assert_eq!(brief_error(traceback, 20), "exit status 7: … Val…");
        assert_eq!(brief_error("exit status 3: upstream said no", 200), "exit status 3: upstream said no");
        let long = format!("exit status 1: {}LAST LINE", "e".repeat(300));
        assert_eq!(brief_error(&long, 30), "exit status 1: …eeeeeLAST LINE");
        assert_eq!(brief_error("killed by signal 9: a\nb", 200), "killed by signal 9: … b");
        assert_eq!(brief_error("lease expired\nsecond", 200), "lease expired…");
    }

    #[test]
    fn one_line_marks_what_it_cut() {
        assert_eq!(one_line("short", 10), "short");
        assert_eq!(one_line("first\nsecond", 10), "first…");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }
}
