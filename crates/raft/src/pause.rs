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
//! A thread frozen while it ran (or spun before parking) never parks for long, so a
//! watchdog thread ([`PauseHold::watch`]) also wakes every quarter of the pause length and
//! notices when far more time passed: woken by the same SIGCONT, it turns elections off in a
//! few microseconds, while the Raft thread first finishes what it was doing, then polls the
//! ticker and then the core. (The cluster test of a frozen follower failed once in a full
//! suite run under load without it: the follower campaigned as it thawed.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::types::Raft;

pub(crate) struct PauseHold {
    origin: Instant,
    /// When the Raft runtime's thread last parked, in ms after `origin` (0: never).
    parked_at_ms: AtomicU64,
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
}

impl PauseHold {
    pub(crate) fn new(pause_min: Duration, hold: Duration) -> PauseHold {
        PauseHold {
            origin: Instant::now(),
            parked_at_ms: AtomicU64::new(0),
            pause_min,
            hold,
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

    /// The Raft runtime's `on_thread_park`, after any spinning.
    pub(crate) fn parking(&self) {
        self.parked_at_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The Raft runtime's `on_thread_unpark`: before the thread polls anything.
    pub(crate) fn unparked(&self) {
        let parked_at = self.parked_at_ms.load(Ordering::Relaxed);
        let parked_ms = self.now_ms().saturating_sub(parked_at);
        if parked_at == 0 || parked_ms < self.pause_min.as_millis() as u64 {
            return;
        }
        self.paused_for(parked_ms);
    }

    fn paused_for(&self, paused_ms: u64) {
        let Some(raft) = self.raft.get() else { return };
        if self.holding.swap(true, Ordering::SeqCst) {
            return;
        }
        raft.runtime_config().elect(false);
        self.paused.notify_one();
        tracing::info!(
            paused_ms,
            hold_ms = self.hold.as_millis() as u64,
            "this member did not run for longer than an election timeout (frozen or starved): \
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
