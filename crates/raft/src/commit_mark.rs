//! The commit mark, `<data-dir>/commit-mark`: the highest log index this member knew
//! committed and held synced in its own log. It is written about once a second while
//! entries commit, and at a clean stop.
//!
//! Raft assumes that a member never forgets an entry it acknowledged. A member whose log was
//! cut, zeroed or deleted outside rota (a disk that lost synced data, a data dir copied in
//! part, a file edited by hand) breaks that assumption silently: restarted, it holds fewer
//! entries, two such members can elect a leader without the missing ones, and the leader
//! then erases them from every member (a single node just serves the older state, and
//! reuses store indexes its watchers have seen). The mark lets a member notice: on start,
//! a log and snapshot that end below it lost committed entries, and the member refuses to
//! start (see [`check`]). A torn tail cut after a crash is not such a loss: the mark only
//! names entries that were synced before it was written.
//!
//! Not covered: entries committed in the last second before a crash (SIGKILL, power loss)
//! that a damaged disk then loses; a data dir whose mark was lost with the log.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub(crate) const FILE_NAME: &str = "commit-mark";
const HEADER: &str = "rota commit mark v1";

pub(crate) fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// The mark in `data_dir`, or `None` when there is none (a new member, or one from before
/// marks). Damage is an error naming the file.
pub(crate) fn read(data_dir: &Path) -> Result<Option<u64>, String> {
    let file = path(data_dir);
    let text = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("{}: {error}", file.display())),
    };
    parse(&text).map(Some).ok_or_else(|| {
        format!(
            "{} is damaged (expected \"{HEADER}\" and \"index N\"); it only guards against a \
             log that lost committed entries: delete it to start without that check",
            file.display()
        )
    })
}

fn parse(text: &str) -> Option<u64> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    lines.next()?.strip_prefix("index ")?.parse().ok()
}

/// Writes `index` as the mark: a temporary file, synced, renamed over the old mark, and the
/// directory synced, so that a crash leaves either mark whole.
pub(crate) fn write(data_dir: &Path, index: u64) -> io::Result<()> {
    // One writer at a time: the last mark at a stop can meet a periodic one that outlived
    // its task (both use the same temporary file).
    static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _writing = WRITING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let temporary = data_dir.join(format!("{FILE_NAME}.tmp"));
    {
        let mut file = File::create(&temporary)?;
        file.write_all(format!("{HEADER}\nindex {index}\n").as_bytes())?;
        file.sync_all()?;
    }
    fs::rename(&temporary, path(data_dir))?;
    File::open(data_dir)?.sync_all()
}

/// How far the log reaches, as it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LogExtent {
    /// The last entry's index.
    pub last: Option<u64>,
    /// The index up to which entries were purged (they are in a snapshot).
    pub purged: Option<u64>,
    /// Whether a vote was ever saved (every member that ran saved one).
    pub has_vote: bool,
}

impl LogExtent {
    fn is_empty(&self) -> bool {
        self.last.is_none() && self.purged.is_none() && !self.has_vote
    }
}

/// Whether a member may start on what it found: its mark, its log and its newest
/// snapshot's last index. `Ok(Some(warning))` starts, with a warning to log.
pub(crate) fn check(
    data_dir: &Path,
    mark: Option<u64>,
    log: LogExtent,
    snapshot: Option<u64>,
) -> Result<Option<String>, String> {
    let log_dir = data_dir.join(crate::LOG_DIR);
    let what_to_do = format!(
        "To recover: in a cluster, remove this member (rota member rm ID) and add it back \
         (rota member add) with an empty data dir and --initial-cluster-state existing: it \
         then copies everything from the leader. A single node: restore the data dir from a \
         backup, or, to start with what is left and lose the rest, delete {}",
        path(data_dir).display()
    );
    if let Some(purged) = log.purged {
        if snapshot.is_none_or(|snapshot| snapshot < purged) {
            let found = match snapshot {
                Some(index) => format!("the newest snapshot there ends at index {index}"),
                None => "there is none".to_string(),
            };
            return Err(format!(
                "the raft log in {} starts after index {purged}: the entries up to it are kept \
                 only in a snapshot in {}, but {found} (deleted, an older copy put back, or \
                 a crash while a snapshot was received, which rota before 2026-12-07 allowed). \
                 Refusing to start without them. To recover: put the snapshot back, restore \
                 the data dir from a backup, or, in a cluster, remove this member and add it \
                 back with an empty data dir",
                log_dir.display(),
                data_dir.join(crate::SNAPSHOT_DIR).display(),
            ));
        }
    }
    let reach = [log.last, log.purged, snapshot].into_iter().flatten().max();
    if let Some(mark) = mark {
        if reach.is_none_or(|reach| reach < mark) {
            let reach = match reach {
                Some(index) => format!("now end at index {index}"),
                None => "are now empty".to_string(),
            };
            return Err(format!(
                "this member's raft log lost committed entries: it held them synced up to \
                 index {mark} (its commit mark, {}), but its log and snapshot {reach}. \
                 Something outside rota cut, zeroed or \
                 deleted files in {} (a disk that lost synced data, a partial copy, a file \
                 edited by hand). Refusing to start: a member without them could elect a \
                 leader that erases them from the whole cluster. {what_to_do}",
                path(data_dir).display(),
                log_dir.display(),
            ));
        }
    }
    if log.is_empty() {
        if let Some(snapshot) = snapshot {
            return Ok(Some(format!(
                "the raft log in {} is missing, but a snapshot (to index {snapshot}) is \
                 there: starting from the snapshot alone; entries after it, if there were \
                 any, are gone",
                log_dir.display()
            )));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(last: Option<u64>, purged: Option<u64>) -> LogExtent {
        LogExtent { last, purged, has_vote: true }
    }

    #[test]
    fn a_mark_round_trips_and_damage_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), Ok(None));
        write(dir.path(), 12_345).unwrap();
        assert_eq!(read(dir.path()), Ok(Some(12_345)));
        write(dir.path(), 12_346).unwrap();
        assert_eq!(read(dir.path()), Ok(Some(12_346)));
        assert!(!dir.path().join("commit-mark.tmp").exists());
        fs::write(path(dir.path()), "rota commit mark v1\nindex 12x\n").unwrap();
        let error = read(dir.path()).unwrap_err();
        assert!(error.contains("commit-mark is damaged") && error.contains("delete it"), "{error}");
    }

    #[test]
    fn a_log_reaching_the_mark_starts() {
        let dir = Path::new("/d");
        assert_eq!(check(dir, Some(100), extent(Some(100), None), None), Ok(None));
        assert_eq!(check(dir, Some(100), extent(Some(150), Some(90)), Some(90)), Ok(None));
        // Everything up to the mark is in the snapshot (the log was purged to it).
        assert_eq!(check(dir, Some(100), extent(None, Some(120)), Some(120)), Ok(None));
        // No mark: a new member, or a data dir from before marks.
        assert_eq!(check(dir, None, extent(Some(5), None), None), Ok(None));
        assert_eq!(check(dir, None, LogExtent::default(), None), Ok(None));
    }

    #[test]
    fn a_log_that_ends_below_the_mark_refuses_to_start_and_says_how_to_recover() {
        let dir = Path::new("/d");
        for (log, snapshot) in [
            (extent(Some(99), None), None),
            (extent(Some(80), Some(40)), Some(40)),
            (LogExtent::default(), Some(60)),
            (LogExtent::default(), None),
        ] {
            let error = check(dir, Some(100), log, snapshot).unwrap_err();
            assert!(error.contains("lost committed entries"), "{error}");
            assert!(error.contains("index 100"), "{error}");
            assert!(error.contains("rota member rm") && error.contains("delete /d/commit-mark"), "{error}");
        }
    }

    #[test]
    fn a_purged_log_without_its_snapshot_refuses_to_start() {
        let dir = Path::new("/d");
        let error = check(dir, None, extent(Some(200), Some(150)), None).unwrap_err();
        assert!(error.contains("starts after index 150") && error.contains("there is none"), "{error}");
        let error = check(dir, Some(180), extent(Some(200), Some(150)), Some(100)).unwrap_err();
        assert!(error.contains("ends at index 100"), "{error}");
    }

    #[test]
    fn a_missing_log_beside_a_snapshot_starts_with_a_warning_unless_the_mark_is_beyond_it() {
        let dir = Path::new("/d");
        let warning = check(dir, None, LogExtent::default(), Some(70)).unwrap().unwrap();
        assert!(warning.contains("raft log in /d/raft-log is missing"), "{warning}");
        assert!(check(dir, Some(70), LogExtent::default(), Some(70)).unwrap().is_some());
        assert!(check(dir, Some(71), LogExtent::default(), Some(70)).is_err());
    }
}
