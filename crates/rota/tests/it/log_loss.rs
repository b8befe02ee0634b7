//! A member whose log lost committed entries outside rota (cut, zeroed, deleted, an older
//! copy put back) must not start: Raft assumes no member forgets what it acknowledged, and
//! one that did could elect a leader that erases those entries from the whole cluster. The
//! commit mark (`<data-dir>/commit-mark`, see `crates/raft/src/commit_mark.rs`) lets it tell.
//! A user audit lost 200 acknowledged writes of a 3-node cluster this way before the mark.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, ClusterConfig};
use crate::cluster_membership::{terminate_cluster_node, wait_exit};
use crate::harness::{self, Server};
use crate::http::{self, Request};

const KEYS: usize = 200;

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().expect("run cp");
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

/// A 3-node cluster and its members as (leader A, follower B, follower C).
fn three_with_leader_first(name: &str) -> (Cluster, usize, usize, usize) {
    let cluster = Cluster::start(ClusterConfig::new(3, name));
    let a = cluster.wait_leader(Duration::from_secs(20)).expect("a leader");
    let (b, c) = match a {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    (cluster, a, b, c)
}

fn put(addr: std::net::SocketAddr, key: &str, value: &str) -> u16 {
    http::send(addr, &Request::new("PUT", &format!("/v2/keys{key}")).form(&format!("value={value}")))
        .map(|response| response.status())
        .unwrap_or(0)
}

/// The audit's scenario. Leader A, followers B and C. C goes down; 200 writes are
/// acknowledged by A and B; both stop; B's log is put back to a copy from before the writes.
/// B then refuses to start (without the mark it started, and with C elected a leader that
/// had none of the 200). A comes back, A and C elect a leader, and all 200 are there.
#[test]
fn a_member_whose_log_lost_committed_entries_refuses_to_start_and_the_cluster_keeps_them() {
    if harness::candidate_kind() != harness::Kind::Rota {
        eprintln!("rota only: the commit mark is rota's");
        return;
    }
    let (mut cluster, a, b, c) = three_with_leader_first("log-loss");
    let a_addr = cluster.nodes[a].client_addr();
    assert_eq!(put(a_addr, "/loss/before", "1"), 201);
    // B's log as it is now, from a clean stop.
    terminate_cluster_node(&mut cluster, b);
    let before = tempfile::tempdir().expect("tempdir");
    let b_log = cluster.nodes[b].data_dir().join("raft-log");
    copy_dir(&b_log, &before.path().join("raft-log"));
    cluster.restart(b);
    cluster.kill(c);
    for k in 0..KEYS {
        let status = put(a_addr, &format!("/loss/x{k:04}"), &format!("v{k}"));
        assert_eq!(status, 201, "write {k} with A and B up:\n{}", cluster.logs(20));
    }
    terminate_cluster_node(&mut cluster, a);
    terminate_cluster_node(&mut cluster, b);
    std::fs::remove_dir_all(&b_log).expect("remove B's log");
    copy_dir(&before.path().join("raft-log"), &b_log);

    cluster.start_again(b);
    let (status, _) = wait_exit(&mut cluster, b, Instant::now(), Duration::from_secs(20))
        .unwrap_or_else(|| panic!("B still runs:\n{}", cluster.nodes[b].log_tail(30)));
    assert!(!status.success(), "B exited with {status}");
    let log = cluster.nodes[b].log_tail(40);
    assert!(log.contains("lost committed entries"), "{log}");
    assert!(log.contains("commit-mark"), "{log}");

    cluster.restart(c);
    cluster.restart(a);
    let leader = cluster.wait_leader(Duration::from_secs(20)).expect("A and C elect a leader");
    let leader_addr = cluster.nodes[leader].client_addr();
    let listing = http::send(leader_addr, &Request::new("GET", "/v2/keys/loss?recursive=true&quorum=true"))
        .expect("list /loss");
    assert_eq!(listing.status(), 200, "{}", listing.text());
    let kept = listing.json()["node"]["nodes"].as_array().map_or(0, |nodes| nodes.len());
    assert_eq!(kept, KEYS + 1, "acknowledged keys under /loss after the damaged member was refused");
}

/// A single node: a snapshot deleted beside a purged log, an identity file deleted, a log
/// directory emptied. Each start is refused with what happened and what to do; nothing
/// starts under a made-up identity or from a log that lost what it had.
#[test]
fn a_single_node_refuses_to_start_on_a_damaged_data_dir_and_says_what_to_do() {
    let mut server = Server::try_start_with(
        harness::Kind::Rota,
        None,
        vec!["--snapshot-count".into(), "100".into()],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for k in 0..300 {
        assert_eq!(put(server.addr(), &format!("/d/k{k}"), "v"), 201);
    }
    let data_dir = server.data_dir();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(data_dir.join("snapshots")).map_or(0, |dir| dir.count()) == 0 {
        assert!(Instant::now() < deadline, "no snapshot after 300 writes with --snapshot-count 100");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.terminate(Duration::from_secs(10)).is_some_and(|status| status.success()));
    let pristine = tempfile::tempdir().expect("tempdir");
    let copy = pristine.path().join("copy");
    copy_dir(&data_dir, &copy);
    let reset = || {
        std::fs::remove_dir_all(&data_dir).expect("remove the data dir");
        copy_dir(&copy, &data_dir);
    };

    let refused = |server: &mut Server, damage: &str, expected: &[&str]| {
        let error = server.try_restart().expect_err(damage);
        for text in expected {
            assert!(error.contains(text), "{damage}: no {text:?} in:\n{error}");
        }
    };
    std::fs::remove_dir_all(data_dir.join("snapshots")).expect("delete the snapshots");
    refused(&mut server, "snapshot deleted", &["starts after index", "only in a snapshot", "put the snapshot back"]);
    reset();
    std::fs::remove_file(data_dir.join("identity")).expect("delete the identity");
    refused(&mut server, "identity deleted", &["identity is missing", "Put the file back"]);
    reset();
    for chunk in std::fs::read_dir(data_dir.join("raft-log")).expect("log dir").flatten() {
        if chunk.file_name().to_string_lossy().ends_with(".wal") {
            std::fs::remove_file(chunk.path()).expect("delete a log chunk");
        }
    }
    refused(&mut server, "log deleted", &["lost committed entries", "delete", "commit-mark"]);
    // Deleting the mark, as the refusal says, starts from what is left: the snapshot.
    std::fs::remove_file(data_dir.join("commit-mark")).expect("delete the mark");
    server.try_restart().unwrap_or_else(|e| panic!("without the mark: {e}"));
    assert!(server.stderr_tail().contains("starting from the snapshot alone"), "{}", server.stderr_tail());
    let index = server.store_index();
    assert!((100..300).contains(&index), "store index {index} after starting from the snapshot");
    assert!(server.terminate(Duration::from_secs(10)).is_some(), "stops on SIGTERM");
}

/// A voter back with a shorter log while the leader has lost its quorum: leader A, followers
/// B and C; C is down, A and B acknowledge writes, then B is put back on a copy of its data
/// dir from before them (the README says never to; its mark comes along, so it starts). A,
/// without a quorum for a while, had stopped its heartbeats, and openraft refused B's
/// campaigns for B's log before looking at their term: A neither saw the newer term nor
/// reached B, and no member led until C came back (a user audit waited 35 s and more). A now
/// answers such a campaign with a heartbeat: it steps down, wins the next election with its
/// longer log, and catches B up.
#[test]
fn a_voter_back_with_a_shorter_log_while_the_leader_lost_its_quorum_gets_a_leader() {
    if harness::candidate_kind() != harness::Kind::Rota {
        eprintln!("rota only: the heartbeat pause is rota's");
        return;
    }
    let (mut cluster, a, b, c) = three_with_leader_first("short-voter");
    let a_addr = cluster.nodes[a].client_addr();
    assert_eq!(put(a_addr, "/short/before", "1"), 201);
    terminate_cluster_node(&mut cluster, b);
    let copy = tempfile::tempdir().expect("tempdir");
    let b_dir = cluster.nodes[b].data_dir();
    copy_dir(&b_dir, &copy.path().join("b"));
    cluster.restart(b);
    terminate_cluster_node(&mut cluster, c);
    for k in 0..5 {
        let status = put(a_addr, &format!("/short/x{k}"), "v");
        assert_eq!(status, 201, "write {k} with A and B up:\n{}", cluster.logs(20));
    }
    terminate_cluster_node(&mut cluster, b);
    std::fs::remove_dir_all(&b_dir).expect("remove B's data dir");
    copy_dir(&copy.path().join("b"), &b_dir);
    // B stays down until A, without a quorum, has stopped its heartbeats.
    crate::jobs_util::wait_until(Duration::from_secs(30), "A stops its heartbeats", || {
        cluster.nodes[a].log_tail(usize::MAX).contains("stops sending heartbeats").then_some(())
    });
    cluster.start_again(b);
    crate::jobs_util::wait_until(Duration::from_secs(30), "a write through A with C still down", || {
        (put(a_addr, "/short/after", "1") == 201).then_some(())
    });
    let b_addr = cluster.nodes[b].client_addr();
    crate::jobs_util::wait_until(Duration::from_secs(30), "B has the writes it had lost", || {
        let read = http::send(b_addr, &Request::new("GET", "/v2/keys/short/x4")).ok()?;
        (read.status() == 200).then_some(())
    });
}
