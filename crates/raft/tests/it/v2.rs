//! The etcd v2 store through Raft: durability of real writes and time-driven expiry.

use std::time::Duration;

use rota_core::v2::{SetCommand, V2Command};
use rota_core::{Command, Response};

use crate::common::*;

fn set(key: &str, value: &str, ttl_s: Option<u64>) -> Command {
    Command::V2(V2Command::Set(SetCommand {
        key: key.into(),
        value: value.into(),
        ttl_s,
        ..Default::default()
    }))
}

fn value_of(node: &rota_raft::Node, key: &str) -> Option<String> {
    node.read(|state| {
        state
            .v2
            .get(key, false, false, state.time_ms())
            .ok()
            .and_then(|found| found.node.value.map(|value| value.to_string()))
    })
}

#[tokio::test]
async fn v2_writes_survive_restart_across_snapshots() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut config = config(temp.path());
    config.snapshot_entries = 10;
    let node = start(config.clone()).await;
    for i in 0..50 {
        let proposed = propose_ok(
            &node,
            set(&format!("/dir/key{}", i % 7), &format!("value {i}"), None),
        )
        .await;
        assert!(
            matches!(proposed.response, Response::V2(Ok(_))),
            "{proposed:?}"
        );
    }
    // 50 entries with a snapshot every 10: at least one snapshot was triggered; wait for it.
    let started = std::time::Instant::now();
    while node.status().snapshot_index == 0 {
        assert!(
            started.elapsed() < WAIT_MAX,
            "no snapshot: {:?}",
            node.status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = snapshot_of_state(&node);
    let etcd_index = node.subscribe().borrow().etcd_index;
    assert_eq!(etcd_index, before.v2.index());
    assert_eq!(etcd_index, 50, "one store index per successful set");
    let applied_index = node.status().applied_index;
    node.shutdown().await;

    let node = start(config).await;
    wait_applied(&node, applied_index).await;
    assert_eq!(snapshot_of_state(&node), before);
    assert_eq!(value_of(&node, "/dir/key0").as_deref(), Some("value 49"));
    assert_eq!(node.subscribe().borrow().etcd_index, 50);
    node.shutdown().await;
}

#[tokio::test]
async fn ticker_expires_ttl_keys_on_an_idle_leader() {
    let temp = tempfile::tempdir().expect("tempdir");
    let node = start(config(temp.path())).await;
    propose_ok(&node, set("/session", "alive", Some(1))).await;
    assert_eq!(value_of(&node, "/session").as_deref(), Some("alive"));
    let mut applied = node.subscribe();
    // Nobody else writes: only the ticker can make the key expire.
    tokio::time::timeout(
        Duration::from_secs(3),
        applied.wait_for(|_| {
            node.read(|state| {
                state
                    .v2
                    .get("/session", false, false, state.time_ms())
                    .is_err()
            })
        }),
    )
    .await
    .expect("key did not expire within 3 s")
    .expect("node stopped");
    // Expiry is a store mutation: set (1) then expire (2).
    assert_eq!(node.read(|state| state.v2.index()), 2);
    assert_eq!(node.read(|state| state.next_deadline_ms()), None);
    node.shutdown().await;
}
