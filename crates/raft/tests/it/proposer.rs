//! Group commit: batching, ordering and limits of the proposer.

use std::collections::BTreeSet;

use futures::future::join_all;
use rota_core::{Command, Response};
use rota_raft::ProposeError;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_share_entries() {
    let temp = tempfile::tempdir().expect("tempdir");
    let node = start(config(temp.path())).await;
    let proposals = (0..256).map(|key| node.propose(keyed_tick(key)));
    let results = join_all(proposals).await;
    let indexes: BTreeSet<u64> = results
        .iter()
        .map(|result| result.as_ref().expect("propose").raft_index)
        .collect();
    assert!(
        indexes.len() < 256,
        "256 proposals took {} entries: no batching",
        indexes.len()
    );
    for result in results {
        assert_eq!(result.expect("propose").response, Response::Tick);
    }
    node.shutdown().await;
}

#[tokio::test]
async fn responses_follow_proposal_order_within_a_batch() {
    let temp = tempfile::tempdir().expect("tempdir");
    let node = start(config(temp.path())).await;
    // The same key twice with different requests: the first proposed wins, the second is
    // told the key was reused. join_all polls (and so queues) in order.
    let first = Command::Idempotent {
        key: "k".into(),
        fingerprint: 1,
        command: Box::new(Command::Tick),
    };
    let second = Command::Idempotent {
        key: "k".into(),
        fingerprint: 2,
        command: Box::new(Command::Tick),
    };
    let results = join_all([node.propose(first), node.propose(second)]).await;
    let responses: Vec<Response> = results
        .into_iter()
        .map(|result| result.expect("propose").response)
        .collect();
    assert_eq!(
        responses,
        [
            Response::Tick,
            Response::IdempotencyKeyReused { key: "k".into() }
        ]
    );
    node.shutdown().await;
}

#[tokio::test]
async fn batches_respect_the_command_limit() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut config = config(temp.path());
    config.batch_commands_max = 4;
    config.proposals_in_flight_max = 1;
    let node = start(config).await;
    let results = join_all((0..64).map(|key| node.propose(keyed_tick(key)))).await;
    let mut per_index = std::collections::BTreeMap::<u64, usize>::new();
    for result in results {
        *per_index
            .entry(result.expect("propose").raft_index)
            .or_default() += 1;
    }
    assert!(per_index.values().all(|&n| n <= 4), "{per_index:?}");
    assert!(
        per_index.values().any(|&n| n > 1),
        "never batched: {per_index:?}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn command_larger_than_a_batch_is_refused() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut config = config(temp.path());
    config.batch_bytes_max = 64;
    let node = start(config).await;
    let big = Command::Idempotent {
        key: "x".repeat(100),
        fingerprint: 1,
        command: Box::new(Command::Tick),
    };
    match node.propose(big).await {
        Err(ProposeError::TooLarge { bytes, limit: 64 }) => assert!(bytes > 64),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    propose_ok(&node, Command::Tick).await;
    node.shutdown().await;
}

#[tokio::test]
async fn entry_time_never_goes_backwards() {
    let temp = tempfile::tempdir().expect("tempdir");
    let node = start(config(temp.path())).await;
    let mut last_ms = 0;
    for key in 0..20 {
        propose_ok(&node, keyed_tick(key)).await;
        let time_ms = node.read(|state| state.time_ms());
        assert!(time_ms >= last_ms, "{time_ms} < {last_ms}");
        assert!(time_ms > 0);
        last_ms = time_ms;
    }
    node.shutdown().await;
}
