//! The ticker: the only source of time-driven writes.
//!
//! The state knows its next deadline (a TTL expiry, a lease end, a delayed job). On the
//! leader, this task sleeps until that instant and proposes a `Tick`, whose entry time makes
//! the state expire what is due. It re-reads the deadline after every applied entry and on
//! every leadership change, so an idle cluster (nothing due) writes nothing, and only the
//! leader ever proposes ticks.

use std::sync::Arc;
use std::time::Duration;

use rota_core::Command;
use tokio::sync::watch;

use crate::proposer::now_ms;
use crate::proposer::ProposalSender;
use crate::state_machine::SharedState;
use crate::types::{NodeId, Raft};
use crate::Applied;

/// At most one tick per this interval, even if the state keeps reporting a past deadline
/// (which would be a bug in the state machine; this bounds the damage to the write rate).
const TICK_INTERVAL_MIN_MS: u64 = 10;
/// Back-off after a failed tick (no leader, shutting down).
const TICK_RETRY_MS: u64 = 100;

pub(crate) async fn run_ticker(
    proposals: ProposalSender,
    raft: Raft,
    id: NodeId,
    shared: Arc<SharedState>,
    mut applied: watch::Receiver<Applied>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Server metrics change only with leadership or membership, not with every entry.
    let mut raft_metrics = raft.server_metrics();
    let mut last_tick_ms = 0u64;
    loop {
        // The server state, not only `current_leader`: a leader that removed itself still
        // names itself there (see `membership`).
        let is_leader = {
            let metrics = raft_metrics.borrow_and_update();
            metrics.state == openraft::ServerState::Leader && metrics.current_leader == Some(id)
        };
        applied.borrow_and_update();
        let deadline_ms = shared.read(|state| state.next_deadline_ms());
        let wait = match (is_leader, deadline_ms) {
            (true, Some(deadline_ms)) => {
                let due_ms = deadline_ms.max(last_tick_ms + TICK_INTERVAL_MIN_MS);
                Some(Duration::from_millis(due_ms.saturating_sub(now_ms())))
            }
            _ => None,
        };
        let due = async {
            match wait {
                Some(wait) => tokio::time::sleep(wait).await,
                None => std::future::pending().await,
            }
        };
        let tick_due = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return,
            changed = raft_metrics.changed() => if changed.is_err() { return } else { false },
            changed = applied.changed() => if changed.is_err() { return } else { false },
            () = due => true,
        };
        if tick_due {
            last_tick_ms = now_ms();
            if proposals.propose(Command::Tick).await.is_err() {
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => return,
                    () = tokio::time::sleep(Duration::from_millis(TICK_RETRY_MS)) => {}
                }
            }
        }
    }
}
