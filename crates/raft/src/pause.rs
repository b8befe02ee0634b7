//! A member whose process was frozen holds its elections back for a moment when it runs
//! again.
//!
//! Frozen: SIGSTOP, a virtual machine paused or migrated, a machine starved for seconds.
//! Every timer in the process has expired by the time it runs again, and openraft's
//! election tick is handled before the leader's heartbeats, which wait in the peer
//! sockets: a follower frozen past its election timeout campaigned at once, with a term
//! above the leader's, and the leader stepped down on seeing it (no pre-vote in openraft
//! 0.9): 0.55–0.65 s without a leader, where etcd 3.4 kept its leader and term.
//!
//! The Raft runtime's thread wakes at least at every openraft tick (1.5 heartbeats), so a
//! park longer than the election timeout means the process did not run. The thread's
//! unpark hook runs before any task is polled, so it turns elections off before the
//! expired tick is handled; the leader's next heartbeat then finds the member a follower,
//! and elections come back on after [`PauseHold::hold`] (a few heartbeats). If the leader
//! is gone meanwhile, the election starts that much later.
//!
//! A thread frozen while it ran (or spun before parking) never parks for long: its park
//! hook notices instead that it ran since its last unpark for longer than a pause, before
//! the park hands the expired timers (openraft's tick among them) to their tasks. A
//! watchdog thread ([`PauseHold::watch`]) also wakes every quarter of the pause length and
//! notices when far more time passed: woken by the same SIGCONT, it turns elections off in a
//! few microseconds, while the Raft thread first finishes what it was doing, then polls the
//! ticker and then the core. (The cluster test of a frozen follower failed once in a full
//! suite run under load without it: the follower campaigned as it thawed. It failed again,
//! under heavier load, with the watchdog but without the park hook's check: the Raft
//! thread, frozen while it ran, handled the tick a few milliseconds before the watchdog ran.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::types::Raft;

pub(crate) struct PauseHold {
    origin: Instant,
    /// When the Raft runtime's thread last parked, in ms after `origin` (0: never).
    parked_at_ms: AtomicU64,
    /// When it last woke from a park, in ms after `origin` (0: never).
    unparked_at_ms: AtomicU64,
    /// A park at least this long is a pause.
    pause_min: Duration,
    /// How long elections stay off after a pause.
    hold: Duration,
    raft: OnceLock<Raft>,
    /// Wakes the task that turns elections back on.
    paused: tokio::sync::Notify,
    /// Elections are held now: the unpark hook and the watchdog see the same pause, and it
    /// is held (and logged) once.
    holding: AtomicBool,
    /// When a pause was last logged, in ms after `origin` (0: never), and how many pauses
    /// came since without being logged.
    logged_at_ms: AtomicU64,
    unlogged: AtomicU64,
}

/// Pauses are logged at most this often.
const PAUSE_LOG_INTERVAL: Duration = Duration::from_secs(60);

impl PauseHold {
    pub(crate) fn new(pause_min: Duration, hold: Duration) -> PauseHold {
        PauseHold {
            origin: Instant::now(),
            parked_at_ms: AtomicU64::new(0),
            unparked_at_ms: AtomicU64::new(0),
            pause_min,
            hold,
            logged_at_ms: AtomicU64::new(0),
            unlogged: AtomicU64::new(0),
            raft: OnceLock::new(),
            paused: tokio::sync::Notify::new(),
            holding: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }

    /// Once the Raft exists (the runtime it runs on is built first).
    pub(crate) fn set_raft(&self, raft: Raft) {
        let _ = self.raft.set(raft);
    }

    /// The Raft runtime's `on_thread_park`, after any spinning: before the park hands
    /// expired timers to their tasks.
    pub(crate) fn parking(&self) {
        let now_ms = self.now_ms();
        self.parked_at_ms.store(now_ms, Ordering::Relaxed);
        if let Some(ran_ms) = self.pause_while_running(now_ms) {
            self.paused_for(ran_ms);
        }
    }

    /// The Raft runtime's `on_thread_unpark`: before the thread polls anything.
    pub(crate) fn unparked(&self) {
        let now_ms = self.now_ms();
        self.unparked_at_ms.store(now_ms, Ordering::Relaxed);
        let parked_at = self.parked_at_ms.load(Ordering::Relaxed);
        let parked_ms = now_ms.saturating_sub(parked_at);
        if parked_at == 0 || parked_ms < self.pause_min.as_millis() as u64 {
            return;
        }
        self.paused_for(parked_ms);
    }

    /// How long the thread has run since it last unparked, if that is as long as a pause:
    /// no poll on the Raft thread takes that long, so it was frozen (or starved) meanwhile.
    fn pause_while_running(&self, now_ms: u64) -> Option<u64> {
        let unparked_at = self.unparked_at_ms.load(Ordering::Relaxed);
        let ran_ms = now_ms.saturating_sub(unparked_at);
        (unparked_at != 0 && ran_ms >= self.pause_min.as_millis() as u64).then_some(ran_ms)
    }

    fn paused_for(&self, paused_ms: u64) {
        let Some(raft) = self.raft.get() else { return };
        if self.holding.swap(true, Ordering::SeqCst) {
            return;
        }
        raft.runtime_config().elect(false);
        self.paused.notify_one();
        // On a starved machine this can come every few seconds (an audit saw a third of a
        // member's log made of it): said at most once per PAUSE_LOG_INTERVAL, with a count.
        let now_ms = self.origin.elapsed().as_millis() as u64;
        let last_ms = self.logged_at_ms.load(Ordering::Relaxed);
        if last_ms != 0 && now_ms.saturating_sub(last_ms) < PAUSE_LOG_INTERVAL.as_millis() as u64 {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.logged_at_ms.store(now_ms.max(1), Ordering::Relaxed);
        let unlogged = self.unlogged.swap(0, Ordering::Relaxed);
        tracing::info!(
            paused_ms,
            shortest_election_timeout_ms = self.pause_min.as_millis() as u64,
            hold_ms = self.hold.as_millis() as u64,
            pauses_not_logged = unlogged,
            "this member did not run for as long as its shortest election timeout (frozen or starved): \
             elections held back briefly, so that the leader's heartbeat comes first"
        );
    }

    /// Starts the watchdog thread; it ends once the hold is dropped.
    pub(crate) fn watch(hold: &std::sync::Arc<PauseHold>) -> std::io::Result<()> {
        let weak = std::sync::Arc::downgrade(hold);
        let every = hold.pause_min / 4;
        std::thread::Builder::new()
            .name("rota-pause-watch".into())
            .spawn(move || {
                let mut last = Instant::now();
                loop {
                    std::thread::sleep(every);
                    let Some(hold) = weak.upgrade() else { return };
                    let now = Instant::now();
                    let slept = now.duration_since(last);
                    last = now;
                    if slept >= hold.pause_min {
                        hold.paused_for(slept.as_millis() as u64);
                    }
                }
            })
            .map(|_| ())
    }

    /// Turns elections back on `hold` after each pause, unless `keep_off` says another part
    /// of the node turned them off meanwhile (a leader handing over leadership).
    pub(crate) async fn run(&self, keep_off: impl Fn() -> bool, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                () = self.paused.notified() => {}
            }
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                () = tokio::time::sleep(self.hold) => {}
            }
            if let Some(raft) = self.raft.get() {
                if !keep_off() {
                    raft.runtime_config().elect(true);
                }
            }
            self.holding.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_ran_longer_than_a_pause_since_it_unparked_was_paused() {
        let hold = PauseHold::new(Duration::from_millis(40), Duration::from_millis(10));
        assert_eq!(hold.pause_while_running(hold.now_ms()), None, "never unparked yet");
        hold.unparked();
        assert_eq!(hold.pause_while_running(hold.now_ms()), None, "just woke");
        std::thread::sleep(Duration::from_millis(50));
        let ran = hold.pause_while_running(hold.now_ms());
        assert!(ran.is_some_and(|ms| ms >= 40), "{ran:?}");
        // A park and a prompt unpark start the count afresh.
        hold.parking();
        hold.unparked();
        assert_eq!(hold.pause_while_running(hold.now_ms()), None);
    }
}
