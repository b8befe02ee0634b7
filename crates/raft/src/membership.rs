//! Membership at runtime, as etcd's `/v2/members` offers it, on openraft's joint consensus.
//!
//! - Add: the leader assigns an id from the peer URLs and adds the member as a **learner**;
//!   it gets the log (or a snapshot) without counting for quorum. The keeper task on the
//!   leader promotes a learner to voter once its replication is within
//!   [`PROMOTE_LAG_ENTRIES_MAX`] entries of the leader's log, so a new member never makes a
//!   quorum wait for a copy it does not have yet.
//! - Remove: a voter is removed from the voters and the nodes in one change; openraft keeps
//!   a removed leader leading until the change is committed, then it steps down.
//! - Update peer URLs, and publish: a member's name and client URLs are not known when it
//!   is added (etcd's POST takes peer URLs only, and the initial membership carries names
//!   and peer URLs only), so each member publishes its own through the leader once it sees
//!   its entry differ (the keeper task on every member).
//!
//! All changes run on the leader ([`crate::forward::change_members`] forwards them).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tokio::sync::watch;

use crate::forward;
use crate::peer::{MemberChange, MemberChangeReply};
use crate::types::{member_id_from_peer_urls, Member, NodeId};
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

impl Node {
    /// `POST /v2/members`: adds a member (as a learner, promoted once caught up) and returns
    /// its id and entry (empty name and client URLs until it starts and publishes them).
    pub async fn add_member(&self, peer_urls: Vec<String>) -> Result<(u64, Member), MemberError> {
        validate_peer_urls(&peer_urls)?;
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

fn validate_peer_urls(peer_urls: &[String]) -> Result<(), MemberError> {
    if peer_urls.is_empty() || peer_urls.len() > PEER_URLS_MAX {
        return Err(MemberError::InvalidPeerUrls(format!(
            "give 1 to {PEER_URLS_MAX} peer URLs"
        )));
    }
    for url in peer_urls {
        let valid = url
            .strip_prefix("http://")
            .is_some_and(|rest| !rest.is_empty() && rest.len() <= 255);
        if !valid {
            return Err(MemberError::InvalidPeerUrls(format!(
                "URL scheme must be http: {url:?}"
            )));
        }
    }
    Ok(())
}

/// Carries out `change` if this node is the leader.
pub(crate) async fn change_members_on_leader(
    node: &Node,
    change: MemberChange,
) -> MemberChangeReply {
    let info = node.cluster_info();
    let members: BTreeMap<NodeId, Member> = info.members.iter().cloned().collect();
    let conflict = |id: Option<NodeId>, urls: &[String]| {
        members
            .iter()
            .filter(|(other, _)| Some(**other) != id)
            .find(|(_, member)| member.peer_urls.iter().any(|url| urls.contains(url)))
            .map(|(other, _)| {
                MemberError::Conflict(format!("peerURL exists (member {other:x} has it)"))
            })
    };
    let (changes, answer): (ChangeMembers<NodeId, Member>, (NodeId, Member)) = match change {
        MemberChange::Add { peer_urls } => {
            if let Some(error) = conflict(None, &peer_urls) {
                return MemberChangeReply::Done(Err(error));
            }
            let id = member_id_from_peer_urls(info.cluster_id, &peer_urls);
            if members.contains_key(&id) {
                return MemberChangeReply::Done(Err(MemberError::Conflict(format!(
                    "member id {id:x} exists"
                ))));
            }
            let member = Member {
                name: String::new(),
                peer_urls,
                client_urls: Vec::new(),
            };
            (
                ChangeMembers::AddNodes(BTreeMap::from([(id, member.clone())])),
                (id, member),
            )
        }
        MemberChange::Remove { id } => {
            let Some(member) = members.get(&id) else {
                return MemberChangeReply::Done(Err(MemberError::NotFound(id)));
            };
            let changes = if info.voters.contains(&id) {
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            };
            (changes, (id, member.clone()))
        }
        MemberChange::UpdatePeerUrls { id, peer_urls } => {
            let Some(member) = members.get(&id) else {
                return MemberChangeReply::Done(Err(MemberError::NotFound(id)));
            };
            if let Some(error) = conflict(Some(id), &peer_urls) {
                return MemberChangeReply::Done(Err(error));
            }
            let member = Member {
                peer_urls,
                ..member.clone()
            };
            (
                ChangeMembers::SetNodes(BTreeMap::from([(id, member.clone())])),
                (id, member),
            )
        }
        MemberChange::Publish {
            id,
            name,
            client_urls,
        } => {
            let Some(member) = members.get(&id) else {
                return MemberChangeReply::Done(Err(MemberError::NotFound(id)));
            };
            let member = Member {
                name,
                client_urls,
                peer_urls: member.peer_urls.clone(),
            };
            if members.get(&id) == Some(&member) {
                return MemberChangeReply::Done(Ok((id, member)));
            }
            (
                ChangeMembers::SetNodes(BTreeMap::from([(id, member.clone())])),
                (id, member),
            )
        }
    };
    // Removing a voter removes it entirely (etcd has no "keep as learner").
    let retain = false;
    for _ in 0..IN_PROGRESS_RETRIES_MAX {
        match node
            .inner
            .raft
            .change_membership(changes.clone(), retain)
            .await
        {
            Ok(_) => return MemberChangeReply::Done(Ok(answer)),
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

/// On every member: publish this member's name and client URLs when its entry differs. On
/// the leader: promote caught-up learners to voters.
pub(crate) async fn run_membership_keeper(node: WeakNode, mut shutdown: watch::Receiver<bool>) {
    let Some(mut metrics) = node.upgrade().map(|node| node.inner.raft.metrics()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            changed = metrics.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(KEEPER_INTERVAL) => {}
        }
        let Some(node) = node.upgrade() else { return };
        let mut failed = false;
        if let Some(change) = publish_needed(&node) {
            if let Err(error) = forward::change_members(&node, change).await {
                tracing::debug!(%error, "publishing this member's name and client URLs");
                failed = true;
            }
        }
        if let Some(learner) = learner_to_promote(&node) {
            let promote = ChangeMembers::AddVoterIds(BTreeSet::from([learner]));
            match node.inner.raft.change_membership(promote, false).await {
                Ok(_) => {
                    tracing::info!(member = %format!("{learner:x}"), "learner caught up: now a voter")
                }
                Err(error) => {
                    tracing::debug!(%error, "promoting a learner");
                    failed = true;
                }
            }
        }
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

fn learner_to_promote(node: &Node) -> Option<NodeId> {
    let metrics = node.inner.raft.metrics();
    let metrics = metrics.borrow();
    if metrics.current_leader != Some(node.inner.id) {
        return None;
    }
    let membership = metrics.membership_config.membership();
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

/// How long a hand-over waits for the chosen follower to have the whole log.
const HAND_OVER_CATCH_UP_WAIT: Duration = Duration::from_millis(500);
/// How long it waits for the follower to win its election.
const HAND_OVER_ELECTION_WAIT: Duration = Duration::from_secs(2);
const HAND_OVER_RPC_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one campaign gets before the follower is asked again.
const HAND_OVER_RETRY: Duration = Duration::from_millis(250);

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
        while !handed_over && started.elapsed() < HAND_OVER_ELECTION_WAIT {
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
            if let Err(error) = answer {
                tracing::debug!(%error, "asking a follower to campaign");
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
        if metrics.current_leader != Some(self.inner.id) {
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
