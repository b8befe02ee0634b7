//! The one seam between HTTP and consensus. Handlers talk to a [`Backend`]; the real one is
//! `rota_raft::Node`, and tests use a fake that applies commands to a `rota_core::State`
//! under a mutex, so the HTTP layer is tested without Raft.

use std::future::Future;

use rota_core::{Command, State};
pub use rota_raft::{
    Applied, FollowerStats, Member, MemberError, PeerStatsSnapshot, ProposeError, Proposed, Status,
};

/// What the HTTP layer needs from a node.
pub trait Backend: Send + Sync + 'static {
    /// Proposes a command and resolves once it is applied (committed and durable).
    fn propose(
        &self,
        command: Command,
    ) -> impl Future<Output = Result<Proposed, ProposeError>> + Send;

    /// Runs `f` on the applied state. Must be short: it holds the state's read lock.
    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R;

    /// Changes after every applied entry.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Applied>;

    /// Waits until this node has applied everything committed before the call (ReadIndex),
    /// for `quorum=true` reads.
    fn linearizable_read(&self) -> impl Future<Output = Result<Applied, ProposeError>> + Send;

    fn status(&self) -> Status;

    /// The cluster's members by id; empty when the backend doesn't know them (the server
    /// then lists itself from its config).
    fn members(&self) -> Vec<(u64, Member)> {
        Vec::new()
    }

    /// Adds the backend's own metrics (Raft, fsync latency) to the server's registry.
    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        let _ = registry;
    }

    /// Updates the registered metrics that are sampled rather than followed (just before
    /// `/metrics` renders them).
    fn refresh_metrics(&self) {}

    /// `POST /v2/members`: adds a member with these peer URLs; its id and entry.
    fn add_member(
        &self,
        peer_urls: Vec<String>,
    ) -> impl Future<Output = Result<(u64, Member), MemberError>> + Send {
        let _ = peer_urls;
        async { Err(MemberError::Failed("this backend has no membership".into())) }
    }

    /// `DELETE /v2/members/{id}`.
    fn remove_member(&self, id: u64) -> impl Future<Output = Result<(), MemberError>> + Send {
        async move { Err(MemberError::NotFound(id)) }
    }

    /// `PUT /v2/members/{id}`.
    fn update_member(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> impl Future<Output = Result<(), MemberError>> + Send {
        let _ = peer_urls;
        async move { Err(MemberError::NotFound(id)) }
    }

    /// Append counts and per-follower replication stats, for `/v2/stats/*`.
    fn peer_stats(&self) -> PeerStatsSnapshot {
        PeerStatsSnapshot::default()
    }
}

impl Backend for rota_raft::Node {
    fn propose(
        &self,
        command: Command,
    ) -> impl Future<Output = Result<Proposed, ProposeError>> + Send {
        rota_raft::Node::propose(self, command)
    }

    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        rota_raft::Node::read(self, f)
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<Applied> {
        rota_raft::Node::subscribe(self)
    }

    fn linearizable_read(&self) -> impl Future<Output = Result<Applied, ProposeError>> + Send {
        rota_raft::Node::linearizable_read(self)
    }

    fn status(&self) -> Status {
        rota_raft::Node::status(self)
    }

    fn members(&self) -> Vec<(u64, Member)> {
        rota_raft::Node::members(self)
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        rota_raft::Node::metrics(self).register(registry);
    }

    fn refresh_metrics(&self) {
        rota_raft::Node::refresh_metrics(self);
    }

    fn add_member(
        &self,
        peer_urls: Vec<String>,
    ) -> impl Future<Output = Result<(u64, Member), MemberError>> + Send {
        rota_raft::Node::add_member(self, peer_urls)
    }

    fn remove_member(&self, id: u64) -> impl Future<Output = Result<(), MemberError>> + Send {
        rota_raft::Node::remove_member(self, id)
    }

    fn update_member(
        &self,
        id: u64,
        peer_urls: Vec<String>,
    ) -> impl Future<Output = Result<(), MemberError>> + Send {
        rota_raft::Node::update_member(self, id, peer_urls)
    }

    fn peer_stats(&self) -> PeerStatsSnapshot {
        rota_raft::Node::peer_stats(self)
    }
}

/// A backend without consensus, for tests: commands are applied at once to a state under a
/// mutex, with a settable clock.
pub mod fake {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, PoisonError};

    use rota_core::{Batch, Command, Config, State};

    use super::{Applied, Backend, ProposeError, Proposed, Status};

    /// Applies each proposal as its own batch, stamped with [`FakeBackend::now_ms`].
    #[derive(Clone)]
    pub struct FakeBackend {
        inner: Arc<Inner>,
    }

    struct Inner {
        state: Mutex<State>,
        applied: tokio::sync::watch::Sender<Applied>,
        now_ms: AtomicU64,
    }

    impl FakeBackend {
        pub fn new(config: Config) -> FakeBackend {
            let (applied, _) = tokio::sync::watch::channel(Applied {
                raft_index: 1,
                raft_term: 1,
                etcd_index: 0,
            });
            FakeBackend {
                inner: Arc::new(Inner {
                    state: Mutex::new(State::new(config)),
                    applied,
                    now_ms: AtomicU64::new(1_700_000_000_000),
                }),
            }
        }

        /// The time the next proposal is applied at.
        pub fn now_ms(&self) -> u64 {
            self.inner.now_ms.load(Ordering::SeqCst)
        }

        pub fn advance_ms(&self, ms: u64) {
            self.inner.now_ms.fetch_add(ms, Ordering::SeqCst);
        }

        fn apply(&self, command: Option<Command>) -> (Vec<rota_core::Response>, Applied) {
            let batch = Batch {
                time_ms: self.now_ms(),
                commands: command.into_iter().collect(),
            };
            let mut state = self
                .inner
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let responses = state.apply_batch(&batch);
            let previous = *self.inner.applied.borrow();
            let applied = Applied {
                raft_index: previous.raft_index + 1,
                raft_term: previous.raft_term,
                etcd_index: state.v2.index(),
            };
            // Published under the state lock so subscribers never see an index the state
            // doesn't have yet.
            self.inner.applied.send_replace(applied);
            (responses, applied)
        }

        /// Applies an empty batch at the current time: what the ticker does when a TTL is due.
        pub fn tick(&self) {
            self.apply(Some(Command::Tick));
        }
    }

    impl Backend for FakeBackend {
        async fn propose(&self, command: Command) -> Result<Proposed, ProposeError> {
            let (mut responses, applied) = self.apply(Some(command));
            let response = responses
                .pop()
                .ok_or_else(|| ProposeError::Fatal("no response".into()))?;
            Ok(Proposed {
                response,
                raft_index: applied.raft_index,
                raft_term: applied.raft_term,
            })
        }

        fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
            f(&self
                .inner
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner))
        }

        fn subscribe(&self) -> tokio::sync::watch::Receiver<Applied> {
            self.inner.applied.subscribe()
        }

        async fn linearizable_read(&self) -> Result<Applied, ProposeError> {
            Ok(*self.inner.applied.borrow())
        }

        fn status(&self) -> Status {
            let applied = *self.inner.applied.borrow();
            Status {
                id: 0x8e9e05c52164694d,
                name: "default".into(),
                term: applied.raft_term,
                leader_id: Some(0x8e9e05c52164694d),
                is_leader: true,
                last_log_index: applied.raft_index,
                commit_index: applied.raft_index,
                applied_index: applied.raft_index,
                ..Status::default()
            }
        }
    }
}
