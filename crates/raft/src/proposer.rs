//! Group commit: many concurrent proposals become one Raft entry.
//!
//! openraft 0.9's leader waits for one fsync per `client_write`, so writing each command as
//! its own entry would cap throughput at the disk's sync rate. The proposer task takes the
//! first waiting proposal, then every proposal already queued behind it (up to
//! `batch_commands_max` commands and `batch_bytes_max` encoded bytes), waits briefly for
//! the callers the last batch answered to come back ([`Linger`]), stamps the batch with
//! the leader's time and hands it to openraft. Up to `proposals_in_flight_max` batches are
//! in flight at once, so the next batch fills while the previous one syncs. Each batch's
//! responses go back to their callers in order.
//!
//! A batch in flight holds its slot for at most [`ProposerLimits::answer_max`]. openraft
//! answers a batch when its entry applies or is cut from the log, but a member that resumed
//! its old leadership at restart, proposed, and then had its log replaced by a newer
//! leader's snapshot kept that batch's answer pending for good: with one slot, no write was
//! proposed again, and the cluster took none (a job-queue audit, once). Past the wait the
//! callers hear `OutcomeUnknown`, as they would anyway, and the next batch goes. An entry
//! applied under another leader's id at the index openraft answers for is not the batch's
//! own: its callers hear `OutcomeUnknown` too, never the answers of another's commands.
//!
//! Time: a batch's `time_ms` is max(wall clock, last stamped, applied state time), so entry
//! time never goes backwards, also across leader changes and clock steps.
//!
//! The gate: each batch holds a read guard of [`Gate::proposals`] from before it is handed
//! to openraft until it is answered. A leader removing itself takes the write guard, so no
//! batch is in flight when it steps down (openraft would never answer one it appended after
//! its removal: nobody tells a removed node what committed). Once [`Gate::removed`] is set,
//! nothing is proposed any more: every proposal is answered `Removed` (not applied).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::error::ClientWriteError;
use rota_core::{Batch, Command};
use tokio::sync::{mpsc, oneshot, watch, RwLock, Semaphore};

use crate::metrics::RaftMetrics;
use crate::state_machine::SharedState;
use crate::types::{Member, NodeId, Raft};
use crate::{ProposeError, Proposed};

/// One waiting proposal.
#[derive(Debug)]
pub(crate) struct Proposal {
    pub command: Command,
    pub size_bytes: usize,
    pub reply: oneshot::Sender<Result<Proposed, ProposeError>>,
    pub queued_at: std::time::Instant,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct ProposerLimits {
    pub batch_commands_max: usize,
    pub batch_bytes_max: usize,
    pub proposals_in_flight_max: usize,
    /// How long a batch holds its slot waiting for its outcome (the callers' own wait,
    /// [`ProposalSender::answer_max`]); past it, its callers are answered `OutcomeUnknown`
    /// and the slot is freed.
    pub answer_max: std::time::Duration,
}

/// The sending side of the proposer's queue. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct ProposalSender {
    pub tx: mpsc::Sender<Proposal>,
    pub batch_bytes_max: usize,
    /// Commands that add data are refused while the data dir is short of space.
    pub disk_space: Arc<crate::disk::DiskSpace>,
    /// How long a caller waits for its command's outcome before it is answered
    /// `OutcomeUnknown` (etcd's request timeout): a leader cut off from its followers after
    /// it proposed cannot commit until they are back.
    pub answer_max: std::time::Duration,
}

impl ProposalSender {
    /// Queues `command` and waits for its outcome. Cancel-safe: dropping the future drops
    /// only the wait (a queued command is still proposed).
    pub(crate) async fn propose(&self, command: Command) -> Result<Proposed, ProposeError> {
        if let Some(shortage) = self.disk_space.refuses(&command) {
            return Err(ProposeError::NoSpace {
                available_bytes: shortage.available_bytes,
                resume_above_bytes: shortage.resume_above_bytes,
            });
        }
        let size_bytes = bincode::serialized_size(&command)
            .map_err(|e| ProposeError::Fatal(format!("encode command: {e}")))?
            as usize;
        if size_bytes > self.batch_bytes_max {
            return Err(ProposeError::TooLarge {
                bytes: size_bytes,
                limit: self.batch_bytes_max,
            });
        }
        let _in_flight = crate::spin::InFlight::start();
        let (reply, outcome) = oneshot::channel();
        self.tx
            .send(Proposal {
                command,
                size_bytes,
                reply,
                queued_at: std::time::Instant::now(),
            })
            .await
            .map_err(|_| ProposeError::ShuttingDown)?;
        // The proposer task is woken: a spinning Raft thread can stop spinning.
        drop(crate::spin::NoteWakeOnDrop);
        match tokio::time::timeout(self.answer_max, outcome).await {
            Ok(outcome) => outcome.unwrap_or(Err(ProposeError::ShuttingDown)),
            // It may still be applied later, once a quorum is back.
            Err(_) => Err(ProposeError::OutcomeUnknown(format!(
                "not committed within {:?}",
                self.answer_max
            ))),
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What holds proposals back: see the module doc.
pub(crate) struct Gate {
    pub proposals: Arc<RwLock<()>>,
    pub removed: watch::Receiver<bool>,
}

/// Runs until `shutdown` turns true or every sender is gone; then answers what is still
/// queued with `ShuttingDown` and waits for the batches in flight.
pub(crate) async fn run_proposer(
    raft: Raft,
    shared: Arc<SharedState>,
    mut proposals: mpsc::Receiver<Proposal>,
    limits: ProposerLimits,
    metrics: RaftMetrics,
    gate: Gate,
    mut shutdown: watch::Receiver<bool>,
) {
    let in_flight = Arc::new(Semaphore::new(limits.proposals_in_flight_max.max(1)));
    let own_id = raft.metrics().borrow().id;
    let mut last_stamped_ms = 0u64;
    // The highest term in which a batch of this proposer's that renewed the job leases
    // (`Command::RenewLeases`, as etcd's new leader renews its leases) was committed: until
    // one is, in the current term, every batch carries the renewal. (Remembering the term of
    // the last batch *proposed* instead missed a term won while a batch proposed as a
    // candidate failed.)
    let renewed_term = Arc::new(AtomicU64::new(0));
    // A proposal that did not fit into the previous batch; it opens the next one.
    let mut carried: Option<Proposal> = None;
    let mut linger = Linger::default();

    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            permit = in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        // The slot is free: the previous batch was answered (or none is in flight).
        let freed_at = std::time::Instant::now();
        let first = match carried.take() {
            Some(proposal) => proposal,
            None => tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break,
                proposal = proposals.recv() => match proposal {
                    Some(proposal) => proposal,
                    None => break,
                },
            },
        };

        let mut batch_bytes = first.size_bytes;
        let mut returned = usize::from(first.queued_at >= freed_at);
        let mut commands = vec![first.command];
        let mut replies = vec![first.reply];
        let linger_until = tokio::time::Instant::from_std(linger.until(freed_at));
        while commands.len() < limits.batch_commands_max {
            let next = match proposals.try_recv() {
                Ok(next) => next,
                Err(_) if linger.waits_for_more(returned) => {
                    match tokio::time::timeout_at(linger_until, proposals.recv()).await {
                        Ok(Some(next)) => next,
                        _ => break,
                    }
                }
                Err(_) => break,
            };
            returned += usize::from(next.queued_at >= freed_at);
            if batch_bytes + next.size_bytes > limits.batch_bytes_max {
                carried = Some(next);
                break;
            }
            batch_bytes += next.size_bytes;
            commands.push(next.command);
            replies.push(next.reply);
        }

        let gate_guard = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => {
                answer_all(replies, &ProposeError::ShuttingDown, &metrics);
                break;
            }
            guard = gate.proposals.clone().read_owned() => guard,
        };
        if *gate.removed.borrow() {
            answer_all(replies, &ProposeError::Removed, &metrics);
            continue;
        }

        linger.proposed(commands.len(), std::time::Instant::now());
        let state_time_ms = shared.read(|state| state.time_ms());
        last_stamped_ms = now_ms().max(last_stamped_ms).max(state_time_ms);
        metrics.batch_commands.observe(commands.len() as f64);
        metrics.batch_bytes.observe(batch_bytes as f64);
        let term = raft.metrics().borrow().current_term;
        let renews = renewed_term.load(Ordering::Relaxed) != term;
        if renews {
            // Last, so the answers line up with the replies; it takes effect before the
            // batch's time does wherever it is.
            commands.push(Command::RenewLeases);
        }
        let batch = Batch {
            time_ms: last_stamped_ms,
            commands,
        };

        match raft.client_write_ff(batch.into()).await {
            Ok(response) => {
                let metrics = metrics.clone();
                let renewed_term = renewed_term.clone();
                let orphaned = orphaned_by_test_mutant();
                tokio::spawn(async move {
                    let outcome = tokio::time::timeout(limits.answer_max, async {
                        if orphaned {
                            std::future::pending::<()>().await;
                        }
                        response.await
                    })
                    .await;
                    drop(gate_guard);
                    drop(permit);
                    let Ok(outcome) = outcome else {
                        tracing::warn!(
                            commands = replies.len(),
                            "a batch was not answered within {:?}; its callers are told the outcome is unknown, and the next batch goes",
                            limits.answer_max
                        );
                        let unknown = ProposeError::OutcomeUnknown(format!("not committed within {:?}", limits.answer_max));
                        return answer_all(replies, &unknown, &metrics);
                    };
                    if let (true, Ok(Ok(written))) = (renews, &outcome) {
                        renewed_term.fetch_max(written.log_id.leader_id.term, Ordering::Relaxed);
                    }
                    answer(replies, outcome, renews, own_id, &metrics);
                });
            }
            Err(fatal) => {
                drop(gate_guard);
                drop(permit);
                let error = match fatal {
                    openraft::error::Fatal::Stopped => ProposeError::ShuttingDown,
                    other => ProposeError::Fatal(other.to_string()),
                };
                answer_all(replies, &error, &metrics);
            }
        }
    }

    // Stop accepting, answer everything queued, let in-flight batches finish.
    proposals.close();
    let leftovers = carried.into_iter().map(|p| p.reply);
    answer_all(leftovers.collect(), &ProposeError::ShuttingDown, &metrics);
    while let Some(proposal) = proposals.recv().await {
        answer_all(vec![proposal.reply], &ProposeError::ShuttingDown, &metrics);
    }
    let _ = in_flight
        .acquire_many(limits.proposals_in_flight_max.max(1) as u32)
        .await;
}

/// How long the next batch waits for the callers the last one answered.
///
/// Callers that send their next request when the previous one is answered (every client
/// with a connection of its own, a worker's lease loop) otherwise split into two cohorts:
/// one waits while the other's batch is in flight, and every batch carries half of them.
/// Each batch costs a round of fixed work (an fsync per member, two appends per follower,
/// the wake-ups in between), so halving the batches halved what that work buys. Waiting
/// until as many proposals arrived since the slot was freed as the last batch carried
/// (they are its callers coming back) merges the cohorts: a 3-node cluster went from 32 to
/// 60 commands per entry at 64 clients, CPU per write 58 → 44 µs, 20.4k → 23.9k writes/s
/// (bench/RESULTS.md, 2026-12-06 (fourth session)).
///
/// Only after a long round ([`LINGER_FLIGHT_MIN`]: a cluster's, or a slow disk's), and
/// bounded: at most as long as the last batch was in flight and at most [`LINGER_MAX`], so
/// callers that do not come back cost one round at most. A lone caller (the last batch
/// carried one command) never waits.
#[derive(Debug, Default)]
struct Linger {
    /// Commands the last batch carried.
    previous_commands: usize,
    /// When the last batch was handed to Raft.
    proposed_at: Option<std::time::Instant>,
    /// How long the batch before it was in flight (handed over → its slot freed).
    flight: std::time::Duration,
}

/// The longest a batch waits for callers to come back.
const LINGER_MAX: std::time::Duration = std::time::Duration::from_millis(1);

/// Batches wait only when the last one was in flight this long. A round this short (one
/// node's fsync, ~0.25 ms here) is not worth saving: the disk is the bottleneck, and an
/// idle wait for callers as slow to come back as the round itself only idles it (the job
/// cycle on one node lost 10–20% that way, its batches twice as big and half as many).
const LINGER_FLIGHT_MIN: std::time::Duration = std::time::Duration::from_millis(1);

impl Linger {
    /// Until when to wait, for a slot freed at `freed_at`.
    fn until(&mut self, freed_at: std::time::Instant) -> std::time::Instant {
        if let Some(proposed_at) = self.proposed_at.take() {
            self.flight = freed_at.saturating_duration_since(proposed_at);
        }
        freed_at + self.flight.min(LINGER_MAX)
    }

    /// Whether to wait for another proposal, `returned` having come since the slot was freed.
    fn waits_for_more(&self, returned: usize) -> bool {
        self.flight >= LINGER_FLIGHT_MIN
            && self.previous_commands >= 2
            && returned < self.previous_commands
    }

    fn proposed(&mut self, commands: usize, at: std::time::Instant) {
        self.previous_commands = commands;
        self.proposed_at = Some(at);
    }
}

type WriteOutcome = Result<
    Result<
        openraft::raft::ClientWriteResponse<crate::types::TypeConfig>,
        ClientWriteError<NodeId, Member>,
    >,
    oneshot::error::RecvError,
>;

/// Whether `ROTA_TEST_MUTANT=orphaned-batch` leaves this batch's answer pending for good
/// (the first batch of the process only), as openraft once left one (see the module doc).
fn orphaned_by_test_mutant() -> bool {
    static ORPHANED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    crate::test_mutant_is("orphaned-batch") && !ORPHANED.swap(true, Ordering::Relaxed)
}

/// `renewed`: the batch ended with a `RenewLeases` of the proposer's own, whose answer
/// nobody waits for. `own_id`: this member, whose leader id the batch's entry carries.
fn answer(
    replies: Vec<oneshot::Sender<Result<Proposed, ProposeError>>>,
    outcome: WriteOutcome,
    renewed: bool,
    own_id: NodeId,
    metrics: &RaftMetrics,
) {
    let written = match outcome {
        Ok(Ok(written)) => written,
        Ok(Err(ClientWriteError::ForwardToLeader(_))) => {
            return answer_all(replies, &ProposeError::NoLeader, metrics)
        }
        Ok(Err(other)) => {
            return answer_all(replies, &ProposeError::Fatal(other.to_string()), metrics)
        }
        // openraft dropped the responder: it is shutting down, or stopped on a fatal error
        // (a log write or sync that failed). The batch was handed over, so it may be in the
        // log, and applied after a restart: not `ShuttingDown` ("nothing was done"), which a
        // storage audit saw applied anyway (a job submitted again without its key ran twice).
        Err(_) => {
            let unknown = ProposeError::OutcomeUnknown(
                "this member stopped (shut down, or its log could not be written) before the outcome was known".to_owned(),
            );
            return answer_all(replies, &unknown, metrics);
        }
    };
    if written.log_id.leader_id.node_id != own_id {
        let unknown = ProposeError::OutcomeUnknown(format!(
            "the entry at log index {} was proposed by member {:x}, not by this member: this batch's entry was replaced",
            written.log_id.index, written.log_id.leader_id.node_id
        ));
        return answer_all(replies, &unknown, metrics);
    }
    let mut responses = written.data.responses;
    if renewed {
        responses.pop();
    }
    if responses.len() != replies.len() {
        let error = ProposeError::Fatal(format!(
            "state machine answered {} responses for {} commands",
            responses.len(),
            replies.len()
        ));
        return answer_all(replies, &error, metrics);
    }
    metrics.proposals.inc_by(replies.len() as u64);
    for (reply, response) in replies.into_iter().zip(responses) {
        // The caller may have gone away (a cancelled request); the command still applied.
        let _ = reply.send(Ok(Proposed {
            response,
            raft_index: written.log_id.index,
            raft_term: written.log_id.leader_id.term,
        }));
    }
}

fn answer_all(
    replies: Vec<oneshot::Sender<Result<Proposed, ProposeError>>>,
    error: &ProposeError,
    metrics: &RaftMetrics,
) {
    metrics.proposals.inc_by(replies.len() as u64);
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn after_a_long_round_a_batch_waits_for_as_many_callers_as_the_last_one_answered() {
        let mut linger = Linger::default();
        let start = Instant::now();
        // Nothing proposed yet: no wait.
        assert_eq!(linger.until(start), start);
        assert!(!linger.waits_for_more(0));

        linger.proposed(5, start);
        let freed = start + Duration::from_micros(1_500);
        assert_eq!(linger.until(freed), freed + LINGER_MAX, "never past LINGER_MAX");
        assert!(linger.waits_for_more(4));
        assert!(!linger.waits_for_more(5));
    }

    #[test]
    fn after_a_short_round_no_batch_waits() {
        let mut linger = Linger::default();
        let start = Instant::now();
        linger.proposed(5, start);
        linger.until(start + Duration::from_micros(400));
        assert!(!linger.waits_for_more(0), "a round of 0.4 ms is not worth a wait");
    }

    /// openraft drops a batch's responder when it stops: after a failed log sync, say, when
    /// the batch may well be in the log and applied at the next start. Its callers must not
    /// hear "nothing was done".
    #[tokio::test]
    async fn a_batch_whose_answer_openraft_dropped_has_an_unknown_outcome() {
        let (responder, response) = oneshot::channel::<
            Result<openraft::raft::ClientWriteResponse<crate::types::TypeConfig>, ClientWriteError<NodeId, Member>>,
        >();
        drop(responder);
        let outcome: WriteOutcome = response.await;
        let (reply, answered) = oneshot::channel();
        answer(vec![reply], outcome, false, 1, &RaftMetrics::default());
        let answered = answered.await.expect("answered");
        assert!(matches!(answered, Err(ProposeError::OutcomeUnknown(_))), "{answered:?}");
    }

    /// An entry openraft applied at the index it answers for, proposed by another leader:
    /// not the batch's, whose callers must not get that entry's answers.
    #[test]
    fn an_entry_of_another_leader_does_not_answer_a_batch() {
        let written = |leader: NodeId| {
            let log_id = openraft::LogId::new(openraft::CommittedLeaderId::new(3, leader), 17);
            let response = openraft::raft::ClientWriteResponse::<crate::types::TypeConfig> {
                log_id,
                data: crate::types::EntryResponses { responses: vec![rota_core::Response::Tick] },
                membership: None,
            };
            Ok(Ok(response))
        };
        let (reply, mut answered) = oneshot::channel();
        answer(vec![reply], written(2), false, 1, &RaftMetrics::default());
        let answered_by_other = answered.try_recv().expect("answered");
        assert!(matches!(answered_by_other, Err(ProposeError::OutcomeUnknown(_))), "{answered_by_other:?}");
        let (reply, mut answered) = oneshot::channel();
        answer(vec![reply], written(1), false, 1, &RaftMetrics::default());
        let own = answered.try_recv().expect("answered");
        assert!(matches!(own, Ok(Proposed { raft_index: 17, raft_term: 3, .. })), "{own:?}");
    }

    #[test]
    fn a_lone_caller_never_waits() {
        let mut linger = Linger::default();
        let start = Instant::now();
        linger.proposed(1, start);
        linger.until(start + Duration::from_millis(2));
        assert!(!linger.waits_for_more(0));
    }
}
