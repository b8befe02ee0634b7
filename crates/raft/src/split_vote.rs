//! Keeps failover short where openraft 0.9's election timing alone does not.
//!
//! When the leader dies right after replicating an entry to one follower only, the other
//! follower campaigns first and is refused (its log is behind); the one that must win may
//! wait much longer, because openraft adds 2 × the election timeout to a node's timer once
//! it has seen a greater log as a candidate, and that flag stays set until its next
//! election, possibly from the cluster's start (seen: 2.6 s leaderless, longer than the
//! leader-kill test's outage). So a *follower* that refuses a vote because the candidate's
//! log is behind its own, whose leader has been silent for a lease, and for whom this is the
//! first election since that leader, campaigns at once, with a term above the candidate's
//! ([`ElectionHints::note_vote`]).
//!
//! A leader never does this (it hears no appends, but it is the leader): otherwise a
//! partitioned node rejoining with a high term and a short log would make the working
//! leader depose itself on every vote request (seen in the partition test).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use openraft::raft::{VoteRequest, VoteResponse};
use crate::types::{NodeId, Raft};

/// Elections triggered at once by one refused vote (to get above the candidate's term).
const NUDGE_ELECTIONS_MAX: u64 = 2;

/// What the peer layer observed that bears on elections: when we last heard an append.
pub(crate) struct ElectionHints {
    origin: Instant,
    /// A leader lease: how long after the last append a follower still trusts its leader.
    lease_ms: u64,
    /// Milliseconds after `origin` of the last append received, 0 if none.
    last_append_ms: AtomicU64,
}

impl ElectionHints {
    pub(crate) fn new(lease_ms: u64) -> ElectionHints {
        ElectionHints {
            origin: Instant::now(),
            lease_ms,
            last_append_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    pub(crate) fn note_append_received(&self) {
        self.last_append_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// We answered a vote request. If we refused it because the candidate's log is behind
    /// ours while our leader has been silent for a lease, we are the one who can win: how
    /// many elections to trigger at once so our term passes the candidate's.
    /// `leading`: this node is the leader now (it never campaigns then).
    pub(crate) fn note_vote(&self, request: &VoteRequest<NodeId>, answer: &VoteResponse<NodeId>, leading: bool) -> u64 {
        if leading {
            return 0;
        }
        let candidate_behind = !answer.vote_granted && answer.last_log_id > request.last_log_id;
        // We followed a leader (an append arrived) that has been silent for a lease: not a
        // node that never had a leader (start-up) nor one that hears its leader.
        let last_append = self.last_append_ms.load(Ordering::Relaxed);
        let leader_gone = last_append != 0 && self.now_ms().saturating_sub(last_append) > self.lease_ms;
        // Only the first election after that leader: a candidate far ahead in term (a node
        // coming back from a partition) gets the ordinary treatment.
        let candidate_term = request.vote.leader_id().term;
        let our_term = answer.vote.leader_id().term;
        let first_election = candidate_term == our_term + 1;
        if !(candidate_behind && leader_gone && first_election) {
            return 0;
        }
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

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, Vote};

    use std::time::Duration;

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
        hints.note_append_received();
        // Lease 0: the leader is silent as soon as a millisecond passed.
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(hints.note_vote(&request(2, 462), &refusal(1, 463), false), 2, "to term 3, past the candidate's 2");
        assert_eq!(hints.note_vote(&request(9, 462), &refusal(1, 463), false), 0, "a candidate far ahead in term: ordinary rules");
    }

    #[test]
    fn no_campaign_while_the_leader_is_heard_or_when_the_candidate_is_not_behind() {
        let hints = ElectionHints::new(60_000);
        hints.note_append_received();
        assert_eq!(hints.note_vote(&request(2, 462), &refusal(1, 463), false), 0, "leader heard within the lease");
        let never_led = ElectionHints::new(0);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(never_led.note_vote(&request(2, 462), &refusal(1, 463), false), 0, "no leader ever heard (start-up)");
        let silent = ElectionHints::new(0);
        silent.note_append_received();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(silent.note_vote(&request(2, 463), &refusal(1, 463), false), 0, "candidate's log is as long as ours");
        assert_eq!(silent.note_vote(&request(2, 462), &refusal(1, 463), true), 0, "a leader never campaigns");
        let granted = VoteResponse::new(Vote::new(2, 2), log(463), true);
        assert_eq!(silent.note_vote(&request(2, 462), &granted, false), 0, "a granted vote");
    }
}
