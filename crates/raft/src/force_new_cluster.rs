//! `--force-new-cluster`: a member that survived the loss of its cluster's majority starts
//! again as the only member of that cluster, with everything it holds committed, as etcd's
//! flag of that name does.
//!
//! Done on the data dir before Raft starts, in the order that keeps a crash at any point
//! recoverable by running it again:
//! 1. apply every entry of the log after the snapshot to the state: as if this member won
//!    an election, which commits everything in the winner's log. Entries past the commit
//!    index it knew are kept too (etcd drops them): the last ones a leader committed and
//!    acknowledged reach a follower's known commit index only with the next message, and
//!    the leader's own saved commit index lags its acknowledgements as well, so dropping
//!    them could lose acknowledged writes;
//! 2. store a snapshot of that state whose membership is this member alone, at the last
//!    entry;
//! 3. purge the log it covers.
//!
//! Raft then finds a one-voter membership and elects this member. The cluster id, member id
//! and store index stay: clients see the same cluster, continuing. The other members must
//! not come back on their old data dirs (they would campaign in the old membership): they
//! join again as new members, with empty data dirs.
//!
//! A forced start leaves [`MARKER`] in the data dir. A later start with the flag still on
//! (left in a unit file) whose membership has grown since is not forced again: that would
//! remove the members added since and drop what they committed without this member (an
//! audit lost an acknowledged write that way). It logs why instead; deleting the marker
//! forces again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::Membership;

use crate::log_store::LogStore;
use crate::state_machine::StateMachineStore;
use crate::types::{Member, NodeId, StoredMembership};
use crate::{commit_mark, StartError};

/// Left in the data dir by a forced start: the index it kept, in text.
pub(crate) const MARKER: &str = "force-new-cluster";

/// What `rewrite` did, for the start-up log.
#[derive(Debug)]
pub(crate) enum Outcome {
    Forced(Forced),
    /// Forced before ([`MARKER`]), and members were added since: left as it is.
    Grown { forced_at: u64, members: Vec<String> },
}

/// What the rewrite kept.
#[derive(Debug)]
pub(crate) struct Forced {
    /// The last Raft index kept (the new snapshot's).
    pub kept_index: u64,
    /// Entries of it past the commit index this member knew: committed now.
    pub beyond_known_commit: u64,
    /// The members the cluster had, this one left out, as `name (hex id)`.
    pub former_members: Vec<String>,
}

fn failed(step: &str, error: impl std::fmt::Display) -> StartError {
    StartError::Raft(format!("--force-new-cluster: {step}: {error}"))
}

/// Rewrites the opened log and state machine of `data_dir` so that `id` is the only member.
/// `own` describes this member when the stored membership does not know it.
pub(crate) async fn rewrite(
    data_dir: &Path,
    log_store: &mut LogStore,
    state_machine: &mut StateMachineStore,
    id: NodeId,
    own: Member,
) -> Result<Outcome, StartError> {
    let marker = data_dir.join(MARKER);
    let forced_at = match std::fs::read_to_string(&marker) {
        Ok(text) => text.trim().parse::<u64>().ok(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(failed("read the marker of an earlier forced start", error)),
    };
    // A data dir with neither log nor snapshot was refused before this runs (see `Node::start`).
    let log_state = log_store.get_log_state().await.map_err(|e| failed("read the log", e))?;
    let (applied, _) = state_machine.applied_state().await.map_err(|e| failed("read the snapshot", e))?;
    let last_index = log_state.last_log_id.map(|id| id.index);
    let saved_commit = log_store.read_committed().await.map_err(|e| failed("read the commit index", e))?.map(|id| id.index);
    let mark = commit_mark::read(data_dir).map_err(|e| failed("read the commit mark", e))?;
    let applied_index = applied.map(|id| id.index);
    let committed = [saved_commit, mark, applied_index].into_iter().flatten().max().unwrap_or(0);
    let keep = last_index.unwrap_or(0).max(applied_index.unwrap_or(0));

    // 1. The committed entries after the snapshot, applied (the state machine re-applies
    //    quietly, as at any start).
    let first = applied_index.map_or(0, |index| index + 1);
    if keep >= first {
        let entries = log_store.try_get_log_entries(first..=keep).await.map_err(|e| failed("read the log", e))?;
        if entries.first().map(|entry| entry.log_id.index) != Some(first) || entries.len() as u64 != keep - first + 1 {
            return Err(failed("read the log", format!("entries {first} to {keep} are not all there")));
        }
        state_machine.apply(entries).await.map_err(|e| failed("apply the log", e))?;
    }
    let (kept, membership_now) = state_machine.applied_state().await.map_err(|e| failed("read the state", e))?;
    let kept = kept.ok_or_else(|| failed("read the state", "nothing applied"))?;
    let former = membership_now.membership().clone();
    let others = |membership: &Membership<NodeId, Member>| -> Vec<String> {
        membership
            .nodes()
            .filter(|(member, _)| **member != id)
            .map(|(member, info)| format!("{} ({member:x})", info.name))
            .collect()
    };
    if let Some(forced_at) = forced_at {
        let members = others(&former);
        if !members.is_empty() {
            return Ok(Outcome::Grown { forced_at, members });
        }
    }

    // 2. This member alone, in a snapshot at the last committed entry.
    let me = former.get_node(&id).cloned().unwrap_or(own);
    let alone = Membership::new(vec![BTreeSet::from([id])], BTreeMap::from([(id, me)]));
    state_machine.set_membership(StoredMembership::new(Some(kept), alone));
    let mut builder = state_machine.get_snapshot_builder().await;
    builder.build_snapshot().await.map_err(|e| failed("store the snapshot", e))?;
    // Stored, not skipped (a snapshot past it would win at the next start).
    let stored = state_machine.snapshots().load_latest().map_err(|e| failed("read the snapshot back", e))?;
    let stored_alone = stored.as_ref().is_some_and(|image| {
        image.meta.last_log_id == Some(kept) && image.meta.last_membership.membership().voter_ids().eq([id])
    });
    if !stored_alone {
        return Err(failed("store the snapshot", "the newest snapshot is not the one just written"));
    }

    // 3. The log it covers, purged.
    let beyond_known_commit = kept.index.saturating_sub(committed);
    log_store.save_committed(Some(kept)).await.map_err(|e| failed("save the commit index", e))?;
    if log_state.last_purged_log_id.is_none_or(|purged| purged.index < kept.index) {
        log_store.purge(kept).await.map_err(|e| failed("purge the log", e))?;
    }
    log_store.sync().await.map_err(|e| failed("sync the log", e))?;
    // Told they were removed if they come back on their old data dirs while this runs.
    state_machine.note_removed(former.nodes().map(|(member, _)| *member).filter(|member| *member != id));
    let former_members = others(&former);
    write_marker(data_dir, kept.index).map_err(|e| failed("write its marker", e))?;
    Ok(Outcome::Forced(Forced { kept_index: kept.index, beyond_known_commit, former_members }))
}

/// [`MARKER`], durably: written to a temporary file, synced, renamed, the directory synced.
fn write_marker(data_dir: &Path, kept_index: u64) -> std::io::Result<()> {
    use std::io::Write as _;
    let temp = data_dir.join(format!("{MARKER}.tmp"));
    let mut file = std::fs::File::create(&temp)?;
    writeln!(file, "{kept_index}")?;
    file.sync_all()?;
    std::fs::rename(&temp, data_dir.join(MARKER))?;
    std::fs::File::open(data_dir)?.sync_all()
}
