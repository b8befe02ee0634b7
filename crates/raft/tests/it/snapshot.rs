//! Snapshot files on start-up: corruption is an error, leftovers are ignored.

use rota_raft::{Node, NodeConfig, StartError};

use crate::common::*;

/// A stopped node whose data dir holds a snapshot; returns its config and final state.
async fn node_with_snapshot(data_dir: &std::path::Path) -> (NodeConfig, rota_core::State, u64) {
    let mut config = config(data_dir);
    config.snapshot_entries = 8;
    let node = start(config.clone()).await;
    for key in 0..40 {
        propose_ok(&node, keyed_tick(key)).await;
    }
    propose_until(&node, 40, |status| status.snapshot_index >= 32).await;
    let state = snapshot_of_state(&node);
    let applied_index = node.status().applied_index;
    node.shutdown().await;
    (config, state, applied_index)
}

#[tokio::test]
async fn corrupt_snapshot_stops_start_up_with_its_path() {
    let temp = tempfile::tempdir().expect("tempdir");
    let (config, _, _) = node_with_snapshot(temp.path()).await;
    // The newest, which start-up loads (an older one may not be removed yet when the node
    // stops right after a newer one was written).
    let newest = snapshot_files(temp.path()).pop().expect("a snapshot file");
    let mut bytes = std::fs::read(&newest).expect("read snapshot");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&newest, bytes).expect("write snapshot");

    match Node::start(config).await {
        Err(StartError::Corrupt(message)) => {
            let file_name = newest
                .file_name()
                .expect("name")
                .to_string_lossy()
                .to_string();
            assert!(message.contains(&file_name), "{message}");
            assert!(message.contains("checksum"), "{message}");
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("started on a corrupt snapshot"),
    }
}

#[tokio::test]
async fn leftover_temp_snapshot_is_ignored() {
    let temp = tempfile::tempdir().expect("tempdir");
    let (config, state, applied_index) = node_with_snapshot(temp.path()).await;
    // What a crash in the middle of writing a newer snapshot leaves behind.
    let leftover = temp
        .path()
        .join("snapshots/snapshot-00000000000099999999-00000000000000000001.snap.tmp");
    std::fs::write(&leftover, b"ROTASNAP half-written").expect("write leftover");

    let node = start(config).await;
    wait_applied(&node, applied_index).await;
    assert_eq!(snapshot_of_state(&node), state);
    node.shutdown().await;
}

/// With a count of entries that is never reached, a snapshot still comes once the entries
/// appended since start pass `snapshot_log_bytes`, and not before.
#[tokio::test]
async fn a_snapshot_comes_once_the_log_grows_past_its_byte_limit() {
    use rota_core::v2::{SetCommand, V2Command};
    const VALUE_BYTES: usize = 4096;
    const LIMIT: u64 = 256 << 10;
    let temp = tempfile::tempdir().expect("tempdir");
    let mut config = config(temp.path());
    config.snapshot_entries = 1_000_000;
    config.snapshot_log_bytes = LIMIT;
    let node = start(config).await;
    let started = std::time::Instant::now();
    let mut written = 0u64;
    while node.status().snapshot_index == 0 {
        assert!(
            started.elapsed() < WAIT_MAX,
            "no snapshot after {written} writes of {VALUE_BYTES} bytes: {:?}",
            node.status()
        );
        let set = SetCommand {
            key: format!("/big/{written}"),
            value: "v".repeat(VALUE_BYTES),
            ..SetCommand::default()
        };
        propose_ok(&node, rota_core::Command::V2(V2Command::Set(set))).await;
        written += 1;
    }
    let status = node.status();
    assert!(
        status.snapshot_index * VALUE_BYTES as u64 >= LIMIT,
        "snapshot at index {} before {LIMIT} bytes were written: {status:?}",
        status.snapshot_index
    );
    assert_eq!(snapshot_files(temp.path()).len(), 1);
    node.shutdown().await;
}

/// The entries kept behind a snapshot (for a follower a little behind) are bounded in bytes
/// as well as in number: with 1,000 entries kept, entries of a few MiB each left gigabytes
/// of log on disk behind every snapshot. A quarter of `snapshot_log_bytes` is kept.
#[tokio::test]
async fn the_log_kept_behind_a_snapshot_is_bounded_in_bytes() {
    use rota_core::v2::{SetCommand, V2Command};
    const VALUE_BYTES: u64 = 4096;
    const LIMIT: u64 = 8 << 20;
    let temp = tempfile::tempdir().expect("tempdir");
    let mut config = config(temp.path());
    config.snapshot_entries = 1_000_000;
    config.snapshot_log_bytes = LIMIT;
    config.log_entries_kept_after_snapshot = 1_000;
    let node = start(config).await;
    let started = std::time::Instant::now();
    let mut written = 0u64;
    while node.status().snapshot_index == 0 {
        assert!(started.elapsed() < WAIT_MAX, "no snapshot after {written} writes: {:?}", node.status());
        let set = SetCommand {
            key: format!("/big/{written}"),
            value: "v".repeat(VALUE_BYTES as usize),
            ..SetCommand::default()
        };
        propose_ok(&node, rota_core::Command::V2(V2Command::Set(set))).await;
        written += 1;
    }
    let snapshot_index = node.status().snapshot_index;
    // A quarter of the limit is 512 entries of 4 KiB; the count alone would keep 1,000.
    let kept_max = LIMIT / 4 / VALUE_BYTES;
    assert!(snapshot_index > 1_000 + kept_max, "the test needs a snapshot past 1,000 entries: {snapshot_index}");
    let deadline = std::time::Instant::now() + WAIT_MAX;
    loop {
        let status = node.status();
        if status.purged_index + kept_max >= snapshot_index {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "more than {kept_max} entries of {VALUE_BYTES} bytes kept behind the snapshot at {snapshot_index}: {status:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let status = node.status();
    assert!(status.purged_index <= snapshot_index, "purged past the snapshot: {status:?}");
    node.shutdown().await;
}

/// `--max-history` is the node's own setting: a node restarted from a snapshot with another
/// one keeps that many events (the snapshot carried the size it was written with, and the
/// restarted node kept it).
#[tokio::test]
async fn a_restart_from_a_snapshot_keeps_the_history_size_it_is_given() {
    use rota_core::v2::{SetCommand, V2Command};
    let temp = tempfile::tempdir().expect("tempdir");
    let mut config = config(temp.path());
    config.snapshot_entries = 8;
    config.core.v2_history_max = 5;
    let set = |n: u64| {
        rota_core::Command::V2(V2Command::Set(SetCommand { key: format!("/h/{n}"), value: "v".into(), ..SetCommand::default() }))
    };
    let node = start(config.clone()).await;
    for n in 0..40 {
        propose_ok(&node, set(n)).await;
    }
    propose_until(&node, 40, |status| status.snapshot_index >= 32).await;
    node.shutdown().await;

    config.core.v2_history_max = 100;
    let node = start(config).await;
    for n in 40..200 {
        propose_ok(&node, set(n)).await;
    }
    let (index, history_max, watched) = node.read(|state| {
        let index = state.v2.index();
        (index, state.v2.history_max(), state.v2.watch("/h", true, index - 99, false).is_ok())
    });
    assert_eq!(history_max, 100);
    assert!(watched, "an index 100 events back is in the history at index {index}");
    let cleared = node.read(|state| state.v2.watch("/h", true, index - 100, false).is_err());
    assert!(cleared, "an index 101 events back is not");
    node.shutdown().await;
}
