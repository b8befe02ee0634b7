//! Linearizability of `/v2/keys` under process kills and partitions, checked on recorded
//! histories (see `docs/testing.md`).
//!
//! Each test: start real `rota serve` processes, run 8 clients doing set / quorum get / CAS
//! / create / delete on 16 keys with unique values, inject faults, stop the clients, read
//! every key once more with a quorum read (those reads join the history), then check the
//! history per key ([`crate::linearizability`]) and count lost acknowledged writes.
//!
//! Pass = 0 violations, 0 inconclusive keys, 0 lost acknowledged writes, 0 protocol errors,
//! **and** the coverage gates (enough operations before the faults, enough faults done,
//! enough work after the last one), so a run that did nothing cannot pass. The negative
//! controls run a deliberately broken rota (`ROTA_TEST_MUTANT`, honoured by debug builds
//! only) and must be caught.
//!
//! Seeds: `ROTA_IT_SEED` replays a run's client choices and fault timing (printed).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, ClusterConfig, LeaderMonitor};
use crate::crash::{self, Rng};
use crate::harness;
use crate::history::{self, Run, Workload};
use crate::http::{self, Request};
use crate::linearizability::{self, Budget, Input, Operation, Outcome};

/// Below this many acknowledged ops/s before the first fault the run proves too little
/// (RELIABILITY.md §7: ≥ 100 ok ops/s, like etcd's `MinimalQPS`).
const OK_OPS_PER_S_MIN: f64 = 100.0;
/// Acknowledged operations required after the last fault (the system recovered and worked).
const OK_OPS_AFTER_LAST_FAULT_MIN: u64 = 100;
/// Bound on the final reads and on convergence after the faults stop.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
/// After a leader kill, the killed nodes stay down until a survivor leads (within this
/// bound, counted from the end of the planned downtime): restarted before the survivors had
/// elected, the killed leader could win again and the kill would change no leader.
const SURVIVOR_LEADER_WITHIN: Duration = Duration::from_secs(10);

// ---- shared pieces -----------------------------------------------------------------------

/// What a run measured, printed with every result.
#[derive(Debug, Default)]
struct RunStats {
    duration_s: f64,
    ops: usize,
    ok_ops: usize,
    open_ops: usize,
    not_sent: u64,
    ok_ops_per_s_before_faults: f64,
    ok_ops_after_last_fault: u64,
    kills: usize,
    /// Kills of the leader after which the kill loop saw a survivor lead before it restarted
    /// the killed nodes (see [`SURVIVOR_LEADER_WITHIN`]).
    survivor_takeovers: usize,
    leader_changes: usize,
    /// Observed leader every 100 ms, run-length encoded.
    leader_timeline: String,
    protocol_errors: Vec<String>,
    check_ms: u128,
}


/// After the clients stopped: one quorum read of every key (retried on other nodes until
/// one answers), added to the history. Returns each key's final value.
fn final_reads(
    endpoints: &[SocketAddr],
    workload: &Workload,
    started: Instant,
    history: &mut Vec<Operation>,
) -> Result<HashMap<String, Option<String>>, String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut finals = HashMap::new();
    for k in 0..workload.keys {
        let key = workload.key(k);
        let mut node = k % endpoints.len();
        loop {
            let op = history::perform(endpoints[node], &key, Input::Get, Duration::from_secs(3), started, usize::MAX, node);
            if let Some(op) = op {
                let outcome = op.outcome.clone();
                history.push(op);
                match outcome {
                    Outcome::Value(v) => {
                        finals.insert(key.clone(), Some(v));
                        break;
                    }
                    Outcome::NotFound => {
                        finals.insert(key.clone(), None);
                        break;
                    }
                    _ => {}
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("no quorum read of {key} succeeded within {SETTLE_TIMEOUT:?}"));
            }
            node = (node + 1) % endpoints.len();
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(finals)
}

/// Lost acknowledged writes over all keys, described.
fn lost_writes(history: &[Operation], finals: &HashMap<String, Option<String>>) -> Vec<String> {
    let mut by_key: HashMap<&str, Vec<&Operation>> = HashMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut lost = Vec::new();
    for (key, final_value) in finals {
        let ops = by_key.get(key.as_str()).cloned().unwrap_or_default();
        for op in linearizability::lost_acked_writes(&ops, final_value.as_deref()) {
            lost.push(format!("{key}: final {final_value:?}, lost {op}"));
        }
    }
    lost
}

/// Every node's X-Etcd-Index and local (non-quorum) value of each key agree, within the
/// settle timeout. Returns the converged index.
fn wait_converged(endpoints: &[SocketAddr], workload: &Workload) -> Result<u64, String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let mut views = Vec::new();
        for addr in endpoints {
            let mut view = (0u64, Vec::new());
            let mut complete = true;
            for k in 0..workload.keys {
                let target = format!("/v2/keys{}", workload.key(k));
                match http::send_with_timeout(*addr, &Request::new("GET", &target), Duration::from_secs(2)) {
                    Ok(resp) if resp.status() == 200 || resp.status() == 404 => {
                        let value = resp.json().pointer("/node/value").and_then(|v| v.as_str()).map(str::to_string);
                        view.1.push(value);
                        view.0 = view.0.max(resp.header("x-etcd-index").and_then(|i| i.parse().ok()).unwrap_or(0));
                    }
                    _ => complete = false,
                }
            }
            // The store index after all keys were read: the node must not have moved on.
            match http::send_with_timeout(*addr, &Request::new("GET", "/v2/keys/"), Duration::from_secs(2)) {
                Ok(resp) if resp.status() == 200 => view.0 = resp.etcd_index(),
                _ => complete = false,
            }
            views.push((complete, view));
        }
        let all_complete = views.iter().all(|(complete, _)| *complete);
        if all_complete && views.windows(2).all(|pair| pair[0].1 == pair[1].1) {
            return Ok(views[0].1 .0);
        }
        if Instant::now() >= deadline {
            let summary: Vec<String> = views
                .iter()
                .enumerate()
                .map(|(i, (complete, (index, _)))| format!("n{}: index {index} complete {complete}", i + 1))
                .collect();
            return Err(format!("nodes did not converge within {SETTLE_TIMEOUT:?}: {}", summary.join(", ")));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Checks a finished history and returns the report and lost writes.
fn check_history(
    name: &str,
    history: &[Operation],
    finals: &HashMap<String, Option<String>>,
    stats: &mut RunStats,
) -> (linearizability::Report, Vec<String>) {
    let started = Instant::now();
    let report = linearizability::check(history, Budget::default());
    stats.check_ms = started.elapsed().as_millis();
    stats.ops = history.len();
    stats.ok_ops = history.iter().filter(|op| !op.is_open()).count();
    stats.open_ops = history.iter().filter(|op| op.is_open()).count();
    let lost = lost_writes(history, finals);
    // A mutant's run is meant to fail the checker: its history is not kept (each suite run
    // left two files of a few MB in the temp dir).
    let expected_to_fail = name.contains("mutant");
    if (!report.is_linearizable() || !lost.is_empty()) && !expected_to_fail {
        let path = history::dump(history, name);
        eprintln!("{name}: history written to {}", path.display());
    }
    (report, lost)
}

/// The verdict of a run that must pass: every safety count 0, every gate met.
fn assert_passes(name: &str, report: &linearizability::Report, lost: &[String], stats: &RunStats, logs: impl Fn() -> String) {
    eprintln!("{name}: {stats:?}\n{name}: {}", report.summary());
    let mut failures = Vec::new();
    if !report.violations().is_empty() {
        failures.push(format!("{} keys not linearizable", report.violations().len()));
    }
    if !report.inconclusive().is_empty() {
        failures.push(format!("{} keys inconclusive (the checker's budget ran out: not a pass)", report.inconclusive().len()));
    }
    if !lost.is_empty() {
        failures.push(format!("{} lost acknowledged writes: {lost:#?}", lost.len()));
    }
    if !stats.protocol_errors.is_empty() {
        failures.push(format!("{} answers the model can't explain: {:#?}", stats.protocol_errors.len(), stats.protocol_errors));
    }
    if stats.ok_ops_per_s_before_faults < OK_OPS_PER_S_MIN {
        failures.push(format!(
            "coverage: {:.0} ok ops/s before the first fault, want ≥ {OK_OPS_PER_S_MIN}",
            stats.ok_ops_per_s_before_faults
        ));
    }
    if stats.ok_ops_after_last_fault < OK_OPS_AFTER_LAST_FAULT_MIN {
        failures.push(format!(
            "coverage: {} ok ops after the last fault, want ≥ {OK_OPS_AFTER_LAST_FAULT_MIN}",
            stats.ok_ops_after_last_fault
        ));
    }
    assert!(failures.is_empty(), "{name} FAILED:\n{}\n{}\nnode logs:\n{}", failures.join("\n"), report.summary(), logs());
}

/// Fault schedule of a kill run.
struct KillPlan {
    duration: Duration,
    first_fault_at: Duration,
    every: Duration,
    /// ± this much random shift on every fault instant.
    jitter: Duration,
    /// How long a killed node stays down.
    down_for: Duration,
    /// Leave at least this much load after the last restart.
    quiet_tail: Duration,
    kill_leader: bool,
    /// Besides the target, this many other nodes (picked at random) go down with it, at the
    /// same moment and for as long (5 nodes tolerate 2 down).
    also_down: usize,
}

impl KillPlan {
    /// The cluster runs' schedule: 45 s; from ~6 s, every 10 s ± 0.5 s, SIGKILL the leader
    /// (and `also_down` other nodes) and restart after 2 s; 3 s of load after the last.
    fn leader_kills(also_down: usize) -> KillPlan {
        KillPlan {
            duration: Duration::from_secs(45),
            first_fault_at: Duration::from_secs(6),
            every: Duration::from_secs(10),
            jitter: Duration::from_millis(500),
            down_for: Duration::from_secs(2),
            quiet_tail: Duration::from_secs(3),
            kill_leader: true,
            also_down,
        }
    }
}

/// Runs the workload against `cluster` with SIGKILL + restart faults; returns the checked
/// history and the stats.
fn kill_run(name: &str, cluster: &mut Cluster, plan: &KillPlan, seed: u64) -> (linearizability::Report, Vec<String>, RunStats) {
    let mut rng = Rng::new(seed);
    let workload = Workload::new(&format!("/lin-{name}-{seed}"), seed);
    let endpoints = cluster.endpoints();
    let monitor = LeaderMonitor::start(endpoints.clone());
    let run = Run::start(&workload, endpoints.clone());
    let started = run.started;
    let mut stats = RunStats::default();

    let jittered = |base: Duration, rng: &mut Rng| {
        let jitter_ms = plan.jitter.as_millis() as u64;
        let shift = rng.range(0, 2 * jitter_ms);
        (base + Duration::from_millis(shift)).saturating_sub(plan.jitter)
    };
    let mut next_fault = jittered(plan.first_fault_at, &mut rng);
    sleep_until(started + next_fault);
    let before_faults_s = started.elapsed().as_secs_f64();
    stats.ok_ops_per_s_before_faults = run.ok_ops() as f64 / before_faults_s;
    let mut ok_at_last_fault_end = run.ok_ops();
    while next_fault + plan.down_for + plan.quiet_tail <= plan.duration {
        sleep_until(started + next_fault);
        let target = if plan.kill_leader {
            match cluster.wait_leader(Duration::from_secs(10)) {
                Ok(leader) => leader,
                Err(e) => panic!("{name}: {e} before kill {}\n{}", stats.kills + 1, cluster.logs(30)),
            }
        } else {
            0
        };
        let mut down = vec![target];
        while down.len() < 1 + plan.also_down {
            let other = rng.range(0, cluster.nodes.len() as u64 - 1) as usize;
            if !down.contains(&other) {
                down.push(other);
            }
        }
        for &node in &down {
            cluster.kill(node);
        }
        stats.kills += 1;
        std::thread::sleep(plan.down_for);
        // A survivor leads before the killed nodes come back (the killed ones are not
        // running, so `wait_leader` asks only the survivors). Not within the bound: the
        // takeover is not counted and the gate says so.
        if plan.kill_leader && cluster.nodes.len() > 1 && cluster.wait_leader(SURVIVOR_LEADER_WITHIN).is_ok() {
            stats.survivor_takeovers += 1;
        }
        for &node in &down {
            cluster.restart(node);
        }
        ok_at_last_fault_end = run.ok_ops();
        next_fault = jittered(next_fault + plan.every, &mut rng);
    }
    // The planned end, but at least the quiet tail after the last restart (an election or a
    // restart may have taken longer than planned).
    sleep_until((started + plan.duration).max(Instant::now() + plan.quiet_tail));
    stats.ok_ops_after_last_fault = run.ok_ops() - ok_at_last_fault_end;
    stats.duration_s = started.elapsed().as_secs_f64();
    stats.not_sent = run.recorder.not_sent.load(Ordering::Relaxed);
    stats.protocol_errors = run.recorder.protocol_errors.lock().expect("errors lock").clone();
    let mut history = run.stop();
    (stats.leader_changes, stats.leader_timeline) = monitor.stop();

    let finals = final_reads(&endpoints, &workload, started, &mut history)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", cluster.logs(30)));
    if endpoints.len() > 1 {
        wait_converged(&endpoints, &workload).unwrap_or_else(|e| panic!("{name}: {e}\n{}", cluster.logs(30)));
    }
    let (report, lost) = check_history(name, &history, &finals, &mut stats);
    (report, lost, stats)
}

fn sleep_until(when: Instant) {
    let now = Instant::now();
    if when > now {
        std::thread::sleep(when - now);
    }
}

fn token(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

// ---- one node (runs now) -----------------------------------------------------------------

/// One node, SIGKILLed and restarted on its data dir every ~5 s under 8 clients for 20 s:
/// acknowledged writes survive, quorum reads never go stale, nothing is invented.
#[test]
fn single_node_history_is_linearizable_across_sigkill_restarts() {
    let seed = crash::seed();
    let name = "single-kill";
    let mut cluster = Cluster::start(ClusterConfig::new(1, &token(name)));
    let plan = KillPlan {
        duration: Duration::from_secs(20),
        first_fault_at: Duration::from_secs(4),
        every: Duration::from_secs(5),
        jitter: Duration::from_millis(1000),
        down_for: Duration::from_millis(100),
        quiet_tail: Duration::from_secs(2),
        kill_leader: false,
        also_down: 0,
    };
    eprintln!("{name}: seed {seed} (ROTA_IT_SEED replays it)");
    let (report, lost, stats) = kill_run(name, &mut cluster, &plan, seed);
    assert_passes(name, &report, &lost, &stats, || cluster.logs(30));
    assert!(stats.kills >= 3, "{name}: coverage: only {} kills, want ≥ 3 (seed {seed})", stats.kills);
}

/// Negative control on one node: a rota that answers quorum reads from a 250 ms read cache
/// (`ROTA_TEST_MUTANT=stale-quorum-reads`) must be caught by the same recording and checker.
#[test]
fn single_node_linearizability_checker_catches_stale_quorum_reads_mutant() {
    let seed = crash::seed();
    let name = "single-mutant";
    let mut config = ClusterConfig::new(1, &token(name));
    config.mutant = Some("stale-quorum-reads".into());
    let mut cluster = Cluster::start(config);
    let plan = KillPlan {
        duration: Duration::from_secs(6),
        first_fault_at: Duration::from_secs(3),
        every: Duration::from_secs(100),
        jitter: Duration::ZERO,
        down_for: Duration::from_millis(100),
        quiet_tail: Duration::from_secs(2),
        kill_leader: false,
        also_down: 0,
    };
    let (report, lost, stats) = kill_run(name, &mut cluster, &plan, seed);
    eprintln!("{name}: {stats:?}\n{name}: {} lost", lost.len());
    assert!(
        !report.violations().is_empty(),
        "{name}: the mutant went unnoticed (seed {seed}): the harness is blind to stale reads\n{}",
        report.summary()
    );
    assert!(stats.ok_ops_per_s_before_faults >= OK_OPS_PER_S_MIN, "{name}: too little load: {stats:?}");
    eprintln!("{name}: caught: {} of {} keys not linearizable", report.violations().len(), report.keys.len());
}

// ---- three nodes (switched on when the cluster exists) -------------------------------------

/// 3 nodes, 8 clients on 16 keys; the leader is SIGKILLed every ~10 s and restarted after
/// ~2 s, once a survivor leads; 2 runs of 45 s. Gates: a survivor took over after each of
/// ≥ 4 kills, and ≥ 4 leader changes seen by the monitor per run.
#[test]
fn cluster_history_is_linearizable_under_leader_kills() {
    let base_seed = crash::seed();
    for run_number in 0..2u64 {
        let seed = base_seed.wrapping_add(run_number);
        let name = format!("leader-kill-{run_number}");
        let mut cluster = Cluster::start(ClusterConfig::new(3, &token(&name)));
        let plan = KillPlan::leader_kills(0);
        eprintln!("{name}: seed {seed}");
        let (report, lost, stats) = kill_run(&name, &mut cluster, &plan, seed);
        assert_passes(&name, &report, &lost, &stats, || cluster.logs(30));
        assert!(stats.kills >= 4, "{name}: coverage: {} leader kills, want ≥ 4", stats.kills);
        assert_eq!(
            stats.survivor_takeovers, stats.kills,
            "{name}: coverage: a survivor led within {SURVIVOR_LEADER_WITHIN:?} after only {} of {} leader kills (seed {seed})\nnode logs:\n{}",
            stats.survivor_takeovers,
            stats.kills,
            cluster.logs(120)
        );
        assert!(
            stats.leader_changes >= 4,
            "{name}: coverage: {} leader changes observed, want ≥ 4 (seed {seed}); timeline {}\nnode logs:\n{}",
            stats.leader_changes,
            stats.leader_timeline,
            cluster.logs(120)
        );
    }
}

/// 5 nodes, 8 clients on 16 keys: every ~10 s the leader and one other node (at random)
/// are SIGKILLed together and restarted ~2 s later, once one of the other three leads, so
/// the cluster runs on the bare majority of 3 and must elect among them; one run of 45 s.
/// Gates: ≥ 4 double kills, a survivor took over after each, ≥ 3 leader changes seen by
/// the monitor.
#[test]
fn five_node_cluster_history_is_linearizable_with_leader_and_another_node_killed() {
    let seed = crash::seed();
    let name = "five-double-kill";
    let mut cluster = Cluster::start(ClusterConfig::new(5, &token(name)));
    let plan = KillPlan::leader_kills(1);
    eprintln!("{name}: seed {seed}");
    let (report, lost, stats) = kill_run(name, &mut cluster, &plan, seed);
    assert_passes(name, &report, &lost, &stats, || cluster.logs(30));
    assert!(stats.kills >= 4, "{name}: coverage: {} double kills, want ≥ 4", stats.kills);
    assert_eq!(
        stats.survivor_takeovers, stats.kills,
        "{name}: coverage: a survivor led within {SURVIVOR_LEADER_WITHIN:?} after only {} of {} double kills (seed {seed})\nnode logs:\n{}",
        stats.survivor_takeovers,
        stats.kills,
        cluster.logs(120)
    );
    assert!(
        stats.leader_changes >= 3,
        "{name}: coverage: {} leader changes observed, want ≥ 3 (seed {seed}); timeline {}\nnode logs:\n{}",
        stats.leader_changes,
        stats.leader_timeline,
        cluster.logs(120)
    );
}

/// Which node a partition run cuts off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CutOff {
    Leader,
    /// The node after the leader (in node order).
    Follower,
}

/// What a partition run measured on the isolated node.
#[derive(Debug, Default)]
struct PartitionStats {
    /// Peer connections the proxy could not attribute to a node (treated as cut when
    /// their target has any cut link). rota's come from their node's own address: 0.
    unidentified_connections: usize,
    /// Peer connections accepted by the proxy.
    peer_connections: usize,
    /// Operations sent to the isolated node after the cut (open ones included).
    minority_attempts: usize,
    /// Writes the isolated node acknowledged although invoked after the cut.
    minority_acked_writes: usize,
    /// Quorum reads the isolated node answered although invoked after the cut.
    minority_quorum_reads: usize,
    /// Writes the majority acknowledged while the node was cut off.
    majority_acked_writes: usize,
    /// The isolated node's store index shortly after the cut and just before healing
    /// (`None`: it did not answer the probe, retried).
    minority_index_after_cut: Option<u64>,
    minority_index_before_heal: Option<u64>,
    /// Raft terms just before healing (`rota_raft_term`; rota only): the isolated node's,
    /// and the highest of the others.
    minority_term_before_heal: Option<u64>,
    majority_term_before_heal: Option<u64>,
    /// From the heal to the answer of the first write acknowledged among those invoked
    /// after it: how long the healed cluster took to commit again.
    first_write_after_heal_ms: Option<u64>,
}

/// Cuts a node off for `isolated_for` (both directions, all peers) while 8 clients run.
/// Returns the cluster too, still running, for its logs.
fn partition_run(
    name: &str,
    mutant: Option<&str>,
    cut_off: CutOff,
    seed: u64,
) -> (linearizability::Report, Vec<String>, RunStats, PartitionStats, Cluster) {
    let isolated_for = Duration::from_secs(5);
    // In-flight replication may land just after the cut; judge only what started later.
    let cut_margin = Duration::from_millis(300);
    let mut config = ClusterConfig::new(3, &token(name));
    config.proxied_peers = true;
    config.mutant = mutant.map(str::to_string);
    let cluster = Cluster::start(config);
    let mut workload = Workload::new(&format!("/lin-{name}-{seed}"), seed);
    // A request stuck on the cut-off node (or forwarded to it) costs its client this long:
    // short, so clients keep cycling through all nodes during the 5 s cut.
    workload.request_timeout = Duration::from_secs(1);
    let endpoints = cluster.endpoints();
    let run = Run::start(&workload, endpoints.clone());
    let started = run.started;
    let mut stats = RunStats::default();
    let mut part = PartitionStats::default();

    std::thread::sleep(Duration::from_secs(4));
    stats.ok_ops_per_s_before_faults = run.ok_ops() as f64 / started.elapsed().as_secs_f64();
    let leader = cluster.wait_leader(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let isolated = match cut_off {
        CutOff::Leader => leader,
        CutOff::Follower => (leader + 1) % endpoints.len(),
    };
    cluster.isolate(isolated);
    let cut_ns = run.now_ns();
    let probe = MinorityProbe::start(&workload, endpoints[isolated], isolated, started);
    std::thread::sleep(cut_margin);
    part.minority_index_after_cut = store_index(endpoints[isolated]);
    std::thread::sleep(isolated_for - cut_margin);
    part.minority_index_before_heal = store_index(endpoints[isolated]);
    part.minority_term_before_heal = raft_term(endpoints[isolated]);
    part.majority_term_before_heal =
        (0..endpoints.len()).filter(|&i| i != isolated).filter_map(|i| raft_term(endpoints[i])).max();
    let heal_ns = run.now_ns();
    cluster.heal();
    // After the heal, so a read still waiting on the cut-off node does not prolong the cut.
    let probe_reads = probe.stop();
    stats.kills = 1;
    let ok_at_heal = run.ok_ops();
    std::thread::sleep(Duration::from_secs(6));
    stats.ok_ops_after_last_fault = run.ok_ops() - ok_at_heal;
    stats.protocol_errors = run.recorder.protocol_errors.lock().expect("errors lock").clone();
    let mut history = run.stop();
    history.extend(probe_reads);

    let after_cut = cut_ns + cut_margin.as_nanos() as u64;
    part.minority_attempts =
        history.iter().filter(|op| op.node == isolated && op.invoke_ns > after_cut && op.invoke_ns < heal_ns).count();
    for op in history.iter().filter(|op| !op.is_open() && op.invoke_ns > after_cut && op.return_ns.unwrap_or(0) < heal_ns) {
        match (&op.input, op.node == isolated) {
            (Input::Get, true) => part.minority_quorum_reads += 1,
            (Input::Get, _) => {}
            (_, true) if op.outcome == Outcome::Ok => part.minority_acked_writes += 1,
            (_, false) if op.outcome == Outcome::Ok => part.majority_acked_writes += 1,
            _ => {}
        }
    }
    part.first_write_after_heal_ms = history
        .iter()
        .filter(|op| op.input != Input::Get && op.outcome == Outcome::Ok && op.invoke_ns >= heal_ns)
        .filter_map(|op| op.return_ns)
        .min()
        .map(|returned_ns| (returned_ns - heal_ns) / 1_000_000);
    if let Some(proxy) = &cluster.proxy {
        let accepted = proxy.accepted.lock().expect("accepted lock");
        part.peer_connections = accepted.len();
        part.unidentified_connections = accepted.iter().filter(|(sender, _)| sender.is_none()).count();
    }
    let finals = final_reads(&endpoints, &workload, started, &mut history)
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", cluster.logs(30)));
    wait_converged(&endpoints, &workload).unwrap_or_else(|e| panic!("{name}: {e}\n{}", cluster.logs(30)));
    let (report, lost) = check_history(name, &history, &finals, &mut stats);
    (report, lost, stats, part, cluster)
}

/// Quorum reads sent only to the cut-off node, for as long as it is cut off. The clients
/// leave a node after its first failure, i.e. the first write that times out on the cut-off
/// node, and never come back while the majority answers them, so they alone may send it
/// no read after the margin at all (seen: 5 operations, none a read, in one run of the
/// mutant control, which then could not show the bug). The reads join the history.
struct MinorityProbe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Operation>>,
}

impl MinorityProbe {
    /// Between two reads (a read on the cut-off node takes up to the request timeout).
    const PAUSE: Duration = Duration::from_millis(50);

    fn start(workload: &Workload, addr: SocketAddr, node: usize, started: Instant) -> MinorityProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let workload = workload.clone();
        // A client id no workload client has.
        let client = workload.clients;
        let thread = std::thread::spawn(move || {
            let mut reads = Vec::new();
            for k in (0..workload.keys).cycle() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let key = workload.key(k);
                reads.extend(history::perform(addr, &key, Input::Get, workload.request_timeout, started, client, node));
                std::thread::sleep(Self::PAUSE);
            }
            reads
        });
        MinorityProbe { stop, thread }
    }

    /// Stops after the read in progress and returns the reads.
    fn stop(self) -> Vec<Operation> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("minority probe panicked")
    }
}

/// rota's `rota_raft_term` metric (`None` for etcd, or when the node does not answer).
fn raft_term(addr: SocketAddr) -> Option<u64> {
    let resp = http::send_with_timeout(addr, &Request::new("GET", "/metrics"), Duration::from_secs(1)).ok()?;
    let text = resp.text();
    let line = text.lines().find(|line| line.starts_with("rota_raft_term "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A node's `X-Etcd-Index` (a local read), asked up to 3 times: one slow answer on a loaded
/// machine is not a missing index.
fn store_index(addr: SocketAddr) -> Option<u64> {
    let attempt = || {
        let resp = http::send_with_timeout(addr, &Request::new("GET", "/v2/keys/"), Duration::from_secs(1)).ok()?;
        resp.header("x-etcd-index")?.parse().ok()
    };
    (0..3).find_map(|_| attempt())
}

/// The leader cut off from both peers for 5 s: it commits nothing and answers no quorum
/// read, the majority elects a leader and keeps committing, and after healing every node
/// has the same index and values; the whole history is linearizable.
#[test]
fn cluster_partitioned_leader_commits_nothing_and_serves_no_stale_quorum_read() {
    let seed = crash::seed();
    let name = "partition";
    let (report, lost, stats, part, cluster) = partition_run(name, None, CutOff::Leader, seed);
    assert_partition_passes(name, seed, &report, &lost, &stats, &part, &cluster);
}

/// A follower cut off from both peers for 5 s campaigns again and again (openraft 0.9 has
/// no PreVote), so it rejoins with a higher term than the leader's: the leader steps down
/// at its first answer and the cluster elects again, and must serve again within the same
/// bounds. Otherwise the same checks as for a cut-off leader.
#[test]
fn cluster_partitioned_follower_rejoins_with_a_higher_term_and_the_cluster_recovers() {
    let seed = crash::seed();
    let name = "partition-follower";
    let (report, lost, stats, part, cluster) = partition_run(name, None, CutOff::Follower, seed);
    assert_partition_passes(name, seed, &report, &lost, &stats, &part, &cluster);
    if cluster.config.kind == harness::Kind::Rota {
        let (minority, majority) = (part.minority_term_before_heal, part.majority_term_before_heal);
        assert!(
            minority.zip(majority).is_some_and(|(minority, majority)| minority > majority),
            "{name}: coverage: the cut-off follower did not rejoin with a higher term than the majority's: {part:?}"
        );
    }
}

/// A quorum read sent to a follower just after its leader was cut off is answered once
/// another leader is elected: it waited out the 5 s call to the silent old leader and was
/// answered 503 "no leader", a new leader elected at 1.3 s (partition audit).
#[test]
fn cluster_quorum_read_on_a_follower_whose_leader_was_cut_off_is_answered_by_the_next_leader() {
    let mut config = ClusterConfig::new(3, &token("read-after-cut"));
    config.proxied_peers = true;
    let cluster = Cluster::start(config);
    let endpoints = cluster.endpoints();
    let leader = cluster.wait_leader(Duration::from_secs(10)).expect("a leader");
    let follower = (leader + 1) % endpoints.len();
    let quorum_read = Request::new("GET", "/v2/keys/?quorum=true");
    // The follower's connection to the leader is open: the next read goes on it.
    let warm = http::send(endpoints[follower], &quorum_read).expect("a quorum read");
    assert_eq!(warm.status(), 200, "{}", warm.text());
    cluster.isolate(leader);
    let started = Instant::now();
    let read = http::send_with_timeout(endpoints[follower], &quorum_read, Duration::from_secs(20)).expect("an answer");
    let took = started.elapsed();
    assert_eq!(
        read.status(),
        200,
        "a quorum read on a follower of a cut-off leader, answered after {took:?}: {}\n{}",
        read.text(),
        cluster.logs(20)
    );
    cluster.heal();
}

/// The checks of every partition run that must pass.
fn assert_partition_passes(
    name: &str,
    seed: u64,
    report: &linearizability::Report,
    lost: &[String],
    stats: &RunStats,
    part: &PartitionStats,
    cluster: &Cluster,
) {
    eprintln!("{name}: seed {seed} {part:?}");
    assert_passes(name, report, lost, stats, || format!("{part:?}\n{}", cluster.logs(40)));
    if cluster.config.kind == harness::Kind::Rota {
        assert_eq!(
            part.unidentified_connections, 0,
            "{name}: the proxy could not tell who sent some peer connections, so the partition was wider than asked: {part:?}"
        );
    }
    assert_eq!(part.minority_acked_writes, 0, "{name}: the isolated node acknowledged writes: {part:?}");
    assert_eq!(part.minority_quorum_reads, 0, "{name}: the isolated node answered quorum reads: {part:?}");
    assert!(
        part.minority_index_after_cut.is_some() && part.minority_index_before_heal.is_some(),
        "{name}: the isolated node did not tell its store index (3 tries of 1 s), so whether it moved is unknown: {part:?}"
    );
    assert_eq!(
        part.minority_index_after_cut, part.minority_index_before_heal,
        "{name}: the isolated node's store index moved while it was cut off: {part:?}"
    );
    assert!(part.minority_attempts > 0, "{name}: coverage: nothing was sent to the isolated node: {part:?}");
    assert!(part.majority_acked_writes > 0, "{name}: coverage: the majority committed nothing during the cut: {part:?}");
}

/// Negative control for partitions: with `ROTA_TEST_MUTANT=local-quorum-reads` the cut-off
/// old leader answers quorum reads from its own state, which the majority has moved past:
/// the checker must report stale reads.
#[test]
fn cluster_linearizability_checker_catches_local_quorum_reads_mutant() {
    let seed = crash::seed();
    let name = "partition-mutant";
    let (report, _lost, stats, part, _cluster) = partition_run(name, Some("local-quorum-reads"), CutOff::Leader, seed);
    eprintln!("{name}: seed {seed} {stats:?} {part:?}\n{}", report.summary());
    assert!(part.minority_quorum_reads > 0, "{name}: the mutant should answer quorum reads on the minority: {part:?}");
    assert!(
        !report.violations().is_empty(),
        "{name}: stale quorum reads on the cut-off leader went unnoticed: the harness is blind to them"
    );
}
