//! A throughput and latency probe of one node's propose path, without HTTP:
//! `cargo run --release -p rota-bench --bin rota-propose-probe`.
//! Knobs: `ROTA_PROBE_CONCURRENCY=1,16,64`, `ROTA_PROBE_IN_FLIGHT=n`,
//! `ROTA_PROBE_COMMAND=set`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rota_raft::{Node, NodeConfig};

const PROBE_DURATION: Duration = Duration::from_secs(3);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig::single("probe-node", temp.path());
    if let Some(in_flight) = std::env::var("ROTA_PROBE_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.proposals_in_flight_max = in_flight;
    }
    println!("proposals_in_flight_max {}", config.proposals_in_flight_max);
    let node = Node::start(config).await.expect("start the node");
    while !node.status().is_leader {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let metrics = node.metrics();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let levels: Vec<usize> = match std::env::var("ROTA_PROBE_CONCURRENCY") {
        Ok(levels) => levels
            .split(',')
            .filter_map(|level| level.parse().ok())
            .collect(),
        Err(_) => vec![1, 16, 64, 256],
    };
    for concurrency in levels {
        let entries_before = node.status().last_log_index;
        let (fsync_count_before, fsync_sum_before) =
            histogram(&registry, "rota_raft_log_fsync_seconds");
        let started = Instant::now();
        let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let workers: Vec<_> = (0..concurrency)
            .map(|worker| {
                let node = node.clone();
                let latencies = latencies.clone();
                tokio::spawn(async move {
                    let mut mine = Vec::new();
                    while started.elapsed() < PROBE_DURATION {
                        let sent = Instant::now();
                        node.propose(probe_command(worker)).await.expect("propose");
                        mine.push(sent.elapsed());
                    }
                    latencies.lock().expect("lock").extend(mine);
                })
            })
            .collect();
        for worker in workers {
            worker.await.expect("worker");
        }
        let elapsed = started.elapsed();
        let mut latencies = std::mem::take(&mut *latencies.lock().expect("lock"));
        latencies.sort();
        let ops = latencies.len();
        let percentile = |p: f64| latencies[((ops as f64 * p) as usize).min(ops - 1)];
        println!(
            "concurrency {concurrency:>3}: {:>8.0} ops/s  p50 {:>8.3?}  p99 {:>8.3?}",
            ops as f64 / elapsed.as_secs_f64(),
            percentile(0.50),
            percentile(0.99),
        );
        let entries = node.status().last_log_index - entries_before;
        let (fsync_count, fsync_sum) = histogram(&registry, "rota_raft_log_fsync_seconds");
        let fsyncs = fsync_count - fsync_count_before;
        println!(
            "                 {entries} entries ({:.1} commands/entry), {fsyncs:.0} log flushes, mean flush {:.3} ms",
            ops as f64 / entries as f64,
            (fsync_sum - fsync_sum_before) / fsyncs * 1000.0,
        );
    }
    node.shutdown().await;
}

/// `Tick` (the bare propose path), or with `ROTA_PROBE_COMMAND=set` an etcd v2 set of a
/// 100-byte value (one key per worker).
fn probe_command(worker: usize) -> rota_core::Command {
    use rota_core::v2::{SetCommand, V2Command};
    match std::env::var("ROTA_PROBE_COMMAND").as_deref() {
        Ok("set") => rota_core::Command::V2(V2Command::Set(SetCommand {
            key: format!("/probe/{worker}"),
            value: "x".repeat(100),
            ..Default::default()
        })),
        _ => rota_core::Command::Tick,
    }
}

/// `(count, sum)` of a histogram in the registry's text exposition.
fn histogram(registry: &prometheus_client::registry::Registry, name: &str) -> (f64, f64) {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
    let value = |suffix: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}_{suffix} ")))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (value("count"), value("sum"))
}
