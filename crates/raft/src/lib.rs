//! rota-raft: everything consensus. openraft types never leave this crate.
//!
//! A [`Node`] is one member of a Raft group of one or more members. It owns:
//! - the Raft log (`log_store`: raft-log behind openraft's storage-v2 API, fsync before ack),
//! - the state machine and its snapshots (`state_machine`, `snapshot_file`),
//! - the proposer (`proposer`: group commit of concurrent commands into one entry),
//! - the ticker (`ticker`: proposes `Tick` on the leader when something is due),
//! - the peer transport (`peer`: the wire protocol; `network`: its client; the server side
//!   is [`Node::handle_peer`], mounted by the server crate on the peer listener),
//! - forwarding (`forward`: a follower sends proposals and read-index requests to the
//!   leader) and membership (`membership`: etcd's member operations, learner promotion,
//!   publishing this member's name and client URLs, leadership hand-over).
//!
//! Data dir layout: `<data_dir>/identity` (cluster id and node id, see `identity`),
//! `<data_dir>/raft-log/` (raft-log's WAL chunks and its LOCK), `<data_dir>/snapshots/` and
//! `<data_dir>/commit-mark` (what the log held committed, see `commit_mark`).
//!
//! Bootstrap: a data dir without Raft state and `ClusterState::New` initializes the full
//! initial membership. **Every** initial member calls `initialize` with the same
//! membership (names and peer URLs from `--initial-cluster`, no client URLs, so the entry
//! is byte-identical on every member): no member has to wait for another to come up first,
//! and openraft writes that membership at log id (0, 0) on each, so they agree. Each member
//! then publishes its client URLs through the leader (as etcd does). `ClusterState::Existing`
//! with an empty data dir asks the listed peers for the membership and finds its own id by
//! its peer URLs (the leader assigned it on `POST /v2/members`); it then waits for the
//! leader to replicate to it. A data dir with state restarts from it and ignores the
//! initial flags.

mod commit_mark;
mod disk;
mod forward;
mod identity;
mod log_store;
mod membership;
mod force_new_cluster;
mod metrics;
mod network;
mod pause;
pub mod peer;
mod proposer;
mod snapshot_file;
mod spin;
mod split_vote;
mod state_machine;
mod ticker;
mod types;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rota_core::{Command, Response, State};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use crate::metrics::RaftMetrics;

/// Whether `ROTA_TEST_MUTANT=<name>` switches on a deliberately broken behaviour, a negative
/// control of the test suite (docs/testing.md, "Why these mutants"). Only in a **debug**
/// build: a release build never reads the variable. `older-leader` (here, in `forward`):
/// the leader refuses forwarded commands marked for their sender, as a rota from before
/// the mark does, so the follower's fallback to plain forwarding is tested.
pub fn test_mutant_is(name: &str) -> bool {
    #[cfg(debug_assertions)]
    {
        static MUTANT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        MUTANT.get_or_init(|| std::env::var("ROTA_TEST_MUTANT").ok()).as_deref() == Some(name)
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = name;
        false
    }
}
pub use crate::network::FollowerStats;
pub use crate::peer::{ClusterInfo, PeerError, PeerRpc};
pub use crate::types::{cluster_id, node_id_from_name, parse_initial_cluster, unnamed_members_refused, Member};

use crate::identity::Identity;
use crate::log_store::{LogOpenError, LogStore, LogStoreConfig};
use crate::network::{PeerNetwork, PeerTransport};
use crate::proposer::{ProposalSender, ProposerLimits};
use crate::snapshot_file::{SnapshotDir, SnapshotFileError};
use crate::state_machine::{SharedState, StateMachineStore};
use crate::types::{NodeId, Raft};

/// How long graceful shutdown waits for batches already handed to Raft.
const SHUTDOWN_IN_FLIGHT_WAIT_MS: u64 = 5_000;

/// `--initial-cluster-state`: bootstrap a new cluster, or join an existing one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterState {
    #[default]
    New,
    Existing,
}

/// Whether `data_dir` holds a Raft log (a chunk file of raft-log's WAL).
fn has_log(data_dir: &Path) -> bool {
    std::fs::read_dir(data_dir.join(LOG_DIR)).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|entry| entry.file_name().to_string_lossy().ends_with(".wal"))
    })
}

/// The data dir's subdirectories: the Raft log and the snapshots.
const LOG_DIR: &str = "raft-log";
const SNAPSHOT_DIR: &str = "snapshots";

/// [`NodeConfig::min_free_bytes`] by default: one log chunk.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 << 20;

/// How to start a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// `--name`; an initial member's node id derives from it.
    pub name: String,
    pub data_dir: PathBuf,
    pub core: rota_core::Config,
    /// Take a snapshot (and purge the log before it) after this many applied entries.
    pub snapshot_entries: u64,
    /// ... or once this many bytes of entries were appended since the last one: an entry
    /// is a batch of up to `batch_commands_max` commands, so counting entries alone let a
    /// million queued jobs sit in 112 MB of log that every start re-applied.
    pub snapshot_log_bytes: u64,
    /// Writes are refused while the data dir's file system has less than this plus room
    /// for the next snapshot free (see `disk`); 0 refuses nothing.
    pub min_free_bytes: u64,
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
    /// Log entries kept before the latest snapshot (0: purge everything it covers), so a
    /// briefly lagging follower catches up from the log rather than by snapshot.
    pub log_entries_kept_after_snapshot: u64,
    /// etcd's `--heartbeat-interval`.
    pub heartbeat_interval_ms: u64,
    /// openraft's election timeout, randomized in `[min, max)` once per process. A follower
    /// campaigns after `max + [min, max)` without hearing from a leader (openraft adds a
    /// leader lease of `max`); see [`NodeConfig::set_election_timeout_ms`].
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// This member's URLs as stored in the membership (`/v2/members`).
    pub advertise_peer_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    /// The local address this member's outgoing peer connections come from; `None`: the
    /// operating system picks it. `rota serve` sets it when the member listens for peers on
    /// one loopback address (see `peer_source_ip` there).
    pub peer_source_ip: Option<std::net::IpAddr>,
    /// False for a one-member cluster started without a peer listener: members cannot be
    /// added to it (a new member could not reach it), and `add_member` says so.
    pub listens_for_peers: bool,
    /// The ports this member listens for peers on (empty: not known, nothing checked). A
    /// one-member cluster registered at peer URLs on none of them (started once without
    /// `--initial-advertise-peer-urls`) cannot take members either: they would look for it
    /// there.
    pub peer_listen_ports: Vec<u16>,
    /// `--initial-cluster` as members (names and peer URLs). Empty: this member alone.
    pub initial_cluster: Vec<Member>,
    /// `--initial-cluster-state`.
    pub initial_cluster_state: ClusterState,
    /// `--initial-cluster-token`: peers with another token are refused.
    pub cluster_token: String,
    /// The cluster id of a new cluster; `None`: [`cluster_id`] of the initial cluster and
    /// the token. Ignored once the data dir has an identity.
    pub cluster_id: Option<u64>,
    /// `--force-new-cluster`: start as the only member of the cluster in the data dir,
    /// keeping everything it holds committed (see `force_new_cluster`).
    pub force_new_cluster: bool,
}

impl NodeConfig {
    /// etcd's `--initial-cluster-token` default.
    pub const DEFAULT_CLUSTER_TOKEN: &'static str = "etcd-cluster";

    pub fn single(name: impl Into<String>, data_dir: impl Into<PathBuf>) -> NodeConfig {
        let mut config = NodeConfig {
            name: name.into(),
            data_dir: data_dir.into(),
            core: rota_core::Config::default(),
            snapshot_entries: 100_000,
            snapshot_log_bytes: 64 << 20,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
            batch_commands_max: 1024,
            batch_bytes_max: 4 << 20,
            proposals_in_flight_max: 1,
            proposals_queued_max: 16_384,
            log_entries_kept_after_snapshot: 0,
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 0,
            election_timeout_max_ms: 0,
            advertise_peer_urls: Vec::new(),
            advertise_client_urls: Vec::new(),
            peer_source_ip: None,
            listens_for_peers: true,
            peer_listen_ports: Vec::new(),
            initial_cluster: Vec::new(),
            initial_cluster_state: ClusterState::New,
            cluster_token: NodeConfig::DEFAULT_CLUSTER_TOKEN.to_string(),
            cluster_id: None,
            force_new_cluster: false,
        };
        config.set_election_timeout_ms(DEFAULT_ELECTION_TIMEOUT_MS);
        config
    }

    /// Maps etcd's `--election-timeout` (a follower campaigns after about this long without
    /// a heartbeat; etcd randomizes in `[t, 2t)`) onto openraft 0.9, whose follower
    /// campaigns after `lease + timeout` with `lease = max` and `timeout` drawn from
    /// `[min, max)`: min = 0.4 t and max = 0.6 t give a campaign after `[t, 1.2 t)` of
    /// silence, so the default 1000 ms fails over in about 1.1-1.4 s and still needs ten
    /// missed heartbeats (100 ms) in a row to start an election.
    pub fn set_election_timeout_ms(&mut self, election_timeout_ms: u64) {
        let min_ms = (election_timeout_ms * 2 / 5).max(self.heartbeat_interval_ms + 1);
        self.election_timeout_min_ms = min_ms;
        self.election_timeout_max_ms = (election_timeout_ms * 3 / 5).max(min_ms + 1);
    }

    fn member(&self) -> Member {
        Member {
            name: self.name.clone(),
            peer_urls: self.advertise_peer_urls.clone(),
            client_urls: self.advertise_client_urls.clone(),
        }
    }

    /// The membership a new cluster starts with. Several members: names and peer URLs only,
    /// identical on every member (see the module doc). One member: itself with its URLs.
    fn initial_membership(&self) -> BTreeMap<NodeId, Member> {
        if self.initial_cluster.len() <= 1 {
            return BTreeMap::from([(node_id_from_name(&self.name), self.member())]);
        }
        self.initial_cluster
            .iter()
            .map(|member| {
                let member = Member {
                    name: member.name.clone(),
                    peer_urls: member.peer_urls.clone(),
                    client_urls: Vec::new(),
                };
                (node_id_from_name(&member.name), member)
            })
            .collect()
    }

    fn initial_cluster_id(&self) -> u64 {
        if let Some(id) = self.cluster_id {
            return id;
        }
        let members = if self.initial_cluster.is_empty() {
            vec![self.member()]
        } else {
            self.initial_cluster.clone()
        };
        let flag: Vec<String> = members
            .iter()
            .flat_map(|member| {
                member
                    .peer_urls
                    .iter()
                    .map(move |url| format!("{}={url}", member.name))
            })
            .collect();
        cluster_id(&flag.join(","), &self.cluster_token)
    }

    /// How long a request waits for a leader to appear before answering `NoLeader`: an
    /// election after a leader's crash (lease + timeout + a vote round) and one more round
    /// for a split vote, so that a client that does not retry (python-etcd raises on a 503)
    /// rides out an ordinary failover.
    fn leader_wait(&self) -> Duration {
        Duration::from_millis(3 * self.election_timeout_max_ms + LEADER_WAIT_MARGIN_MS)
    }

    /// etcd's request timeout: 5 s plus two election timeouts (7 s with the defaults).
    fn request_timeout(&self) -> Duration {
        let election_timeout_ms = self.election_timeout_max_ms * 5 / 3;
        Duration::from_millis(5_000 + 2 * election_timeout_ms)
    }

    fn openraft_config(&self) -> Result<openraft::Config, StartError> {
        let config = openraft::Config {
            cluster_name: "rota".to_string(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            // Per snapshot chunk. The last chunk makes the receiver verify, write and fsync
            // the whole snapshot before it answers: generous for large snapshots.
            install_snapshot_timeout: INSTALL_SNAPSHOT_CHUNK_TIMEOUT_MS,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK_BYTES_MAX,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_entries.max(1)),
            max_in_snapshot_log_to_keep: self.log_entries_kept_after_snapshot,
            purge_batch_size: 1,
            // Entries are batches of up to batch_commands_max commands already, and an
            // append must arrive within one heartbeat interval (openraft's RPC timeout).
            max_payload_entries: 16,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| StartError::Raft(format!("config: {e}")))
    }
}

/// etcd's default `--election-timeout`.
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 1000;
/// Added to the leader wait beyond three election timeouts (a vote round, the first commit).
const LEADER_WAIT_MARGIN_MS: u64 = 500;
const INSTALL_SNAPSHOT_CHUNK_TIMEOUT_MS: u64 = 60_000;
const SNAPSHOT_CHUNK_BYTES_MAX: u64 = 4 << 20;

/// What the state machine reports after each applied entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub raft_index: u64,
    pub raft_term: u64,
    /// The etcd v2 store index after this entry.
    pub etcd_index: u64,
}

/// A proposal's outcome: the command's response and the Raft position it was applied at.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// When this node first saw `leader_id` lead (etcd's `leaderInfo.startTime`).
    pub leader_since: Option<std::time::SystemTime>,
}

#[derive(Clone, Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ProposeError {
    #[error("no leader")]
    NoLeader,
    /// The command was not answered in time: a forwarded command's leader died, froze or
    /// was cut off and another leader took over, or this leader could not commit it within
    /// the request timeout. It may or may not have been applied.
    #[error("request timed out, possibly due to previous leader failure: {0}")]
    OutcomeUnknown(String),
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("command too large: {bytes} bytes, limit {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("raft: {0}")]
    Fatal(String),
    /// This member was removed from the cluster (it stops soon); the command was not applied.
    #[error("{MEMBER_REMOVED}; send requests to the remaining members")]
    Removed,
    /// The data dir is short of space (see `disk`); the command was not applied. (The
    /// second field was the threshold without the margin before: an older member's
    /// answer names less than is needed.)
    #[error(
        "the data dir is short of space: {} MiB free, writes resume above {} MiB (deletes are still accepted)",
        available_bytes >> 20,
        resume_above_bytes >> 20
    )]
    NoSpace { available_bytes: u64, resume_above_bytes: u64 },
    /// This member knows a leader but could not reach it within the leader wait (this
    /// member cut off from it, say, while the leader still heartbeats it); the command was
    /// not delivered, so not applied. Answered as [`ProposeError::NoLeader`] is, with why.
    /// Last, so that the peer wire's variant numbers of the others stay.
    #[error("no leader reachable: the leader, member {leader:x}, cannot be reached from this member ({reason})")]
    LeaderUnreachable { leader: u64, reason: String },
}

/// etcd 3.4's words when a member learns it was removed (rota's log line and error say it
/// the same way).
pub const MEMBER_REMOVED: &str = "the member has been permanently removed from the cluster";

/// Why a membership change (`/v2/members`) failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum MemberError {
    #[error("member {0:x} not found")]
    NotFound(u64),
    /// etcd: "peerURL exists" (409).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InvalidPeerUrls(String),
    /// A one-member cluster without a peer listener cannot take members.
    #[error("this member does not listen for peers (a one-member cluster started without --listen-peer-urls): restart it with --listen-peer-urls and --initial-advertise-peer-urls before adding members")]
    NoPeerListener,
    /// A one-member cluster registered at peer URLs it does not listen on.
    #[error("this member is registered at the peer URLs {registered}, where it does not listen (it first started without --initial-advertise-peer-urls, or listens elsewhere since): a new member would look for it there. Change them first: rota member update {id:x} URL (or etcdctl member update, PUT /v2/members/{id:x})")]
    RegisteredElsewhere { id: u64, registered: String },
    #[error("no leader")]
    NoLeader,
    #[error("node is shutting down")]
    ShuttingDown,
    #[error("{0}")]
    Failed(String),
    /// This member was removed from the cluster.
    #[error("{MEMBER_REMOVED}; send requests to the remaining members")]
    Removed,
    /// etcd's `ErrUnhealthy`: the change would leave too few reachable voting members for a
    /// quorum (see `membership::removal_breaks_active_quorum`). Nothing was changed.
    #[error("{0}")]
    Unhealthy(String),
    /// A remove of a member already removed (etcd: 410 "Member permanently removed").
    /// Last, so that the peer wire's variant numbers of the others stay.
    #[error("member {0:x} was removed")]
    AlreadyRemoved(u64),
}

/// Append counts and per-follower replication stats (`/v2/stats/self`, `/v2/stats/leader`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerStatsSnapshot {
    pub send_append_requests: u64,
    pub recv_append_requests: u64,
    /// Appends (with entries) per second and their bytes per second, sent to followers
    /// and received from a leader, over the latest ones (0: none in the last second).
    pub send_pkg_rate: f64,
    pub send_bandwidth_rate: f64,
    pub recv_pkg_rate: f64,
    pub recv_bandwidth_rate: f64,
    /// On the leader: the followers it replicated to since it started.
    pub followers: Vec<(u64, FollowerStats)>,
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
    /// `--initial-cluster-state existing` and the cluster could not tell who we are.
    #[error("joining the cluster: {0}")]
    Join(String),
}

/// A running node. Cheap to clone. Call [`Node::shutdown`] before dropping the last clone:
/// the background tasks (proposer, ticker, Raft) keep running until then.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    id: u64,
    /// The leader this node saw last and since when (kept by `follow_raft_metrics`).
    leader_seen: Arc<std::sync::Mutex<LeaderSeen>>,
    name: String,
    cluster_id: u64,
    cluster_token: String,
    advertise_client_urls: Vec<String>,
    listens_for_peers: bool,
    peer_listen_ports: Vec<u16>,
    leader_wait: Duration,
    /// A leader that has not heard from a quorum of voters for longer than this counts as no
    /// leader (see [`Node::lost_quorum`]).
    quorum_silence_max: Duration,
    /// The term of the vote this member started with (0: none).
    restored_term: u64,
    /// Set while this leader hands leadership over: new proposals wait for the next leader
    /// instead of growing the log the successor must have before it can win.
    handing_over: std::sync::atomic::AtomicBool,
    /// True once this member knows it was removed from the cluster (see `membership`). It
    /// then proposes nothing, answers requests with `Removed`, and the process stops.
    removed: watch::Sender<bool>,
    /// The proposer holds a read guard for each batch in flight; a leader removing itself
    /// holds the write guard, so no batch is in flight across its removal (see `membership`).
    proposal_gate: Arc<tokio::sync::RwLock<()>>,
    /// One membership change at a time on this node, from reading the membership to the
    /// commit of the change (see `membership`).
    membership_changes: tokio::sync::Mutex<()>,
    transport: PeerTransport,
    forwarder: forward::Forwarder,
    raft: Raft,
    shared: Arc<SharedState>,
    proposals: ProposalSender,
    log_store: LogStore,
    metrics: RaftMetrics,
    shutdown_tx: watch::Sender<bool>,
    proposer_task: Mutex<Option<JoinHandle<()>>>,
    background_tasks: Mutex<Vec<JoinHandle<()>>>,
    data_dir: PathBuf,
    /// Serializes `shutdown` calls; true once done.
    shut_down: tokio::sync::Mutex<bool>,
    /// The runtime openraft's tasks and the proposer run on; see [`RaftRuntime`].
    raft_runtime: RaftRuntime,
}

/// The stack of rota's runtime threads: the deepest v2 tree (4 KiB keys: 2,048 levels) is
/// walked by recursion when it is read, removed or expired, which overflowed the default
/// 2 MiB (and aborted the process) at ~1,850 levels. Only the pages used are resident.
pub const THREAD_STACK_BYTES: usize = 64 << 20;

/// openraft's core, its state machine worker and our proposer run on a runtime of their
/// own, one thread. On the shared runtime each step of an entry (core → log → core →
/// apply → proposer) queued behind whatever HTTP work was ready, ~0.3 ms per hop at c=64;
/// on their own thread the kernel runs them as soon as they are woken.
struct RaftRuntime(Mutex<Option<tokio::runtime::Runtime>>);

impl RaftRuntime {
    fn new(pause_hold: Arc<pause::PauseHold>) -> std::io::Result<RaftRuntime> {
        let unpark_hold = pause_hold.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("rota-raft")
            .thread_stack_size(THREAD_STACK_BYTES)
            .on_thread_park(move || {
                spin::before_raft_park();
                pause_hold.parking();
            })
            .on_thread_unpark(move || unpark_hold.unparked())
            .enable_all()
            .build()?;
        Ok(RaftRuntime(Mutex::new(Some(runtime))))
    }

    fn handle(&self) -> Option<tokio::runtime::Handle> {
        let guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(|runtime| runtime.handle().clone())
    }

    /// Stops the runtime without blocking (safe inside async code); its tasks are dropped.
    fn stop(&self) {
        let runtime = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(runtime) = runtime {
            runtime.shutdown_background();
        }
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        self.stop();
    }
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
        if config.data_dir.exists() && !config.data_dir.is_dir() {
            return Err(StartError::DataDir {
                path: config.data_dir.clone(),
                source: std::io::Error::other("not a directory (a file is in its place)"),
            });
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        // A new member's log starts with a chunk file allocated whole: with less free, its
        // start failed half-way ("identity: No space left on device"), leaving files behind.
        // A member with a log starts whatever is free, to serve the reads and deletes that
        // free space (writes are refused while short, see `disk`): an existing log opens
        // without allocating (a new chunk that cannot be allocated grows as it is written),
        // and the check, blind to the zeros allocated ahead in the log's chunks that the
        // open gives back, kept a node stopped on a nearly full disk from starting at all.
        let chunk = log_store::LOG_CHUNK_BYTES_MAX as u64;
        if let (false, Ok(available)) = (has_log(&config.data_dir), disk::available_bytes(&config.data_dir)) {
            if available < chunk {
                return Err(StartError::DataDir {
                    path: config.data_dir.clone(),
                    source: std::io::Error::other(format!(
                        "{} MiB free on its file system: the log allocates {} MiB at a time, and writes \
                         need --min-free-mb more; give it more space",
                        available >> 20,
                        chunk >> 20
                    )),
                });
            }
        }
        let metrics = RaftMetrics::default();

        let log_store = LogStore::open(
            &LogStoreConfig {
                dir: config.data_dir.join(LOG_DIR),
            },
            metrics.clone(),
        )
        .map_err(|error| match error {
            // The log's directory lock: another process (a rota still running, or a second
            // one started on the same --data-dir) holds it.
            LogOpenError::Io { source, .. } if source.kind() == std::io::ErrorKind::WouldBlock => StartError::DataDir {
                path: config.data_dir.clone(),
                source: std::io::Error::other(
                    "another process is using it (its raft-log/LOCK is held: a rota still running, or one \
                     started on the same --data-dir): stop that one first, or give this one a --data-dir of its own",
                ),
            },
            LogOpenError::Io { path, source } => StartError::DataDir { path, source },
            corrupt @ LogOpenError::Corrupt { .. } => StartError::Corrupt(corrupt.to_string()),
        })?;
        let snapshots =
            SnapshotDir::open(config.data_dir.join(SNAPSHOT_DIR)).map_err(snapshot_start_error)?;
        log_store.purge_only_after_snapshots(snapshots.clone());
        let (mut state_machine, shared) =
            StateMachineStore::open(snapshots, config.core.clone(), metrics.clone())
                .map_err(snapshot_start_error)?;
        let extent = log_store.extent().map_err(|e| StartError::Raft(e.to_string()))?;
        let mark = commit_mark::read(&config.data_dir).map_err(StartError::Corrupt)?;
        match commit_mark::check(&config.data_dir, mark, extent, state_machine.snapshot_index()) {
            Ok(Some(warning)) => tracing::warn!("{warning}"),
            Ok(None) => {}
            Err(refusal) => return Err(StartError::Corrupt(refusal)),
        }
        let pristine = log_store
            .is_pristine()
            .map_err(|e| StartError::Raft(e.to_string()))?
            && !state_machine.has_snapshot();

        if pristine && config.force_new_cluster {
            return Err(StartError::Raft(format!(
                "--force-new-cluster: {} holds no log and no snapshot: there is nothing to start a cluster \
                 from (start without the flag to begin a new cluster)",
                config.data_dir.display()
            )));
        }
        let refuses_rebootstrap = pristine && config.initial_cluster_state == ClusterState::New;
        let loaded = Identity::load(&config.data_dir);
        // A member joining now took the cluster's token ("joining with the cluster's token"
        // said so): only a member that had one already is told the flag does not apply.
        let had_identity = matches!(loaded, Ok(Some(_)));
        let identity = match loaded {
            Ok(Some(identity)) => {
                // Stored, then stopped before the member had any log (a crash at its first
                // start, or a start refused by a version that stored it first): asked too.
                if refuses_rebootstrap {
                    forward::refuse_rebootstrap(&config, identity.node_id).await?;
                }
                identity
            }
            Ok(None) if !pristine => {
                // Stored before the first entry, so only lost since: started under a new
                // identity, the member would campaign in a cluster of its own (its token and
                // cluster id made up again) while its peers refuse it.
                return Err(StartError::Corrupt(format!(
                    "{} is missing, but the data dir holds this member's raft log: the member \
                     would not know its cluster. Put the file back from a backup of the data \
                     dir; or, in a cluster, remove this member (rota member rm ID) and add it \
                     back (rota member add) with an empty data dir and \
                     --initial-cluster-state existing",
                    config.data_dir.join(identity::FILE_NAME).display()
                )));
            }
            Ok(None) => {
                let identity = if pristine && config.initial_cluster_state == ClusterState::Existing
                {
                    forward::join_identity(&config).await?
                } else {
                    Identity {
                        cluster_id: config.initial_cluster_id(),
                        node_id: node_id_from_name(&config.name),
                        token: Some(config.cluster_token.clone()),
                    }
                };
                // Before the identity is stored: a refused start must leave the data dir
                // without one, so that the start the refusal asks for (`existing`, after
                // the member is removed and added again) takes the id the leader gives it
                // instead of this refused one.
                if refuses_rebootstrap {
                    forward::refuse_rebootstrap(&config, identity.node_id).await?;
                }
                identity
                    .store(&config.data_dir)
                    .map_err(|e| StartError::Corrupt(e.to_string()))?;
                identity
            }
            Err(error) => return Err(StartError::Corrupt(error.to_string())),
        };
        let id = identity.node_id;
        if config.force_new_cluster {
            let mut log_store = log_store.clone();
            match force_new_cluster::rewrite(&config.data_dir, &mut log_store, &mut state_machine, id, config.member())
                .await?
            {
                force_new_cluster::Outcome::Forced(forced) => tracing::warn!(
                    kept_index = forced.kept_index,
                    beyond_known_commit = forced.beyond_known_commit,
                    former_members = %forced.former_members.join(", "),
                    "--force-new-cluster: this member is now the only member of its cluster, with everything its \
                     log held, committed; remove the flag for later restarts, and add members again with `rota \
                     member add` and empty data dirs (never start the former members on their old data dirs)"
                ),
                force_new_cluster::Outcome::Grown { forced_at, members } => tracing::warn!(
                    forced_at,
                    members = %members.join(", "),
                    "--force-new-cluster ignored: this member was forced before and its cluster has grown since; \
                     forcing again would remove those members and what they committed without it. Remove the flag. \
                     To force again after losing the majority of the grown cluster, delete {} first",
                    config.data_dir.join(force_new_cluster::MARKER).display()
                ),
            }
        }
        // As etcd: the token is the one this member started with, whatever the flag says now.
        let mut config = config;
        if let Some(token) = &identity.token {
            // Said only when a token other than the default was given: members restart
            // without their --initial-* flags, as the README says they may.
            if *token != config.cluster_token && had_identity && config.cluster_token != NodeConfig::DEFAULT_CLUSTER_TOKEN {
                tracing::info!(
                    stored = %token,
                    flag = %config.cluster_token,
                    "this member belongs to the cluster token in its data dir; --initial-cluster-token applies only to a new member"
                );
            }
            if *token != config.cluster_token {
                config.cluster_token = token.clone();
            }
        }
        let hints = Arc::new(split_vote::ElectionHints::new(
            config.election_timeout_max_ms,
        ));
        let transport = PeerTransport::new(
            config.cluster_token.clone(),
            id,
            identity.cluster_id,
            hints,
            config.peer_source_ip,
        );

        // The term this member voted in before it stopped: openraft makes a member whose
        // saved vote is its own committed leadership leader again at once, without an
        // election (see `lost_quorum`).
        let restored_term = {
            use openraft::storage::RaftLogStorage as _;
            let mut store = log_store.clone();
            store.read_vote().await.ok().flatten().map_or(0, |vote| vote.leader_id().term)
        };
        // Longer than any park of a running Raft thread (it wakes at each openraft tick, every
        // 1.5 heartbeats); elections come back after a few heartbeats.
        let pause_hold = Arc::new(pause::PauseHold::new(
            Duration::from_millis(raft_config.election_timeout_min.max(3 * raft_config.heartbeat_interval)),
            Duration::from_millis(3 * raft_config.heartbeat_interval),
        ));
        pause::PauseHold::watch(&pause_hold).map_err(|e| StartError::Raft(e.to_string()))?;
        let raft_runtime =
            RaftRuntime::new(pause_hold.clone()).map_err(|e| StartError::Raft(e.to_string()))?;
        let raft_handle = raft_runtime
            .handle()
            .ok_or_else(|| StartError::Raft("raft runtime stopped".to_string()))?;
        // Raft::new spawns openraft's tasks on the runtime it is called in.
        let network = PeerNetwork {
            transport: transport.clone(),
        };
        let raft = raft_handle
            .spawn(Raft::new(
                id,
                raft_config,
                network,
                log_store.clone(),
                state_machine,
            ))
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?
            .map_err(|e| StartError::Raft(e.to_string()))?;
        pause_hold.set_raft(raft.clone());
        // The committed log is re-applied inside Raft::new; from here on answers are read.
        shared
            .replaying
            .store(false, std::sync::atomic::Ordering::Relaxed);
        if pristine && config.initial_cluster_state == ClusterState::New {
            raft.initialize(config.initial_membership())
                .await
                .map_err(|e| StartError::Raft(format!("initialize: {e}")))?;
        }
        let node = Node::spawn_tasks(
            &config,
            identity,
            transport,
            raft,
            shared,
            log_store,
            metrics,
            raft_runtime,
            &raft_handle,
            restored_term,
            pause_hold,
        );
        node.lead_if_only_voter().await;
        Ok(node)
    }

    #[allow(clippy::too_many_arguments, reason = "called once, from start, with the parts it just built")]
    fn spawn_tasks(
        config: &NodeConfig,
        identity: Identity,
        transport: PeerTransport,
        raft: Raft,
        shared: Arc<SharedState>,
        log_store: LogStore,
        metrics: RaftMetrics,
        raft_runtime: RaftRuntime,
        raft_handle: &tokio::runtime::Handle,
        restored_term: u64,
        pause_hold: Arc<pause::PauseHold>,
    ) -> Node {
        let id = identity.node_id;
        let (shutdown_tx, _) = watch::channel(false);
        // Shared with the transport: a peer's 410 "removed" answer sets it (see `network`).
        let removed = transport.removed().clone();
        let proposal_gate = Arc::new(tokio::sync::RwLock::new(()));
        let (tx, rx) = mpsc::channel(config.proposals_queued_max);
        let disk_space = Arc::new(disk::DiskSpace::default());
        let proposals = ProposalSender {
            tx,
            batch_bytes_max: config.batch_bytes_max,
            disk_space: disk_space.clone(),
            answer_max: config.request_timeout(),
        };
        let limits = ProposerLimits {
            batch_commands_max: config.batch_commands_max,
            batch_bytes_max: config.batch_bytes_max,
            proposals_in_flight_max: config.proposals_in_flight_max,
            answer_max: config.request_timeout(),
        };
        let proposer_task = raft_handle.spawn(proposer::run_proposer(
            raft.clone(),
            shared.clone(),
            rx,
            limits,
            metrics.clone(),
            proposer::Gate {
                proposals: proposal_gate.clone(),
                removed: removed.subscribe(),
            },
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
        let snapshot_task = tokio::spawn(snapshot_by_log_bytes(
            raft.clone(),
            log_store.clone(),
            config.snapshot_log_bytes,
            shutdown_tx.subscribe(),
        ));
        let disk_task = tokio::spawn(watch_disk_space(
            config.data_dir.clone(),
            config.min_free_bytes,
            disk_space,
            raft.clone(),
            log_store.clone(),
            shared.applied_tx.subscribe(),
            metrics.clone(),
            shutdown_tx.subscribe(),
        ));
        let data_dir_task = tokio::spawn(watch_data_dir(
            config.data_dir.clone(),
            raft.clone(),
            shutdown_tx.subscribe(),
        ));
        let commit_mark_task = tokio::spawn(keep_commit_mark(
            config.data_dir.clone(),
            log_store.clone(),
            shutdown_tx.subscribe(),
        ));
        let leader_seen = Arc::new(std::sync::Mutex::new(LeaderSeen::default()));
        let metrics_task = tokio::spawn(follow_raft_metrics(
            raft.clone(),
            id,
            metrics.clone(),
            leader_seen.clone(),
            restored_term,
            shutdown_tx.subscribe(),
        ));
        let node = Node {
            inner: Arc::new(NodeInner {
                id,
                leader_seen,
                name: config.name.clone(),
                cluster_id: identity.cluster_id,
                cluster_token: config.cluster_token.clone(),
                advertise_client_urls: config.advertise_client_urls.clone(),
                listens_for_peers: config.listens_for_peers,
                peer_listen_ports: config.peer_listen_ports.clone(),
                leader_wait: config.leader_wait(),
                quorum_silence_max: Duration::from_millis(2 * config.election_timeout_max_ms),
                restored_term,
                handing_over: std::sync::atomic::AtomicBool::new(false),
                removed,
                proposal_gate,
                membership_changes: tokio::sync::Mutex::new(()),
                forwarder: forward::Forwarder::start(transport.clone()),
                transport,
                raft,
                shared,
                proposals,
                log_store,
                metrics,
                shutdown_tx,
                proposer_task: Mutex::new(Some(proposer_task)),
                background_tasks: Mutex::new(vec![
                    ticker_task,
                    metrics_task,
                    snapshot_task,
                    disk_task,
                    data_dir_task,
                    commit_mark_task,
                ]),
                data_dir: config.data_dir.clone(),
                shut_down: tokio::sync::Mutex::new(false),
                raft_runtime,
            }),
        };
        let membership_task = tokio::spawn(membership::run_membership_keeper(
            node.clone_weak(),
            node.inner.shutdown_tx.subscribe(),
        ));
        let quorum_task = tokio::spawn(check_quorum(
            node.clone_weak(),
            Duration::from_millis(config.heartbeat_interval_ms.max(1)),
            node.inner.shutdown_tx.subscribe(),
        ));
        let pause_task = {
            let shutdown = node.inner.shutdown_tx.subscribe();
            let node = node.clone_weak();
            tokio::spawn(async move {
                let handing_over = || {
                    node.upgrade().is_none_or(|node| node.inner.handing_over.load(std::sync::atomic::Ordering::SeqCst))
                };
                pause_hold.run(handing_over, shutdown).await;
            })
        };
        node.inner
            .background_tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend([membership_task, quorum_task, pause_task]);
        node
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

    /// The runtime that runs openraft's tasks, for the peer connections: a follower's append
    /// then goes from its connection to openraft's core without waking another thread.
    /// `None` once the node stopped.
    pub fn peer_runtime(&self) -> Option<tokio::runtime::Handle> {
        self.inner.raft_runtime.handle()
    }

    /// This node's Raft id (from its name).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// Proposes `command`; resolves once it is applied on this node. On the leader it goes
    /// through the group-commit proposer; on a follower it is forwarded to the leader's
    /// (and the answer carries the leader's Raft index and term). Without a leader it waits
    /// up to about one election for one, then answers `NoLeader`.
    pub async fn propose(&self, command: Command) -> Result<Proposed, ProposeError> {
        forward::propose(self, command).await
    }

    /// Confirms leadership with a quorum (ReadIndex, asked of the leader when this node is a
    /// follower) and waits until this node has applied up to the read index; a `read` after
    /// this sees every write acknowledged before the call began. For `quorum=true` reads.
    pub async fn linearizable_read(&self) -> Result<Applied, ProposeError> {
        forward::linearizable_read(self).await
    }

    /// The cluster id (`X-Etcd-Cluster-Id`), as stored in the data dir.
    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id
    }

    /// The leader this node knows of, if any (none once this member was removed: openraft
    /// still names the removed leader itself, see `membership`).
    pub fn leader_id(&self) -> Option<u64> {
        if self.is_removed() {
            return None;
        }
        self.inner.raft.metrics().borrow().current_leader
    }

    /// True once this member knows it was removed from the cluster.
    pub fn is_removed(&self) -> bool {
        *self.inner.removed.borrow()
    }

    /// Resolves once this member knows it was removed from the cluster (by its own removal
    /// as leader; as a follower, when a member answers its Raft RPCs that it was removed;
    /// after a restart, from its state or from the members' answer): the process should
    /// then stop.
    pub async fn wait_removed(&self) {
        let mut removed = self.inner.removed.subscribe();
        // The sender lives as long as this node: an error cannot happen while we hold it.
        let _ = removed.wait_for(|removed| *removed).await;
    }

    /// Append counts and, on the leader, per-follower replication stats.
    pub fn peer_stats(&self) -> PeerStatsSnapshot {
        let stats = self.inner.transport.stats();
        let followers = if self.status().is_leader {
            let voters_and_learners: Vec<u64> =
                self.members().into_iter().map(|(id, _)| id).collect();
            stats
                .followers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(id, _)| voters_and_learners.contains(id))
                .map(|(id, follower)| (*id, follower.clone()))
                .collect()
        } else {
            Vec::new()
        };
        let ((send_pkg_rate, send_bandwidth_rate), (recv_pkg_rate, recv_bandwidth_rate)) =
            stats.rates(std::time::Instant::now());
        PeerStatsSnapshot {
            send_append_requests: stats.send_append.load(std::sync::atomic::Ordering::Relaxed),
            recv_append_requests: stats.recv_append.load(std::sync::atomic::Ordering::Relaxed),
            send_pkg_rate,
            send_bandwidth_rate,
            recv_pkg_rate,
            recv_bandwidth_rate,
            followers,
        }
    }

    /// Membership, voters, leader and cluster id as this node sees them.
    pub fn cluster_info(&self) -> ClusterInfo {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        ClusterInfo {
            cluster_id: self.inner.cluster_id,
            leader: metrics.current_leader.filter(|_| !self.is_removed()),
            members: membership
                .nodes()
                .map(|(id, member)| (*id, member.clone()))
                .collect(),
            voters: membership.voter_ids().collect(),
            token: self.inner.cluster_token.clone(),
        }
    }

    fn clone_weak(&self) -> WeakNode {
        WeakNode(Arc::downgrade(&self.inner))
    }

    fn is_shutting_down(&self) -> bool {
        *self.inner.shutdown_tx.borrow()
    }

    /// Runs `f` on the current applied state (a short read lock; never held across await).
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        self.inner.shared.read(f)
    }

    /// True if a membership change this process applied removed member `id`.
    pub(crate) fn was_removed(&self, id: u64) -> bool {
        let removed = self.inner.shared.removed_members.lock();
        removed.unwrap_or_else(|poisoned| poisoned.into_inner()).contains(&id)
    }

    /// Changes on every applied entry.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Applied> {
        self.inner.shared.applied_tx.subscribe()
    }

    pub fn status(&self) -> Status {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        let leads_now = self.counts_as_leader(&metrics);
        let removed = self.is_removed();
        let lost = self.lost_quorum(&metrics);
        Status {
            id: self.inner.id,
            name: self.inner.name.clone(),
            term: metrics.current_term,
            leader_id: metrics.current_leader.filter(|_| !removed && !lost),
            is_leader: leads_now,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            commit_index: self.inner.log_store.committed_index(),
            applied_index: self.inner.shared.applied_tx.borrow().raft_index,
            snapshot_index: metrics.snapshot.map(|id| id.index).unwrap_or(0),
            purged_index: metrics.purged.map(|id| id.index).unwrap_or(0),
            leader_since: {
                let seen = self
                    .inner
                    .leader_seen
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                seen.leader.filter(|_| !removed && !lost).map(|_| seen.since)
            },
        }
    }

    /// Whether this node leads but has not heard from a quorum of voters for longer than
    /// two election timeouts: its followers are down or cut off. openraft 0.9 has no
    /// CheckQuorum, so such a leader stays leader (until it hears of a higher term), and
    /// writes proposed there wait until a quorum is back. etcd's leader steps down instead.
    /// rota's then counts as no leader: `/health` is false, the status shows no leader,
    /// and writes wait for a leader like at a follower, then answer 503, instead of
    /// hanging; they go through again as soon as a quorum answers.
    /// Whether `from` may ask this member to campaign at once: the leader it follows, or,
    /// during an election, the last one it followed (a leader handing over asks again when
    /// the first campaign fails, and its follower is then a candidate).
    pub(crate) fn may_ask_to_campaign(&self, from: NodeId) -> bool {
        let current = self.inner.raft.metrics().borrow().current_leader;
        match current {
            Some(leader) => leader == from,
            None => self.inner.leader_seen.lock().unwrap_or_else(|p| p.into_inner()).last_known == Some(from),
        }
    }

    pub(crate) fn lost_quorum(&self, metrics: &openraft::RaftMetrics<NodeId, Member>) -> bool {
        if !leads(metrics, self.inner.id) || metrics.membership_config.membership().voter_ids().nth(1).is_none() {
            return false;
        }
        let limit = self.inner.quorum_silence_max;
        match metrics.millis_since_quorum_ack {
            Some(ms) => Duration::from_millis(ms) > limit,
            // Leading in the term it started with and not acknowledged yet: openraft restored
            // the leadership from the saved vote, nobody elected it in this run (etcd's
            // members start as followers). A leader until a quorum answers it would say
            // `health: true` with its peers down.
            None if metrics.current_term == self.inner.restored_term => true,
            // Not acknowledged yet since it was elected: lost once it has led that long.
            None => {
                let seen = *self.inner.leader_seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                seen.since.elapsed().is_ok_and(|led| led > limit)
            }
        }
    }

    /// Where the Raft log's records end: the byte offset, counted across its chunk files,
    /// after the last record written (the files are allocated ahead of their records, so
    /// their lengths do not say this). For tests of the log's files.
    pub fn log_records_end(&self) -> Option<u64> {
        self.inner.log_store.records_end().ok()
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

    /// Brings the gauges that move with every entry (last log index, snapshot index) up to
    /// date; called when `/metrics` is scraped.
    pub fn refresh_metrics(&self) {
        let current = self.inner.raft.metrics().borrow().clone();
        let metrics = &self.inner.metrics;
        metrics.term.set(current.current_term as i64);
        metrics
            .last_log_index
            .set(current.last_log_index.unwrap_or(0) as i64);
        if let Some(snapshot) = current.snapshot {
            metrics.snapshot_index.set(snapshot.index as i64);
        }
        metrics.is_leader.set(i64::from(self.counts_as_leader(&current)));
        let id = self.inner.id;
        let removed = self.is_removed();
        let votes = !removed && current.membership_config.membership().voter_ids().any(|voter| voter == id);
        metrics.is_voter.set(i64::from(votes));
        let has_leader = current.current_leader.is_some() && !removed && !self.lost_quorum(&current);
        metrics.has_leader.set(i64::from(has_leader));
        // Rebuilt on every scrape: only a leader has them, and only for its current followers.
        metrics.follower_matched_index.clear();
        metrics.follower_lag_entries.clear();
        if let (true, Some(replication)) = (leads(&current, id), &current.replication) {
            let last_index = current.last_log_index.unwrap_or(0);
            let membership = current.membership_config.membership();
            for (&follower, matched) in replication.iter().filter(|(&follower, _)| follower != id) {
                let matched = matched.map_or(0, |log_id| log_id.index);
                let labels = metrics::FollowerLabels {
                    member: format!("{follower:x}"),
                    name: membership.get_node(&follower).map(|member| member.name.clone()).unwrap_or_default(),
                };
                metrics.follower_matched_index.get_or_create(&labels).set(matched as i64);
                metrics.follower_lag_entries.get_or_create(&labels).set(last_index.saturating_sub(matched) as i64);
            }
        }
    }

    /// Whether this member leads, as `/health`, `/v2/stats/self` and `/metrics` say: a
    /// leader that lost its quorum (or was removed) counts as none; openraft still calls it
    /// leader until a newer one appears.
    fn counts_as_leader(&self, metrics: &openraft::RaftMetrics<NodeId, Member>) -> bool {
        !self.is_removed() && !self.lost_quorum(metrics) && leads(metrics, self.inner.id)
    }

    /// Resolves when Raft stopped on its own: a storage error (a failed fsync or write) or a
    /// panic. The process should then exit non-zero rather than keep serving: nothing can be
    /// acknowledged any more, and retrying an fsync is unsafe. Never resolves while running.
    pub async fn wait_fatal(&self) -> String {
        // Not openraft's full metrics: they change with every entry, and following them woke
        // the process's main thread ~4 times per entry. The server metrics change on
        // elections and membership only, and their sender is dropped when openraft's core
        // stops; by then the full metrics hold the reason.
        let mut server_metrics = self.inner.raft.server_metrics();
        let reason = || match &self.inner.raft.metrics().borrow().running_state {
            Err(fatal) => Some(crate::types::fatal_reason(fatal)),
            Ok(()) => None,
        };
        loop {
            if let Some(fatal) = reason() {
                return fatal;
            }
            if server_metrics.changed().await.is_err() {
                return reason().unwrap_or_else(|| "raft stopped".to_string());
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
        // Each sees the shutdown signal and returns; a bound, so that a task stuck on
        // something only the (gone) peers could answer cannot hold the shutdown forever.
        for mut task in tasks {
            if tokio::time::timeout(BACKGROUND_TASK_STOP_WAIT, &mut task).await.is_err() {
                tracing::warn!("a background task did not stop within {BACKGROUND_TASK_STOP_WAIT:?}; aborting it");
                task.abort();
            }
        }
        if let Err(error) = self.inner.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
        // A snapshot encoded on its own thread may still be on its way to disk: it is
        // finished, or dropped if not started, before the data dir is let go of.
        let snapshots = self.inner.shared.snapshots.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || snapshots.close()).await {
            tracing::warn!(%error, "closing the snapshot directory");
        }
        let log_store = self.inner.log_store.clone();
        let data_dir = self.inner.data_dir.clone();
        // Closed, the log has synced everything appended: the mark can name all that committed.
        let closed = tokio::task::spawn_blocking(move || {
            log_store.close()?;
            mark_commit_at_stop(&data_dir, log_store.committed_index());
            Ok::<(), std::io::Error>(())
        });
        match closed.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "closing the raft log"),
            Err(error) => tracing::error!(%error, "closing the raft log"),
        }
        self.inner.raft_runtime.stop();
        *shut_down = true;
    }
}

/// How long [`Node::shutdown`] waits for each background task to see the signal and stop.
const BACKGROUND_TASK_STOP_WAIT: Duration = Duration::from_secs(5);

/// Whether `id` leads now. Not `current_leader == Some(id)` alone: openraft 0.9 derives
/// `current_leader` from the vote, and a leader that removed itself keeps its vote (so it
/// names itself forever) after it stepped down to learner; its server state tells.
fn leads(metrics: &openraft::RaftMetrics<NodeId, Member>, id: NodeId) -> bool {
    metrics.state == openraft::ServerState::Leader && metrics.current_leader == Some(id)
}

/// The leader a node saw last, and when it first saw it lead.
#[derive(Clone, Copy, Debug)]
struct LeaderSeen {
    leader: Option<NodeId>,
    since: std::time::SystemTime,
    /// The last leader known, kept through an election (`leader` is then `None`).
    last_known: Option<NodeId>,
}

impl Default for LeaderSeen {
    fn default() -> Self {
        LeaderSeen {
            leader: None,
            since: std::time::SystemTime::now(),
            last_known: None,
        }
    }
}

/// etcd's CheckQuorum, which openraft 0.9 lacks: a leader that has not heard from a quorum
/// for longer than [`Node::lost_quorum`] allows, and has led that long, stops sending
/// heartbeats until it hears from one again or is no longer leader. It already counted as
/// no leader itself; without this its followers, still hearing it, went on naming it as
/// their leader and saying `health: true` (two members left of five, say) while no write
/// could commit. Without heartbeats they campaign, find no majority, and say so; once a
/// majority is back they elect a leader (etcd's leader steps down the same way).
async fn check_quorum(node: WeakNode, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut paused = false;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(interval) => {}
        }
        let Some(node) = node.upgrade() else { return };
        let lost = {
            let led_since = node.inner.leader_seen.lock().unwrap_or_else(|p| p.into_inner()).since;
            let led_long = led_since.elapsed().is_ok_and(|led| led > node.inner.quorum_silence_max);
            let metrics = node.inner.raft.metrics();
            let metrics = metrics.borrow();
            led_long && node.lost_quorum(&metrics)
        };
        if lost == paused {
            continue;
        }
        paused = lost;
        node.inner.raft.runtime_config().heartbeat(!lost);
        if lost {
            tracing::warn!(
                silence_max = ?node.inner.quorum_silence_max,
                "this leader has not heard from a majority of the members: it stops sending heartbeats, so that its followers see no leader (and elect one once a majority is back)"
            );
        } else {
            tracing::info!("heartbeats resumed (a majority answers again, or this member no longer leads)");
        }
    }
}

/// A handle on a node that does not keep it alive (for its own background tasks).
#[derive(Clone)]
struct WeakNode(std::sync::Weak<NodeInner>);

impl WeakNode {
    fn upgrade(&self) -> Option<Node> {
        self.0.upgrade().map(|inner| Node { inner })
    }
}

fn snapshot_start_error(error: SnapshotFileError) -> StartError {
    match error {
        SnapshotFileError::Io { path, source } => StartError::DataDir { path, source },
        corrupt @ SnapshotFileError::Corrupt { .. } => StartError::Corrupt(corrupt.to_string()),
    }
}

/// Looks at the data dir's free space every [`disk::CHECK_INTERVAL`] (see `disk`). The
/// threshold is `min_free_bytes` plus room for the next snapshot: the newest snapshot's
/// size plus three times the log written since it (each logged write may add its value to
/// the state up to three times: the key's node, and a watch event's node and previous
/// node). Until this process saw a snapshot taken, the whole log dir counts as written
/// since (the log left by an earlier run is replayed on top of its snapshot).
///
/// While short of space it asks for a snapshot (stored once there is room for it): after
/// deletes the state (and so the next snapshot) is small, and once it is taken the log
/// before it no longer counts, so writes resume without an operator. (Before, the
/// threshold counted the whole log dir, which deletes only grow: a node short of space
/// stayed so whatever was deleted.) It asks again after [`SPACE_SNAPSHOT_BACKOFF_MIN`],
/// doubling up to [`SPACE_SNAPSHOT_BACKOFF_MAX`] while the node stays short: a snapshot
/// that did not end the shortage (the state is simply big) was otherwise rewritten at every
/// look that found a new entry applied (an audit counted 316 snapshots of 43 MB in 25 s),
/// and one ask per snapshot file could be lost to a build in progress, leaving the node
/// refusing writes with room to get out.
#[allow(clippy::too_many_arguments)]
async fn watch_disk_space(
    data_dir: PathBuf,
    min_free_bytes: u64,
    space: Arc<disk::DiskSpace>,
    raft: Raft,
    log_store: LogStore,
    applied: watch::Receiver<Applied>,
    metrics: RaftMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    if min_free_bytes == 0 {
        return;
    }
    let mut interval = tokio::time::interval(disk::CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed_before = false;
    // The newest snapshot file at the first look, then whenever it changes; with it, the
    // bytes this process had appended then (`None` until a snapshot was taken in this
    // process: openraft's metrics name the snapshot loaded at start only a moment after).
    let mut last_snapshot: Option<Option<u64>> = None;
    let mut appended_at_snapshot: Option<u64> = None;
    let mut asks = SpaceSnapshotAsks::default();
    if let Ok(total) = disk::total_bytes(&data_dir) {
        let workable = disk::smallest_workable_bytes(min_free_bytes, total);
        if total < workable {
            tracing::warn!(
                file_system_mib = total >> 20,
                file_system_needed_mib = workable >> 20,
                "the data dir's file system is too small to take writes: it needs room for a {} MiB log chunk and --min-free-mb (and a margin) besides the data; give it more space or lower --min-free-mb",
                log_store::LOG_CHUNK_BYTES_MAX >> 20
            );
        }
    }
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = interval.tick() => {}
        }
        let appended = log_store.appended_bytes();
        let dir = data_dir.clone();
        // One look at the disk: the newest snapshot, the bytes the snapshots and the log
        // take, and the space free.
        let records = log_store.clone();
        let looked = tokio::task::spawn_blocking(move || {
            let snapshots = dir.join(SNAPSHOT_DIR);
            let newest = snapshot_file::newest_index_in(&snapshots).map_err(std::io::Error::other)?;
            let snapshot_bytes = disk::tree_bytes(&snapshots)?;
            // The records, not the chunk files' lengths: those are allocated ahead.
            let log_bytes = records.records_bytes().map_err(std::io::Error::other)?;
            let (available, total) = (disk::available_bytes(&dir)?, disk::total_bytes(&dir)?);
            Ok::<_, std::io::Error>((newest, snapshot_bytes, log_bytes, available, total))
        })
        .await;
        let (newest, snapshot_bytes, log_bytes, available, total) = match looked {
            Ok(Ok(look)) => look,
            Ok(Err(error)) => {
                if !failed_before {
                    tracing::warn!(%error, "cannot read the data dir's free space");
                }
                failed_before = true;
                continue;
            }
            Err(_) => continue,
        };
        failed_before = false;
        if last_snapshot.is_some_and(|seen| seen != newest) {
            appended_at_snapshot = Some(appended);
        }
        last_snapshot = Some(newest);
        // The state machine's own applied index: openraft's metrics name none after a
        // restart until the next entry is applied, so a restarted node short of space never
        // asked for the snapshot that would have lifted it (a storage audit).
        let unsnapshotted = applied.borrow().raft_index > newest.unwrap_or(0);
        let log_since = appended_at_snapshot.map(|at_snapshot| appended.saturating_sub(at_snapshot));
        let next_snapshot = next_snapshot_bytes(snapshot_bytes, log_bytes.all, log_since, unsnapshotted);
        let needed = min_free_bytes.saturating_add(next_snapshot);
        space.record_open_chunk(log_bytes.open_chunk);
        let short = space.record(available, needed, disk::resume_margin(total));
        metrics.data_dir_needed_bytes.set(i64::try_from(needed).unwrap_or(i64::MAX));
        metrics.data_dir_available_bytes.set(i64::try_from(available).unwrap_or(i64::MAX));
        metrics.data_dir_short_of_space.set(i64::from(short));
        // Asked for even when the estimate says it may not fit (three times the log since
        // the last snapshot; after a restart, the whole log): the snapshot is stored only
        // once it fits with a margin, measured on the real image (`store_when_space`), and
        // a restarted node's estimate was too high to ever ask (it refused writes for good
        // on a disk with room for its snapshot).
        if asks.ask_now(std::time::Instant::now(), short, unsnapshotted) {
            // Once per spell: asked again every few seconds while short, it was a line
            // every 5 s for as long as a disk stayed full.
            if asks.first_in_spell() {
                tracing::info!(
                    available_mib = available >> 20,
                    "snapshot: the data dir is short of space; a snapshot lets the log before it go"
                );
            } else {
                tracing::debug!(available_mib = available >> 20, "snapshot: still short of space; asking again");
            }
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
    }
}

/// The room the next snapshot may take: the snapshots' bytes plus three times the log
/// written since the newest (a logged write may add its value to the state up to three
/// times); `log_since` is `None` until a snapshot was taken in this process, and then the
/// whole log on disk counts. With nothing applied since the newest snapshot the next one is
/// no bigger, whatever log is still on disk: counted in full, that log kept a node
/// restarted after a snapshot refusing writes with room to spare, and with nothing applied
/// no snapshot was asked for to lift it (a storage audit: until a delete came).
fn next_snapshot_bytes(snapshot_bytes: u64, log_on_disk: u64, log_since: Option<u64>, unsnapshotted: bool) -> u64 {
    let log = if unsnapshotted { log_since.unwrap_or(log_on_disk) } else { 0 };
    snapshot_bytes.saturating_add(log.saturating_mul(3))
}

/// When [`watch_disk_space`] asks for snapshots while short of space: at once, then after
/// [`SPACE_SNAPSHOT_BACKOFF_MIN`], doubling up to [`SPACE_SNAPSHOT_BACKOFF_MAX`]; afresh
/// once the node is no longer short.
#[derive(Debug)]
struct SpaceSnapshotAsks {
    next: Option<std::time::Instant>,
    backoff: Duration,
    /// Asks in this spell of shortage.
    asked: u32,
}

impl Default for SpaceSnapshotAsks {
    fn default() -> Self {
        SpaceSnapshotAsks { next: None, backoff: SPACE_SNAPSHOT_BACKOFF_MIN, asked: 0 }
    }
}

impl SpaceSnapshotAsks {
    /// Whether the last ask was the spell's first.
    fn first_in_spell(&self) -> bool {
        self.asked == 1
    }

    /// Whether to ask now; `unsnapshotted`: entries were applied since the last snapshot.
    fn ask_now(&mut self, now: std::time::Instant, short: bool, unsnapshotted: bool) -> bool {
        if !short {
            *self = SpaceSnapshotAsks::default();
            return false;
        }
        if !unsnapshotted || self.next.is_some_and(|at| now < at) {
            return false;
        }
        self.next = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(SPACE_SNAPSHOT_BACKOFF_MAX);
        self.asked = self.asked.saturating_add(1);
        true
    }
}

/// While short of space, the first snapshot is asked for at once, the next after this long.
const SPACE_SNAPSHOT_BACKOFF_MIN: Duration = Duration::from_secs(1);

/// The longest wait between snapshots asked for while short of space.
const SPACE_SNAPSHOT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How often [`watch_data_dir`] looks (a `stat`: cheap; writes acknowledged between the
/// deletion and the next look are the ones a restart would not find).
const DATA_DIR_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Stops Raft when the data dir's identity file is gone (the data dir was deleted or
/// replaced under the running node): the open log files still take writes, but nothing
/// acknowledged from then on would survive a restart, and a member that restarts empty
/// under its old name is the member that lost its data. (etcd does not notice; before,
/// neither did rota: writes were acknowledged and `/health` said true.)
async fn watch_data_dir(data_dir: PathBuf, raft: Raft, mut shutdown: watch::Receiver<bool>) {
    let identity = data_dir.join(identity::FILE_NAME);
    let mut interval = tokio::time::interval(DATA_DIR_CHECK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = interval.tick() => {}
        }
        let path = identity.clone();
        let looked = tokio::task::spawn_blocking(move || std::fs::metadata(path)).await;
        if let Ok(Err(error)) = looked {
            if error.kind() == std::io::ErrorKind::NotFound {
                tracing::error!(
                    data_dir = %data_dir.display(),
                    "the data dir was removed or replaced while this node ran ({} is gone): stopping, since \
                     nothing acknowledged from now on would survive a restart",
                    identity.display()
                );
                let _ = raft.shutdown().await;
                return;
            }
        }
    }
}

/// How often [`keep_commit_mark`] moves the commit mark on.
const COMMIT_MARK_INTERVAL: Duration = Duration::from_secs(1);

/// Moves the commit mark (see [`commit_mark`]) up to the committed index about once a
/// second while entries commit: after a sync of the log, so that the mark only ever names
/// entries the log holds on disk.
async fn keep_commit_mark(data_dir: PathBuf, log_store: LogStore, mut shutdown: watch::Receiver<bool>) {
    let mut marked = commit_mark::read(&data_dir).ok().flatten().unwrap_or(0);
    let mut failing = false;
    let mut interval = tokio::time::interval(COMMIT_MARK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = interval.tick() => {}
        }
        let committed = log_store.committed_index();
        if committed <= marked || log_store.sync().await.is_err() {
            continue;
        }
        let dir = data_dir.clone();
        match tokio::task::spawn_blocking(move || commit_mark::write(&dir, committed)).await {
            Ok(Ok(())) => {
                if failing {
                    tracing::info!(index = committed, "the commit mark is written again");
                }
                failing = false;
                marked = committed;
            }
            Ok(Err(error)) if !failing => {
                failing = true;
                tracing::warn!(
                    %error,
                    path = %commit_mark::path(&data_dir).display(),
                    "could not write the commit mark; retrying every second (a log damaged \
                     meanwhile is found out only up to the last mark)"
                );
            }
            _ => {}
        }
    }
}

/// The last commit mark, at a clean stop, unless the data dir was taken away meanwhile.
fn mark_commit_at_stop(data_dir: &std::path::Path, committed: u64) {
    if committed == 0 || !data_dir.join(identity::FILE_NAME).exists() {
        return;
    }
    if let Err(error) = commit_mark::write(data_dir, committed) {
        tracing::warn!(%error, path = %commit_mark::path(data_dir).display(), "could not write the commit mark at stop");
    }
}

/// How often [`snapshot_by_log_bytes`] looks at the log.
const SNAPSHOT_LOG_BYTES_CHECK: Duration = Duration::from_millis(500);

/// Asks openraft for a snapshot once `limit` bytes of entries were appended since the last
/// one (openraft's own policy counts entries). A build already running absorbs the ask.
async fn snapshot_by_log_bytes(
    raft: Raft,
    log_store: LogStore,
    limit: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(SNAPSHOT_LOG_BYTES_CHECK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_snapshot = raft.metrics().borrow().snapshot;
    let mut asks = LogBytesAsks::default();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = interval.tick() => {}
        }
        let appended = log_store.appended_bytes();
        let (snapshot, applied) = {
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            (metrics.snapshot, metrics.last_applied)
        };
        if snapshot != last_snapshot {
            last_snapshot = snapshot;
            asks.snapshot_taken(appended);
            // openraft keeps a number of entries behind a snapshot (for a follower a little
            // behind); entries of a few MiB each made that gigabytes of log. Keep at most a
            // quarter of the byte limit.
            let keep_bytes = (limit / 4).max(1 << 20);
            if let Some(point) = snapshot.and_then(|id| log_store.purge_point_keeping(id.index, keep_bytes)) {
                tracing::info!(through = point, keep_bytes, "log: purging entries behind the snapshot past the bytes kept");
                if raft.trigger().purge_log(point).await.is_err() {
                    return;
                }
            }
        }
        let unsnapshotted = applied.map(|id| id.index) > snapshot.map(|id| id.index);
        if let Some(grown) = asks.ask_now(appended, limit, unsnapshotted, std::time::Instant::now()) {
            tracing::info!(
                appended_since_snapshot = grown,
                "snapshot: the log grew past its byte limit"
            );
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
        }
    }
}

/// When [`snapshot_by_log_bytes`] asks for a snapshot. Bytes are those this process
/// appended (the log an earlier process left is not counted: it wrote its own snapshots by
/// the same rule). A snapshot covers the log up to about when it was asked for; what is
/// appended while it is built (seconds for a big state) counts toward the next one. Asked
/// again only once it was taken, or after [`LOG_BYTES_ASK_AGAIN_AFTER`]: openraft ignores
/// an ask while a snapshot is being built, and the baseline used to move at each ask, so a
/// big state's log grew well past the limit (a large-state audit: two asks lost during a
/// 5 s snapshot, ~240 MB of log kept).
#[derive(Debug, Default)]
struct LogBytesAsks {
    bytes_at_snapshot: u64,
    /// Appended bytes when a snapshot was asked for and not yet seen taken, and when.
    asked: Option<(u64, std::time::Instant)>,
}

/// How long an ask for a snapshot that did not come is waited for before asking again.
const LOG_BYTES_ASK_AGAIN_AFTER: Duration = Duration::from_secs(60);

impl LogBytesAsks {
    /// A new snapshot was seen, `appended` bytes appended by now.
    fn snapshot_taken(&mut self, appended: u64) {
        self.bytes_at_snapshot = match self.asked.take() {
            Some((asked_at_bytes, _)) => asked_at_bytes,
            None => appended,
        };
    }

    /// The bytes grown since the last snapshot, when a snapshot is to be asked for now.
    fn ask_now(&mut self, appended: u64, limit: u64, unsnapshotted: bool, now: std::time::Instant) -> Option<u64> {
        let grown = appended.saturating_sub(self.bytes_at_snapshot);
        let waiting = self
            .asked
            .is_some_and(|(_, at)| now.saturating_duration_since(at) < LOG_BYTES_ASK_AGAIN_AFTER);
        if grown < limit || !unsnapshotted || waiting {
            return None;
        }
        // Asked again: the snapshot still covers the log up to the first ask.
        let asked_at_bytes = self.asked.map_or(appended, |(bytes, _)| bytes);
        self.asked = Some((asked_at_bytes, now));
        Some(grown)
    }
}

/// Mirrors openraft's server metrics (term, role, leader) into ours and counts leader
/// changes. It follows `server_metrics`, which changes on elections and membership changes
/// only: the full metrics change with every entry, and waking a task on another thread per
/// entry cost the leader's Raft thread ~15% of its time. The per-entry gauges are read
/// when `/metrics` is scraped ([`Node::refresh_metrics`]).
async fn follow_raft_metrics(
    raft: Raft,
    id: u64,
    metrics: RaftMetrics,
    leader_seen: Arc<std::sync::Mutex<LeaderSeen>>,
    restored_term: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut server_metrics = raft.server_metrics();
    let mut leader = None;
    // openraft resumes the leadership a member had when it stopped (its vote is stored);
    // a newer leader's first message ends it. Said as such, not as a won election.
    let mut resumed_possible = restored_term > 0;
    // While no leader is known: since when, and when to warn next (a lost majority was
    // otherwise logged as one "election under way" line, and then nothing while the term
    // kept climbing).
    let started = tokio::time::Instant::now();
    let mut no_leader: Option<(tokio::time::Instant, tokio::time::Instant)> = Some((started, started + NO_LEADER_WARN_AFTER));
    loop {
        {
            let current = server_metrics.borrow_and_update();
            if current.current_leader.is_some() {
                no_leader = None;
            } else if no_leader.is_none() {
                let now = tokio::time::Instant::now();
                no_leader = Some((now, now + NO_LEADER_WARN_AFTER));
            }
            metrics.term.set(current.vote.leader_id.term as i64);
            let leads = current.state == openraft::ServerState::Leader
                && current.current_leader == Some(id);
            metrics.is_leader.set(i64::from(leads));
            if current.current_leader != leader {
                let term = current.vote.leader_id.term;
                let resumed = std::mem::replace(&mut resumed_possible, false) && term == restored_term;
                match current.current_leader {
                    Some(new) if new == id && resumed => tracing::info!(
                        term,
                        "this member led this term before it stopped and leads it again until it hears of a newer one"
                    ),
                    Some(new) if new == id => tracing::info!(term, "this member is the leader"),
                    // The vote stored before a restart names the leader it followed: not
                    // heard from yet in this run.
                    Some(new) if resumed => tracing::info!(
                        term,
                        leader = %format!("{new:x}"),
                        "following the leader this member followed before it stopped, until it hears of a newer one"
                    ),
                    Some(new) => tracing::info!(term, leader = %format!("{new:x}"), "following a new leader"),
                    // etcd logs "lost leader" too; the election that follows is logged by
                    // its outcome.
                    None if leader.is_some() => tracing::info!(term, "no leader: an election is under way"),
                    None => {}
                }
                if current.current_leader.is_some() {
                    metrics.leader_changes.inc();
                }
                let mut seen = leader_seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                *seen = LeaderSeen {
                    leader: current.current_leader,
                    since: std::time::SystemTime::now(),
                    last_known: current.current_leader.or(seen.last_known),
                };
            }
            leader = current.current_leader;
        }
        let warn_at = no_leader.map(|(_, warn_at)| warn_at);
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            changed = server_metrics.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(warn_at.unwrap_or(started)), if warn_at.is_some() => {
                let (term, voters) = {
                    let current = raft.metrics();
                    let current = current.borrow();
                    (current.current_term, current.membership_config.membership().voter_ids().count())
                };
                if let (true, Some((since, _))) = (voters > 1, no_leader) {
                    tracing::warn!(
                        term,
                        voters,
                        "no leader for {}s: no election is won; a majority of the members may be down or cut off \
                         from each other (writes wait; plain reads are served). If they are lost for good, see the \
                         README, \"After losing a majority for good\"",
                        since.elapsed().as_secs()
                    );
                }
                no_leader = no_leader.map(|(since, _)| (since, tokio::time::Instant::now() + NO_LEADER_WARN_EVERY));
            }
        }
    }
}

/// How long a member knows no leader before it warns, and how often it says so again.
const NO_LEADER_WARN_AFTER: Duration = Duration::from_secs(10);
const NO_LEADER_WARN_EVERY: Duration = Duration::from_secs(60);

#[cfg(test)]
mod storage_suite_test;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_next_snapshot_counts_the_log_only_when_something_was_applied_since_the_last() {
        // After a restart (no snapshot in this process yet): the whole log on disk, if
        // entries past the newest snapshot were applied...
        assert_eq!(next_snapshot_bytes(100, 40, None, true), 220);
        // ... and none of it when the newest snapshot covers everything applied.
        assert_eq!(next_snapshot_bytes(100, 40, None, false), 100);
        // After a snapshot in this process: the log written since.
        assert_eq!(next_snapshot_bytes(100, 40, Some(5), true), 115);
    }

    #[test]
    fn the_log_written_while_a_snapshot_is_built_counts_toward_the_next() {
        let start = std::time::Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut asks = LogBytesAsks::default();
        assert_eq!(asks.ask_now(63, 64, true, at(0)), None);
        assert_eq!(asks.ask_now(70, 64, false, at(1)), None, "nothing applied since the last snapshot");
        assert_eq!(asks.ask_now(70, 64, true, at(1)), Some(70));
        // Building: asked once, not again while it is built.
        assert_eq!(asks.ask_now(140, 64, true, at(2)), None);
        assert_eq!(asks.ask_now(200, 64, true, at(5)), None);
        // Taken: it covers up to the ask (70); the 130 appended since count.
        asks.snapshot_taken(200);
        assert_eq!(asks.ask_now(200, 64, true, at(6)), Some(130));
        // A snapshot that never comes (openraft ignored the ask): asked again after a while.
        assert_eq!(asks.ask_now(300, 64, true, at(60)), None);
        assert_eq!(asks.ask_now(300, 64, true, at(67)), Some(230));
        asks.snapshot_taken(320);
        assert_eq!(asks.ask_now(320, 64, true, at(68)), Some(120), "from the first of the asks: 200");
        // A snapshot taken without an ask (the entry-count policy): from when it was seen.
        let mut asks = LogBytesAsks::default();
        asks.snapshot_taken(500);
        assert_eq!(asks.ask_now(560, 64, true, at(0)), None);
        assert_eq!(asks.ask_now(564, 64, true, at(0)), Some(64));
    }

    #[test]
    fn short_of_space_snapshots_are_asked_for_with_a_growing_pause_until_space_is_back() {
        let mut asks = SpaceSnapshotAsks::default();
        let start = std::time::Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert!(!asks.ask_now(at(0), false, true), "not short: never");
        assert!(!asks.ask_now(at(0), true, false), "nothing new since the last snapshot");
        // Short, and entries keep coming (a look every 250 ms): asked at 0, 1, 3, 7, 12, 17 s.
        let (mut asked, mut first) = (Vec::new(), Vec::new());
        for ms in (0..72u64).map(|i| i * 250) {
            if asks.ask_now(at(ms), true, true) {
                asked.push(ms);
                first.push(asks.first_in_spell());
            }
        }
        assert_eq!(asked, vec![0, 1_000, 3_000, 7_000, 12_000, 17_000]);
        assert_eq!(first, [true, false, false, false, false, false], "logged once per spell");
        // No new entries meanwhile: nothing asked, and the pause goes on.
        assert!(!asks.ask_now(at(22_000), true, false));
        assert!(asks.ask_now(at(22_250), true, true));
        // Space back: the next shortage starts afresh.
        assert!(!asks.ask_now(at(23_000), false, true));
        assert!(asks.ask_now(at(23_250), true, true));
        assert!(asks.first_in_spell());
        assert!(!asks.ask_now(at(23_500), true, true));
        assert!(asks.ask_now(at(24_250), true, true));
    }

    fn tick(key: u64) -> Command {
        Command::Idempotent {
            key: format!("key-{key}"),
            fingerprint: key,
            command: Box::new(Command::Tick),
        }
    }

    /// A single node in `dir` that has acknowledged a first write (retried until it leads).
    async fn started_with_a_write(name: &str, dir: &std::path::Path) -> Node {
        let node = Node::start(NodeConfig::single(name, dir))
            .await
            .expect("start");
        tokio::time::timeout(Duration::from_secs(10), async {
            while node.propose(tick(1)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("a first write is acknowledged");
        node
    }

    /// A failed log write stops openraft (nothing more is acknowledged), and `wait_fatal`
    /// (on which `rota serve` exits non-zero) resolves with the storage error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_log_write_stops_raft_and_wait_fatal_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = started_with_a_write("fatal", dir.path()).await;
        let fatal = tokio::spawn({
            let node = node.clone();
            async move { node.wait_fatal().await }
        });
        // Every later log call fails ("raft log is closed"), as a failed fsync would.
        node.inner.log_store.close().expect("close the log");
        let write = node.propose(tick(2)).await;
        assert!(
            write.is_err(),
            "a write after the log failed was acknowledged: {write:?}"
        );
        let reason = tokio::time::timeout(Duration::from_secs(10), fatal)
            .await
            .expect("wait_fatal resolved in time")
            .expect("wait_fatal task");
        assert!(reason.contains("raft log is closed"), "{reason}");
        assert!(reason.starts_with("writing ") || reason.starts_with("reading "), "says what failed: {reason}");
        assert!(!reason.contains("LogId {"), "no debug dump: {reason}");
    }

    /// The open chunk of the Raft log is allocated at its full size, length included, so
    /// that records are written inside it (see `raft_log_config` in `log_store`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_open_log_chunk_is_allocated_at_its_full_size() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let node = started_with_a_write("reserve", dir.path()).await;
        let chunks: Vec<_> = std::fs::read_dir(dir.path().join("raft-log"))
            .expect("raft-log dir")
            .map(|entry| entry.expect("dir entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
            .collect();
        assert_eq!(chunks.len(), 1, "{chunks:?}");
        let meta = std::fs::metadata(&chunks[0]).expect("chunk metadata");
        assert_eq!(meta.len(), log_store::LOG_CHUNK_BYTES_MAX as u64);
        let written = node.log_records_end().expect("records end");
        assert!(0 < written && written < 1 << 20, "records end at {written}");
        let allocated = meta.blocks() * 512;
        assert!(
            allocated >= log_store::LOG_CHUNK_BYTES_MAX as u64,
            "{} bytes allocated for a {}-byte chunk",
            allocated,
            meta.len()
        );
        node.shutdown().await;
    }
}
