//! A node whose data dir runs short of space: writes are refused with 507 (never a 500,
//! never a crash), reads, deletes and finishing leased jobs go on, writes resume once space
//! is freed, and every acknowledged write survives a SIGKILL and restart. The data dir is a
//! small tmpfs that the test mounts: it needs root, as `.ci/run` has, and fails (never
//! skips) without it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, ClusterConfig};
use crate::harness::{Kind, Server};
use crate::http::{self, Request};
use crate::jobs_util::{rota, Proc};

/// The tmpfs: the open log chunk reserves 16 MiB of it at once, leaving ~136 MiB.
const TMPFS_MIB: u64 = 152;
const MIB: usize = 1 << 20;
/// How long a node may take to notice the space it lost or got back (it looks every 250 ms).
const NOTICE_TIMEOUT: Duration = Duration::from_secs(10);

/// A tmpfs mounted for the test, unmounted (lazily, after the server is gone) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size_mib: u64) -> Tmpfs {
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mib}m"),
                "rota-it-disk-full",
            ])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "cannot mount a tmpfs at {} ({}): this test needs root, as .ci/run has",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn put(server: &Server, key: &str, value: &str) -> http::Response {
    let body = format!("value={value}");
    http::send_with_timeout(
        server.addr(),
        &Request::new("PUT", &format!("/v2/keys/{key}")).form(&body),
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("PUT {key}: {e:?}\n{}", server.stderr_tail()))
}

fn send(server: &Server, request: &Request) -> http::Response {
    http::send_with_timeout(server.addr(), request, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:?}\n{}", server.stderr_tail()))
}

fn submit_job(server: &Server) -> http::Response {
    send(
        server,
        &Request::new("POST", "/v1/queues/q/jobs")
            .header("Content-Type", "application/json")
            .raw_body(br#"{"payload": {"n": 1}}"#.to_vec()),
    )
}

/// Sends `put` (a PUT of `key`) until the answer's status is `want` (other answers may only
/// be the one being waited out: 201/200 before space runs short, 507 before it is back).
fn put_until(key: &str, want: u16, put: impl Fn() -> http::Response) -> http::Response {
    let deadline = Instant::now() + NOTICE_TIMEOUT;
    loop {
        let response = put();
        let status = response.status();
        if status == want {
            return response;
        }
        assert!(
            status == 201 || status == 200 || status == 507,
            "PUT {key}: unexpected {status}: {}",
            response.text()
        );
        assert!(
            Instant::now() < deadline,
            "PUT {key} still answers {status} after {NOTICE_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `/v2/keys` write refused for lack of space: 507 in etcd's envelope.
fn assert_refused_for_space(response: &http::Response) {
    assert_eq!(response.status(), 507, "{}", response.text());
    let body = response.json();
    assert_eq!(body["errorCode"], 300, "{body}");
    let cause = body["cause"].as_str().unwrap_or("");
    assert!(cause.contains("short of space"), "{body}");
}

fn metric(server: &Server, name: &str) -> f64 {
    let text = send(server, &Request::new("GET", "/metrics")).text();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

#[test]
fn a_short_data_dir_refuses_writes_with_507_keeps_serving_and_loses_nothing() {
    let mount_point = tempfile::tempdir().expect("tempdir");
    let _tmpfs = Tmpfs::mount(mount_point.path(), TMPFS_MIB);
    let data_dir = mount_point.path().join("data");
    let mut server = Server::try_start_with(Kind::Rota, Some(data_dir), Vec::new())
        .unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(put(&server, "kept", "1").status(), 201);
    assert_eq!(put(&server, "doomed", "1").status(), 201);
    assert_eq!(submit_job(&server).status(), 202);
    let leased = send(
        &server,
        &Request::new("POST", "/v1/queues/q/lease")
            .header("Content-Type", "application/json")
            .raw_body(br#"{"worker": "w", "max": 1}"#.to_vec()),
    )
    .json();
    let job = &leased["jobs"][0];
    let (job_id, token) = (
        job["id"].as_u64().expect("job id"),
        job["lease_token"].as_u64().expect("token"),
    );

    // Another program fills the file system: ~100 MiB of the ~136 MiB left.
    let filler = mount_point.path().join("filler");
    std::fs::write(&filler, vec![7u8; 100 * MIB]).expect("write the filler");

    put_until("probe", 507, || put(&server, "probe", "x"));
    assert_refused_for_space(&put(&server, "refused", "1"));
    assert_eq!(metric(&server, "rota_raft_data_dir_short_of_space"), 1.0);
    let cli_dir = tempfile::tempdir().expect("tempdir");
    let status = rota(
        cli_dir.path(),
        &["status".into(), "--endpoints".into(), server.client_url()],
    );
    let fields: Vec<&str> = status
        .stdout
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(fields.get(8), Some(&"refused"), "rota status: {status:?}");
    let job_refused = submit_job(&server);
    assert_eq!(job_refused.status(), 507, "{}", job_refused.text());
    assert_eq!(job_refused.json()["error"]["code"], "no_space");
    // Reads, deletes and finishing leased work go on.
    let read = send(&server, &Request::new("GET", "/v2/keys/kept"));
    assert_eq!(
        (read.status(), read.json()["node"]["value"].clone()),
        (200, "1".into())
    );
    assert_eq!(
        send(&server, &Request::new("DELETE", "/v2/keys/doomed")).status(),
        200
    );
    let completed = send(
        &server,
        &Request::new("POST", &format!("/v1/jobs/{job_id}/complete"))
            .header("Content-Type", "application/json")
            .raw_body(format!(r#"{{"lease_token": {token}, "result": "done"}}"#).into_bytes()),
    );
    assert_eq!(completed.status(), 200, "{}", completed.text());
    assert!(server.is_running(), "{}", server.stderr_tail());
    assert_eq!(
        send(&server, &Request::new("GET", "/v2/keys/refused")).status(),
        404
    );
    // A worker started now is refused leases and waits for space rather than give up.
    let worker_dir = tempfile::tempdir().expect("tempdir");
    let worker_args: Vec<String> = [
        "worker",
        "--endpoints",
        &server.client_url(),
        "--queue",
        "w",
        "--max-jobs",
        "1",
        "--",
        "cat",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    let mut worker = Proc::spawn(worker_dir.path(), "worker", &worker_args, &[]);
    let deadline = Instant::now() + NOTICE_TIMEOUT;
    while !worker.stderr().contains("short of space") {
        assert!(
            worker.try_status().is_none(),
            "the worker exited: {}",
            worker.stderr()
        );
        assert!(
            Instant::now() < deadline,
            "the worker never reported the refusal: {}",
            worker.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        worker.try_status().is_none(),
        "the worker exited: {}",
        worker.stderr()
    );

    // Space comes back: writes resume without anyone intervening.
    std::fs::remove_file(&filler).expect("remove the filler");
    assert_eq!(
        put_until("after", 201, || put(&server, "after", "x")).status(),
        201
    );
    assert_eq!(metric(&server, "rota_raft_data_dir_short_of_space"), 0.0);
    // The waiting worker takes the next job and runs it.
    let submitted = send(
        &server,
        &Request::new("POST", "/v1/queues/w/jobs")
            .header("Content-Type", "application/json")
            .raw_body(br#"{"payload": {"echo": 2}}"#.to_vec()),
    );
    assert_eq!(submitted.status(), 202, "{}", submitted.text());
    let worker_job = submitted.json()["id"].as_u64().expect("job id");
    let status = worker.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "worker: {status:?}: {}", worker.stderr());
    let done = send(
        &server,
        &Request::new("GET", &format!("/v1/jobs/{worker_job}")),
    )
    .json();
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"], serde_json::json!({"echo": 2}), "{done}");

    // Now the node fills the disk itself with 1 MiB values: it refuses writes before the
    // log or a snapshot finds the disk full, and stays up.
    let value = "v".repeat(MIB - 16);
    let mut acked = Vec::new();
    let mut refused_at = None;
    for i in 0..400 {
        let key = format!("big/{i}");
        let response = put(&server, &key, &value);
        match response.status() {
            201 => acked.push(key),
            507 => {
                refused_at = Some(i);
                break;
            }
            other => panic!("PUT {key}: unexpected {other}: {}", response.text()),
        }
    }
    let refused_at =
        refused_at.unwrap_or_else(|| panic!("never refused; {} MiB written", acked.len()));
    eprintln!("writes of 1 MiB values refused after {refused_at} MiB");
    // Room is kept for a snapshot of up to three times the log: 136 MiB free minus 64.
    assert!(refused_at >= 16, "refused after only {refused_at} MiB");
    assert!(server.is_running(), "{}", server.stderr_tail());

    // Nothing acknowledged is lost, and the node starts on its full disk.
    server.kill();
    server.restart();
    for key in acked.iter().chain(
        ["kept", "after"]
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .iter(),
    ) {
        let read = send(&server, &Request::new("GET", &format!("/v2/keys/{key}")));
        assert_eq!(
            read.status(),
            200,
            "{key} lost after the restart: {}",
            read.text()
        );
    }
    let big = send(&server, &Request::new("GET", "/v2/keys/big/0")).json();
    assert_eq!(
        big["node"]["value"].as_str().map(str::len),
        Some(value.len())
    );
    assert_eq!(
        send(&server, &Request::new("GET", "/v2/keys/doomed")).status(),
        404
    );
    let job = send(&server, &Request::new("GET", &format!("/v1/jobs/{job_id}"))).json();
    assert_eq!(job["state"], "succeeded", "{job}");

    // Short of space, the node takes a snapshot, and the log before it no longer counts
    // toward the room kept for the next one. (Before, the threshold counted the whole log
    // dir, which deletes only grow: a user audit found a node refusing writes for good with
    // its disk half empty and every key deleted.) The restart above found the node short, so
    // it took one: the room needed is now the bound plus the snapshots, the log's three-fold
    // share gone. (Whether a snapshot after deleting every value can be stored on this small
    // disk depends on sizes: the deleted values stay in the watch history, and the new
    // snapshot must fit beside the old one.)
    let log_mib = acked.len() as f64;
    let deadline = Instant::now() + NOTICE_TIMEOUT;
    loop {
        let needed = metric(&server, "rota_raft_data_dir_needed_bytes");
        let snapshot = metric(&server, "rota_raft_snapshot_size_bytes");
        // With the log still counted it would be 64 MiB + the snapshot + 3 × the log.
        if snapshot > 0.0 && needed < (64 * MIB) as f64 + snapshot + 1.5 * log_mib * MIB as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the room needed is {needed} with a snapshot of {snapshot} bytes and {log_mib} MiB of log:\n{}",
            server.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    put_until("still-full", 507, || put(&server, "still-full", "1"));
    let deleted = send(&server, &Request::new("DELETE", "/v2/keys/big?recursive=true"));
    assert_eq!(deleted.status(), 200, "{}", deleted.text());
    assert!(server.stderr_tail().contains("the data dir is short of space; a snapshot"), "{}", server.stderr_tail());
    assert!(server.is_running(), "{}", server.stderr_tail());
    eprintln!("{}", server.stderr_tail());
    drop(server);
}

/// A node stopped while short of space starts again on its nearly full disk (to serve the
/// reads and deletes that free space), and on a small file system the writes it refused
/// resume once space is freed. An operator audit: on a 20 MiB tmpfs the restart failed
/// ("3 MiB free on its file system: the log allocates 16 MiB at a time", also with
/// `--min-free-mb 0`), and writes refused once waited for "above 18 MiB" free, more than
/// that file system could ever have.
#[test]
fn a_node_stopped_on_a_nearly_full_small_disk_starts_again_and_writes_resume_once_space_is_freed() {
    let mount_point = tempfile::tempdir().expect("tempdir");
    let _tmpfs = Tmpfs::mount(mount_point.path(), 24);
    let data_dir = mount_point.path().join("data");
    let args = vec!["--min-free-mb".to_string(), "1".to_string()];
    let mut server = Server::try_start_with(Kind::Rota, Some(data_dir), args).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..10 {
        assert_eq!(put(&server, &format!("k{i}"), "v").status(), 201, "{}", server.stderr_tail());
    }
    // Another program takes all but ~0.5 MiB, under --min-free-mb.
    let filler = mount_point.path().join("filler");
    let fill_bytes = free_bytes(mount_point.path()).saturating_sub(MIB as u64 / 2);
    std::fs::write(&filler, vec![7u8; fill_bytes as usize]).expect("write the filler");
    put_until("probe", 507, || put(&server, "probe", "x"));

    let status = server.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}: {}", server.stderr_tail());
    assert!(free_mib(mount_point.path()) < 16, "the test needs less than a log chunk free");
    server
        .try_restart()
        .unwrap_or_else(|e| panic!("no start on the nearly full disk: {e}"));
    let read = send(&server, &Request::new("GET", "/v2/keys/k3"));
    assert_eq!((read.status(), read.json()["node"]["value"].clone()), (200, "v".into()));
    put_until("while-short", 507, || put(&server, "while-short", "x"));
    assert_eq!(send(&server, &Request::new("DELETE", "/v2/keys/k0")).status(), 200);

    std::fs::remove_file(&filler).expect("remove the filler");
    let resumed = put_until("after", 201, || put(&server, "after", "x"));
    assert_eq!(resumed.status(), 201);
    assert_eq!(metric(&server, "rota_raft_data_dir_short_of_space"), 0.0);
    assert!(server.is_running(), "{}", server.stderr_tail());
}

/// Bytes free on the file system holding `dir`, from `df`.
fn free_bytes(dir: &Path) -> u64 {
    df_available(dir, "-PB1")
}

/// MiB free on the file system holding `dir`, from `df`.
fn free_mib(dir: &Path) -> u64 {
    df_available(dir, "-Pm")
}

/// The "Available" column of `df FLAG dir` (`-PB1`: bytes, `-Pm`: MiB).
fn df_available(dir: &Path, flag: &str) -> u64 {
    let output = Command::new("df").arg(flag).arg(dir).output().expect("run df");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|field| field.parse().ok())
        .unwrap_or_else(|| panic!("cannot read df's answer: {text}"))
}

/// In a cluster the leader's check decides: a write sent to a follower is forwarded, and
/// the leader's refusal comes back to the client as the same 507. Every member is told to
/// keep more free than the disk has, so the leader is short from its start.
#[test]
fn a_write_forwarded_to_a_leader_short_of_space_is_refused_with_507() {
    let demand = free_mib(&std::env::temp_dir()) + 1024;
    let mut config = ClusterConfig::new(3, "diskshort");
    config.kind = Kind::Rota;
    config.extra_args = vec!["--min-free-mb".into(), demand.to_string()];
    let cluster = Cluster::start(config);
    let leader = cluster
        .wait_leader(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    let follower = (0..cluster.nodes.len())
        .find(|&i| i != leader)
        .expect("a follower");
    let addr = cluster.nodes[follower].client_addr();
    let put = |key: &str| {
        http::send_with_timeout(
            addr,
            &Request::new("PUT", &format!("/v2/keys/{key}")).form("value=1"),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("PUT {key}: {e:?}\n{}", cluster.logs(20)))
    };
    // Until a member has first looked at its disk, a write may still pass.
    let refused = put_until("probe", 507, || put("probe"));
    assert_refused_for_space(&refused);
    eprintln!(
        "leader n{}, writes sent to n{}: {}",
        leader + 1,
        follower + 1,
        refused.text()
    );
    let fresh = put("fresh");
    assert_eq!(fresh.status(), 507, "{}", fresh.text());
    // A delete still goes through the follower to the leader and is applied there: etcd's
    // 100 for the key that was never written (a refused forward would be 507 or 503).
    let missing = http::send_with_timeout(
        addr,
        &Request::new("DELETE", "/v2/keys/fresh"),
        Duration::from_secs(10),
    )
    .expect("DELETE");
    assert_eq!(
        (missing.status(), missing.json()["errorCode"].clone()),
        (404, 100.into()),
        "{}",
        missing.text()
    );
}

/// A node nearly out of space, its open log chunk nearly full: it refuses even a job's
/// outcome (the next chunk could not be allocated, and a failed log write stops the node).
/// The worker keeps the lease and sends the outcome again; once space is back the job
/// succeeds on its first attempt, not run a second time.
#[test]
fn an_outcome_refused_on_a_nearly_full_disk_is_kept_by_its_worker_until_space_is_back() {
    let mount_point = tempfile::tempdir().expect("tempdir");
    // Room for the 52 MiB of log below three times over (the room kept for a snapshot).
    let _tmpfs = Tmpfs::mount(mount_point.path(), 300);
    let data_dir = mount_point.path().join("data");
    // Refuse writes late (1 MiB kept free), so the log can fill most of its open chunk.
    let mut server = Server::try_start_with(
        Kind::Rota,
        Some(data_dir),
        vec!["--min-free-mb".into(), "1".into(), "--snapshot-count".into(), "1000000".into()],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // 52 MiB of values over 16 MiB chunks (each allocated whole): the open one has less
    // than 16 MiB of room, as any chunk holding records does.
    let value = "v".repeat(MIB - 16);
    for i in 0..52 {
        assert_eq!(put(&server, &format!("big/{i}"), &value).status(), 201, "{}", server.stderr_tail());
    }
    let work = tempfile::tempdir().expect("tempdir");
    let go = work.path().join("go");
    let script = crate::jobs_util::script(
        work.path(),
        "wait.sh",
        &format!("while [ ! -e {} ]; do sleep 0.05; done; echo '\"done\"'", go.display()),
    );
    assert_eq!(submit_job(&server).status(), 202);
    let worker_args: Vec<String> = [
        "worker", "--endpoints", &server.client_url(), "--queue", "q", "--max-jobs", "1",
        "--lease-ttl", "3s", "--",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .chain([script.display().to_string()])
    .collect();
    let mut worker = Proc::spawn(work.path(), "worker", &worker_args, &[]);
    let deadline = Instant::now() + NOTICE_TIMEOUT;
    while !worker.stderr().contains("attempt 1 started") {
        assert!(Instant::now() < deadline, "the job did not start: {}", worker.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Another program fills the disk: less than a chunk free.
    let filler = mount_point.path().join("filler");
    let free = free_mib(mount_point.path());
    std::fs::write(&filler, vec![7u8; (free.saturating_sub(30) as usize) * MIB]).expect("write the filler");
    put_until("probe", 507, || put(&server, "probe", "x"));
    // Until the node has looked at the disk with the whole filler written: below a chunk
    // plus the resume margin (32 MiB) free, where outcomes are refused. A look taken while
    // the filler was half written can show less than before but more than that, and an
    // outcome sent then is rightly accepted (a CI run lost this race at a 60 MiB bound).
    let deadline = Instant::now() + NOTICE_TIMEOUT;
    while metric(&server, "rota_raft_data_dir_available_bytes") >= (32 * MIB) as f64 {
        assert!(Instant::now() < deadline, "the node did not see the filler: {}", server.stderr_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(&go, b"").expect("let the command finish");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !worker.stderr().contains("short of disk space") {
        assert!(Instant::now() < deadline, "the worker never held its outcome: {}\n{}", worker.stderr(), server.stderr_tail());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Held past its 3 s ttl by heartbeats.
    std::thread::sleep(Duration::from_secs(4));
    let job = send(&server, &Request::new("GET", "/v1/jobs/1")).json();
    assert_eq!(job["state"], "leased", "{job}");
    std::fs::remove_file(&filler).expect("remove the filler");
    let status = worker.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "worker: {status:?}: {}", worker.stderr());
    let job = send(&server, &Request::new("GET", "/v1/jobs/1")).json();
    assert_eq!((job["state"].clone(), job["attempts"].clone()), ("succeeded".into(), 1.into()), "{job}");
    assert_eq!(job["result"], "done", "{job}");
    assert!(server.is_running(), "{}", server.stderr_tail());
}

/// A node that comes back short of space after a clean stop (SIGTERM) asks at once for the
/// snapshot that lets its log go, refuses writes meanwhile, and takes them again once space
/// is freed, without a restart or a delete to set it off (a storage audit's restarted node
/// waited for a delete). What it counts for the next snapshot is unit-tested in
/// `rota_raft::tests` (`next_snapshot_bytes`).
#[test]
fn a_node_restarted_short_of_space_asks_for_a_snapshot() {
    let mount_point = tempfile::tempdir().expect("tempdir");
    let _tmpfs = Tmpfs::mount(mount_point.path(), TMPFS_MIB);
    let data_dir = mount_point.path().join("data");
    let mut server = Server::try_start_with(Kind::Rota, Some(data_dir), Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..10 {
        assert_eq!(put(&server, &format!("k{i}"), "1").status(), 201);
    }
    assert!(server.terminate(Duration::from_secs(10)).is_some_and(|status| status.success()), "{}", server.stderr_tail());
    // Less than --min-free-mb (64 MiB) free, more than a log chunk (16 MiB): short, and it starts.
    let filler = mount_point.path().join("filler");
    let fill_mib = free_mib(mount_point.path()).saturating_sub(40);
    std::fs::write(&filler, vec![0u8; fill_mib as usize * MIB]).expect("write the filler");
    server.restart();
    let deadline = Instant::now() + NOTICE_TIMEOUT;
    while !server.stderr_tail().contains("the data dir is short of space; a snapshot lets the log before it go") {
        assert!(Instant::now() < deadline, "no snapshot asked for after the restart:\n{}", server.stderr_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(put(&server, "refused", "1").status(), 507, "{}", server.stderr_tail());
    std::fs::remove_file(&filler).expect("remove the filler");
    put_until("after", 201, || put(&server, "after", "1"));
}
