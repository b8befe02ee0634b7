//! The state machine as openraft sees it: applies committed entries to `rota_core::State`,
//! builds and installs snapshots.
//!
//! The state lives in memory behind a `RwLock` shared with `Node::read`. Only openraft's
//! state-machine task writes it (in `apply` and `install_snapshot`); the lock is never held
//! across an await. Durability comes from the log plus snapshots: on restart the newest
//! snapshot is loaded and openraft re-applies the committed log after it.
//!
//! After each `apply` call the `Applied` watch channel carries the last applied position, so
//! watchers and the ticker wake once per applied batch, after the state already shows it.

use std::io::Cursor;
use std::sync::{Arc, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot};
use rota_core::{Command, State};
use tokio::sync::watch;

use crate::metrics::RaftMetrics;
use crate::snapshot_file::{SnapshotDir, SnapshotFileError, SnapshotImage};
use crate::types::{
    Entry, EntryResponses, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};
use crate::Applied;

/// What the node's handles share with the state machine.
#[derive(Debug)]
pub(crate) struct SharedState {
    pub state: RwLock<State>,
    pub applied_tx: watch::Sender<Applied>,
    /// True while openraft re-applies the committed log at start-up (inside `Raft::new`),
    /// when no client waits for an answer; the node clears it once Raft is running.
    pub replaying: std::sync::atomic::AtomicBool,
    /// The snapshot files, closed when the node shuts down.
    pub snapshots: SnapshotDir,
    /// Members that a membership entry applied by this process removed (from the log since
    /// the last snapshot at start-up, and every change since): a repeated remove of one of
    /// them is answered as etcd answers it (410 Gone, which clients count as done). Not
    /// kept in snapshots: etcd keeps its removed ids for good.
    pub removed_members: std::sync::Mutex<std::collections::BTreeSet<u64>>,
    /// Forwarded writes of this member waiting to see their [`Command::Tagged`] applied.
    pub tags: TagWaiters,
}

/// Waiters for this member's own forwarded commands, by `(origin, seq)` (see
/// [`Command::Tagged`]): applying one hands its waiter the answer this member computed.
#[derive(Debug, Default)]
pub(crate) struct TagWaiters {
    waiting: std::sync::atomic::AtomicUsize,
    waiters: std::sync::Mutex<std::collections::HashMap<(u64, u64), tokio::sync::oneshot::Sender<crate::Proposed>>>,
    /// Sequence numbers from the process's start time in ns: unique across restarts, so an
    /// old command applied late is never taken for a new one.
    next_seq: std::sync::atomic::AtomicU64,
}

/// One registered waiter; dropping it unregisters.
pub(crate) struct TagWait<'a> {
    tags: &'a TagWaiters,
    pub key: (u64, u64),
    pub applied: tokio::sync::oneshot::Receiver<crate::Proposed>,
}

impl TagWaiters {
    pub(crate) fn register(&self, origin: u64) -> TagWait<'_> {
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| since.as_nanos() as u64);
        let _ = self.next_seq.compare_exchange(0, base, std::sync::atomic::Ordering::Relaxed, std::sync::atomic::Ordering::Relaxed);
        let seq = self.next_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, applied) = tokio::sync::oneshot::channel();
        self.waiters.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert((origin, seq), tx);
        self.waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TagWait { tags: self, key: (origin, seq), applied }
    }

    /// Hands the answers of an applied batch to the waiters of its tagged commands.
    fn deliver(&self, commands: &[Command], responses: &[rota_core::Response], log_id: LogId) {
        if self.waiting.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return;
        }
        let mut waiters = self.waiters.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (command, response) in commands.iter().zip(responses) {
            if let Command::Tagged { origin, seq, .. } = command {
                if let Some(waiter) = waiters.remove(&(*origin, *seq)) {
                    let _ = waiter.send(crate::Proposed {
                        response: response.clone(),
                        raft_index: log_id.index,
                        raft_term: log_id.leader_id.term,
                    });
                }
            }
        }
    }
}

impl Drop for TagWait<'_> {
    fn drop(&mut self) {
        self.tags.waiters.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.key);
        self.tags.waiting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl SharedState {
    /// Runs `f` under a short read lock. A poisoned lock (a panic while applying) still
    /// holds the last state; reading it is the best a crashing node can do.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let guard = self
            .state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&guard)
    }
}

pub(crate) struct StateMachineStore {
    shared: Arc<SharedState>,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    snapshots: SnapshotDir,
    /// Distinguishes snapshots built at the same log id.
    snapshot_builds: u64,
    metrics: RaftMetrics,
    /// This node's `--max-history`, given to every state loaded from a snapshot.
    history_max: usize,
}

impl StateMachineStore {
    /// Loads the newest snapshot from `snapshots` (or starts from an empty state).
    pub(crate) fn open(
        snapshots: SnapshotDir,
        core_config: rota_core::Config,
        metrics: RaftMetrics,
    ) -> Result<(StateMachineStore, Arc<SharedState>), SnapshotFileError> {
        let history_max = core_config.v2_history_max;
        let (state, last_applied, last_membership) = match snapshots.load_latest()? {
            Some(image) => {
                let mut state = image.state().map_err(|reason| SnapshotFileError::Corrupt {
                    path: snapshots.path().to_path_buf(),
                    reason,
                })?;
                state.set_v2_history_max(history_max);
                metrics.snapshot_bytes.set(image.bytes.len() as i64);
                metrics
                    .snapshot_index
                    .set(image.meta.last_log_id.map(|id| id.index).unwrap_or(0) as i64);
                (state, image.meta.last_log_id, image.meta.last_membership)
            }
            None => (State::new(core_config), None, StoredMembership::default()),
        };
        let applied = applied_at(last_applied, &state);
        // From the start, not only from the next apply (it read 0 after a restart).
        metrics.applied_index.set(applied.raft_index as i64);
        let (applied_tx, _) = watch::channel(applied);
        let shared = Arc::new(SharedState {
            state: RwLock::new(state),
            applied_tx,
            replaying: std::sync::atomic::AtomicBool::new(true),
            snapshots: snapshots.clone(),
            removed_members: std::sync::Mutex::default(),
            tags: TagWaiters::default(),
        });
        let store = StateMachineStore {
            history_max,
            shared: shared.clone(),
            last_applied,
            last_membership,
            snapshots,
            snapshot_builds: 0,
            metrics,
        };
        Ok((store, shared))
    }

    pub(crate) fn has_snapshot(&self) -> bool {
        self.last_applied.is_some()
    }

    /// The last index in the snapshot it was opened from.
    pub(crate) fn snapshot_index(&self) -> Option<u64> {
        self.last_applied.map(|id| id.index)
    }

    /// Counts `members` as removed from the cluster for as long as this process runs (their
    /// Raft calls are answered 410 Gone, which stops them).
    pub(crate) fn note_removed(&self, members: impl IntoIterator<Item = u64>) {
        self.shared.removed_members.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend(members);
    }

    /// The snapshot files.
    pub(crate) fn snapshots(&self) -> &SnapshotDir {
        &self.snapshots
    }

    /// Replaces the membership the state machine holds (`--force-new-cluster`, before Raft
    /// starts; the next snapshot carries it).
    pub(crate) fn set_membership(&mut self, membership: StoredMembership) {
        self.last_membership = membership;
    }

    fn publish_applied(&self, applied: Applied) {
        self.metrics.applied_index.set(applied.raft_index as i64);
        self.shared.applied_tx.send_replace(applied);
    }
}

fn applied_at(log_id: Option<LogId>, state: &State) -> Applied {
    Applied {
        raft_index: log_id.map(|id| id.index).unwrap_or(0),
        raft_term: log_id.map(|id| id.leader_id.term).unwrap_or(0),
        etcd_index: state.v2.index(),
    }
}

fn snapshot_error(
    meta: Option<&SnapshotMeta>,
    verb: ErrorVerb,
    reason: impl ToString,
) -> StorageError {
    let subject = ErrorSubject::Snapshot(meta.map(|meta| meta.signature()));
    crate::types::storage_failure(subject, verb, reason.to_string())
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<EntryResponses>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        let replaying = self
            .shared
            .replaying
            .load(std::sync::atomic::Ordering::Relaxed);
        let applied = {
            let mut state = self
                .shared
                .state
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for entry in entries {
                self.last_applied = Some(entry.log_id);
                let reply = match entry.payload {
                    EntryPayload::Blank => EntryResponses::default(),
                    EntryPayload::Normal(batch) if replaying => {
                        state.apply_batch_unobserved(&batch);
                        EntryResponses::default()
                    }
                    EntryPayload::Normal(batch) => {
                        let responses = state.apply_batch(&batch);
                        self.shared.tags.deliver(&batch.commands, &responses, entry.log_id);
                        EntryResponses { responses }
                    }
                    EntryPayload::Membership(membership) => {
                        crate::membership::crash_in_joint_by_test_mutant(&membership);
                        if !replaying {
                            log_membership_change(self.last_membership.membership(), &membership);
                        }
                        let removed = removed_by(self.last_membership.membership(), &membership);
                        let mut removed_members =
                            self.shared.removed_members.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                        removed_members.extend(removed.map(|(id, _)| *id));
                        drop(removed_members);
                        self.last_membership =
                            StoredMembership::new(Some(entry.log_id), membership);
                        EntryResponses::default()
                    }
                };
                replies.push(reply);
            }
            applied_at(self.last_applied, &state)
        };
        self.publish_applied(applied);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Take the state here, on the state machine task, so the image is exactly the state
        // at `last_applied`. Its big tables are shared copy-on-write, so this clone is
        // short; encoding and writing happen on a blocking thread while applying goes on.
        self.snapshot_builds += 1;
        let last_applied = self.last_applied;
        let snapshot_id = match last_applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term, id.index, self.snapshot_builds
            ),
            None => format!("0-0-{}", self.snapshot_builds),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        };
        let started = std::time::Instant::now();
        let state = self.shared.read(State::clone);
        // Applying waits while the state is taken: the time is worth seeing.
        self.metrics.snapshot_pause_seconds.observe(started.elapsed().as_secs_f64());
        tracing::info!(
            clone_ms = started.elapsed().as_millis() as u64,
            "snapshot: state taken"
        );
        SnapshotBuilder {
            meta,
            state: Some(state),
            snapshots: self.snapshots.clone(),
            metrics: self.metrics.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let image = SnapshotImage::verify(snapshot.into_inner()).map_err(|reason| {
            snapshot_error(
                Some(meta),
                ErrorVerb::Write,
                format!("received snapshot: {reason}"),
            )
        })?;
        if image.meta.last_log_id != meta.last_log_id
            || image.meta.last_membership != meta.last_membership
        {
            return Err(snapshot_error(
                Some(meta),
                ErrorVerb::Write,
                "received snapshot's metadata differs from the announced one",
            ));
        }
        let mut state = image
            .state()
            .map_err(|reason| snapshot_error(Some(meta), ErrorVerb::Write, reason))?;
        // The leader's history size is its own flag's; this node keeps its own.
        state.set_v2_history_max(self.history_max);
        let snapshots = self.snapshots.clone();
        let image_bytes = image.bytes.len();
        tokio::task::spawn_blocking(move || store_when_space(&snapshots, &image))
            .await
            .map_err(|e| snapshot_error(Some(meta), ErrorVerb::Write, e))?
            .map_err(|e| snapshot_error(Some(meta), ErrorVerb::Write, e))?;
        self.metrics.snapshot_bytes.set(image_bytes as i64);
        self.metrics
            .snapshot_index
            .set(meta.last_log_id.map(|id| id.index).unwrap_or(0) as i64);
        let applied = {
            let mut guard = self
                .shared
                .state
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *guard = state;
            applied_at(meta.last_log_id, &guard)
        };
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.publish_applied(applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let snapshots = self.snapshots.clone();
        let image = tokio::task::spawn_blocking(move || snapshots.load_latest())
            .await
            .map_err(|e| snapshot_error(None, ErrorVerb::Read, e))?
            .map_err(|e| snapshot_error(None, ErrorVerb::Read, e))?;
        Ok(image.map(|image| Snapshot {
            meta: image.meta,
            snapshot: Box::new(Cursor::new(image.bytes)),
        }))
    }
}

/// Encodes and writes one snapshot file from a state taken on the state machine task.
pub(crate) struct SnapshotBuilder {
    meta: SnapshotMeta,
    state: Option<State>,
    snapshots: SnapshotDir,
    metrics: RaftMetrics,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let meta = self.meta.clone();
        let state = self.state.take().ok_or_else(|| {
            snapshot_error(Some(&meta), ErrorVerb::Write, "snapshot already built")
        })?;
        let snapshots = self.snapshots.clone();
        let image_meta = meta.clone();
        // The last snapshot's size, and some growth: the buffer is rarely regrown.
        let size_hint = usize::try_from(self.metrics.snapshot_bytes.get()).unwrap_or(0) / 8 * 9;
        // Off the Raft runtime (its one thread also applies entries and drives replication),
        // and at a lower priority.
        let metrics = self.metrics.clone();
        let (stored, image) = in_background("rota-snapshot", move || {
            let started = std::time::Instant::now();
            let image = SnapshotImage::build(image_meta, &state, size_hint)?;
            drop(state);
            let encode_ms = started.elapsed().as_millis() as u64;
            let stored = store_when_space(&snapshots, &image)?;
            if stored {
                metrics.snapshot_seconds.observe(started.elapsed().as_secs_f64());
                tracing::info!(
                    bytes = image.bytes.len(),
                    encode_ms,
                    write_ms = started.elapsed().as_millis() as u64 - encode_ms,
                    "snapshot: encoded, written and synced"
                );
            }
            Ok((stored, image))
        })
        .await
        .map_err(|e| snapshot_error(Some(&meta), ErrorVerb::Write, e))?;
        if stored {
            self.metrics.snapshot_bytes.set(image.bytes.len() as i64);
            self.metrics
                .snapshot_index
                .set(meta.last_log_id.map(|id| id.index).unwrap_or(0) as i64);
        }
        Ok(Snapshot {
            meta: image.meta,
            snapshot: Box::new(Cursor::new(image.bytes)),
        })
    }
}

/// How long a snapshot that found the disk full waits before it tries again.
const SNAPSHOT_SPACE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Space a snapshot leaves free when it is written (for the log's writes meanwhile): the
/// margin writes resume above, 16 MiB or an eighth of a small file system (a fixed 16 MiB
/// kept an audit's almost empty node on a 20 MiB file system waiting for it for good).
fn snapshot_space_margin(dir: &std::path::Path) -> u64 {
    crate::disk::total_bytes(dir).map_or(crate::disk::RESUME_MARGIN_BYTES, crate::disk::resume_margin)
}

/// Stores `image`, once there is room for it: while the file system has less than the
/// image plus [`snapshot_space_margin`] free, or a write finds it full (ENOSPC, EDQUOT), it
/// waits and tries again rather than fail. A snapshot that fails stops Raft (and the
/// process); waiting loses nothing, as the log before a snapshot is purged only once the
/// snapshot is stored. And it does not write what cannot fit: a write that fills the disk
/// would make the log's next write fail. Writes are refused long before (see `disk`); this
/// covers what fills the disk anyway (other programs' files).
fn store_when_space(snapshots: &SnapshotDir, image: &SnapshotImage) -> Result<bool, String> {
    let needed = image.bytes.len() as u64 + snapshot_space_margin(snapshots.path());
    let mut waiting = false;
    loop {
        if snapshots.is_closed() {
            return Ok(false);
        }
        let available = crate::disk::available_bytes(snapshots.path()).unwrap_or(u64::MAX);
        let reason = if available < needed {
            format!("{} MiB free, {} MiB needed", available >> 20, needed >> 20)
        } else {
            match snapshots.store(image) {
                Ok(stored) => {
                    if waiting {
                        tracing::warn!("snapshot: stored after waiting for space");
                    }
                    return Ok(stored);
                }
                Err(SnapshotFileError::Io { source, .. }) if is_out_of_space(&source) => {
                    source.to_string()
                }
                Err(other) => return Err(other.to_string()),
            }
        };
        if !waiting {
            tracing::error!(
                path = %snapshots.path().display(),
                %reason,
                "snapshot: no space to store it; trying again every {SNAPSHOT_SPACE_RETRY:?}"
            );
            waiting = true;
        }
        std::thread::sleep(SNAPSHOT_SPACE_RETRY);
    }
}

fn is_out_of_space(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// The nice value of the thread that encodes and writes a snapshot.
const SNAPSHOT_THREAD_NICE: libc::c_int = 10;

/// Runs `work` on a thread of its own at nice [`SNAPSHOT_THREAD_NICE`] and hands back its
/// result. Encoding a snapshot takes time in proportion to the state (~1 s per million v2
/// keys here, more while three members of a cluster on one machine encode at once); at the
/// normal priority it took the cores that the Raft thread and the HTTP workers needed, and
/// writes waited (p99 at c=64 went from ~6 ms to 60–140 ms in the runs that took one).
/// Niced, it runs on what they leave idle and yields to them when they wake.
async fn in_background<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // SAFETY: setpriority(2) with `who` = 0 sets the calling thread's nice value on
            // Linux (NPTL threads each have their own); no memory is passed.
            let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS as _, 0, SNAPSHOT_THREAD_NICE) };
            let _ = sender.send(work());
        })
        .map_err(|error| format!("cannot start the {name} thread: {error}"))?;
    receiver
        .await
        .map_err(|_| format!("the {name} thread panicked"))?
}

/// A member's name for the log: one added by `member add` has none until it has started and
/// published it, which may come after it became a voter (etcd lists it with an empty name
/// meanwhile).
fn shown_name(member: &crate::types::Member) -> &str {
    if member.name.is_empty() {
        "(not known yet)"
    } else {
        &member.name
    }
}

/// One line on every member for each membership change it applies, as etcd's "added
/// member ... to cluster" / "removed member ...": members that came or went, and learners
/// that became voters. (A joint step that changes nothing of these logs nothing.)
fn log_membership_change(
    before: &openraft::Membership<crate::types::NodeId, crate::types::Member>,
    after: &openraft::Membership<crate::types::NodeId, crate::types::Member>,
) {
    let voter = |m: &openraft::Membership<_, _>, id: &u64| m.voter_ids().any(|v| v == *id);
    for (id, member) in after.nodes() {
        match before.get_node(id) {
            None if voter(after, id) => {
                tracing::info!(member = %format_args!("{id:x}"), name = %shown_name(member), peer_urls = %member.peer_urls.join(","), "membership: member added")
            }
            None => tracing::info!(member = %format_args!("{id:x}"), peer_urls = %member.peer_urls.join(","), "membership: member added as a learner (a voter once it has caught up)"),
            Some(_) if voter(after, id) && !voter(before, id) => {
                // A new member's name is known once it has published it (after it started).
                tracing::info!(member = %format_args!("{id:x}"), name = %shown_name(member), peer_urls = %member.peer_urls.join(","), "membership: member is now a voter")
            }
            Some(_) => {}
        }
    }
    for (id, member) in removed_by(before, after) {
        tracing::info!(member = %format_args!("{id:x}"), name = %shown_name(member), peer_urls = %member.peer_urls.join(","), "membership: member removed");
    }
}

/// The members of `before` that `after` no longer has.
fn removed_by<'a>(
    before: &'a openraft::Membership<crate::types::NodeId, crate::types::Member>,
    after: &'a openraft::Membership<crate::types::NodeId, crate::types::Member>,
) -> impl Iterator<Item = (&'a crate::types::NodeId, &'a crate::types::Member)> {
    before.nodes().filter(|(id, _)| after.get_node(id).is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_work_runs_niced_on_its_own_thread_and_hands_back_its_result() {
        let caller = std::thread::current().id();
        let (nice, thread) = in_background("rota-test-bg", move || {
            // SAFETY: getpriority(2) of the calling thread; no memory is passed.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS as _, 0) };
            Ok((nice, std::thread::current().id()))
        })
        .await
        .expect("result");
        assert_ne!(thread, caller);
        // Raised by SNAPSHOT_THREAD_NICE from the test process's own nice value, capped at 19.
        // SAFETY: as above.
        let base = unsafe { libc::getpriority(libc::PRIO_PROCESS as _, 0) };
        assert_eq!(nice, (base + SNAPSHOT_THREAD_NICE).min(19));
        let failed: Result<(), String> = in_background("rota-test-bg", || Err("no".to_string())).await;
        assert_eq!(failed, Err("no".to_string()));
    }
}
