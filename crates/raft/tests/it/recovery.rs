//! Start-up, restart and recovery of a single node.

use std::time::{Duration, Instant};

use rota_raft::{Node, ProposeError, StartError};

use crate::common::*;

#[tokio::test]
async fn existing_empty_data_dir_initializes_a_one_member_cluster() {
    let temp = tempfile::tempdir().expect("tempdir");
    let node = start(config(temp.path())).await;
    let members = node.members();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0].0, node.id());
    assert_eq!(members[0].1.name, "test-node");
    assert_eq!(node.id(), rota_raft::node_id_from_name("test-node"));
    node.shutdown().await;
}

#[tokio::test]
async fn missing_data_dir_is_created() {
    let temp = tempfile::tempdir().expect("tempdir");
    let data_dir = temp.path().join("a/b/node.rota");
    let node = start(config(&data_dir)).await;
    propose_ok(&node, keyed_tick(1)).await;
    node.shutdown().await;
    assert!(data_dir.join("raft-log").is_dir());
}

#[tokio::test]
async fn restart_recovers_identical_state_from_the_log() {
    let temp = tempfile::tempdir().expect("tempdir");
    let node = start(config(temp.path())).await;
    for key in 0..100 {
        propose_ok(&node, keyed_tick(key)).await;
    }
    let before = snapshot_of_state(&node);
    let applied_before = node.status().applied_index;
    node.shutdown().await;

    let node = start(config(temp.path())).await;
    wait_applied(&node, applied_before).await;
    assert_eq!(snapshot_of_state(&node), before);
    // A repeated key after restart is a replay: the idempotency record survived.
    let replay = propose_ok(&node, keyed_tick(7)).await;
    assert!(
        matches!(replay.response, rota_core::Response::Replayed(_)),
        "{replay:?}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn restart_recovers_from_snapshot_and_log_after_purge() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut config = config(temp.path());
    config.snapshot_entries = 16;
    let node = start(config.clone()).await;
    for key in 0..100 {
        propose_ok(&node, keyed_tick(key)).await;
    }
    propose_until(&node, 100, |status| status.purged_index >= 64).await;
    let status = node.status();
    assert!(status.snapshot_index >= status.purged_index, "{status:?}");
    let before = snapshot_of_state(&node);
    node.shutdown().await;
    assert_eq!(
        snapshot_files(temp.path()).len(),
        1,
        "older snapshots are removed"
    );

    let node = start(config).await;
    let recovered = node.status();
    assert!(recovered.snapshot_index >= 64, "{recovered:?}");
    assert!(
        recovered.purged_index >= 64,
        "the purged log stays purged: {recovered:?}"
    );
    wait_applied(&node, status.applied_index).await;
    assert_eq!(snapshot_of_state(&node), before);
    node.shutdown().await;
}

#[tokio::test]
async fn single_voter_leads_at_once_after_restart() {
    let temp = tempfile::tempdir().expect("tempdir");
    let node = start(config(temp.path())).await;
    propose_ok(&node, keyed_tick(1)).await;
    let term_before = node.status().term;
    node.shutdown().await;

    // From `Node::start`'s return: opening the data dir (disk I/O a loaded machine
    // stretches) is not part of the wait for leadership.
    let node = Node::start(config(temp.path())).await.expect("start node");
    let started = Instant::now();
    wait_leader(&node).await;
    let took = started.elapsed();
    // It resumed leading in its term: no election at all, so no election timeout (at least
    // 1 s) was waited out.
    assert_eq!(node.status().term, term_before, "an election after the restart");
    assert!(took < Duration::from_millis(500), "leader after {took:?}");
    propose_ok(&node, keyed_tick(2)).await;
    node.shutdown().await;
}

#[tokio::test]
async fn second_node_on_the_same_data_dir_is_refused() {
    let temp = tempfile::tempdir().expect("tempdir");
    let node = start(config(temp.path())).await;
    match Node::start(config(temp.path())).await {
        Err(StartError::DataDir { .. }) => {}
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("two nodes opened one data dir"),
    }
    node.shutdown().await;
}

#[tokio::test]
async fn proposals_after_shutdown_are_refused() {
    let temp = tempfile::tempdir().expect("tempdir");
    let node = start(config(temp.path())).await;
    node.shutdown().await;
    node.shutdown().await; // idempotent
    assert!(matches!(
        node.propose(keyed_tick(1)).await,
        Err(ProposeError::ShuttingDown)
    ));
}

#[tokio::test]
async fn linearizable_read_sees_every_acknowledged_write() {
    let temp = tempfile::tempdir().expect("tempdir");
    let node = start(config(temp.path())).await;
    for key in 0..10 {
        let proposed = propose_ok(&node, keyed_tick(key)).await;
        let applied = node.linearizable_read().await.expect("read index");
        assert!(
            applied.raft_index >= proposed.raft_index,
            "{applied:?} < {proposed:?}"
        );
    }
    node.shutdown().await;
}

#[tokio::test]
async fn subscribers_see_every_applied_index() {
    let temp = tempfile::tempdir().expect("tempdir");
    let node = start(config(temp.path())).await;
    let mut applied = node.subscribe();
    let proposed = propose_ok(&node, keyed_tick(1)).await;
    let seen = *applied
        .wait_for(|applied| applied.raft_index >= proposed.raft_index)
        .await
        .expect("watch");
    assert_eq!(seen.raft_term, proposed.raft_term);
    node.shutdown().await;
}

#[tokio::test]
async fn idle_leader_writes_nothing() {
    let temp = tempfile::tempdir().expect("tempdir");
    let node = start(config(temp.path())).await;
    propose_ok(&node, keyed_tick(1)).await;
    let before = node.status();
    // Several heartbeat intervals: a ticker or anything else writing would show here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = node.status();
    assert_eq!(
        after.last_log_index, before.last_log_index,
        "{before:?} -> {after:?}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn metrics_follow_the_log() {
    let temp = tempfile::tempdir().expect("tempdir");
    let node = start(config(temp.path())).await;
    let proposed = propose_ok(&node, keyed_tick(1)).await;
    let metrics = node.metrics();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    assert!(metrics.applied_index.get() as u64 >= proposed.raft_index);
    assert!(metrics.commit_index.get() as u64 >= proposed.raft_index);
    assert_eq!(metrics.is_leader.get(), 1);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(text.contains("rota_raft_log_fsync_seconds_count"), "{text}");
    assert!(
        !text.contains("rota_raft_log_fsync_seconds_count 0"),
        "no fsync observed: {text}"
    );
    node.shutdown().await;
}
