//! rota-raft: everything consensus. openraft types never leave this crate.
//!
//! (Skeleton: the public contract below is what `rota-server` builds on.)

use std::path::PathBuf;
use std::sync::Arc;

use rota_core::{Command, Response, State};

/// How to start a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// `--name`; the node id derives from it.
    pub name: String,
    pub data_dir: PathBuf,
    pub core: rota_core::Config,
    /// Take a snapshot (and purge the log before it) after this many applied entries.
    pub snapshot_entries: u64,
    /// Group commit bounds: one Raft entry holds at most this many commands / bytes.
    pub batch_commands_max: usize,
    pub batch_bytes_max: usize,
}

impl NodeConfig {
    pub fn single(name: impl Into<String>, data_dir: impl Into<PathBuf>) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            data_dir: data_dir.into(),
            core: rota_core::Config::default(),
            snapshot_entries: 10_000,
            batch_commands_max: 1024,
            batch_bytes_max: 4 << 20,
        }
    }
}

/// What the state machine reports after each applied entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub raft_index: u64,
    pub raft_term: u64,
    /// The etcd v2 store index after this entry.
    pub etcd_index: u64,
}

/// A proposal's outcome: the command's response and the Raft position it was applied at.
#[derive(Clone, Debug, PartialEq)]
pub struct Proposed {
    pub response: Response,
    pub raft_index: u64,
    pub raft_term: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub id: u64,
    pub name: String,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub is_leader: bool,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("no leader")]
    NoLeader,
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("command too large: {bytes} bytes, limit {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("raft: {0}")]
    Fatal(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data dir {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Corrupt(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    _inner: Arc<()>,
}

impl Node {
    pub async fn start(config: NodeConfig) -> Result<Node, StartError> {
        let _ = config;
        todo!()
    }

    /// Proposes `command` through the group-commit proposer; resolves once it is applied.
    pub async fn propose(&self, command: Command) -> Result<Proposed, ProposeError> {
        let _ = command;
        todo!()
    }

    /// Runs `f` on the current applied state (a short read lock; never held across await).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let _ = f;
        todo!()
    }

    /// Changes on every applied entry.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Applied> {
        todo!()
    }

    pub fn status(&self) -> Status {
        todo!()
    }

    pub async fn shutdown(&self) {}
}
