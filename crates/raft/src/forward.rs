//! Any node accepts any request: a follower forwards proposals and read-index requests to
//! the leader, and serves the peer protocol ([`Node::handle_peer`]).
//!
//! Forwarding is safe to retry only when the request certainly did not reach the leader's
//! proposer: a refused connection, or a peer that answers "not leader" without proposing.
//! A forwarded proposal whose answer is lost (timeout, broken connection, a leader that
//! died) may have been proposed: it is never sent again from here. It carries a mark
//! (`Command::Tagged`), and this member waits, up to the request timeout, to apply it: the
//! next leader commits what the dead one replicated, and this member answers from its own
//! apply, as etcd's members wait for their request id. Not applied by then, it is answered
//! `OutcomeUnknown` (clients retry with an `Idempotency-Key`). While no leader is known, a
//! request waits for one up to the node's leader wait (about one election), then answers
//! `NoLeader`.

use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, Fatal, RaftError};
use rota_core::Command;

use crate::identity::Identity;
use crate::membership::SenderClaim;
use crate::network::PeerTransport;
use crate::peer::{
    self, ClusterInfo, ForwardedProposal, MemberChange, MemberChangeReply, PeerError, PeerRpc,
    ReadIndexReply,
};
use crate::types::{Member, NodeId};
use crate::{
    Applied, ClusterState, MemberError, Node, NodeConfig, ProposeError, Proposed, StartError,
};

/// A forwarded proposal may wait in the leader's queue behind a full batch and an fsync.
const FORWARD_PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a forwarded proposal still waits for its leader's answer once another leader
/// was elected (see `Node::wait_for_another_leader`). A leader that hands over at SIGTERM
/// answers what it held, but on a loaded machine (the full test suite on two cores) not
/// always within 500 ms: writes forwarded to it then got `300` (outcome unknown) although
/// it was answering. A frozen leader's writes get their `300` that much later.
const REPLACED_LEADER_GRACE: Duration = Duration::from_secs(2);
/// How long a follower waits to apply a forwarded write the leader answered before it
/// answers too (normally one replication round: the leader sends the new commit index at
/// once).
const FORWARDED_APPLY_WAIT: Duration = Duration::from_secs(2);
/// Commands per forwarded batch, at most (the leader refuses more).
pub(crate) const FORWARD_BATCH_COMMANDS_MAX: usize = 1024;
/// Encoded command bytes per forwarded batch, at most (one command may exceed it alone).
const FORWARD_BATCH_BYTES_MAX: usize = 4 << 20;
/// Forwarded batches on the wire at once: while they wait for the leader's fsync the next
/// batch fills.
const FORWARD_BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Commands waiting to be forwarded to one leader, at most; `forward` waits when full.
const FORWARD_QUEUE_MAX: usize = 16_384;
/// A read index costs the leader one heartbeat round to a quorum.
const FORWARD_READ_INDEX_TIMEOUT: Duration = Duration::from_secs(5);
/// Membership changes commit two entries (joint, then uniform).
const FORWARD_MEMBER_CHANGE_TIMEOUT: Duration = Duration::from_secs(15);
const CLUSTER_INFO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a new member waits for each peer's answer to "do you know me as started?".
const REBOOTSTRAP_CHECK_TIMEOUT: Duration = Duration::from_millis(500);
/// While waiting for a leader, look again at least this often.
const LEADER_POLL: Duration = Duration::from_millis(20);
/// How long a joining member keeps asking the listed peers for the membership.
const JOIN_WAIT: Duration = Duration::from_secs(30);
const JOIN_RETRY: Duration = Duration::from_millis(500);

/// Why a forwarded command got no answer from the leader.
#[derive(Clone, Debug)]
pub(crate) enum ForwardFailure {
    /// It certainly did not reach the leader's proposer: safe to retry.
    NotDelivered(String),
    /// It may have been proposed.
    Unknown(String),
    /// The leader could not decode the request (it runs an older rota that does not know
    /// `Command::Tagged`): not delivered, safe to send again without the mark.
    Undecodable(String),
}

/// Group forwarding: a follower packs concurrent proposals into one `Propose` RPC per
/// batch, as the leader's proposer packs them into one entry, so a follower forwards
/// thousands of commands per second over a handful of requests.
///
/// One lane (queue and task) per leader: batches stuck on a leader that froze or was cut
/// off must not hold back those for the leader elected since. (An audit saw a follower
/// keep writes queued ~10 s after a new leader was elected ~1.2 s into a freeze, its
/// in-flight slots all taken by the old leader: service keys with a 3 s TTL expired.)
/// Callers queue on their leader's lane themselves, with no task between.
pub(crate) struct Forwarder {
    transport: PeerTransport,
    runtime: tokio::runtime::Handle,
    lanes: std::sync::Mutex<std::collections::HashMap<NodeId, tokio::sync::mpsc::Sender<Forward>>>,
    /// Leaders that could not decode a marked command (an older rota, during a rolling
    /// upgrade): this member sends them plain commands.
    plain_leaders: std::sync::Mutex<std::collections::HashSet<NodeId>>,
}

struct Forward {
    member: Member,
    command: Command,
    size_bytes: usize,
    reply: tokio::sync::oneshot::Sender<Result<ForwardedProposal, ForwardFailure>>,
}

impl Forwarder {
    /// Lanes run on the current runtime; they end when the `Forwarder` is dropped.
    pub(crate) fn start(transport: PeerTransport) -> Forwarder {
        Forwarder {
            transport,
            runtime: tokio::runtime::Handle::current(),
            lanes: std::sync::Mutex::default(),
            plain_leaders: std::sync::Mutex::default(),
        }
    }

    /// Whether `leader` is sent plain commands (see `plain_leaders`).
    fn sends_plain(&self, leader: NodeId) -> bool {
        self.plain_leaders.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(&leader)
    }

    /// `leader` could not decode a marked command; true the first time it is said.
    fn send_plain_from_now(&self, leader: NodeId) -> bool {
        self.plain_leaders.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(leader)
    }

    /// The queue of `leader`'s lane, started on first use.
    fn lane(&self, leader: NodeId) -> tokio::sync::mpsc::Sender<Forward> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        lanes
            .entry(leader)
            .or_insert_with(|| {
                let (tx, rx) = tokio::sync::mpsc::channel(FORWARD_QUEUE_MAX);
                self.runtime.spawn(run_lane(self.transport.clone(), leader, rx));
                tx
            })
            .clone()
    }

    async fn forward(
        &self,
        leader: NodeId,
        member: Member,
        command: Command,
    ) -> Result<ForwardedProposal, ForwardFailure> {
        let size_bytes = bincode::serialized_size(&command).unwrap_or(0) as usize;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let forward = Forward {
            member,
            command,
            size_bytes,
            reply,
        };
        if self.lane(leader).send(forward).await.is_err() {
            return Err(ForwardFailure::NotDelivered("forwarder stopped".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(ForwardFailure::Unknown("forwarder stopped".into())))
    }
}

/// Forwards one leader's commands: up to [`FORWARD_BATCHES_IN_FLIGHT_MAX`] batches on the
/// wire, the next filling meanwhile. A command whose caller stopped waiting (its leader was
/// replaced, or the client left) before it was sent is dropped: it was answered as of
/// unknown outcome, and sending it seconds later could only surprise.
async fn run_lane(
    transport: PeerTransport,
    leader: NodeId,
    mut rx: tokio::sync::mpsc::Receiver<Forward>,
) {
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(FORWARD_BATCHES_IN_FLIGHT_MAX));
    // A command that did not fit in the last batch: it opens the next.
    let mut carried: Option<Forward> = None;
    loop {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(forward) => forward,
            None => loop {
                match rx.recv().await {
                    Some(forward) if forward.reply.is_closed() => {}
                    Some(forward) => break forward,
                    None => return,
                }
            },
        };
        let member = first.member.clone();
        let mut batch_bytes = first.size_bytes;
        let mut batch = vec![first];
        while batch.len() < FORWARD_BATCH_COMMANDS_MAX {
            let Ok(next) = rx.try_recv() else { break };
            if next.reply.is_closed() {
                continue;
            }
            if batch_bytes + next.size_bytes > FORWARD_BATCH_BYTES_MAX {
                carried = Some(next);
                break;
            }
            batch_bytes += next.size_bytes;
            batch.push(next);
        }
        tokio::spawn(send_batch(transport.clone(), leader, member, batch, permit));
    }
}

/// Sends one batch and hands each caller its answer. Once every caller stopped waiting,
/// the request is dropped and its slot freed (a frozen leader would hold it until
/// [`FORWARD_PROPOSE_TIMEOUT`]).
async fn send_batch(
    transport: PeerTransport,
    leader: NodeId,
    member: Member,
    batch: Vec<Forward>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let (commands, mut replies): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|f| (f.command, f.reply)).unzip();
    let call = transport.call(leader, &member, PeerRpc::Propose, &commands, FORWARD_PROPOSE_TIMEOUT);
    let answer: Result<Vec<ForwardedProposal>, _> = tokio::select! {
        answer = call => answer,
        () = all_closed(&mut replies) => return,
    };
    drop(permit);
    match answer {
        Ok(answers) if answers.len() == replies.len() => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Ok(answers) => {
            let reason = format!("leader answered {} of {} commands", answers.len(), replies.len());
            for reply in replies {
                let _ = reply.send(Err(ForwardFailure::Unknown(reason.clone())));
            }
        }
        Err(error) => {
            let failure = if matches!(error, crate::network::CallError::Refused { status: 400, .. }) {
                ForwardFailure::Undecodable(error.to_string())
            } else if error.not_delivered() {
                ForwardFailure::NotDelivered(error.to_string())
            } else {
                ForwardFailure::Unknown(error.to_string())
            };
            for reply in replies {
                let _ = reply.send(Err(failure.clone()));
            }
        }
    }
}

/// Completes once every receiver of `replies` is gone.
async fn all_closed<T>(replies: &mut [tokio::sync::oneshot::Sender<T>]) {
    for reply in replies {
        reply.closed().await;
    }
}

/// Where a request should go right now.
enum Route {
    Local,
    Leader(NodeId, Member),
    NoLeader,
    /// This member was removed from the cluster: nothing goes anywhere from here.
    Removed,
}

impl Node {
    fn route(&self) -> Route {
        if self.is_removed() {
            return Route::Removed;
        }
        let metrics = self.inner.raft.metrics();
        let metrics = metrics.borrow();
        match metrics.current_leader {
            Some(leader) if leader == self.inner.id => {
                let handing_over = self
                    .inner
                    .handing_over
                    .load(std::sync::atomic::Ordering::SeqCst);
                // Our own vote names us, but we are not leading (a removed leader that
                // stepped down): no leader as far as this node can tell.
                if handing_over || !crate::leads(&metrics, self.inner.id) || self.lost_quorum(&metrics) {
                    Route::NoLeader
                } else {
                    Route::Local
                }
            }
            Some(leader) => match metrics.membership_config.membership().get_node(&leader) {
                Some(member) => Route::Leader(leader, member.clone()),
                None => Route::NoLeader,
            },
            None => Route::NoLeader,
        }
    }

    /// Returns [`REPLACED_LEADER_GRACE`] after this member learned of a leader other than
    /// `leader` (never, if it does not): a leader that stepped down in good order answers
    /// what it held by then.
    async fn wait_for_another_leader(&self, leader: NodeId) {
        let mut metrics = self.inner.raft.server_metrics();
        if metrics.wait_for(|m| m.current_leader.is_some_and(|current| current != leader)).await.is_err() {
            std::future::pending::<()>().await; // Raft stopped: the forward ends on its own.
        }
        tokio::time::sleep(REPLACED_LEADER_GRACE).await;
    }

    /// Sleeps until the known leader changes or `LEADER_POLL` passed, whichever is first.
    async fn wait_for_leader_change(&self, deadline: Instant) {
        let mut metrics = self.inner.raft.server_metrics();
        let seen = metrics.borrow_and_update().current_leader;
        let wait = LEADER_POLL.max(Duration::from_millis(1));
        let until = (Instant::now() + wait).min(deadline);
        let _ =
            tokio::time::timeout_at(until.into(), metrics.wait_for(|m| m.current_leader != seen))
                .await;
    }

    pub(crate) fn transport(&self) -> &PeerTransport {
        &self.inner.transport
    }
}

pub(crate) async fn propose(node: &Node, command: Command) -> Result<Proposed, ProposeError> {
    let started = Instant::now();
    let deadline = started + node.inner.leader_wait;
    // The leader this member knows but could not reach, and why: said when the wait ends.
    let mut unreachable: Option<(NodeId, String)> = None;
    // Forwarded, the command carries a mark this member knows it by when it applies it
    // (unless the leader runs an older rota that cannot read it: then it goes plain).
    let mut tag: Option<(crate::state_machine::TagWait<'_>, Command)> = None;
    loop {
        if node.is_shutting_down() {
            return Err(ProposeError::ShuttingDown);
        }
        match node.route() {
            Route::Local => return node.inner.proposals.propose(command).await,
            Route::Leader(leader, member) => {
                // A leader that froze or was cut off never answers: once another leader is
                // elected there is no point waiting, and past the request timeout (when the
                // leader's own proposer gives up) this member gives up too, as etcd's do.
                let answer_max = node.inner.proposals.answer_max;
                let plain = node.inner.forwarder.sends_plain(leader);
                let sent = if plain {
                    command.clone()
                } else {
                    let (_, tagged) = tag.get_or_insert_with(|| {
                        let wait = node.inner.shared.tags.register(node.inner.id);
                        let (origin, seq) = wait.key;
                        (wait, Command::Tagged { origin, seq, command: Box::new(command.clone()) })
                    });
                    tagged.clone()
                };
                let forwarded = tokio::select! {
                    forwarded = node.inner.forwarder.forward(leader, member, sent) => forwarded,
                    () = node.wait_for_another_leader(leader) => Err(ForwardFailure::Unknown(format!(
                        "leader {leader:x} was replaced before it answered"
                    ))),
                    () = tokio::time::sleep(answer_max) => Err(ForwardFailure::Unknown(format!(
                        "leader {leader:x} did not answer within {answer_max:?}"
                    ))),
                };
                match forwarded {
                    // That leader removed itself from the cluster, stepped down or is
                    // stopping, before it proposed the command: not applied, the next leader
                    // takes it, within this wait (an audit saw an at-once 503 "no leader"
                    // while a leader stepped down for an election it won 0.6 s later).
                    Ok(ForwardedProposal::Done(Err(
                        ProposeError::Removed | ProposeError::NoLeader | ProposeError::ShuttingDown,
                    ))) => {}
                    Ok(ForwardedProposal::Done(Ok(proposed))) => {
                        // As etcd's members do, answer once this member applied the write
                        // too, so that a client reading here next reads its own write.
                        wait_applied_to_answer(node, proposed.raft_index).await;
                        return Ok(proposed);
                    }
                    Ok(ForwardedProposal::Done(result)) => return result,
                    Ok(ForwardedProposal::NotLeader { .. }) => {}
                    Err(ForwardFailure::NotDelivered(reason)) => {
                        tracing::debug!(%reason, "forwarding a proposal: leader unreachable");
                        unreachable = Some((leader, reason));
                    }
                    Err(ForwardFailure::Undecodable(reason)) if !plain => {
                        if node.inner.forwarder.send_plain_from_now(leader) {
                            tracing::warn!(
                                leader = %format!("{leader:x}"),
                                %reason,
                                "the leader cannot read marked forwarded writes (an older rota, during an upgrade?): \
                                 sending them plain; a write whose leader dies before it answers is then answered \
                                 as of unknown outcome"
                            );
                        }
                        tag = None;
                        continue;
                    }
                    Err(ForwardFailure::Undecodable(reason)) => {
                        unreachable = Some((leader, reason));
                    }
                    Err(ForwardFailure::Unknown(reason)) => {
                        // The leader may have proposed it before it died or froze: as etcd's
                        // members do, wait for it to be applied here (the next leader commits
                        // it with its first entry) until the request timeout.
                        if let Some((mut wait, _)) = tag.take() {
                            let until = started + answer_max;
                            if let Ok(Ok(proposed)) = tokio::time::timeout_at(until.into(), &mut wait.applied).await {
                                tracing::info!(%reason, "a forwarded write whose leader did not answer was applied: answered from this member");
                                return Ok(proposed);
                            }
                        }
                        tracing::warn!(%reason, "forwarded proposal's outcome is unknown");
                        return Err(ProposeError::OutcomeUnknown(reason));
                    }
                }
            }
            Route::NoLeader => unreachable = None,
            Route::Removed => return Err(ProposeError::Removed),
        }
        if Instant::now() >= deadline {
            return Err(match unreachable {
                Some((leader, reason)) => ProposeError::LeaderUnreachable { leader, reason },
                None => ProposeError::NoLeader,
            });
        }
        node.wait_for_leader_change(deadline).await;
    }
}

pub(crate) async fn linearizable_read(node: &Node) -> Result<Applied, ProposeError> {
    let deadline = Instant::now() + node.inner.leader_wait;
    // The leader this member knows but could not reach, and why: said when the wait ends.
    let mut unreachable: Option<(NodeId, String)> = None;
    loop {
        if node.is_shutting_down() {
            return Err(ProposeError::ShuttingDown);
        }
        match node.route() {
            Route::Local => match node.inner.raft.ensure_linearizable().await {
                Ok(_) => return Ok(*node.inner.shared.applied_tx.borrow()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {}
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                    return Err(ProposeError::NoLeader)
                }
                Err(RaftError::Fatal(Fatal::Stopped)) => return Err(ProposeError::ShuttingDown),
                Err(RaftError::Fatal(fatal)) => return Err(ProposeError::Fatal(fatal.to_string())),
            },
            Route::Leader(leader, member) => {
                let call = node.transport().call(leader, &member, PeerRpc::ReadIndex, &(), FORWARD_READ_INDEX_TIMEOUT);
                // A leader cut off mid-call never answers (a pooled connection gone silent
                // waits out the call's timeout): once another leader is elected, ask it
                // instead. A read changes nothing, so asking again is safe. (A partition
                // audit saw reads sent to followers just after their leader was cut off
                // answered 503 "no leader" after 5 s, a new leader elected at 1.3 s.)
                let answer: Option<Result<ReadIndexReply, _>> = tokio::select! {
                    answer = call => Some(answer),
                    () = node.wait_for_another_leader(leader) => None,
                };
                match answer {
                    None => continue,
                    Some(Ok(ReadIndexReply::Index(index))) => {
                        return wait_applied(node, index, deadline).await
                    }
                    Some(Ok(ReadIndexReply::NotLeader { .. })) => {}
                    Some(Ok(ReadIndexReply::Failed(reason))) => {
                        tracing::debug!(%reason, "read index failed on the leader");
                        return Err(ProposeError::NoLeader);
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%error, "read index: leader unreachable");
                        unreachable = Some((leader, error.to_string()));
                    }
                }
            }
            Route::NoLeader => unreachable = None,
            Route::Removed => return Err(ProposeError::Removed),
        }
        if Instant::now() >= deadline {
            return Err(match unreachable {
                Some((leader, reason)) => ProposeError::LeaderUnreachable { leader, reason },
                None => ProposeError::NoLeader,
            });
        }
        node.wait_for_leader_change(deadline).await;
    }
}

/// Waits until this node applied `index` (a follower catching up to a read index).
async fn wait_applied(node: &Node, index: u64, deadline: Instant) -> Result<Applied, ProposeError> {
    let mut applied = node.inner.shared.applied_tx.subscribe();
    // A lagging follower may need longer than the leader wait; a bounded extra second.
    let until = deadline.max(Instant::now() + Duration::from_secs(1));
    let reached =
        tokio::time::timeout_at(until.into(), applied.wait_for(|a| a.raft_index >= index))
            .await
            .map(|reached| reached.map(|applied| *applied));
    match reached {
        Ok(Ok(applied)) => Ok(applied),
        Ok(Err(_)) => Err(ProposeError::ShuttingDown),
        Err(_) => Err(ProposeError::NoLeader),
    }
}

/// Waits until this node applied `index`, the entry of a write the leader committed and
/// answered. The answer stands whatever happens (the write is committed): a follower cut
/// off from the leader right after it answered gives up waiting after
/// [`FORWARDED_APPLY_WAIT`] and answers, later reads here may then not show the write yet.
async fn wait_applied_to_answer(node: &Node, index: u64) {
    if wait_applied(node, index, Instant::now() + FORWARDED_APPLY_WAIT).await.is_err() {
        tracing::debug!(index, "answering a forwarded write before this member applied it");
    }
}

/// Runs a membership change on the leader, forwarding it if this node is a follower.
pub(crate) async fn change_members(
    node: &Node,
    change: MemberChange,
) -> Result<(NodeId, Member), MemberError> {
    let deadline = Instant::now() + node.inner.leader_wait;
    loop {
        if node.is_shutting_down() {
            return Err(MemberError::ShuttingDown);
        }
        match node.route() {
            Route::Local => {
                match crate::membership::change_members_on_leader(node, change.clone()).await {
                    MemberChangeReply::Done(result) => return result,
                    MemberChangeReply::NotLeader { .. } => {}
                }
            }
            Route::Leader(leader, member) => {
                let answer: Result<MemberChangeReply, _> = node
                    .transport()
                    .call(
                        leader,
                        &member,
                        PeerRpc::ChangeMembers,
                        &change,
                        FORWARD_MEMBER_CHANGE_TIMEOUT,
                    )
                    .await;
                match answer {
                    Ok(MemberChangeReply::Done(Ok(changed))) => {
                        // So that `/v2/members` here lists the change once it is answered
                        // (the leader committed it; this catches up to the leader's commit).
                        if let Err(error) = linearizable_read(node).await {
                            tracing::debug!(%error, "answering a member change before this member has it");
                        }
                        return Ok(changed);
                    }
                    Ok(MemberChangeReply::Done(result)) => return result,
                    Ok(MemberChangeReply::NotLeader { .. }) => {}
                    Err(error) if error.not_delivered() => {}
                    Err(error) => return Err(MemberError::Failed(error.to_string())),
                }
            }
            Route::NoLeader => {}
            Route::Removed => return Err(MemberError::Removed),
        }
        if Instant::now() >= deadline {
            return Err(MemberError::NoLeader);
        }
        node.wait_for_leader_change(deadline).await;
    }
}

impl Node {
    /// Serves one peer RPC (the server crate's peer listener calls this with the request's
    /// path name, headers and body). `token` and `from` come from the request's headers.
    /// Answers a Raft RPC from a removed member with [`PeerError::SenderRemoved`] before
    /// Raft sees it: its campaigns must not disturb the members (a vote request of a higher
    /// term), and it learns it was removed (openraft no longer replicates to it).
    async fn refuse_removed_sender(
        &self,
        rpc: PeerRpc,
        from: NodeId,
        claim: SenderClaim,
    ) -> Result<(), PeerError> {
        if !self.sender_was_removed(from, claim).await {
            return Ok(());
        }
        tracing::info!(
            member = %format!("{from:x}"),
            rpc = rpc.name(),
            %claim,
            "refusing a Raft RPC from a member removed from the cluster (410)"
        );
        Err(PeerError::SenderRemoved { from })
    }

    pub async fn handle_peer(
        &self,
        rpc: PeerRpc,
        token: &str,
        from: u64,
        to: u64,
        cluster_id: u64,
        body: &[u8],
    ) -> Result<Vec<u8>, PeerError> {
        // A process that is not a member yet (`from` 0) may ask what the cluster is: one
        // joining with `--initial-cluster-state existing` learns the token from the answer.
        let joining_question = rpc == PeerRpc::ClusterInfo && from == 0;
        if token != self.inner.cluster_token && !joining_question {
            let error = PeerError::TokenMismatch {
                ours: self.inner.cluster_token.clone(),
                theirs: token.to_string(),
                from,
            };
            if self.transport().log_refusal(from, "token") {
                tracing::error!(%error, "refusing a peer of another cluster (logged again in a minute if it goes on)");
            }
            return Err(error);
        }
        // 0: meant for whoever answers here (membership questions before joining).
        if to != 0 && to != self.id() {
            let error = PeerError::WrongMember { ours: self.id(), meant: to };
            if self.transport().log_refusal(from, "member") {
                tracing::warn!(%error, from = %format!("{from:x}"), "refusing a peer RPC meant for another member (logged again in a minute if it goes on)");
            }
            return Err(error);
        }
        // 0: a process that is not a member yet, asking questions.
        if cluster_id != 0 && cluster_id != self.inner.cluster_id && !joining_question {
            let error = PeerError::ClusterIdMismatch {
                ours: self.inner.cluster_id,
                theirs: cluster_id,
                from,
            };
            if self.transport().log_refusal(from, "cluster id") {
                tracing::error!(%error, "refusing a peer of another cluster (logged again in a minute if it goes on)");
            }
            return Err(error);
        }
        if self.is_shutting_down() {
            return Err(PeerError::ShuttingDown);
        }
        let raft = &self.inner.raft;
        let reply = match rpc {
            PeerRpc::AppendEntries => {
                let request: openraft::raft::AppendEntriesRequest<crate::types::TypeConfig> =
                    peer::decode(rpc, body)?;
                let term = request.vote.leader_id().term;
                self.refuse_removed_sender(rpc, from, SenderClaim::Leader { term })
                    .await?;
                if !request.entries.is_empty() {
                    self.transport().stats().received_append(body.len());
                }
                self.transport().hints().note_append_received();
                peer::encode(&raft.append_entries(request).await)
            }
            PeerRpc::Vote => {
                let request: openraft::raft::VoteRequest<crate::types::NodeId> = peer::decode(rpc, body)?;
                let claim = SenderClaim::Candidate {
                    last_log_id: request.last_log_id,
                };
                self.refuse_removed_sender(rpc, from, claim).await?;
                // Whether we lead *before* the request (it may make us step down), and lost
                // the quorum (then `check_quorum` stopped our heartbeats).
                let (leading, silenced, term) = {
                    let metrics = raft.metrics();
                    let metrics = metrics.borrow();
                    (metrics.state == openraft::ServerState::Leader, self.lost_quorum(&metrics), metrics.current_term)
                };
                let answer = raft.vote(request.clone()).await;
                if let Ok(answer) = &answer {
                    // A voter back with a shorter log (its last entries lost, or never
                    // received) campaigns in vain: openraft refuses it for its log before
                    // it looks at the term, so this leader neither sees the higher term nor,
                    // without heartbeats, reaches the voter, and no one ever leads. One
                    // heartbeat lets the voter answer with its term: this leader steps
                    // down and, with the longer log, wins the next election.
                    if leading && silenced && !answer.vote_granted && request.vote.leader_id().term > term {
                        tracing::info!(candidate = %format_args!("{from:x}"), "a voter campaigns while this leader has lost its quorum: one heartbeat, so that it answers with its newer term");
                        let _ = raft.trigger().heartbeat().await;
                    }
                    let elections = self.transport().hints().note_vote(&request, answer, leading);
                    if elections > 0 {
                        tokio::spawn(crate::split_vote::campaign_now(raft.clone(), elections));
                    }
                }
                peer::encode(&answer)
            }
            PeerRpc::InstallSnapshot => {
                let request: openraft::raft::InstallSnapshotRequest<crate::types::TypeConfig> =
                    peer::decode(rpc, body)?;
                let term = request.vote.leader_id().term;
                self.refuse_removed_sender(rpc, from, SenderClaim::Leader { term })
                    .await?;
                peer::encode(&raft.install_snapshot(request).await)
            }
            PeerRpc::Propose => {
                let commands: Vec<Command> = peer::decode(rpc, body)?;
                if crate::test_mutant_is("older-leader") && commands.iter().any(|command| matches!(command, Command::Tagged { .. })) {
                    return Err(PeerError::BadRequest {
                        rpc: rpc.name(),
                        reason: "unknown variant index (ROTA_TEST_MUTANT=older-leader: an older rota)".to_string(),
                    });
                }
                if commands.len() > FORWARD_BATCH_COMMANDS_MAX {
                    return Err(PeerError::BadRequest {
                        rpc: rpc.name(),
                        reason: format!(
                            "{} commands, at most {FORWARD_BATCH_COMMANDS_MAX}",
                            commands.len()
                        ),
                    });
                }
                let replies: Vec<ForwardedProposal> = match self.route() {
                    // Queued in order, so the proposer packs them (with everything else
                    // waiting) into as few entries as it can.
                    Route::Local => futures::future::join_all(
                        commands
                            .into_iter()
                            .map(|command| self.inner.proposals.propose(command)),
                    )
                    .await
                    .into_iter()
                    .map(ForwardedProposal::Done)
                    .collect(),
                    _ => commands
                        .iter()
                        .map(|_| ForwardedProposal::NotLeader {
                            leader: self.leader_id(),
                        })
                        .collect(),
                };
                peer::encode(&replies)
            }
            PeerRpc::ReadIndex => {
                let reply = match self.route() {
                    Route::Local => match raft.get_read_log_id().await {
                        Ok((read_log_id, _applied)) => {
                            ReadIndexReply::Index(read_log_id.map(|id| id.index).unwrap_or(0))
                        }
                        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                            ReadIndexReply::NotLeader {
                                leader: self.leader_id(),
                            }
                        }
                        Err(error) => ReadIndexReply::Failed(error.to_string()),
                    },
                    _ => ReadIndexReply::NotLeader {
                        leader: self.leader_id(),
                    },
                };
                peer::encode(&reply)
            }
            PeerRpc::ClusterInfo => peer::encode(&self.cluster_info()),
            PeerRpc::ChangeMembers => {
                let change: MemberChange = peer::decode(rpc, body)?;
                let reply = match self.route() {
                    Route::Local => crate::membership::change_members_on_leader(self, change).await,
                    _ => MemberChangeReply::NotLeader {
                        leader: self.leader_id(),
                    },
                };
                peer::encode(&reply)
            }
            PeerRpc::TimeoutNow => {
                // Only from the leader this member follows, handing over: anything else that
                // reaches the peer port could depose every leader in turn, for ever.
                if !self.may_ask_to_campaign(from) {
                    tracing::debug!(from = %format!("{from:x}"), "refused a request to campaign now: it did not come from the leader this member follows");
                    let refused: Result<(), String> = Err("only the leader this member follows may ask it to campaign".to_owned());
                    return Ok(peer::encode(&refused));
                }
                let elected = raft.trigger().elect().await.map_err(|e| e.to_string());
                tracing::info!(from = %format!("{from:x}"), ?elected, "asked to campaign now (leadership hand-over)");
                peer::encode(&elected)
            }
        };
        Ok(reply)
    }
}

/// A transport for questions to the peers before this node runs (who is a member): it
/// sends as node 0 and takes part in no election.
fn start_up_transport(config: &NodeConfig) -> PeerTransport {
    let hints = std::sync::Arc::new(crate::split_vote::ElectionHints::new(config.election_timeout_max_ms));
    PeerTransport::new(config.cluster_token.clone(), 0, 0, hints, config.peer_source_ip)
}

/// The peer URLs of `--initial-cluster` other than this member's own.
fn other_peer_urls(config: &NodeConfig) -> impl Iterator<Item = &String> {
    config
        .initial_cluster
        .iter()
        .filter(|member| member.name != config.name)
        .flat_map(|member| member.peer_urls.iter())
        .filter(|url| !config.advertise_peer_urls.contains(url))
}

/// `--initial-cluster-state new` with an empty data dir, in a cluster of several members:
/// refuses to start when a listed peer already knows this member as started (it published
/// its client URLs), as etcd refuses ("member ... has already been bootstrapped"). Such a
/// member lost its data dir; initializing afresh would give it an empty log and let it vote
/// as if it had never acknowledged anything. Peers that do not answer (a new cluster
/// starting up) are no reason to wait: each is asked once.
///
/// "This member" is the member with its id or with one of its peer URLs, in whatever
/// cluster the peer is in: a member added at runtime has an id the leader gave it, not the
/// one its name gives, and a member whose flags changed since (another `--initial-cluster`
/// after members were added or moved) computes another cluster id; neither may start over.
pub(crate) async fn refuse_rebootstrap(config: &NodeConfig, id: NodeId) -> Result<(), StartError> {
    debug_assert_eq!(config.initial_cluster_state, ClusterState::New);
    let transport = start_up_transport(config);
    // All peers at once, each within a short bound: members of a new cluster start
    // together, and a peer that is itself starting holds the question in its listen backlog
    // until its own start-up is done. One after the other with the join timeout, a fresh
    // 3-member cluster took 4 s to start; a running member answers in milliseconds.
    let urls: Vec<&String> = other_peer_urls(config).collect();
    let answers = futures::future::join_all(urls.iter().map(|url| {
        transport.call_url::<(), ClusterInfo>(0, url, PeerRpc::ClusterInfo, &(), REBOOTSTRAP_CHECK_TIMEOUT)
    }))
    .await;
    for (url, answer) in urls.into_iter().zip(answers) {
        let Ok(info) = answer else {
            continue;
        };
        let started = info.members.iter().find(|(member, details)| {
            let mine = *member == id || details.peer_urls.iter().any(|url| config.advertise_peer_urls.contains(url));
            mine && !details.client_urls.is_empty()
        });
        if let Some((started_id, _)) = started {
            let peer_urls = config.advertise_peer_urls.join(",");
            return Err(StartError::Join(format!(
                "member {started_id:x} has already been bootstrapped (peer {url} of cluster {:016x} knows it as started) but this \
                 data dir is empty; to start it over, remove it (`rota member rm {started_id:x}`), add it again \
                 (`rota member add {} {peer_urls}`) and start it with --initial-cluster-state existing",
                info.cluster_id, config.name
            )));
        }
        // Listed at our peer URLs under another id, not started: a member added at runtime
        // (`member add`) that is being started with `new` by mistake. It would bootstrap a
        // cluster of its own, which its peers refuse ("cluster id mismatch") for ever.
        let added = info.members.iter().find(|(member, details)| {
            *member != id
                && details.client_urls.is_empty()
                && details.peer_urls.iter().any(|url| config.advertise_peer_urls.contains(url))
        });
        if let Some((added_id, _)) = added {
            return Err(StartError::Join(format!(
                "peer {url} lists member {added_id:x} at this member's peer URLs ({}), not started yet, in cluster {:016x}: \
                 a member added with `member add` joins with --initial-cluster-state existing (with new it would start \
                 a cluster of its own); otherwise the --initial-cluster of that peer names this member other than {:?}",
                config.advertise_peer_urls.join(","),
                info.cluster_id,
                config.name
            )));
        }
    }
    Ok(())
}

/// `--initial-cluster-state existing` with an empty data dir: ask the listed peers for the
/// membership and take the id the leader assigned to our peer URLs.
pub(crate) async fn join_identity(config: &NodeConfig) -> Result<Identity, StartError> {
    debug_assert_eq!(config.initial_cluster_state, ClusterState::Existing);
    let transport = start_up_transport(config);
    let peers: Vec<&String> = other_peer_urls(config).collect();
    if peers.is_empty() {
        return Err(StartError::Join(
            "--initial-cluster lists no other member to join".to_string(),
        ));
    }
    tracing::info!(
        peers = %peers.iter().map(|url| url.as_str()).collect::<Vec<_>>().join(","),
        "joining an existing cluster: asking its members for this member's id (for up to {JOIN_WAIT:?})"
    );
    let started = Instant::now();
    let mut last_error = String::new();
    while started.elapsed() < JOIN_WAIT {
        for url in &peers {
            let answer: Result<ClusterInfo, _> = transport
                .call_url(0, url, PeerRpc::ClusterInfo, &(), CLUSTER_INFO_TIMEOUT)
                .await;
            match answer {
                Ok(info) => {
                    let mine = info.members.iter().find(|(_, member)| {
                        member
                            .peer_urls
                            .iter()
                            .any(|url| config.advertise_peer_urls.contains(url))
                    });
                    return match mine {
                        // Started before (it published its client URLs): its data dir lost
                        // the log it had, and votes it cast. Let back in under its old id
                        // with an empty log, it could help a member that lacks acknowledged
                        // writes win an election, which erases them everywhere (an audit
                        // lost 5 that way). etcd 3.4 lets it in; rota refuses it, as
                        // `refuse_rebootstrap` does with `new`.
                        Some((id, member)) if !member.client_urls.is_empty() => Err(StartError::Join(format!(
                            "member {id:x} has already been bootstrapped (peer {url} of cluster {:016x} knows it as started \
                             at {}) but this data dir is empty: it lost what it held. To start it over, remove it \
                             (`rota member rm {id:x}`), add it again (`rota member add {} {}`) and start it with an empty \
                             data dir and --initial-cluster-state existing",
                            info.cluster_id,
                            member.client_urls.join(","),
                            config.name,
                            config.advertise_peer_urls.join(","),
                        ))),
                        Some((id, _)) => {
                            if info.token != config.cluster_token {
                                tracing::info!(token = %info.token, "joining with the cluster's token (--initial-cluster-token is not needed to join)");
                            }
                            Ok(Identity {
                                cluster_id: info.cluster_id,
                                node_id: *id,
                                token: Some(info.token.clone()),
                            })
                        }
                        None => Err(StartError::Join(format!(
                            "this member's peer URLs {:?} are not in the cluster's membership; add it first (`rota member add` or POST /v2/members)",
                            config.advertise_peer_urls
                        ))),
                    };
                }
                Err(crate::network::CallError::Refused {
                    status: 403,
                    reason,
                    ..
                }) => return Err(StartError::Join(format!("peer {url} refused us: {reason}"))),
                Err(error) => last_error = error.to_string(),
            }
        }
        tokio::time::sleep(JOIN_RETRY).await;
    }
    Err(StartError::Join(format!(
        "no listed peer answered within {JOIN_WAIT:?}: {last_error}"
    )))
}

