//! Membership at runtime, as etcd's `/v2/members` offers it, on openraft's joint consensus.
//!
//! - Add: the leader assigns an id from the peer URLs and adds the member as a **learner**;
//!   it gets the log (or a snapshot) without counting for quorum. The keeper task on the
//!   leader promotes a learner to voter once its replication is within
//!   [`PROMOTE_LAG_ENTRIES_MAX`] entries of the leader's log, so a new member never makes a
//!   quorum wait for a copy it does not have yet.
//! - Remove: a voter is removed from the voters and the nodes in one change (joint config,
//!   then the uniform one). A leader may remove itself: openraft keeps it leading until the
//!   uniform config is applied, then it steps down to learner at its next tick. Its vote
//!   still names it, so openraft's `current_leader` names it forever (nobody in the new
//!   membership sends it a newer vote): leadership is read from the server state
//!   ([`crate::leads`]). Its proposals are held back while it removes itself (the
//!   proposer's gate) and refused after (`Removed`); the process then stops, as etcd's does.
//!   The others elect a leader after an election timeout without it.
//!   A removed **follower** is not told by openraft (the leader stops replicating to it once
//!   it appends the uniform config), so it campaigns. As etcd's peers do, the members
//!   answer a Raft RPC from a member they know was removed with 410 Gone before Raft sees
//!   it ([`sender_was_removed`] says when they know); the removed member then marks itself
//!   removed and its process stops. The same happens when it is started on its data dir.
//! - Update peer URLs, and publish: a member's name and client URLs are not known when it
//!   is added (etcd's POST takes peer URLs only, and the initial membership carries names
//!   and peer URLs only), so each member publishes its own through the leader once it sees
//!   its entry differ (the keeper task on every member).
//!
//! All changes run on the leader ([`crate::forward::change_members`] forwards them).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Membership, ServerState};
use tokio::sync::watch;

use crate::forward;
use crate::peer::{MemberChange, MemberChangeReply};
use crate::types::{member_id_from_peer_urls, LogId, Member, NodeId};
use crate::{MemberError, Node, WeakNode};

/// A learner within this many entries of the leader's last log index becomes a voter.
const PROMOTE_LAG_ENTRIES_MAX: u64 = 64;
/// The keeper looks at the membership at least this often (and on every change).
const KEEPER_INTERVAL: Duration = Duration::from_millis(200);
/// Back-off after a failed publish or promotion.
const KEEPER_RETRY: Duration = Duration::from_millis(500);
/// A change that meets another one in progress (joint config) is retried this often.
const IN_PROGRESS_RETRIES_MAX: u32 = 20;
const IN_PROGRESS_RETRY: Duration = Duration::from_millis(100);
/// Peer URLs per member, at most (etcd has no bound; ours keeps the membership small).
const PEER_URLS_MAX: usize = 16;
/// How long a leader removing itself waits for its writes in flight to commit.
const REMOVE_SELF_IN_FLIGHT_WAIT: Duration = Duration::from_secs(5);

impl Node {
    /// `POST /v2/members`: adds a member (as a learner, promoted once caught up) and returns
    /// its id and entry (empty name and client URLs until it starts and publishes them).
    pub async fn add_member(&self, peer_urls: Vec<String>) -> Result<(u64, Member), MemberError> {
        validate_peer_urls(&peer_urls)?;
        if !self.inner.listens_for_peers {
            return Err(MemberError::NoPeerListener);
        }
        if let [(id, me)] = self.members().as_slice() {
            let ports = &self.inner.peer_listen_ports;
            if *id == self.inner.id && !ports.is_empty() && !me.peer_urls.iter().any(|url| url_port(url).is_some_and(|port| ports.contains(&port))) {
                return Err(MemberError::RegisteredElsewhere { id: *id, registered: me.peer_urls.join(",") });
            }
        }
        forward::change_members(self, MemberChange::Add { peer_urls }).await
    }

    /// `DELETE /v2/members/{id}`.
    pub async fn remove_member(&self, id: u64) -> Result<(), MemberError> {
        forward::change_members(self, MemberChange::Remove { id })
            .await
            .map(|_| ())
    }

    /// `PUT /v2/members/{id}`: replaces the member's peer URLs.
    pub async fn update_member(&self, id: u64, peer_urls: Vec<String>) -> Result<(), MemberError> {
        validate_peer_urls(&peer_urls)?;
        forward::change_members(self, MemberChange::UpdatePeerUrls { id, peer_urls })
            .await
            .map(|_| ())
    }
}

/// The port of an `http://host:port[/]` URL.
fn url_port(url: &str) -> Option<u16> {
    url.trim_end_matches('/').rsplit_once(':').and_then(|(_, port)| port.parse().ok())
}

fn validate_peer_urls(peer_urls: &[String]) -> Result<(), MemberError> {
    if peer_urls.is_empty() || peer_urls.len() > PEER_URLS_MAX {
        return Err(MemberError::InvalidPeerUrls(format!(
            "give 1 to {PEER_URLS_MAX} peer URLs"
        )));
    }
    for url in peer_urls {
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(MemberError::InvalidPeerUrls(format!("URL scheme must be http: {url}")));
        };
        // As etcd: `host:port`, no path (a trailing slash is no path).
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(MemberError::InvalidPeerUrls(format!("URL must not contain a path: {url}")));
        }
        let host_port = authority
            .rsplit_once(':')
            .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0));
        if host_port.is_none() || authority.len() > 255 {
            return Err(MemberError::InvalidPeerUrls(format!(
                "URL address does not have the form \"host:port\": {url}"
            )));
        }
        // What the peer transport will be given: a host it cannot parse (`http://[::1`) was
        // taken, and every request to the member failed at once, in a loop that kept a
        // loaded cluster from electing a leader.
        if let Err(error) = reqwest::Url::parse(url) {
            return Err(MemberError::InvalidPeerUrls(format!("URL address is not valid ({error}): {url}")));
        }
    }
    Ok(())
}

/// Carries out `change` if this node is the leader.
///
/// In a task of its own: openraft's `change_membership` drives both steps of joint
/// consensus (the joint config, then the uniform one) from its caller's future, so a request
/// handler dropped between them (its client went away) would leave the cluster joint.
pub(crate) async fn change_members_on_leader(
    node: &Node,
    change: MemberChange,
) -> MemberChangeReply {
    let task_node = node.clone();
    let task = tokio::spawn(async move { change_members_one_at_a_time(&task_node, change).await });
    match task.await {
        Ok(reply) => reply,
        Err(error) => MemberChangeReply::Done(Err(MemberError::Failed(format!(
            "membership change task: {error}"
        )))),
    }
}

/// What a requested change comes to against the current membership.
enum Plan {
    /// Nothing to change (a publish of what is there already): the answer.
    Nothing((NodeId, Member)),
    Change(ChangeMembers<NodeId, Member>, (NodeId, Member)),
}

/// One change at a time on this node, each planned against the membership openraft holds
/// right then (not a copy from before a wait): `SetNodes` inserts a node that is absent, so a
/// publish or URL update planned before that member's removal and retried after it would
/// put the removed member back.
async fn change_members_one_at_a_time(node: &Node, change: MemberChange) -> MemberChangeReply {
    let _one_at_a_time = node.inner.membership_changes.lock().await;
    let removes_self = matches!(change, MemberChange::Remove { id } if id == node.inner.id);
    // A leader removing itself lets the batches in flight finish and proposes no other
    // until the removal is done (see the proposer's gate): after its removal it steps down,
    // and nobody would tell it whether a batch it appended after the change committed.
    let _no_proposals = if removes_self {
        let gate = node.inner.proposal_gate.clone();
        match tokio::time::timeout(REMOVE_SELF_IN_FLIGHT_WAIT, gate.write_owned()).await {
            Ok(guard) => Some(guard),
            Err(_) => {
                return MemberChangeReply::Done(Err(MemberError::Failed(format!(
                    "this leader's writes in flight did not commit within {REMOVE_SELF_IN_FLIGHT_WAIT:?}; it was not removed"
                ))))
            }
        }
    } else {
        None
    };
    for _ in 0..IN_PROGRESS_RETRIES_MAX {
        if node.is_removed() {
            return MemberChangeReply::Done(Err(MemberError::Removed));
        }
        let (membership, leads, committed) = match node
            .inner
            .raft
            .with_raft_state(|state| {
                let membership = &state.membership_state;
                let committed = membership.committed().log_id() == membership.effective().log_id();
                let leads = state.server_state == openraft::ServerState::Leader;
                (membership.effective().membership().clone(), leads, committed)
            })
            .await
        {
            Ok(found) => found,
            Err(fatal) => {
                return MemberChangeReply::Done(Err(MemberError::Failed(fatal.to_string())))
            }
        };
        // openraft logs a change it refuses as an error: one on a node that is no longer
        // the leader, or before the last membership committed (a new leader commits it with
        // its first entry). A fresh cluster printed one on every start, when the members
        // publish their URLs; these cases are told apart here instead.
        if !leads {
            return MemberChangeReply::NotLeader {
                leader: node.leader_id(),
            };
        }
        if !committed {
            tokio::time::sleep(IN_PROGRESS_RETRY).await;
            continue;
        }
        // A leader that is not in the membership is leaving (it removed itself): openraft
        // would let it append another membership (its debug build asserts it never does).
        if membership.get_node(&node.inner.id).is_none() {
            return MemberChangeReply::NotLeader { leader: None };
        }
        // Salts a new member's id: a member removed and added again with the same peer URLs
        // gets a new id, so the old member's data dir cannot rejoin as it (etcd mixes in
        // the time for the same reason).
        let id_salt = node.inner.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let (changes, answer) = match plan(node.inner.cluster_id, id_salt, &membership, &change) {
            Ok(Plan::Nothing(answer)) => return MemberChangeReply::Done(Ok(answer)),
            Ok(Plan::Change(changes, answer)) => (changes, answer),
            Err(MemberError::NotFound(id))
                if matches!(change, MemberChange::Remove { .. }) && node.was_removed(id) =>
            {
                return MemberChangeReply::Done(Err(MemberError::AlreadyRemoved(id)))
            }
            Err(error) => return MemberChangeReply::Done(Err(error)),
        };
        if let MemberChange::Remove { id } = &change {
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            let troubled = node.inner.transport.troubled_peers();
            if let Some(refusal) = removal_breaks_active_quorum(&voters, *id, node.inner.id, &troubled) {
                tracing::warn!(member = %format!("{id:x}"), "{refusal}");
                return MemberChangeReply::Done(Err(MemberError::Unhealthy(refusal)));
            }
        }
        if matches!(change, MemberChange::Remove { id } if id != node.inner.id) {
            REMOVING_ANOTHER.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        // Removing a voter removes it entirely (etcd has no "keep as learner").
        let retain = false;
        match node.inner.raft.change_membership(changes, retain).await {
            Ok(_) => {
                if removes_self {
                    // Before the gate opens: queued proposals are then answered `Removed`.
                    node.inner.removed.send_replace(true);
                    tracing::info!("this member (the leader) removed itself from the cluster: it proposes nothing more");
                }
                return MemberChangeReply::Done(Ok(answer));
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                return MemberChangeReply::NotLeader {
                    leader: forward.leader_id,
                }
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            ))) => tokio::time::sleep(IN_PROGRESS_RETRY).await,
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(error))) => {
                return MemberChangeReply::Done(Err(MemberError::Failed(error.to_string())))
            }
            Err(RaftError::Fatal(fatal)) => {
                return MemberChangeReply::Done(Err(MemberError::Failed(fatal.to_string())))
            }
        }
    }
    MemberChangeReply::Done(Err(MemberError::Failed(
        "another membership change is still in progress".to_string(),
    )))
}

/// Set once this process's leader started removing another member, for
/// [`crash_in_joint_by_test_mutant`].
static REMOVING_ANOTHER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `ROTA_TEST_MUTANT=crash-in-joint` (debug builds): a leader that is removing another member
/// stops dead (abort) when it applies the joint configuration of that change, before it
/// proposes the uniform one: the half-done change a leader's crash leaves, which
/// [`half_done_change`] is for. Applied, the joint configuration is committed.
pub(crate) fn crash_in_joint_by_test_mutant(membership: &Membership<NodeId, Member>) {
    if membership.get_joint_config().len() > 1
        && REMOVING_ANOTHER.load(std::sync::atomic::Ordering::Relaxed)
        && crate::test_mutant_is("crash-in-joint")
    {
        eprintln!("ROTA_TEST_MUTANT=crash-in-joint: stopping dead in the joint configuration");
        std::process::abort();
    }
}

/// etcd's `mayRemoveMember` (its `--strict-reconfig-check`, on by default): refuses, with
/// the reason, the removal of voter `removing` when the voters reachable from `leader` (it
/// and the followers not in `troubled`) are too few. openraft changes the voters through a
/// joint configuration, which commits only with a quorum of the old voters *and* one of the
/// new; with one of three members down, removing a healthy one could not commit: the change
/// hung, the leader lost its lease and stepped down, and the cluster stayed joint and
/// without a leader until the down member came back. Removing a member that is down, or a
/// learner, needs nothing more than the quorum the cluster has.
fn removal_breaks_active_quorum(
    voters: &BTreeSet<NodeId>,
    removing: NodeId,
    leader: NodeId,
    troubled: &BTreeSet<NodeId>,
) -> Option<String> {
    if !voters.contains(&removing) {
        return None;
    }
    let reachable = |set: &BTreeSet<NodeId>| {
        set.iter().filter(|voter| **voter == leader || !troubled.contains(*voter)).count()
    };
    let quorum = |voters: usize| voters / 2 + 1;
    let after: BTreeSet<NodeId> = voters.iter().copied().filter(|voter| *voter != removing).collect();
    if after.is_empty() {
        return Some(format!(
            "etcdserver: re-configuration failed: member {removing:x} is the only voting member, \
             and a cluster cannot go on without one; stop it instead"
        ));
    }
    let after_reachable = reachable(&after);
    if reachable(voters) >= quorum(voters.len()) && after_reachable >= quorum(after.len()) {
        return None;
    }
    let down: Vec<String> = voters
        .iter()
        .filter(|voter| **voter != leader && troubled.contains(*voter))
        .map(|voter| format!("{voter:x}"))
        .collect();
    Some(format!(
        "etcdserver: unhealthy cluster: removing member {removing:x} would leave {after_reachable} of the \
         {} remaining voting members reachable, and a quorum of them is {} (unreachable now: {}); \
         bring those members back first, or remove an unreachable one",
        after.len(),
        quorum(after.len()),
        down.join(", ")
    ))
}

/// `change` against `membership`: what to ask openraft for, and the answer to give.
fn plan(
    cluster_id: u64,
    id_salt: u64,
    membership: &Membership<NodeId, Member>,
    change: &MemberChange,
) -> Result<Plan, MemberError> {
    let members: BTreeMap<NodeId, Member> = membership
        .nodes()
        .map(|(id, member)| (*id, member.clone()))
        .collect();
    let conflict = |id: Option<NodeId>, urls: &[String]| {
        members
            .iter()
            .filter(|(other, _)| Some(**other) != id)
            .find(|(_, member)| member.peer_urls.iter().any(|url| urls.contains(url)))
            .map(|(other, _)| {
                MemberError::Conflict(format!("peerURL exists (member {other:x} has it)"))
            })
    };
    let existing = |id: NodeId| members.get(&id).ok_or(MemberError::NotFound(id));
    let plan = match change.clone() {
        MemberChange::Add { peer_urls } => {
            if let Some(error) = conflict(None, &peer_urls) {
                return Err(error);
            }
            let id = member_id_from_peer_urls(cluster_id, id_salt, &peer_urls);
            if members.contains_key(&id) {
                return Err(MemberError::Conflict(format!("member id {id:x} exists")));
            }
            let member = Member {
                name: String::new(),
                peer_urls,
                client_urls: Vec::new(),
            };
            Plan::Change(
                ChangeMembers::AddNodes(BTreeMap::from([(id, member.clone())])),
                (id, member),
            )
        }
        MemberChange::Remove { id } => {
            let member = existing(id)?;
            let is_voter = membership.voter_ids().any(|voter| voter == id);
            let changes = if is_voter {
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            };
            Plan::Change(changes, (id, member.clone()))
        }
        MemberChange::UpdatePeerUrls { id, peer_urls } => {
            let member = existing(id)?;
            if let Some(error) = conflict(Some(id), &peer_urls) {
                return Err(error);
            }
            let member = Member {
                peer_urls,
                ..member.clone()
            };
            Plan::Change(
                ChangeMembers::SetNodes(BTreeMap::from([(id, member.clone())])),
                (id, member),
            )
        }
        MemberChange::Publish {
            id,
            name,
            client_urls,
        } => {
            let current = existing(id)?;
            let member = Member {
                name,
                client_urls,
                peer_urls: current.peer_urls.clone(),
            };
            if *current == member {
                Plan::Nothing((id, member))
            } else {
                Plan::Change(
                    ChangeMembers::SetNodes(BTreeMap::from([(id, member.clone())])),
                    (id, member),
                )
            }
        }
    };
    Ok(plan)
}

/// On every member: publish this member's name and client URLs when its entry differs. On
/// the leader: promote caught-up learners to voters.
pub(crate) async fn run_membership_keeper(node: WeakNode, mut shutdown: watch::Receiver<bool>) {
    // Server metrics change on elections and membership changes, not with every entry;
    // replication progress (a learner catching up) is seen on the interval.
    let Some(mut metrics) = node.upgrade().map(|node| node.inner.raft.server_metrics()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            changed = metrics.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(KEEPER_INTERVAL) => {}
        }
        let Some(node) = node.upgrade() else { return };
        if node.is_removed() {
            // Nothing left to keep: the process stops.
            return;
        }
        if removed_as_leader(&node) {
            tracing::info!(
                "this member's own state says it removed itself from the cluster as its leader"
            );
            node.inner.removed.send_replace(true);
            return;
        }
        // A membership change waits for its commit, which never comes once the peers are
        // gone: shutting down must not wait for it (a node stopping after its peers hung
        // in `shutdown` until something answered).
        let keep = async {
            let mut failed = false;
            if let Some(change) = publish_needed(&node) {
                if let Err(error) = forward::change_members(&node, change).await {
                    tracing::debug!(%error, "publishing this member's name and client URLs");
                    failed = true;
                }
            }
            if let Some(goal) = half_done_change(&node) {
                if let Err(error) = finish_half_done_change(&node, goal).await {
                    tracing::warn!(%error, "finishing the membership change a previous leader left half done");
                    failed = true;
                }
            }
            if let Some(learner) = learner_to_promote(&node) {
                match promote(&node, learner).await {
                    Ok(true) => {
                        tracing::info!(member = %format!("{learner:x}"), "learner caught up: now a voter")
                    }
                    Ok(false) => {}
                    Err(error) => {
                        tracing::debug!(%error, "promoting a learner");
                        failed = true;
                    }
                }
            }
            failed
        };
        let failed = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            failed = keep => failed,
        };
        drop(node);
        if failed {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep(KEEPER_RETRY) => {}
            }
        }
    }
}

fn publish_needed(node: &Node) -> Option<MemberChange> {
    let info = node.cluster_info();
    let (_, member) = info.members.iter().find(|(id, _)| *id == node.inner.id)?;
    info.leader?;
    let differs =
        member.name != node.inner.name || member.client_urls != node.inner.advertise_client_urls;
    differs.then(|| MemberChange::Publish {
        id: node.inner.id,
        name: node.inner.name.clone(),
        client_urls: node.inner.advertise_client_urls.clone(),
    })
}

/// On the leader: the voters of the newer half of a committed joint configuration, which a
/// previous leader left when it stopped between the two steps of a change. openraft leaves a
/// joint configuration in effect until the next change, and plans that change from the
/// newer half, so the next change finished the old one too: a removal cut short by its
/// leader's crash, then another removal, took two members out at once, below the quorum the
/// second one was checked against (a membership audit). The leader finishes it first.
fn half_done_change(node: &Node) -> Option<BTreeSet<NodeId>> {
    let metrics = node.inner.raft.metrics();
    let metrics = metrics.borrow();
    if !crate::leads(&metrics, node.inner.id) {
        return None;
    }
    let stored = &metrics.membership_config;
    let committed = stored.log_id().is_some() && metrics.last_applied.as_ref() >= stored.log_id().as_ref();
    let halves = stored.membership().get_joint_config();
    (committed && halves.len() > 1).then(|| halves.last().cloned().unwrap_or_default())
}

/// Finishes a change left half done (see [`half_done_change`]): the uniform configuration of
/// its newer half. Not while a change of this leader's is under way (it takes its own
/// second step); a removal of this leader goes the way a leader removes itself.
async fn finish_half_done_change(node: &Node, goal: BTreeSet<NodeId>) -> Result<(), String> {
    let own_id = node.inner.id;
    if !goal.contains(&own_id) {
        if node.inner.membership_changes.try_lock().is_err() {
            return Ok(()); // This leader's own removal of itself, under way.
        }
        tracing::warn!(
            voters = ?goal.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>(),
            "membership: a previous leader left this member's removal half done; finishing it"
        );
        return match change_members_one_at_a_time(node, MemberChange::Remove { id: own_id }).await {
            MemberChangeReply::Done(Ok(_)) | MemberChangeReply::NotLeader { .. } => Ok(()),
            MemberChangeReply::Done(Err(error)) => Err(error.to_string()),
        };
    }
    let Ok(_one_at_a_time) = node.inner.membership_changes.try_lock() else {
        return Ok(());
    };
    if half_done_change(node).as_ref() != Some(&goal) {
        return Ok(());
    }
    tracing::warn!(
        voters = ?goal.iter().map(|id| format!("{id:x}")).collect::<Vec<_>>(),
        "membership: finishing a change a previous leader left half done (a joint configuration)"
    );
    match node.inner.raft.change_membership(ChangeMembers::ReplaceAllVoters(goal), false).await {
        Ok(_) => Ok(()),
        Err(error) => Err(error.to_string()),
    }
}

/// Makes `learner` a voter, one membership change at a time with the others (see
/// [`change_members_one_at_a_time`]); false if it no longer qualifies by then.
async fn promote(node: &Node, learner: NodeId) -> Result<bool, String> {
    let _one_at_a_time = node.inner.membership_changes.lock().await;
    if node.is_removed() || learner_to_promote(node) != Some(learner) {
        return Ok(false);
    }
    let promote = ChangeMembers::AddVoterIds(BTreeSet::from([learner]));
    match node.inner.raft.change_membership(promote, false).await {
        Ok(_) => Ok(true),
        Err(error) => Err(error.to_string()),
    }
}

fn learner_to_promote(node: &Node) -> Option<NodeId> {
    let metrics = node.inner.raft.metrics();
    let metrics = metrics.borrow();
    if !crate::leads(&metrics, node.inner.id) {
        return None;
    }
    let membership = metrics.membership_config.membership();
    // A leader that removed itself changes nothing more.
    membership.get_node(&node.inner.id)?;
    // One change at a time: not while a joint config is in effect.
    if membership.get_joint_config().len() > 1 {
        return None;
    }
    let last_log_index = metrics.last_log_index.unwrap_or(0);
    let replication = metrics.replication.as_ref()?;
    let learner = membership.learner_ids().find(|learner| {
        replication
            .get(learner)
            .and_then(|matched| matched.as_ref())
            .is_some_and(|matched| matched.index + PROMOTE_LAG_ENTRIES_MAX >= last_log_index)
    });
    learner
}

/// A leader that removed itself steps down, but its vote still names it (openraft 0.9 keeps
/// the vote; nobody in the membership sends it a newer one), and the last membership, which
/// it committed, does not name it. That state survives a restart, so a removed member
/// started again on its data dir knows it was removed.
fn removed_as_leader(node: &Node) -> bool {
    let metrics = node.inner.raft.metrics();
    let metrics = metrics.borrow();
    let id = node.inner.id;
    let membership = &metrics.membership_config;
    let own_vote = metrics.vote.is_committed() && metrics.vote.leader_id().voted_for() == Some(id);
    let committed = membership.log_id().is_some()
        && metrics.last_applied.as_ref() >= membership.log_id().as_ref();
    own_vote
        && metrics.state != ServerState::Leader
        && committed
        && membership.membership().get_node(&id).is_none()
}

/// What a Raft RPC shows of its sender's place in the log, for [`sender_was_removed`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum SenderClaim {
    /// A vote request: the candidate's last log id.
    Candidate { last_log_id: Option<LogId> },
    /// An append or snapshot chunk: the term of the leader that sends it.
    Leader { term: u64 },
}

/// For the log: what the sender claims, in the words (and hex ids) of the other lines.
impl std::fmt::Display for SenderClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SenderClaim::Candidate { last_log_id: Some(id) } => write!(
                f,
                "a candidate whose log ends at index {} (term {}, by leader {:x})",
                id.index, id.leader_id.term, id.leader_id.node_id
            ),
            SenderClaim::Candidate { last_log_id: None } => write!(f, "a candidate with an empty log"),
            SenderClaim::Leader { term } => write!(f, "a leader of term {term}"),
        }
    }
}

/// Whether the sender `from` of a Raft RPC is a member this node knows was removed (etcd:
/// "peers answer a removed member with 410 Gone"), given this node's **committed**
/// membership `committed` at log id `committed_log_id` and what the RPC shows (`claim`).
///
/// Absence from the membership alone does not prove removal: a member added after that
/// membership (this node is behind) is absent too. So the sender must also be behind it:
/// - a candidate whose last log id is older than `committed_log_id` has not seen that
///   membership. A member added later has: it became a voter through a membership after
///   its addition, which is after `committed_log_id`, and only a voter campaigns;
/// - a leader whose term is at most the term of `committed_log_id`: a member added later
///   is elected after the leader that appended its promotion, in a higher term than that
///   leader's, which is at least that term. (A leader that removed itself in that term is
///   removed too.)
///
/// Committed, not effective: an uncommitted membership that drops the sender may still
/// be truncated, and the sender would stay a member.
pub(crate) fn sender_was_removed(
    committed: &Membership<NodeId, Member>,
    committed_log_id: Option<LogId>,
    from: NodeId,
    claim: SenderClaim,
) -> bool {
    let Some(committed_log_id) = committed_log_id else {
        // Not even the initial membership is committed: this node knows nothing yet.
        return false;
    };
    if committed.get_node(&from).is_some() {
        return false;
    }
    match claim {
        SenderClaim::Candidate { last_log_id } => last_log_id < Some(committed_log_id),
        SenderClaim::Leader { term } => term <= committed_log_id.leader_id.term,
    }
}

impl Node {
    /// Whether the sender of a Raft RPC was removed from the cluster ([`sender_was_removed`]
    /// on this node's committed membership). Cheap when the sender is in the effective
    /// membership (every RPC between members): only a sender absent from it costs a call
    /// into Raft for the committed membership.
    pub(crate) async fn sender_was_removed(&self, from: NodeId, claim: SenderClaim) -> bool {
        let in_effective = self
            .inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&from)
            .is_some();
        if in_effective {
            return false;
        }
        // Removed by a membership this process applied (or left behind by
        // `--force-new-cluster`).
        if self.was_removed(from) {
            return true;
        }
        let committed = self
            .inner
            .raft
            .with_raft_state(|state| state.membership_state.committed().clone())
            .await;
        match committed {
            Ok(committed) => {
                sender_was_removed(committed.membership(), *committed.log_id(), from, claim)
            }
            // Raft stopped: the RPC fails anyway; say nothing about the sender.
            Err(_) => false,
        }
    }
}

/// How long a hand-over waits for the chosen follower to have the whole log.
const HAND_OVER_CATCH_UP_WAIT: Duration = Duration::from_millis(500);
/// How long it waits for the follower to win its election.
const HAND_OVER_ELECTION_WAIT: Duration = Duration::from_secs(2);
const HAND_OVER_RPC_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one campaign gets before the follower is asked again.
const HAND_OVER_RETRY: Duration = Duration::from_millis(250);
/// A hand-over ends when this many asks in a row did not reach the successor.
const HAND_OVER_UNDELIVERED_MAX: u32 = 2;

impl Node {
    /// Before a graceful stop: if this node leads a cluster of several voters, asks the most
    /// up-to-date follower to campaign at once (etcd's TimeoutNow; openraft 0.9 has no
    /// leadership transfer) and waits until another leader is known, so the cluster does
    /// not sit out an election timeout. Best effort: returns after a bounded wait whatever
    /// happened. The follower wins because its log is as long as ours and we grant our
    /// vote to a higher term with such a log.
    pub async fn hand_over_leadership(&self) {
        let Some((target, member)) = self.hand_over_target() else {
            return;
        };
        let started = std::time::Instant::now();
        // This member is going away: once it has stepped down it must not campaign against
        // its successor (its election timer would run while the successor's first
        // campaign is still collecting votes).
        self.inner.raft.runtime_config().elect(false);
        self.inner
            .handing_over
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut metrics = self.inner.raft.metrics();
        // The successor must have every entry: proposals now wait for the next leader, and
        // the ones already in flight are replicated to it first.
        let caught_up = tokio::time::timeout(
            HAND_OVER_CATCH_UP_WAIT,
            metrics.wait_for(|m| {
                let last = m.last_log_index.unwrap_or(0);
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&target).cloned().flatten())
                    .is_some_and(|matched| matched.index >= last)
            }),
        )
        .await
        .is_ok();
        // The follower's first campaign can fail: a leader refuses to vote for another
        // candidate for one leader lease after its own election. Ask again until it wins.
        let me = self.inner.id;
        let mut asked = 0u32;
        let mut handed_over = false;
        // Asks the successor did not get in a row: it is stopping too (a whole cluster
        // stopped at once), and this member need not wait out the hand-over for it.
        let mut undelivered = 0u32;
        while !handed_over && started.elapsed() < HAND_OVER_ELECTION_WAIT && undelivered < HAND_OVER_UNDELIVERED_MAX {
            asked += 1;
            let answer: Result<Result<(), String>, _> = self
                .transport()
                .call(
                    target,
                    &member,
                    crate::peer::PeerRpc::TimeoutNow,
                    &(),
                    HAND_OVER_RPC_TIMEOUT,
                )
                .await;
            match answer {
                Err(error) => {
                    tracing::debug!(%error, "asking a follower to campaign");
                    undelivered = if error.not_delivered() { undelivered + 1 } else { 0 };
                }
                Ok(_) => undelivered = 0,
            }
            handed_over = tokio::time::timeout(
                HAND_OVER_RETRY,
                metrics.wait_for(|m| m.current_leader.is_some_and(|leader| leader != me)),
            )
            .await
            .is_ok();
        }
        if !handed_over {
            // Still leading (or nobody won yet): serve again until the node stops.
            self.inner
                .handing_over
                .store(false, std::sync::atomic::Ordering::SeqCst);
            self.inner.raft.runtime_config().elect(true);
        }
        tracing::info!(
            target = %format!("{target:x}"),
            caught_up,
            asked,
            handed_over,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "leadership hand-over"
        );
    }

    /// The voter with the longest replicated log, if this node leads several voters.
    fn hand_over_target(&self) -> Option<(NodeId, Member)> {
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        // A removed leader has nothing to hand over: the others elect without it (asking
        // one of them to campaign could depose the leader they have).
        if self.is_removed() || !crate::leads(&metrics, self.inner.id) {
            return None;
        }
        let membership = metrics.membership_config.membership();
        let replication = metrics.replication.as_ref()?;
        let target = membership
            .voter_ids()
            .filter(|id| *id != self.inner.id)
            .max_by_key(|id| {
                replication
                    .get(id)
                    .and_then(|matched| matched.map(|m| m.index))
            })?;
        let member = membership.get_node(&target)?.clone();
        Some((target, member))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removal_that_leaves_too_few_reachable_voters_for_a_quorum_is_refused() {
        let ids = |list: &[NodeId]| list.iter().copied().collect::<BTreeSet<NodeId>>();
        let three = ids(&[1, 2, 3]);
        // All up: any member may go, the leader too.
        for removing in [1, 2, 3] {
            assert_eq!(removal_breaks_active_quorum(&three, removing, 1, &ids(&[])), None);
        }
        // 3 down: 3 itself may go (1 and 2 remain, both up), 2 may not ({1, 3} needs 3),
        // nor may the leader.
        assert_eq!(removal_breaks_active_quorum(&three, 3, 1, &ids(&[3])), None);
        let refusal = removal_breaks_active_quorum(&three, 2, 1, &ids(&[3])).expect("refused");
        assert!(refusal.starts_with("etcdserver: unhealthy cluster: removing member 2 would leave 1 of the 2"), "{refusal}");
        assert!(refusal.contains("unreachable now: 3"), "{refusal}");
        assert!(removal_breaks_active_quorum(&three, 1, 1, &ids(&[3])).is_some());
        // Five with two down: only a down one may go.
        let five = ids(&[1, 2, 3, 4, 5]);
        assert!(removal_breaks_active_quorum(&five, 3, 1, &ids(&[4, 5])).is_some());
        assert_eq!(removal_breaks_active_quorum(&five, 4, 1, &ids(&[4, 5])), None);
        // Five with one down: a healthy one may go ({1, 2, 4, 5}: 3 of 4 up).
        assert_eq!(removal_breaks_active_quorum(&five, 3, 1, &ids(&[5])), None);
        // A learner (not a voter) needs no quorum; a troubled learner does not count.
        assert_eq!(removal_breaks_active_quorum(&three, 9, 1, &ids(&[2, 3, 9])), None);
        assert_eq!(removal_breaks_active_quorum(&three, 3, 1, &ids(&[9])), None);
        // The last voter: said so, not "0 of the 0 remaining" (an audit found that).
        let last = removal_breaks_active_quorum(&ids(&[1]), 1, 1, &ids(&[])).expect("refused");
        assert!(last.contains("the only voting member"), "{last}");
    }

    #[test]
    fn peer_urls_are_http_host_and_port_without_a_path_as_etcd_checks() {
        let check = |url: &str| validate_peer_urls(&[url.to_string()]).map_err(|error| error.to_string());
        for good in ["http://127.0.0.1:2380", "http://10.0.1.12:2380/", "http://infra2.example:12380", "http://[::1]:2380"] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for (bad, says) in [
            ("https://127.0.0.1:2380", "scheme"),
            ("127.0.0.1:2380", "scheme"),
            ("http://127.0.0.1", "host:port"),
            ("http://127.0.0.1:", "host:port"),
            ("http://:2380", "host:port"),
            ("http://127.0.0.1:99999", "host:port"),
            ("http://127.0.0.1:0", "host:port"),
            ("http://127.0.0.1:2380/raft", "path"),
            ("http://127.0.0.1:2380?x=1", "path"),
            ("http://[::1", "not valid"),
            ("http://[::1:2380", "not valid"),
            ("http://a b:2380", "not valid"),
            ("http://[zz]:2380", "not valid"),
        ] {
            let error = check(bad).expect_err(bad);
            assert!(error.contains(says), "{bad}: {error}");
        }
        assert!(validate_peer_urls(&[]).is_err(), "at least one URL");
    }

    fn member(name: &str) -> Member {
        Member {
            name: name.to_string(),
            peer_urls: vec![format!("http://{name}:2380")],
            client_urls: vec![format!("http://{name}:2379")],
        }
    }

    /// Voters 1 and 2 (member 3 was removed).
    fn two_voters() -> Membership<NodeId, Member> {
        Membership::new(
            vec![BTreeSet::from([1, 2])],
            BTreeMap::from([(1, member("n1")), (2, member("n2"))]),
        )
    }

    fn log_id(term: u64, index: u64) -> LogId {
        openraft::LogId::new(openraft::CommittedLeaderId::new(term, 1), index)
    }

    #[test]
    fn a_candidate_absent_from_the_committed_membership_and_behind_it_was_removed() {
        // Member 3 was removed by the uniform config at (2, 10); it has at most the joint one.
        let committed = two_voters();
        let behind = SenderClaim::Candidate {
            last_log_id: Some(log_id(2, 9)),
        };
        assert!(sender_was_removed(
            &committed,
            Some(log_id(2, 10)),
            3,
            behind
        ));
        let empty_log = SenderClaim::Candidate { last_log_id: None };
        assert!(sender_was_removed(
            &committed,
            Some(log_id(2, 10)),
            3,
            empty_log
        ));
    }

    #[test]
    fn a_sender_unknown_because_this_node_is_behind_is_not_told_it_was_removed() {
        let committed = two_voters();
        // Member 4 was added (and promoted) after (2, 10): its log goes past it.
        let newer = SenderClaim::Candidate {
            last_log_id: Some(log_id(3, 12)),
        };
        assert!(!sender_was_removed(
            &committed,
            Some(log_id(2, 10)),
            4,
            newer
        ));
        let same = SenderClaim::Candidate {
            last_log_id: Some(log_id(2, 10)),
        };
        assert!(!sender_was_removed(
            &committed,
            Some(log_id(2, 10)),
            4,
            same
        ));
        // As a leader it was elected in a later term than the one that appended (2, 10).
        let leader = SenderClaim::Leader { term: 3 };
        assert!(!sender_was_removed(
            &committed,
            Some(log_id(2, 10)),
            4,
            leader
        ));
        // Nothing committed yet: nothing is known.
        let behind = SenderClaim::Candidate { last_log_id: None };
        assert!(!sender_was_removed(&committed, None, 3, behind));
    }

    #[test]
    fn a_member_of_the_committed_membership_is_never_told_it_was_removed() {
        let committed = two_voters();
        for claim in [
            SenderClaim::Candidate { last_log_id: None },
            SenderClaim::Leader { term: 1 },
        ] {
            assert!(!sender_was_removed(
                &committed,
                Some(log_id(2, 10)),
                2,
                claim
            ));
        }
    }

    #[test]
    fn a_leader_absent_from_the_committed_membership_from_its_term_or_before_was_removed() {
        let committed = two_voters();
        assert!(sender_was_removed(
            &committed,
            Some(log_id(2, 10)),
            3,
            SenderClaim::Leader { term: 2 }
        ));
        assert!(sender_was_removed(
            &committed,
            Some(log_id(2, 10)),
            3,
            SenderClaim::Leader { term: 1 }
        ));
    }

    #[test]
    fn a_change_to_a_member_that_is_gone_is_not_found_rather_than_putting_it_back() {
        let publish = MemberChange::Publish {
            id: 3,
            name: "n3".to_string(),
            client_urls: member("n3").client_urls,
        };
        let update = MemberChange::UpdatePeerUrls {
            id: 3,
            peer_urls: vec!["http://elsewhere:2380".to_string()],
        };
        for change in [publish, update, MemberChange::Remove { id: 3 }] {
            assert!(
                matches!(
                    plan(7, 0, &two_voters(), &change),
                    Err(MemberError::NotFound(3))
                ),
                "{change:?}"
            );
        }
    }

    #[test]
    fn a_publish_of_what_is_there_changes_nothing_and_a_new_one_sets_the_node() {
        let same = MemberChange::Publish {
            id: 2,
            name: "n2".to_string(),
            client_urls: member("n2").client_urls,
        };
        assert!(matches!(
            plan(7, 0, &two_voters(), &same),
            Ok(Plan::Nothing((2, _)))
        ));
        let renamed = MemberChange::Publish {
            id: 2,
            name: "n2b".to_string(),
            client_urls: member("n2").client_urls,
        };
        match plan(7, 0, &two_voters(), &renamed) {
            Ok(Plan::Change(ChangeMembers::SetNodes(nodes), (2, answer))) => {
                assert_eq!(answer.name, "n2b");
                assert_eq!(
                    answer.peer_urls,
                    member("n2").peer_urls,
                    "peer URLs are kept"
                );
                assert_eq!(nodes.get(&2), Some(&answer));
            }
            _ => panic!("a changed name must set the node"),
        }
    }

    #[test]
    fn removing_a_voter_removes_it_from_the_voters_and_a_learner_from_the_nodes() {
        let mut nodes = BTreeMap::from([(1, member("n1")), (2, member("n2"))]);
        nodes.insert(4, member("n4"));
        let with_learner = Membership::new(vec![BTreeSet::from([1, 2])], nodes);
        match plan(7, 0, &with_learner, &MemberChange::Remove { id: 2 }) {
            Ok(Plan::Change(ChangeMembers::RemoveVoters(ids), _)) => {
                assert_eq!(ids, BTreeSet::from([2]))
            }
            _ => panic!("a voter is removed from the voters"),
        }
        match plan(7, 0, &with_learner, &MemberChange::Remove { id: 4 }) {
            Ok(Plan::Change(ChangeMembers::RemoveNodes(ids), _)) => {
                assert_eq!(ids, BTreeSet::from([4]))
            }
            _ => panic!("a learner is removed from the nodes"),
        }
    }
}
