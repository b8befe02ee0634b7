//! Keeps failover short where openraft 0.9's election timing alone would not.
//!
//! 1. Repeated split votes.
//! openraft 0.9 draws a node's election timeout once per process and checks it on a tick of
//! 1.5 heartbeat intervals. Two followers whose timeouts land in the same tick campaign
//! together, split the vote, and do it again every round, since neither timeout changes: a
//! 3-node cluster whose leader died stayed leaderless until that leader came back (seen in
//! the leader-kill test). Raft's answer is a timeout drawn afresh for every election; this
//! task gives us that: while this voter sees no leader, it triggers an election after a
//! delay drawn anew each round from the configured timeout range.
//!
//! It never disturbs a working leader: it acts only while this node knows of no leader,
//! which in openraft means this node has already started an election of its own (a follower
//! keeps its last leader until it campaigns). Followers that still hold a leader lease reject
//! the votes, as they would a natural campaign.
//!
//! 2. The most up-to-date survivor waiting too long. When the leader dies right after
//! replicating an entry to one follower only, the other follower campaigns first and is
//! refused (its log is behind); the one that must win may wait much longer, because openraft
//! adds 2 × the election timeout to a node's timer once it has seen a greater log as a
//! candidate, and that flag stays set until its next election, possibly from the cluster's
//! start (seen: 2.6 s leaderless). So: a voter that refuses a vote because the candidate's
//! log is behind its own, and has heard no append from a leader for a lease, campaigns at
//! once, with a term above the candidate's (see [`ElectionHints::note_vote`]); and a node
//! that was refused because its log is behind stops re-campaigning for a while, leaving
//! the field to the node that can win.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::raft::{VoteRequest, VoteResponse};
use openraft::ServerState;
use tokio::sync::watch;

use crate::types::{NodeId, Raft};
use crate::WeakNode;

/// Elections triggered at once by one refused vote, at most (to get above its term).
const NUDGE_ELECTIONS_MAX: u64 = 4;

/// What the peer layer observed that bears on elections; shared by the transport (our vote
/// requests and their answers), the peer handler (appends and vote requests we receive) and
/// the breaker task.
pub(crate) struct ElectionHints {
    origin: Instant,
    /// A leader lease: how long after the last append a follower still trusts its leader.
    lease_ms: u64,
    /// Milliseconds after `origin` of the last append received, 0 if none.
    last_append_ms: AtomicU64,
    /// Milliseconds after `origin` when a vote answer showed a log ahead of ours, 0 if never.
    greater_log_seen_ms: AtomicU64,
}

impl ElectionHints {
    pub(crate) fn new(lease_ms: u64) -> ElectionHints {
        ElectionHints {
            origin: Instant::now(),
            lease_ms,
            last_append_ms: AtomicU64::new(0),
            greater_log_seen_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    pub(crate) fn note_append_received(&self) {
        self.last_append_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Our vote request was answered: remember if the voter's log is ahead of ours.
    pub(crate) fn note_vote_answer(&self, request: &VoteRequest<NodeId>, answer: &VoteResponse<NodeId>) {
        if !answer.vote_granted && answer.last_log_id > request.last_log_id {
            self.greater_log_seen_ms.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn saw_greater_log_within(&self, window_ms: u64) -> bool {
        let seen = self.greater_log_seen_ms.load(Ordering::Relaxed);
        seen != 0 && self.now_ms().saturating_sub(seen) <= window_ms
    }

    /// We answered a vote request. If we refused it because the candidate's log is behind
    /// ours while our leader has been silent for a lease, we are the one who can win: how
    /// many elections to trigger at once so our term passes the candidate's.
    pub(crate) fn note_vote(&self, request: &VoteRequest<NodeId>, answer: &VoteResponse<NodeId>) -> u64 {
        let candidate_behind = !answer.vote_granted && answer.last_log_id > request.last_log_id;
        let last_append = self.last_append_ms.load(Ordering::Relaxed);
        let leader_silent = self.now_ms().saturating_sub(last_append) > self.lease_ms;
        if !(candidate_behind && leader_silent) {
            return 0;
        }
        let candidate_term = request.vote.leader_id().term;
        let our_term = answer.vote.leader_id().term;
        (candidate_term + 1).saturating_sub(our_term).clamp(1, NUDGE_ELECTIONS_MAX)
    }
}

/// Campaigns `elections` times in a row (each raises the term by one).
pub(crate) async fn campaign_now(raft: Raft, elections: u64) {
    tracing::info!(elections, "refused a candidate whose log is behind ours, with no leader heard for a lease: campaigning");
    for _ in 0..elections {
        if raft.trigger().elect().await.is_err() {
            return;
        }
    }
}

pub(crate) async fn run_split_vote_breaker(
    node: WeakNode,
    raft: Raft,
    hints: std::sync::Arc<ElectionHints>,
    id: u64,
    timeout_min_ms: u64,
    timeout_max_ms: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut metrics = raft.metrics();
    let mut rng = seed(id);
    loop {
        // Wait until this node is a voter that knows of no leader.
        let leaderless = metrics.wait_for(|m| {
            m.current_leader.is_none()
                && matches!(m.state, ServerState::Candidate | ServerState::Follower)
                && m.membership_config.membership().voter_ids().any(|voter| voter == id)
        });
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            seen = leaderless => if seen.is_err() { return },
        }
        let span_ms = timeout_max_ms.saturating_sub(timeout_min_ms).max(1);
        let delay = Duration::from_millis(timeout_min_ms + next(&mut rng) % span_ms);
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(delay) => {}
        }
        let still_leaderless = metrics.borrow().current_leader.is_none();
        let handing_over = node.upgrade().is_none_or(|node| node.inner.handing_over.load(Ordering::Relaxed));
        // A node whose log is behind cannot win; it leaves the campaign to the one that can.
        let behind = hints.saw_greater_log_within(2 * timeout_max_ms);
        if still_leaderless && !handing_over && !behind && !*shutdown.borrow() {
            tracing::info!(delay_ms = delay.as_millis() as u64, "no leader after an election round; campaigning again");
            if raft.trigger().elect().await.is_err() {
                return;
            }
        }
    }
}

/// Seeds differ between nodes and between restarts of one node.
fn seed(id: u64) -> u64 {
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    (id ^ now_ns.rotate_left(17)) | 1
}

/// xorshift64: plenty for spreading timeouts.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, Vote};

    use super::*;

    fn log(index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(1, 7), index))
    }

    fn request(term: u64, last: u64) -> VoteRequest<NodeId> {
        VoteRequest::new(Vote::new(term, 2), log(last))
    }

    fn refusal(our_term: u64, our_last: u64) -> VoteResponse<NodeId> {
        VoteResponse::new(Vote::new_committed(our_term, 7), log(our_last), false)
    }

    #[test]
    fn a_voter_ahead_of_the_candidate_campaigns_past_its_term_once_the_leader_is_silent() {
        let hints = ElectionHints::new(0);
        // Never heard an append, lease 0: the leader is silent.
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(hints.note_vote(&request(2, 462), &refusal(1, 463)), 2, "to term 3, past the candidate's 2");
        assert_eq!(hints.note_vote(&request(9, 462), &refusal(1, 463)), NUDGE_ELECTIONS_MAX);
    }

    #[test]
    fn no_campaign_while_the_leader_is_heard_or_when_the_candidate_is_not_behind() {
        let hints = ElectionHints::new(60_000);
        hints.note_append_received();
        assert_eq!(hints.note_vote(&request(2, 462), &refusal(1, 463)), 0, "leader heard within the lease");
        let silent = ElectionHints::new(0);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(silent.note_vote(&request(2, 463), &refusal(1, 463)), 0, "candidate's log is as long as ours");
        let granted = VoteResponse::new(Vote::new(2, 2), log(463), true);
        assert_eq!(silent.note_vote(&request(2, 462), &granted), 0, "a granted vote");
    }

    #[test]
    fn a_candidate_refused_for_its_log_stands_back() {
        let hints = ElectionHints::new(600);
        assert!(!hints.saw_greater_log_within(1_200));
        hints.note_vote_answer(&request(2, 462), &VoteResponse::new(Vote::new(2, 2), log(462), false));
        assert!(!hints.saw_greater_log_within(1_200), "refused for another reason: same log");
        hints.note_vote_answer(&request(2, 462), &refusal(1, 463));
        assert!(hints.saw_greater_log_within(1_200));
    }
}
