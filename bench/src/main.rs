//! rota-bench: the job-queue load generator used for rota and for its peers, so that every
//! system is driven by the same client code over its own protocol:
//!
//! - `rota`:      POST /v1/queues/{q}/jobs → POST /v1/queues/{q}/lease → POST /v1/jobs/{id}/complete
//!   (with `--lease-next`, the complete carries `lease_next` and leases the consumer's next
//!   job, so the lease request is made only when that came back empty)
//! - `redis`:     LPUSH q job → BLMOVE q q:processing RIGHT LEFT → LREM q:processing 1 job
//! - `beanstalk`: put → reserve-with-timeout → delete
//!
//! Like `../shared/bench/qbench.py` (same modes, same RESULT line), but a Rust client that is
//! not itself the bottleneck: each producer/consumer is a task with its own connection doing one
//! blocking round trip at a time (no pipelining).

mod protocols;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};

use protocols::Conn;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Backend {
    Rota,
    Redis,
    Beanstalk,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Mode {
    /// Producers only enqueue, consumers only lease and complete.
    Split,
    /// Every worker enqueues, then leases and completes, in a loop.
    Cycle,
    /// Consumers only: lease and complete `--jobs` jobs that are already queued (see
    /// `--prefill`); measures the lease+complete rate at a given queue depth.
    Drain,
}

#[derive(Parser, Debug, Clone)]
#[command(about = "Job-queue load generator: rota, Redis reliable queue, beanstalkd")]
struct Args {
    #[arg(long, value_enum)]
    backend: Backend,
    /// host:port of the server.
    #[arg(long)]
    addr: String,
    /// Producers (and as many consumers in split mode).
    #[arg(long, default_value_t = 8)]
    n: usize,
    /// Jobs to enqueue in total.
    #[arg(long, default_value_t = 30_000)]
    jobs: usize,
    #[arg(long, default_value_t = 60.0)]
    max_seconds: f64,
    #[arg(long, value_enum, default_value = "split")]
    mode: Mode,
    /// Priorities are drawn uniformly from [0, levels).
    #[arg(long, default_value_t = 1024)]
    prio_levels: u64,
    /// Payload padding bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Queue (rota), list (redis) or tube (beanstalk) name.
    #[arg(long, default_value = "bench")]
    queue: String,
    #[arg(long, default_value = "")]
    label: String,
    /// Runtime worker threads of the load generator itself.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// rota only: before measuring, queue this many jobs (batches of 1000, priorities drawn
    /// like the producers'), so a run can measure leasing at a large queue depth.
    #[arg(long, default_value_t = 0)]
    prefill: usize,
    /// rota only: consumers complete with `lease_next`, taking the next job in the same
    /// request (one request per job instead of a lease and a complete).
    #[arg(long)]
    lease_next: bool,
}

/// What one task reports: jobs it sent, jobs it finished, and the enqueue→ack latency of each
/// finished job in microseconds.
#[derive(Default)]
struct Tally {
    sent: usize,
    done_latencies_us: Vec<u64>,
    last_done: Option<Instant>,
    last_sent: Option<Instant>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let base = Instant::now();
    // Connect everyone first, so connection setup is not measured.
    let (producers, consumers) = match args.mode {
        Mode::Split => (args.n, args.n),
        Mode::Cycle => (args.n, 0),
        Mode::Drain => (0, args.n),
    };
    Conn::connect(args.backend, &args.addr, &args.queue).await?.reset().await.context("resetting the queue")?;
    // Prefill before the measuring connections open: the server closes idle connections.
    if args.prefill > 0 {
        prefill(&args, base).await?;
    }
    let mut conns = Vec::new();
    for _ in 0..producers + consumers {
        let mut conn = Conn::connect(args.backend, &args.addr, &args.queue).await?;
        conn.set_lease_next(args.lease_next);
        conns.push(conn);
    }
    let producers_done = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(args.max_seconds);
    let mut producer_tasks = Vec::new();
    let mut consumer_tasks = Vec::new();
    for (idx, conn) in conns.into_iter().enumerate() {
        let args = args.clone();
        if idx < producers {
            let per = args.jobs / args.n + usize::from(idx < args.jobs % args.n);
            producer_tasks.push(tokio::spawn(producer(args, conn, idx, per, base, deadline)));
        } else {
            let done = producers_done.clone();
            // Draining consumers stop after their share; the others when producers are done.
            let quota = (args.mode == Mode::Drain).then(|| {
                let idx = idx - producers;
                args.jobs / args.n + usize::from(idx < args.jobs % args.n)
            });
            consumer_tasks.push(tokio::spawn(consumer(conn, base, deadline, done, quota)));
        }
    }
    let mut tallies = Vec::new();
    for task in producer_tasks {
        tallies.push(task.await??);
    }
    producers_done.store(true, Ordering::Relaxed);
    for task in consumer_tasks {
        tallies.push(task.await??);
    }
    report(&args, t0, &tallies);
    Ok(())
}

async fn producer(args: Args, mut conn: Conn, idx: usize, jobs: usize, base: Instant, deadline: Instant) -> Result<Tally> {
    let mut tally = Tally::default();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (idx as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let pad = "p".repeat(args.size);
    for i in 0..jobs {
        if Instant::now() > deadline {
            break;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let priority = if args.prio_levels > 1 { rng % args.prio_levels } else { 0 };
        let body = format!("{}:{idx}:{i}:{pad}", base.elapsed().as_micros());
        conn.enqueue(&body, priority).await?;
        tally.sent += 1;
        tally.last_sent = Some(Instant::now());
        if args.mode == Mode::Cycle {
            if let Some(job) = conn.dequeue_ack(Duration::from_secs(1)).await? {
                record(&mut tally, base, &job);
            }
        }
    }
    Ok(tally)
}

async fn consumer(
    mut conn: Conn,
    base: Instant,
    deadline: Instant,
    producers_done: Arc<AtomicBool>,
    quota: Option<usize>,
) -> Result<Tally> {
    let mut tally = Tally::default();
    if quota.is_some() {
        producers_done.store(true, Ordering::Relaxed);
    }
    while Instant::now() < deadline && quota.is_none_or(|quota| tally.done_latencies_us.len() < quota) {
        match conn.dequeue_ack(Duration::from_secs(1)).await? {
            Some(job) => record(&mut tally, base, &job),
            None if producers_done.load(Ordering::Relaxed) => break,
            None => {}
        }
    }
    Ok(tally)
}

/// Queues `--prefill` jobs in batches over a few connections, with progress on stderr.
async fn prefill(args: &Args, base: Instant) -> Result<()> {
    const BATCH_JOBS: usize = 1000;
    const CONNECTIONS: usize = 4;
    let started = Instant::now();
    let batches = args.prefill.div_ceil(BATCH_JOBS);
    let next_batch = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for connection in 0..CONNECTIONS {
        let mut conn = Conn::connect(args.backend, &args.addr, &args.queue).await?;
        let next_batch = next_batch.clone();
        let (total, levels, size) = (args.prefill, args.prefill_levels(), args.size);
        tasks.push(tokio::spawn(async move {
            let pad = "p".repeat(size);
            let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ (connection as u64 + 1);
            loop {
                let batch = next_batch.fetch_add(1, Ordering::Relaxed);
                if batch >= batches {
                    return anyhow::Ok(());
                }
                let first = batch * BATCH_JOBS;
                let jobs: Vec<(String, u64)> = (first..(first + BATCH_JOBS).min(total))
                    .map(|i| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        (format!("{}:prefill:{i}:{pad}", base.elapsed().as_micros()), rng % levels)
                    })
                    .collect();
                conn.enqueue_batch(&jobs).await?;
                if connection == 0 && batch.is_multiple_of(100) {
                    eprintln!("prefill: {} of {total} jobs queued ({:.0?})", first, started.elapsed());
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    eprintln!("prefill: {} jobs queued in {:.1?}", args.prefill, started.elapsed());
    Ok(())
}

impl Args {
    fn prefill_levels(&self) -> u64 {
        self.prio_levels.max(1)
    }
}

fn record(tally: &mut Tally, base: Instant, job_body: &str) {
    let now = Instant::now();
    if let Some(sent_us) = job_body.split(':').next().and_then(|s| s.parse::<u64>().ok()) {
        let now_us = now.duration_since(base).as_micros() as u64;
        tally.done_latencies_us.push(now_us.saturating_sub(sent_us));
    }
    tally.last_done = Some(now);
}

fn report(args: &Args, t0: Instant, tallies: &[Tally]) {
    let sent: usize = tallies.iter().map(|t| t.sent).sum();
    let mut latencies: Vec<u64> = tallies.iter().flat_map(|t| t.done_latencies_us.iter().copied()).collect();
    latencies.sort_unstable();
    let done = latencies.len();
    let wall_s = tallies.iter().filter_map(|t| t.last_done).max().map(|t| (t - t0).as_secs_f64()).unwrap_or(f64::NAN);
    let enq_s = tallies.iter().filter_map(|t| t.last_sent).max().map(|t| (t - t0).as_secs_f64()).unwrap_or(f64::NAN);
    let quantile_ms = |q: f64| {
        if done == 0 {
            f64::NAN
        } else {
            latencies[((q * done as f64) as usize).min(done - 1)] as f64 / 1000.0
        }
    };
    let label = if args.label.is_empty() { format!("{:?}", args.backend).to_lowercase() } else { args.label.clone() };
    println!(
        "RESULT {label} mode={} n={} jobs_sent={sent} jobs_done={done} jobs_per_s={:.0} enq_per_s={:.0} e2e_p50_ms={:.2} e2e_p99_ms={:.2} wall_s={:.2}",
        format!("{:?}", args.mode).to_lowercase(),
        args.n,
        done as f64 / wall_s,
        sent as f64 / enq_s,
        quantile_ms(0.5),
        quantile_ms(0.99),
        wall_s
    );
}
