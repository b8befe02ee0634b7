//! SIGHUP as a request to stop, unless the process was started with it ignored.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// A stream of SIGHUPs, or `None` if SIGHUP was ignored when the process started: `nohup`
/// (or a service manager) ignores it so that the process outlives its terminal, and
/// installing a handler would undo that (an audit's `nohup rota worker` stopped at a
/// SIGHUP).
pub(crate) fn hangup() -> std::io::Result<Option<Signal>> {
    if ignored_at_start(libc::SIGHUP) {
        return Ok(None);
    }
    signal(SignalKind::hangup()).map(Some)
}

/// The next SIGHUP of [`hangup`]'s stream; never, without one.
pub(crate) async fn next_hangup(hangup: &mut Option<Signal>) {
    match hangup {
        Some(hangup) => {
            hangup.recv().await;
        }
        None => std::future::pending().await,
    }
}

fn ignored_at_start(signal: libc::c_int) -> bool {
    // SAFETY: sigaction(2) with a null new action only reads the current one into `old`,
    // a zeroed struct of the right type.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ignored_signal_is_seen_as_ignored() {
        // SIGUSR2 is nobody's in this test process; it starts at its default action.
        assert!(!ignored_at_start(libc::SIGUSR2));
        // SAFETY: sets SIGUSR2 to be ignored in this test's own process.
        unsafe { libc::signal(libc::SIGUSR2, libc::SIG_IGN) };
        assert!(ignored_at_start(libc::SIGUSR2));
    }
}
