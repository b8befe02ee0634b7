//! The data dir's free space, and the writes refused while it is short.
//!
//! A write that fails for lack of space in the Raft log stops Raft and the process (as a
//! failed `fsync` must, see `wait_fatal`), and a snapshot that cannot be written stops it
//! too. So a node stops accepting writes *before* its disk is full: a background task looks
//! at the data dir's file system every [`CHECK_INTERVAL`], and while less than
//! `min_free_bytes` (a log chunk) plus room for the next snapshot is free (see
//! `watch_disk_space`), the proposer refuses commands that add data with
//! [`ProposeError::NoSpace`](crate::ProposeError::NoSpace) (HTTP 507). Reads go on, and so
//! do the commands that remove data or finish work already handed out: v2 deletes, queue
//! deletes, job cancels, and a lease holder's heartbeat, complete, fail and release (etcd's
//! `NOSPACE` alarm likewise allows reads and deletes). Time (`Tick`) goes on. Writes resume
//! once a margin ([`resume_margin`]) more than the threshold is free again, without an
//! operator (etcd needs its alarm disarmed).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rota_core::jobs::JobCommand;
use rota_core::v2::V2Command;
use rota_core::Command;

/// How often the free space is looked at. Between two looks the log grows by what the node
/// accepts in that time, which the default `min_free_bytes` (64 MiB) covers up to 256 MB/s
/// (v2 PUTs at c=64 write ~5 MB/s of log here).
pub(crate) const CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Writes resume only once this much more than the threshold is free, so that a node at
/// the edge does not flip between refusing and accepting; less on a small file system
/// ([`resume_margin`]).
pub(crate) const RESUME_MARGIN_BYTES: u64 = 16 << 20;

/// The margin above the threshold that writes resume at, on a file system of
/// `file_system_bytes`: [`RESUME_MARGIN_BYTES`], or an eighth of the file system if that is
/// less. A fixed 16 MiB could be more than a small file system ever has free (an audit's
/// 20 MiB tmpfs, "writes resume above 18 MiB" with at most 4 MiB free): writes refused once
/// were refused for good.
pub(crate) fn resume_margin(file_system_bytes: u64) -> u64 {
    RESUME_MARGIN_BYTES.min(file_system_bytes / 8)
}

/// The last look at the data dir's free space (shared by the checker and the proposer).
#[derive(Debug, Default)]
pub(crate) struct DiskSpace {
    low: AtomicBool,
    available_bytes: AtomicU64,
    /// The threshold plus the margin: writes resume once this much is free.
    resume_above_bytes: AtomicU64,
    /// Room left in the open log chunk (see [`results_floor_bytes`]); 0 until looked at.
    open_chunk_room: AtomicU64,
}

/// Why a command was refused: what was free and what is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shortage {
    pub available_bytes: u64,
    pub resume_above_bytes: u64,
}

impl DiskSpace {
    /// `Some` if `command` must wait for space; `None` if it may be proposed.
    pub(crate) fn refuses(&self, command: &Command) -> Option<Shortage> {
        if !self.low.load(Ordering::Relaxed) {
            return None;
        }
        if allowed_when_short(command) && !(carries_results(command) && self.log_nearly_stuck()) {
            return None;
        }
        Some(Shortage {
            available_bytes: self.available_bytes.load(Ordering::Relaxed),
            resume_above_bytes: self.resume_above_bytes.load(Ordering::Relaxed),
        })
    }

    /// Less than a chunk free (see [`results_floor_bytes`]) and the open chunk nearly full.
    fn log_nearly_stuck(&self) -> bool {
        self.available_bytes.load(Ordering::Relaxed) < results_floor_bytes()
            && self.open_chunk_room.load(Ordering::Relaxed) < RESULTS_CHUNK_RESERVE_BYTES
    }

    /// Records how much of the open log chunk is used (bytes of records).
    pub(crate) fn record_open_chunk(&self, used: u64) {
        let room = (crate::log_store::LOG_CHUNK_BYTES_MAX as u64).saturating_sub(used);
        self.open_chunk_room.store(room, Ordering::Relaxed);
    }

    /// Records a look: `available` bytes free, `needed` the threshold, `margin` what must be
    /// free above it for writes to resume. Returns whether the node is now short of space
    /// (and logs when that changes).
    pub(crate) fn record(&self, available: u64, needed: u64, margin: u64) -> bool {
        let was_low = self.low.load(Ordering::Relaxed);
        let resume_above = needed.saturating_add(margin);
        let low = is_short(available, needed, resume_above, was_low);
        self.available_bytes.store(available, Ordering::Relaxed);
        self.resume_above_bytes.store(resume_above, Ordering::Relaxed);
        self.low.store(low, Ordering::Relaxed);
        if low && !was_low {
            tracing::error!(
                available_mib = available >> 20,
                needed_mib = needed >> 20,
                resume_above_mib = resume_above >> 20,
                "the data dir is short of space: refusing writes (507) until more is free (while this member leads: a follower forwards writes to its leader, and goes on storing what the leader replicates until its disk is full)"
            );
        } else if was_low && !low {
            tracing::warn!(
                available_mib = available >> 20,
                "space is free again: accepting writes"
            );
        }
        low
    }
}

/// The threshold with hysteresis: short below `needed`; once short, until `resume_above` is
/// free.
fn is_short(available: u64, needed: u64, resume_above: u64, was_short: bool) -> bool {
    if was_short {
        available < resume_above
    } else {
        available < needed
    }
}

/// Commands that remove data, finish work already leased, or only move time.
fn allowed_when_short(command: &Command) -> bool {
    match command {
        Command::Tick | Command::RenewLeases => true,
        Command::V2(v2) => matches!(v2, V2Command::Delete(_)),
        Command::Jobs(job) => matches!(
            job,
            JobCommand::DeleteQueue { .. }
                | JobCommand::DeleteCounter { .. }
                | JobCommand::Cancel { .. }
                | JobCommand::Heartbeat { .. }
                | JobCommand::Complete { .. }
                | JobCommand::Fail { .. }
                | JobCommand::Release { .. }
        ),
        Command::Idempotent { command, .. } | Command::Tagged { command, .. } => allowed_when_short(command),
    }
}

/// Below this much free space, while the open log chunk has less than
/// [`RESULTS_CHUNK_RESERVE_BYTES`] of room left, a short node refuses the reports that carry
/// what a job produced (a `complete`'s result, a `fail`'s error) too: they can be big (a
/// result up to the value limit), and when the open log chunk fills the next one is
/// allocated whole, so with less than a chunk free the log's next write fails and stops the
/// node. An audit filled the disk from outside and sent completes with 250 KB results: the
/// 204th stopped it. The other commands allowed while short (deletes without `prevValue`,
/// cancels, heartbeats, releases, time) are small and bounded in size.
fn results_floor_bytes() -> u64 {
    (crate::log_store::LOG_CHUNK_BYTES_MAX as u64).saturating_add(RESUME_MARGIN_BYTES)
}

/// The open chunk's room below which results are refused on a nearly full disk: what the
/// node may take between two looks at the disk (64 MB/s of results).
const RESULTS_CHUNK_RESERVE_BYTES: u64 = 16 << 20;

/// Commands allowed while short that carry data of a client's: a job's output, or the
/// value a compare-and-delete compares (`prevValue`, up to the value limit: a storage audit
/// stopped a full node with 310 deletes of missing keys, each with a 55 KB `prevValue`).
fn carries_results(command: &Command) -> bool {
    match command {
        Command::Jobs(job) => matches!(job, JobCommand::Complete { .. } | JobCommand::Fail { .. }),
        Command::V2(V2Command::Delete(delete)) => delete.prev_value.is_some(),
        Command::Idempotent { command, .. } | Command::Tagged { command, .. } => carries_results(command),
        _ => false,
    }
}

/// The lengths of the files in `dir` and its subdirectories, added up.
pub(crate) fn tree_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total = total.saturating_add(tree_bytes(&entry.path())?);
        } else if kind.is_file() {
            total = total.saturating_add(entry.metadata()?.len());
        }
    }
    Ok(total)
}

/// Bytes available to an unprivileged writer on the file system holding `path`.
pub(crate) fn available_bytes(path: &Path) -> std::io::Result<u64> {
    statvfs(path).map(|stats| stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// The size of the file system `path` is on.
pub(crate) fn total_bytes(path: &Path) -> std::io::Result<u64> {
    statvfs(path).map(|stats| stats.f_blocks.saturating_mul(stats.f_frsize))
}

fn statvfs(path: &Path) -> std::io::Result<libc::statvfs> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("data dir path holds a NUL byte"))?;
    // SAFETY: `statvfs` is plain old data, all zeros is a valid value; the call writes it.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `stats` a valid out-pointer, both live
    // for the call.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stats)
}

/// The smallest file system of `file_system_bytes` that a node with `min_free_bytes` can
/// take writes on: the open log chunk (allocated whole), the bound, and the margin writes
/// resume above. Smaller, and writes are refused from the first one or soon after.
pub(crate) fn smallest_workable_bytes(min_free_bytes: u64, file_system_bytes: u64) -> u64 {
    let chunk = crate::log_store::LOG_CHUNK_BYTES_MAX as u64;
    min_free_bytes
        .saturating_add(chunk)
        .saturating_add(resume_margin(file_system_bytes))
}

#[cfg(test)]
mod tests {
    use rota_core::jobs::NewJob;
    use rota_core::v2::{DeleteCommand, SetCommand};

    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn short_below_the_threshold_and_until_a_margin_above_it() {
        assert!(!is_short(100 * MIB, 64 * MIB, 80 * MIB, false));
        assert!(!is_short(64 * MIB, 64 * MIB, 80 * MIB, false));
        assert!(is_short(64 * MIB - 1, 64 * MIB, 80 * MIB, false));
        // Once short, the margin decides.
        assert!(is_short(70 * MIB, 64 * MIB, 80 * MIB, true));
        assert!(is_short(80 * MIB - 1, 64 * MIB, 80 * MIB, true));
        assert!(!is_short(80 * MIB, 64 * MIB, 80 * MIB, true));
    }

    #[test]
    fn the_resume_margin_fits_a_small_file_system() {
        assert_eq!(resume_margin(100 << 30), RESUME_MARGIN_BYTES);
        assert_eq!(resume_margin(128 * MIB), RESUME_MARGIN_BYTES);
        // The audit's 20 MiB tmpfs: at most ~4 MiB is ever free beside the log's chunk.
        assert_eq!(resume_margin(20 * MIB), 20 * MIB / 8);
        let space = DiskSpace::default();
        assert!(space.record(MIB, 2 * MIB, resume_margin(20 * MIB)));
        assert!(space.record(4 * MIB, 2 * MIB, resume_margin(20 * MIB)));
        assert!(!space.record(4 * MIB + MIB / 2, 2 * MIB, resume_margin(20 * MIB)), "2 MiB + 2.5 MiB");
        assert_eq!(smallest_workable_bytes(MIB, 20 * MIB), 17 * MIB + 20 * MIB / 8);
    }

    #[test]
    fn while_short_only_deletes_finishing_work_and_time_pass() {
        let space = DiskSpace::default();
        let set = Command::V2(V2Command::Set(SetCommand {
            key: "/a".into(),
            ..Default::default()
        }));
        let delete = Command::V2(V2Command::Delete(DeleteCommand {
            key: "/a".into(),
            ..Default::default()
        }));
        let submit = Command::Jobs(JobCommand::Submit {
            queue: "q".into(),
            jobs: vec![NewJob::default()],
        });
        let complete = Command::Jobs(JobCommand::Complete {
            id: 1,
            lease_token: 1,
            result: None,
        });
        let idempotent = |command: &Command| Command::Idempotent {
            key: "k".into(),
            fingerprint: 1,
            command: Box::new(command.clone()),
        };
        // Plenty of space: everything passes.
        assert!(!space.record(500 * MIB, 64 * MIB, RESUME_MARGIN_BYTES));
        for command in [&set, &delete, &submit, &complete, &Command::Tick] {
            assert_eq!(space.refuses(command), None, "{command:?}");
        }
        assert!(space.record(10 * MIB, 64 * MIB, RESUME_MARGIN_BYTES));
        let shortage = Some(Shortage {
            available_bytes: 10 * MIB,
            resume_above_bytes: 80 * MIB,
        });
        assert_eq!(space.refuses(&set), shortage);
        assert_eq!(space.refuses(&submit), shortage);
        assert_eq!(space.refuses(&idempotent(&set)), shortage);
        for command in [&delete, &Command::Tick, &idempotent(&delete)] {
            assert_eq!(space.refuses(command), None, "{command:?}");
        }
        // With less than a log chunk free, a job's output could fill the open chunk and
        // make the next impossible to allocate: once the open chunk is nearly full,
        // completes and fails wait too.
        space.record_open_chunk(0);
        assert_eq!(space.refuses(&complete), None, "an empty open chunk has room");
        space.record_open_chunk(60 * MIB);
        assert_eq!(space.refuses(&complete), shortage);
        assert_eq!(space.refuses(&idempotent(&complete)), shortage);
        assert_eq!(space.refuses(&delete), None);
        // A compare-and-delete carries its prevValue (up to the value limit) into the log.
        let compare_and_delete = Command::V2(V2Command::Delete(DeleteCommand {
            key: "/k".into(),
            prev_value: Some("v".repeat(55_000)),
            ..Default::default()
        }));
        assert_eq!(space.refuses(&compare_and_delete), shortage);
        space.record_open_chunk(0);
        assert_eq!(space.refuses(&compare_and_delete), None, "room in the open chunk");
        space.record_open_chunk(60 * MIB);
        assert!(space.record(100 * MIB, 200 * MIB, RESUME_MARGIN_BYTES));
        assert_eq!(space.refuses(&complete), None, "short, with room for a chunk");
        assert!(space.record(10 * MIB, 64 * MIB, RESUME_MARGIN_BYTES));
        // Freed, but not past the margin: still short; past it: writes pass again.
        assert!(space.record(70 * MIB, 64 * MIB, RESUME_MARGIN_BYTES));
        assert!(!space.record(90 * MIB, 64 * MIB, RESUME_MARGIN_BYTES));
        assert_eq!(space.refuses(&set), None);
    }

    #[test]
    fn available_bytes_and_the_bytes_a_directory_holds() {
        let temp = tempfile::tempdir().expect("tempdir");
        assert!(available_bytes(temp.path()).expect("statvfs") > 0);
        assert!(available_bytes(&temp.path().join("missing")).is_err());
        std::fs::create_dir(temp.path().join("sub")).expect("mkdir");
        std::fs::write(temp.path().join("a"), [0u8; 100]).expect("write");
        std::fs::write(temp.path().join("sub").join("b"), [0u8; 23]).expect("write");
        assert_eq!(tree_bytes(temp.path()).expect("walk"), 123);
    }
}
