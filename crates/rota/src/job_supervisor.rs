//! `rota __job-supervisor WORKER_PID MARKER LEASE_DEADLINE_MS CMD [ARGS...]`: the process
//! `rota worker` runs each job's command under, so that the command's process group dies with
//! the worker, even when the worker is SIGKILLed, crashes or is OOM-killed, and dies when the
//! job's lease may have ended, even when the worker is frozen or cut off from the servers.
//! Not for direct use (hidden: `main` dispatches to it before the argument parser, so
//! `--help` never lists it).
//!
//! Why a process of its own: the worker cannot clean up after its own SIGKILL, and the
//! kernel's one hook for a parent's death, `PR_SET_PDEATHSIG`, signals only the direct child
//! (it is cleared on fork), while a job's shell script starts grandchildren (`curl`, ...) that
//! must die too. Doing it without an extra process needs a PID namespace (privileges) or a
//! cgroup per job (systemd or root). So the worker spawns this supervisor as the leader of a
//! new process group; the supervisor asks for a signal at the worker's death, spawns CMD in
//! its own group, and on that signal SIGKILLs the whole group (itself included). It is the
//! rota binary itself (`/proc/self/exe`: still there if the file was replaced by an upgrade),
//! so nothing else has to be installed.
//!
//! Invariants:
//! - Nothing is started unless the death signal is armed while the worker is still this
//!   process's parent: the signal is armed first, then `getppid()` is checked, which closes
//!   the race with a worker dying in between.
//! - The death signal is blocked and taken with `sigwaitinfo`, together with SIGCHLD, so
//!   there is no polling delay either way. A death signal while the worker is still the
//!   parent is not its death (the kernel also sends it when the worker's *thread* that
//!   spawned us exits, and anyone may signal the group) and is ignored.
//! - The supervisor is transparent: CMD inherits stdin/stdout/stderr, the environment and an
//!   unblocked signal mask, and the supervisor ends the way CMD ended: the same exit code,
//!   or killed by the same signal (raised on itself, with core dumps off: CMD dumped its own
//!   core if it was going to). Signals sent to the group reach CMD and are otherwise ignored
//!   here, so CMD alone decides how it reacts to them. A CMD that cannot be started is told
//!   to the worker by the only stderr output the supervisor ever makes: the worker's random
//!   START_ERROR_MARKER, then the error, with exit status 127. (CMD never ran then, so the
//!   stderr is ours alone; an exit status by itself could not say it, as CMD may exit 127
//!   too. A side channel such as an extra pipe fd would need a `pre_exec` in the worker,
//!   which makes std fork the worker instead of using posix_spawn: slower per job.)
//!
//! Lease-bounded execution: once the lease may have ended the server may lease the job (or,
//! on a `concurrency: 1` queue, the next one) to another worker, so CMD must be gone by then
//! even if the worker cannot act (SIGSTOP, a long pause, a stalled VM, heartbeats failing).
//! LEASE_DEADLINE_MS is the lease's end as the server stated it (`lease_expires_at`, in
//! milliseconds since the Unix epoch) minus the worker's safety margin (for clock skew and
//! the kill itself). Each heartbeat the server answers gives a later end, which the worker
//! passes on with `sigqueue(SIGUSR1)` carrying the new deadline (absolute, so a worker frozen
//! between the answer and the signal cannot extend the deadline past what the server
//! granted). The supervisor waits with `sigtimedwait` until the deadline; when it passes it
//! SIGKILLs CMD's group and ends with [`EXIT_LEASE_ENDED`] after writing MARKER and
//! [`LEASE_ENDED`] to stderr, so the worker can tell this from CMD's own SIGKILL.
//! - The deadline is on the wall clock (`CLOCK_REALTIME`), as is the server's
//!   `lease_expires_at`; a wait is at most [`DEADLINE_RECHECK_MS`] so a step of the clock is
//!   noticed soon. Across machines, clocks must agree within the margin, as any lease needs.
//! - Only a SIGUSR1 queued by the worker (`si_code` SI_QUEUE, `si_pid` the worker) moves the
//!   deadline, and only later. A plain `kill -USR1` to the group reaches CMD as any other
//!   signal and is ignored here. A process of the same user could still forge a queued signal
//!   and push the deadline out: that only weakens this safety net, nothing else.
//! - To outlive the kill (and say why CMD died) the supervisor first leaves CMD's group for
//!   the worker's (`setpgid`: same session), then SIGKILLs CMD's group, which it led: one
//!   atomic `kill`, so nothing in the group can fork its way out. If it cannot move, it kills
//!   the group with itself in it (the worker then sees a SIGKILL: still no overlap).
//!
//! Cost: one more process start per job, about a millisecond (docs/worker.md has the
//! numbers). A single helper per worker (registering each job's group through a pipe whose
//! end of file marks the worker's death) would avoid it, at the price of a registry that
//! must be kept exact against pid reuse; not done.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

/// The hidden subcommand's name (`rota __job-supervisor ...`).
pub const SUBCOMMAND: &str = "__job-supervisor";

/// What the kernel sends the supervisor when its parent dies. Catchable (SIGKILL would kill
/// only the supervisor, not the group) and blocked, so it is taken by `sigwaitinfo`.
const DEATH_SIGNAL: libc::c_int = libc::SIGTERM;

/// The exit status when CMD cannot be started (the reason is on stderr, after the marker).
pub const EXIT_CANNOT_START: u8 = 127;

/// The exit status when CMD was killed because the lease deadline passed (stderr then ends
/// with the marker and [`LEASE_ENDED`]).
pub const EXIT_LEASE_ENDED: u8 = 125;

/// What follows the marker on stderr when CMD was killed at the lease deadline.
pub const LEASE_ENDED: &str = "lease deadline passed";

/// The signal the worker queues (with the new deadline) after each renewal it got.
pub const RENEWED_SIGNAL: libc::c_int = libc::SIGUSR1;

/// The longest single wait for a signal: the wall clock is read again at least this often.
const DEADLINE_RECHECK_MS: i64 = 1000;

// The deadline rides in a signal's pointer-sized value.
const _: () = assert!(std::mem::size_of::<*mut libc::c_void>() == 8);

/// Runs the supervisor; `args` are those after the subcommand's name.
pub fn run(mut args: impl Iterator<Item = OsString>) -> ExitCode {
    let worker_pid = args
        .next()
        .and_then(|arg| arg.to_str()?.parse::<libc::pid_t>().ok());
    let marker = args.next();
    let lease_deadline_ms = args
        .next()
        .and_then(|arg| arg.to_str()?.parse::<i64>().ok());
    let command: Vec<OsString> = args.collect();
    let (Some(worker_pid), Some(marker), Some(lease_deadline_ms), false) =
        (worker_pid, marker, lease_deadline_ms, command.is_empty())
    else {
        eprintln!("Error:  `rota {SUBCOMMAND}` is run by `rota worker` only");
        return ExitCode::from(2);
    };
    let marker = marker.to_string_lossy().into_owned();
    let original_mask = match block_signals() {
        Ok(mask) => mask,
        Err(error) => return cannot_start(&marker, &format!("cannot block signals: {error}")),
    };
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, DEATH_SIGNAL as libc::c_ulong) } == -1 {
        let error = std::io::Error::last_os_error();
        return cannot_start(
            &marker,
            &format!("cannot arm the parent-death signal: {error}"),
        );
    }
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != worker_pid {
        // The worker died before the signal was armed: start nothing; nobody is listening.
        return ExitCode::from(EXIT_CANNOT_START);
    }
    if now_unix_ms() >= lease_deadline_ms {
        // The lease may have ended before CMD could start (the worker or this process was
        // paused in between): another worker may hold the job, or the slot, by now.
        let _ = write!(std::io::stderr().lock(), "\n{marker}{LEASE_ENDED}\n");
        return ExitCode::from(EXIT_LEASE_ENDED);
    }
    let mut spawn = std::process::Command::new(&command[0]);
    spawn.args(&command[1..]);
    // SAFETY: the closure runs between fork and exec and only calls sigprocmask, which is
    // async-signal-safe; `original_mask` is a plain value copied into the child.
    unsafe {
        spawn.pre_exec(move || {
            if libc::sigprocmask(libc::SIG_SETMASK, &original_mask, std::ptr::null_mut()) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = match spawn.spawn() {
        Ok(child) => child,
        Err(error) => return cannot_start(&marker, &error.to_string()),
    };
    let child_pid = child.id() as libc::pid_t;
    wait_and_mirror(child_pid, worker_pid, lease_deadline_ms, &marker)
}

/// Tells the worker why CMD was not started.
fn cannot_start(marker: &str, why: &str) -> ExitCode {
    let _ = write!(std::io::stderr().lock(), "{marker}{why}");
    ExitCode::from(EXIT_CANNOT_START)
}

/// Blocks every asynchronous signal (the synchronous ones, raised by a fault of our own,
/// stay deliverable), returning the mask before.
fn block_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data, initialised by sigfillset/sigprocmask before use.
    unsafe {
        let mut blocked: libc::sigset_t = std::mem::zeroed();
        let mut original: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut blocked);
        for synchronous in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
            libc::SIGSYS,
            libc::SIGABRT,
        ] {
            libc::sigdelset(&mut blocked, synchronous);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &blocked, &mut original) == -1 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(original)
    }
}

/// Waits for CMD to end, for the worker to die or for the lease deadline, whichever comes
/// first. At the worker's death the whole group is SIGKILLed (this process too); at the
/// deadline CMD's group is (see [`kill_at_lease_end`]); otherwise this process ends as CMD
/// did.
fn wait_and_mirror(
    child_pid: libc::pid_t,
    worker_pid: libc::pid_t,
    mut lease_deadline_ms: i64,
    marker: &str,
) -> ExitCode {
    // SAFETY: plain libc calls on values we own; sigset_t is initialised by sigfillset.
    unsafe {
        let mut waited: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut waited);
        loop {
            // A SIGCHLD that came before we waited is pending, so it is not missed; the
            // reap below is non-blocking and repeated until CMD is gone.
            let mut status: libc::c_int = 0;
            match libc::waitpid(child_pid, &mut status, libc::WNOHANG) {
                pid if pid == child_pid => return end_as(status),
                0 => {}
                _ => {
                    if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                        // CMD cannot be waited for (cannot happen for our own child): its
                        // outcome is unknown, so the group goes rather than leak.
                        kill_own_group();
                    }
                }
            }
            if libc::getppid() != worker_pid {
                kill_own_group();
            }
            let left_ms = lease_deadline_ms - now_unix_ms();
            if left_ms <= 0 {
                return kill_at_lease_end(child_pid, worker_pid, marker);
            }
            let wait_ms = left_ms.min(DEADLINE_RECHECK_MS);
            let timeout = libc::timespec {
                tv_sec: (wait_ms / 1000) as libc::time_t,
                tv_nsec: ((wait_ms % 1000) * 1_000_000) as libc::c_long,
            };
            let mut info: libc::siginfo_t = std::mem::zeroed();
            // Returns at SIGCHLD, at the death signal, at a renewal, at the timeout, or at any
            // signal sent to the group (ignored: CMD got its own copy). The checks above run
            // again after each.
            let signal = libc::sigtimedwait(&waited, &mut info, &timeout);
            if signal == RENEWED_SIGNAL
                && info.si_code == libc::SI_QUEUE
                && info.si_pid() == worker_pid
            {
                let renewed_ms = info.si_value().sival_ptr as usize as i64;
                lease_deadline_ms = lease_deadline_ms.max(renewed_ms);
            }
        }
    }
}

/// The lease may have ended: CMD's group is SIGKILLed (and CMD reaped) while this process
/// survives in the worker's group to say why on stderr, with [`EXIT_LEASE_ENDED`].
fn kill_at_lease_end(child_pid: libc::pid_t, worker_pid: libc::pid_t, marker: &str) -> ExitCode {
    // SAFETY: plain libc calls on values we own.
    unsafe {
        let own_group = libc::getpid();
        let worker_group = libc::getpgid(worker_pid);
        if worker_group == -1 || libc::setpgid(0, worker_group) == -1 {
            kill_own_group();
        }
        libc::kill(-own_group, libc::SIGKILL);
        let mut status: libc::c_int = 0;
        while libc::waitpid(child_pid, &mut status, 0) == -1
            && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {}
    }
    let _ = write!(std::io::stderr().lock(), "\n{marker}{LEASE_ENDED}\n");
    ExitCode::from(EXIT_LEASE_ENDED)
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

/// SIGKILLs this process's group: CMD, everything it started, and the supervisor.
fn kill_own_group() -> ! {
    // SAFETY: kill(0, ...) signals our own process group; _exit has no preconditions.
    unsafe {
        libc::kill(0, libc::SIGKILL);
        libc::_exit(EXIT_CANNOT_START as libc::c_int)
    }
}

/// Ends this process as CMD ended (`status` from waitpid).
fn end_as(status: libc::c_int) -> ExitCode {
    if libc::WIFEXITED(status) {
        return ExitCode::from(libc::WEXITSTATUS(status) as u8);
    }
    let signal = libc::WTERMSIG(status);
    // SAFETY: plain libc calls; the rlimit and sigset values are initialised before use.
    unsafe {
        // No core of the supervisor: only CMD's own (if any) is of interest.
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong);
        libc::signal(signal, libc::SIG_DFL);
        let mut only: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut only);
        libc::sigaddset(&mut only, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &only, std::ptr::null_mut());
        libc::raise(signal);
    }
    // Still here: a signal whose default is not to terminate (cannot have ended CMD).
    ExitCode::from(128u8.wrapping_add(signal as u8))
}
