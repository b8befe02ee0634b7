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
    let files = snapshot_files(temp.path());
    assert_eq!(files.len(), 1);
    let mut bytes = std::fs::read(&files[0]).expect("read snapshot");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&files[0], bytes).expect("write snapshot");

    match Node::start(config).await {
        Err(StartError::Corrupt(message)) => {
            let file_name = files[0]
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
