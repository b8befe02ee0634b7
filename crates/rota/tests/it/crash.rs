//! Crash durability of a single rota node: acknowledged writes survive SIGKILL.
//!
//! Several writers send PUTs of unique keys with unique values; a killer SIGKILLs the
//! process at random moments (seeded RNG, seed printed and in every failure message) and
//! restarts it on the same data dir and ports. After each restart and at the end, every
//! acknowledged write must be readable with its value, no key may hold a value nobody wrote,
//! and the store index must never go backwards (not below the highest acknowledged index;
//! each writer's acknowledged indices strictly increase).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{self, Server};
use crate::http::{self, Request};

const KILL_CYCLES: usize = 24;
const WRITERS: usize = 4;
/// Random delay before each kill, after the restarted node acknowledged its first write.
const KILL_DELAY_MS_MIN: u64 = 20;
const KILL_DELAY_MS_MAX: u64 = 400;
/// Bound on the restarted node acknowledging a write (guards against vacuous cycles).
const FIRST_ACK_TIMEOUT: Duration = Duration::from_secs(20);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// splitmix64: a tiny seeded RNG, so a failing run can be replayed with `ROTA_IT_SEED`.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// `ROTA_IT_SEED` or a fresh seed from the clock.
pub fn seed() -> u64 {
    match std::env::var("ROTA_IT_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("ROTA_IT_SEED must be a u64, got {s:?}")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

#[derive(Debug, Clone)]
struct Ack {
    value: String,
    modified_index: u64,
}

#[derive(Default)]
struct Shared {
    /// key → acknowledged write.
    acked: Mutex<BTreeMap<String, Ack>>,
    ack_count: AtomicU64,
    max_acked_index: AtomicU64,
    /// Violations seen by writers (index not increasing within a writer).
    violations: Mutex<Vec<String>>,
    stop: AtomicBool,
}

fn writer(addr: std::net::SocketAddr, id: usize, seed: u64, shared: &Shared) {
    let mut last_index = 0u64;
    let mut n = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("/crash/w{id}/k{n:06}");
        let value = value_for(seed, &key);
        let req = Request::new("PUT", &format!("/v2/keys{key}")).form(&format!("value={value}"));
        match http::send_with_timeout(addr, &req, WRITE_TIMEOUT) {
            Ok(resp) if resp.status() == 201 => {
                let index = crate::session::modified_index(&resp);
                if index <= last_index {
                    shared.violations.lock().expect("lock").push(format!(
                        "writer {id}: acknowledged index went backwards: {key} got {index} after {last_index}"
                    ));
                }
                last_index = index;
                shared.max_acked_index.fetch_max(index, Ordering::SeqCst);
                shared.acked.lock().expect("lock").insert(
                    key,
                    Ack {
                        value,
                        modified_index: index,
                    },
                );
                shared.ack_count.fetch_add(1, Ordering::SeqCst);
            }
            Ok(resp) if resp.status() >= 500 || resp.status() == 0 => {
                // Not acknowledged (e.g. shutting down): the write may or may not exist.
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(resp) => {
                shared.violations.lock().expect("lock").push(format!(
                    "writer {id}: unexpected answer to a fresh-key PUT {key}: {} {}",
                    resp.status(),
                    resp.text()
                ));
            }
            // Connection refused/reset while the node is down or being killed.
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// The only value ever written to `key` in this run.
fn value_for(seed: u64, key: &str) -> String {
    format!("s{seed}{}", key.replace('/', "-"))
}

/// Checks every acknowledged write against one recursive listing of `/crash`.
fn verify(server: &Server, seed: u64, shared: &Shared, when: &str) {
    // Snapshot the acknowledgements before reading: writes acknowledged after the listing
    // was taken are not expected in it.
    let acked = shared.acked.lock().expect("lock").clone();
    let resp = http::send(
        server.addr(),
        &Request::new("GET", "/v2/keys/crash?recursive=true"),
    )
    .unwrap_or_else(|e| panic!("seed {seed}, {when}: listing /crash failed: {e}"));
    let mut present = BTreeMap::new();
    if resp.status() == 200 {
        collect_files(&resp.json()["node"], &mut present);
    } else {
        assert_eq!(
            resp.status(),
            404,
            "seed {seed}, {when}: listing /crash: {}",
            resp.text()
        );
    }
    let mut lost = Vec::new();
    for (key, ack) in &acked {
        match present.get(key) {
            Some(value) if *value == ack.value => {}
            Some(value) => lost.push(format!(
                "{key}: acknowledged {:?} (index {}), read {value:?}",
                ack.value, ack.modified_index
            )),
            None => lost.push(format!(
                "{key}: acknowledged at index {}, missing",
                ack.modified_index
            )),
        }
    }
    let phantoms: Vec<String> = present
        .iter()
        .filter(|(key, value)| **value != value_for(seed, key))
        .map(|(key, value)| format!("{key} = {value:?}"))
        .collect();
    assert!(
        lost.is_empty() && phantoms.is_empty(),
        "seed {seed}, {when}: {} of {} acknowledged writes lost or changed: {:?}; values nobody wrote: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(20)],
        &phantoms[..phantoms.len().min(20)],
    );
}

fn collect_files(node: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    if let Some(nodes) = node["nodes"].as_array() {
        for child in nodes {
            collect_files(child, out);
        }
    }
    if let (Some(key), Some(value)) = (node["key"].as_str(), node["value"].as_str()) {
        out.insert(key.to_string(), value.to_string());
    }
}

fn wait_for_acks_beyond(shared: &Shared, count: u64, seed: u64, cycle: usize, server: &Server) {
    let deadline = Instant::now() + FIRST_ACK_TIMEOUT;
    while shared.ack_count.load(Ordering::SeqCst) <= count {
        assert!(
            Instant::now() < deadline,
            "seed {seed}, cycle {cycle}: no write acknowledged within {FIRST_ACK_TIMEOUT:?} after (re)start; stderr:\n{}",
            server.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn acknowledged_writes_survive_sigkill_at_random_moments() {
    let seed = seed();
    eprintln!("crash test seed: {seed} (replay with ROTA_IT_SEED={seed})");
    let mut rng = Rng::new(seed);
    let mut server = Server::start(harness::candidate_kind());
    let addr = server.addr();
    let shared = Arc::new(Shared::default());

    let writers: Vec<_> = (0..WRITERS)
        .map(|id| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || writer(addr, id, seed, &shared))
        })
        .collect();

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for cycle in 0..KILL_CYCLES {
            let before = shared.ack_count.load(Ordering::SeqCst);
            wait_for_acks_beyond(&shared, before, seed, cycle, &server);
            std::thread::sleep(Duration::from_millis(
                rng.range(KILL_DELAY_MS_MIN, KILL_DELAY_MS_MAX),
            ));
            server.kill();
            // Writers may still be mid-flight; anything acknowledged from here on was
            // acknowledged by the new process.
            let max_acked = shared.max_acked_index.load(Ordering::SeqCst);
            server.restart();
            let index = server.store_index();
            assert!(
                index >= max_acked,
                "seed {seed}, cycle {cycle}: store index went backwards: {index} after restart, \
                 but index {max_acked} was acknowledged before the kill"
            );
            verify(&server, seed, &shared, &format!("after restart {cycle}"));
        }
    }));
    shared.stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    let violations = shared.violations.lock().expect("lock").clone();
    assert!(violations.is_empty(), "seed {seed}: {violations:?}");
    verify(&server, seed, &shared, "at the end");
    let acked = shared.ack_count.load(Ordering::SeqCst);
    assert!(
        acked >= KILL_CYCLES as u64,
        "seed {seed}: only {acked} writes acknowledged: the test proved little"
    );
    eprintln!("crash test: {acked} acknowledged writes survived {KILL_CYCLES} SIGKILLs");
}

#[test]
fn sigterm_shuts_down_gracefully_and_keeps_data() {
    let mut server = Server::start(harness::candidate_kind());
    let put = http::send(
        server.addr(),
        &Request::new("PUT", "/v2/keys/term/k").form("value=kept"),
    )
    .expect("PUT before SIGTERM");
    assert_eq!(put.status(), 201, "{}", put.text());
    let index = server.store_index();
    let status = server.terminate(Duration::from_secs(10));
    let clean = match (server.kind, status) {
        (harness::Kind::Rota, Some(status)) => status.success(),
        // etcd re-raises the signal after its cleanup, so it ends "killed by SIGTERM".
        (harness::Kind::Etcd, Some(status)) => {
            use std::os::unix::process::ExitStatusExt;
            status.success() || status.signal() == Some(15)
        }
        (_, None) => false,
    };
    assert!(
        clean,
        "no clean exit within 10 s of SIGTERM ({status:?}): {}",
        server.stderr_tail()
    );
    server.restart();
    let get = http::send(server.addr(), &Request::new("GET", "/v2/keys/term/k"))
        .expect("GET after restart");
    assert_eq!(get.status(), 200, "{}", get.text());
    assert_eq!(get.json()["node"]["value"], "kept");
    assert!(
        server.store_index() >= index,
        "store index went backwards across a graceful restart"
    );
}

/// `rota serve` restarted right after a SIGKILL can find its predecessor's listening socket
/// still open (the kernel finishes the killed process off a little later): it waits for the
/// address instead of exiting with "Address already in use".
#[test]
fn a_restart_waits_for_a_client_port_still_held_by_an_exiting_predecessor() {
    let mut server = Server::start(harness::Kind::Rota);
    let put = http::send(server.addr(), &Request::new("PUT", "/v2/keys/k").form("value=kept"))
        .expect("PUT");
    assert_eq!(put.status(), 201, "{}", put.text());
    server.kill();
    // The predecessor's socket, still listening for a moment.
    let predecessor = std::net::TcpListener::bind(server.addr()).expect("bind the client port");
    let released = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        drop(predecessor);
    });
    server.restart();
    released.join().expect("releasing thread");
    assert!(
        server.stderr_tail().contains("is in use; trying again"),
        "{}",
        server.stderr_tail()
    );
    let get = http::send(server.addr(), &Request::new("GET", "/v2/keys/k")).expect("GET");
    assert_eq!(get.json()["node"]["value"], "kept", "{}", get.text());
}

/// A data dir deleted under a running node: its writes could no longer survive a restart,
/// so the node stops with the reason instead of acknowledging them (it used to go on, with
/// `/health` true, and come back empty on the next start).
#[test]
fn a_node_whose_data_dir_is_deleted_stops_and_says_why() {
    let mut server = Server::start(harness::Kind::Rota);
    let put = http::send(server.addr(), &Request::new("PUT", "/v2/keys/gone/k").form("value=1")).expect("PUT");
    assert_eq!(put.status(), 201, "{}", put.text());
    // The node may create a file in it while it is being deleted (its commit mark's
    // temporary file): deleted again then.
    let mut tries = 0;
    while let Err(error) = std::fs::remove_dir_all(server.data_dir()) {
        tries += 1;
        assert!(error.kind() == std::io::ErrorKind::DirectoryNotEmpty && tries < 20, "delete the data dir: {error:?}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while server.is_running() {
        assert!(std::time::Instant::now() < deadline, "still running: {}", server.stderr_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = server.stderr_tail();
    assert!(log.contains("the data dir was removed or replaced while this node ran"), "{log}");
}
