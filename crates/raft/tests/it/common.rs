//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rota_core::{Command, State};
use rota_raft::{Node, NodeConfig, Proposed};

/// Upper bound for anything a test waits for (leadership, an applied index).
pub const WAIT_MAX: Duration = Duration::from_secs(10);

pub fn config(data_dir: &Path) -> NodeConfig {
    NodeConfig::single("test-node", data_dir)
}

/// A command that changes the state (an idempotency record per key) and always succeeds.
pub fn keyed_tick(key: u64) -> Command {
    Command::Idempotent {
        key: format!("key-{key}"),
        fingerprint: key,
        command: Box::new(Command::Tick),
    }
}

pub async fn start(config: NodeConfig) -> Node {
    let node = Node::start(config).await.expect("start node");
    wait_leader(&node).await;
    node
}

pub async fn wait_leader(node: &Node) {
    let started = Instant::now();
    while !node.status().is_leader {
        assert!(
            started.elapsed() < WAIT_MAX,
            "no leader after {WAIT_MAX:?}: {:?}",
            node.status()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the node has applied at least `raft_index`.
pub async fn wait_applied(node: &Node, raft_index: u64) {
    let mut applied = node.subscribe();
    tokio::time::timeout(
        WAIT_MAX,
        applied.wait_for(|applied| applied.raft_index >= raft_index),
    )
    .await
    .expect("applied index not reached in time")
    .expect("node stopped");
}

pub async fn propose_ok(node: &Node, command: Command) -> Proposed {
    node.propose(command).await.expect("propose")
}

pub fn snapshot_of_state(node: &Node) -> State {
    node.read(|state| state.clone())
}

/// Copies a (stopped) node's data dir to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The raft-log chunk files of a data dir, in log order.
pub fn log_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join("raft-log"))
        .expect("read raft-log dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    files.sort();
    files
}

pub fn snapshot_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir.join("snapshots"))
        .expect("read snapshots dir")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "snap"))
        .collect();
    files.sort();
    files
}

/// Proposes keyed ticks (keys from `first_key` on) until `done(status)` holds; returns the
/// next unused key. Snapshots are built in the background and skipped while one is being
/// built, so tests that need one keep writing until it exists rather than guessing a count.
pub async fn propose_until(
    node: &Node,
    first_key: u64,
    done: impl Fn(&rota_raft::Status) -> bool,
) -> u64 {
    let started = Instant::now();
    let mut key = first_key;
    while !done(&node.status()) {
        assert!(
            started.elapsed() < WAIT_MAX,
            "condition not reached: {:?}",
            node.status()
        );
        propose_ok(node, keyed_tick(key)).await;
        key += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    key
}
