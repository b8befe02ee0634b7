//! rota-raft: everything consensus. openraft types never leave this crate.
//!
//! A [`Node`] is one member of a Raft group (today always a one-member group; the peer
//! transport comes with the cluster issue). It owns:
//! - the Raft log (`log_store`: raft-log behind openraft's storage-v2 API, fsync before ack),
//! - the state machine and its snapshots (`state_machine`, `snapshot_file`),
//! - the proposer (`proposer`: group commit of concurrent commands into one entry),
//! - the ticker (`ticker`: proposes `Tick` on the leader when something is due),
//! - the peer network (`network`: today every peer is unreachable).
//!
//! Data dir layout: `<data_dir>/raft-log/` (raft-log's WAL chunks and its LOCK) and
//! `<data_dir>/snapshots/`. An absent or empty data dir is a new member; with nothing to
//! join it initializes a one-member cluster.

mod log_store;
mod metrics;
mod network;
mod proposer;
mod snapshot_file;
mod state_machine;
mod ticker;
mod types;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, Fatal, RaftError};
use rota_core::{Command, Response, State};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use crate::metrics::RaftMetrics;
pub use crate::types::{node_id_from_name, Member};

use crate::log_store::{LogOpenError, LogStore, LogStoreConfig};
use crate::network::PeerNetwork;
use crate::proposer::{ProposalSender, ProposerLimits};
use crate::snapshot_file::{SnapshotDir, SnapshotFileError};
use crate::state_machine::{SharedState, StateMachineStore};
use crate::types::Raft;

/// How long graceful shutdown waits for batches already handed to Raft.
const SHUTDOWN_IN_FLIGHT_WAIT_MS: u64 = 5_000;

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
    /// Batches handed to Raft and not yet applied, at most. While they are in flight the
    /// next batch fills. Measured on one node (openraft 0.9 runs one entry's append,
    /// commit and apply after another, ~4k entries/s here whatever this is), 1 gives the
    /// largest batches and the most commands/s; more only splits the same work into more,
    /// smaller entries.
    pub proposals_in_flight_max: usize,
    /// Proposals waiting for the proposer, at most; `propose` waits when full.
    pub proposals_queued_max: usize,
    /// Log entries kept before the latest snapshot (0: purge everything it covers). The
    /// cluster issue may raise it so a briefly lagging follower catches up from the log.
    pub log_entries_kept_after_snapshot: u64,
    /// etcd's `--heartbeat-interval`.
    pub heartbeat_interval_ms: u64,
    /// Election timeout, randomized in `[min, max)`; etcd's `--election-timeout` is the min.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// This member's URLs as stored in the membership (`/v2/members`).
    pub advertise_peer_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
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
            proposals_in_flight_max: 1,
            proposals_queued_max: 16_384,
            log_entries_kept_after_snapshot: 0,
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            advertise_peer_urls: Vec::new(),
            advertise_client_urls: Vec::new(),
        }
    }

    fn member(&self) -> Member {
        Member {
            name: self.name.clone(),
            peer_urls: self.advertise_peer_urls.clone(),
            client_urls: self.advertise_client_urls.clone(),
        }
    }

    fn openraft_config(&self) -> Result<openraft::Config, StartError> {
        let config = openraft::Config {
            cluster_name: "rota".to_string(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            // Large snapshots over a slow link (cluster issue): generous per-chunk timeout.
            install_snapshot_timeout: 10_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_entries.max(1)),
            max_in_snapshot_log_to_keep: self.log_entries_kept_after_snapshot,
            purge_batch_size: 1,
            // Entries are batches of up to batch_commands_max commands already.
            max_payload_entries: 64,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| StartError::Raft(format!("config: {e}")))
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
    /// The last log index removed from the log (covered by a snapshot); 0 if none.
    pub purged_index: u64,
}

#[derive(Clone, Debug, thiserror::Error)]
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
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Corrupt(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// A running node. Cheap to clone. Call [`Node::shutdown`] before dropping the last clone:
/// the background tasks (proposer, ticker, Raft) keep running until then.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    id: u64,
    name: String,
    raft: Raft,
    shared: Arc<SharedState>,
    proposals: ProposalSender,
    log_store: LogStore,
    metrics: RaftMetrics,
    shutdown_tx: watch::Sender<bool>,
    proposer_task: Mutex<Option<JoinHandle<()>>>,
    background_tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Serializes `shutdown` calls; true once done.
    shut_down: tokio::sync::Mutex<bool>,
}

impl Node {
    pub async fn start(config: NodeConfig) -> Result<Node, StartError> {
        let raft_config = Arc::new(config.openraft_config()?);
        if config.batch_commands_max == 0
            || config.batch_bytes_max == 0
            || config.proposals_queued_max == 0
        {
            return Err(StartError::Raft(
                "batch and queue limits must be positive".to_string(),
            ));
        }
        let id = node_id_from_name(&config.name);
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let metrics = RaftMetrics::default();

        let log_store = LogStore::open(
            &LogStoreConfig {
                dir: config.data_dir.join("raft-log"),
            },
            metrics.clone(),
        )
        .map_err(|error| match error {
            LogOpenError::Io { path, source } => StartError::DataDir { path, source },
            corrupt @ LogOpenError::Corrupt { .. } => StartError::Corrupt(corrupt.to_string()),
        })?;
        let snapshots =
            SnapshotDir::open(config.data_dir.join("snapshots")).map_err(snapshot_start_error)?;
        let (state_machine, shared) =
            StateMachineStore::open(snapshots, config.core.clone(), metrics.clone())
                .map_err(snapshot_start_error)?;
        let pristine = log_store
            .is_pristine()
            .map_err(|e| StartError::Raft(e.to_string()))?
            && !state_machine.has_snapshot();

        let raft = Raft::new(
            id,
            raft_config,
            PeerNetwork::default(),
            log_store.clone(),
            state_machine,
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        if pristine {
            let members = BTreeMap::from([(id, config.member())]);
            raft.initialize(members)
                .await
                .map_err(|e| StartError::Raft(format!("initialize: {e}")))?;
        }
        let node = Node::spawn_tasks(&config, id, raft, shared, log_store, metrics);
        node.lead_if_only_voter().await;
        Ok(node)
    }

    fn spawn_tasks(
        config: &NodeConfig,
        id: u64,
        raft: Raft,
        shared: Arc<SharedState>,
        log_store: LogStore,
        metrics: RaftMetrics,
    ) -> Node {
        let (shutdown_tx, _) = watch::channel(false);
        let (tx, rx) = mpsc::channel(config.proposals_queued_max);
        let proposals = ProposalSender {
            tx,
            batch_bytes_max: config.batch_bytes_max,
        };
        let limits = ProposerLimits {
            batch_commands_max: config.batch_commands_max,
            batch_bytes_max: config.batch_bytes_max,
            proposals_in_flight_max: config.proposals_in_flight_max,
        };
        let proposer_task = tokio::spawn(proposer::run_proposer(
            raft.clone(),
            shared.clone(),
            rx,
            limits,
            metrics.clone(),
            shutdown_tx.subscribe(),
        ));
        let ticker_task = tokio::spawn(ticker::run_ticker(
            proposals.clone(),
            raft.clone(),
            id,
            shared.clone(),
            shared.applied_tx.subscribe(),
            shutdown_tx.subscribe(),
        ));
        let metrics_task = tokio::spawn(follow_raft_metrics(
            raft.clone(),
            id,
            metrics.clone(),
            shutdown_tx.subscribe(),
        ));
        Node {
            inner: Arc::new(NodeInner {
                id,
                name: config.name.clone(),
                raft,
                shared,
                proposals,
                log_store,
                metrics,
                shutdown_tx,
                proposer_task: Mutex::new(Some(proposer_task)),
                background_tasks: Mutex::new(vec![ticker_task, metrics_task]),
                shut_down: tokio::sync::Mutex::new(false),
            }),
        }
    }

    /// A member that is the only voter need not wait an election timeout after a restart.
    /// (openraft already resumes leadership at once when its saved vote is its own committed
    /// vote; this covers a node that crashed while a candidate.)
    async fn lead_if_only_voter(&self) {
        let metrics = self.inner.raft.metrics().borrow().clone();
        let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
        if voters == [self.inner.id] && metrics.current_leader != Some(self.inner.id) {
            if let Err(error) = self.inner.raft.trigger().elect().await {
                tracing::warn!(%error, "could not trigger an election");
            }
        }
    }

    /// This node's Raft id (from its name).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Proposes `command` through the group-commit proposer; resolves once it is applied.
    pub async fn propose(&self, command: Command) -> Result<Proposed, ProposeError> {
        self.inner.proposals.propose(command).await
    }

    /// Confirms leadership with a quorum (ReadIndex) and waits until the state has applied
    /// up to the read index; a `read` after this sees every write acknowledged before the
    /// call began. For `quorum=true` reads.
    pub async fn linearizable_read(&self) -> Result<Applied, ProposeError> {
        match self.inner.raft.ensure_linearizable().await {
            Ok(_) => Ok(*self.inner.shared.applied_tx.borrow()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(ProposeError::NoLeader)
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(ProposeError::NoLeader)
            }
            Err(RaftError::Fatal(Fatal::Stopped)) => Err(ProposeError::ShuttingDown),
            Err(RaftError::Fatal(fatal)) => Err(ProposeError::Fatal(fatal.to_string())),
        }
    }

    /// Runs `f` on the current applied state (a short read lock; never held across await).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        self.inner.shared.read(f)
    }

    /// Changes on every applied entry.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Applied> {
        self.inner.shared.applied_tx.subscribe()
    }

    pub fn status(&self) -> Status {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        Status {
            id: self.inner.id,
            name: self.inner.name.clone(),
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            is_leader: metrics.current_leader == Some(self.inner.id),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            commit_index: self.inner.log_store.committed_index(),
            applied_index: self.inner.shared.applied_tx.borrow().raft_index,
            snapshot_index: metrics.snapshot.map(|id| id.index).unwrap_or(0),
            purged_index: metrics.purged.map(|id| id.index).unwrap_or(0),
        }
    }

    /// The members of the cluster (voters and learners) by node id.
    pub fn members(&self) -> Vec<(u64, Member)> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .nodes()
            .map(|(id, member)| (*id, member.clone()))
            .collect()
    }

    /// This node's metrics, for the server to register into its prometheus-client registry.
    pub fn metrics(&self) -> RaftMetrics {
        self.inner.metrics.clone()
    }

    /// Resolves when Raft stopped on its own: a storage error (a failed fsync or write) or a
    /// panic. The process should then exit non-zero rather than keep serving: nothing can be
    /// acknowledged any more, and retrying an fsync is unsafe. Never resolves while running.
    pub async fn wait_fatal(&self) -> String {
        let mut metrics = self.inner.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return fatal.to_string();
            }
            if metrics.changed().await.is_err() {
                return "raft stopped".to_string();
            }
        }
    }

    /// Stops the proposer and the ticker (answering queued proposals with `ShuttingDown`
    /// after in-flight batches finish), shuts Raft down and makes the log durable. Idempotent.
    pub async fn shutdown(&self) {
        let mut shut_down = self.inner.shut_down.lock().await;
        if *shut_down {
            return;
        }
        self.inner.shutdown_tx.send_replace(true);
        let proposer_task = self
            .inner
            .proposer_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = proposer_task {
            let wait = Duration::from_millis(SHUTDOWN_IN_FLIGHT_WAIT_MS);
            if tokio::time::timeout(wait, task).await.is_err() {
                tracing::warn!(
                    "proposer did not finish within {wait:?}; shutting raft down under it"
                );
            }
        }
        let tasks = std::mem::take(
            &mut *self
                .inner
                .background_tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for task in tasks {
            let _ = task.await;
        }
        if let Err(error) = self.inner.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
        let log_store = self.inner.log_store.clone();
        match tokio::task::spawn_blocking(move || log_store.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "closing the raft log"),
            Err(error) => tracing::error!(%error, "closing the raft log"),
        }
        *shut_down = true;
    }
}

fn snapshot_start_error(error: SnapshotFileError) -> StartError {
    match error {
        SnapshotFileError::Io { path, source } => StartError::DataDir { path, source },
        corrupt @ SnapshotFileError::Corrupt { .. } => StartError::Corrupt(corrupt.to_string()),
    }
}

/// Mirrors openraft's metrics into ours and counts leader changes.
async fn follow_raft_metrics(
    raft: Raft,
    id: u64,
    metrics: RaftMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut raft_metrics = raft.metrics();
    let mut leader = None;
    loop {
        {
            let current = raft_metrics.borrow_and_update();
            metrics.term.set(current.current_term as i64);
            metrics
                .last_log_index
                .set(current.last_log_index.unwrap_or(0) as i64);
            metrics
                .is_leader
                .set(i64::from(current.current_leader == Some(id)));
            if let Some(snapshot) = current.snapshot {
                metrics.snapshot_index.set(snapshot.index as i64);
            }
            if current.current_leader.is_some() && current.current_leader != leader {
                metrics.leader_changes.inc();
            }
            leader = current.current_leader;
        }
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            changed = raft_metrics.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod storage_suite_test;
