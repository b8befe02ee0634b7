//! Crash recovery of the log file itself: a torn tail is cut back to the last whole record,
//! a damaged record before the tail stops start-up.
//!
//! Each command below is proposed alone and acknowledged before the next, so after ack `k`
//! the log file holds every record of commands `0..=k`, and the log's records end says
//! where the last of them ends (the file itself is allocated at its full size ahead of
//! its records). Cutting the records at `cut` must therefore keep at least every command
//! acknowledged when they ended at or before `cut`; and whatever survives must be a
//! prefix of the commands, i.e. the state after some ack.

use std::path::Path;

use rota_core::State;
use rota_raft::{Node, StartError};

use crate::common::*;

const COMMANDS: u64 = 24;

struct WrittenLog {
    _temp: tempfile::TempDir,
    data_dir: std::path::PathBuf,
    /// Where the log's records ended right after each ack (index = command).
    records_end_after_ack: Vec<u64>,
    /// The state right after each ack; `states[0]` is before any command.
    states: Vec<State>,
}

async fn write_log() -> WrittenLog {
    let temp = tempfile::tempdir().expect("tempdir");
    let data_dir = temp.path().join("node");
    let node = start(config(&data_dir)).await;
    let mut records_end_after_ack = Vec::new();
    let mut states = vec![snapshot_of_state(&node)];
    for key in 0..COMMANDS {
        propose_ok(&node, keyed_tick(key)).await;
        let files = log_files(&data_dir);
        assert_eq!(files.len(), 1, "the test expects one log file");
        records_end_after_ack.push(node.log_records_end().expect("records end"));
        states.push(snapshot_of_state(&node));
    }
    node.shutdown().await;
    // Without the allocated rest (zeros), as a full chunk is cut when the next one opens;
    // the copies below stay small.
    let file = log_files(&data_dir).pop().expect("log file");
    let end = *records_end_after_ack.last().expect("acks");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_len(end))
        .expect("cut the log file to its records");
    WrittenLog {
        _temp: temp,
        data_dir,
        records_end_after_ack,
        states,
    }
}

/// Starts a node on a copy of `log`'s data dir after `damage` changed its log file, without
/// the commit mark its clean stop wrote: as after a crash before any mark named the entries
/// cut (the mark's own test is `a_log_cut_below_its_commit_mark_refuses_to_start`).
async fn start_damaged(
    log: &WrittenLog,
    scratch: &Path,
    damage: impl FnOnce(&mut Vec<u8>),
) -> Result<Node, StartError> {
    start_damaged_with_mark(log, scratch, false, damage).await
}

async fn start_damaged_with_mark(
    log: &WrittenLog,
    scratch: &Path,
    keep_mark: bool,
    damage: impl FnOnce(&mut Vec<u8>),
) -> Result<Node, StartError> {
    let _ = std::fs::remove_dir_all(scratch);
    copy_dir(&log.data_dir, scratch);
    let mark = scratch.join("commit-mark");
    assert!(mark.exists(), "a clean stop writes the commit mark");
    if !keep_mark {
        std::fs::remove_file(mark).expect("remove the commit mark");
    }
    let file = log_files(scratch).pop().expect("log file");
    let mut bytes = std::fs::read(&file).expect("read log");
    damage(&mut bytes);
    std::fs::write(&file, bytes).expect("write log");
    Node::start(config(scratch)).await
}

#[tokio::test]
async fn torn_tail_is_cut_back_and_keeps_every_acknowledged_record() {
    let log = write_log().await;
    let scratch_dir = tempfile::tempdir().expect("tempdir");
    let scratch = scratch_dir.path().join("node");
    let records_end = *log.records_end_after_ack.last().expect("acks");
    // Every 3rd byte across the last few records, and the exact ends of records.
    let tail_start = log.records_end_after_ack[COMMANDS as usize - 5];
    let mut cuts: Vec<u64> = (tail_start..records_end).step_by(3).collect();
    cuts.extend(
        log.records_end_after_ack
            .iter()
            .rev()
            .take(5)
            .map(|len| len - 1),
    );
    for (i, cut) in cuts.into_iter().enumerate() {
        // Half the cuts end the file there; the other half leave zeros after the cut, as a
        // write torn inside the file's allocated length does.
        let zeros_after = if i % 2 == 0 { 0 } else { 64 << 10 };
        let node = start_damaged(&log, &scratch, |bytes| {
            bytes.truncate(cut as usize);
            bytes.resize(cut as usize + zeros_after, 0);
        })
        .await
        .unwrap_or_else(|e| panic!("cut at {cut} (+{zeros_after} zeros): start failed: {e}"));
        wait_leader(&node).await;
        // Re-applying a recovered log needs a commit by the (re-elected) leader.
        let commit = node.linearizable_read().await.expect("read index");
        wait_applied(&node, commit.raft_index).await;
        let recovered = snapshot_of_state(&node);
        let acked_before_cut = log
            .records_end_after_ack
            .iter()
            .filter(|&&len| len <= cut)
            .count();
        let prefix = log.states.iter().position(|state| *state == recovered);
        match prefix {
            Some(commands) => assert!(
                commands >= acked_before_cut,
                "cut at {cut}: recovered {commands} commands, but {acked_before_cut} were on disk before the cut"
            ),
            None => panic!("cut at {cut}: recovered state is not a prefix of the written commands"),
        }
        node.shutdown().await;
    }
}

#[tokio::test]
async fn damaged_record_before_the_tail_stops_start_up_naming_file_and_offset() {
    let log = write_log().await;
    let scratch_dir = tempfile::tempdir().expect("tempdir");
    let scratch = scratch_dir.path().join("node");
    // Every byte of an early command's records (its append, and the commit after it).
    let from = log.records_end_after_ack[2];
    let to = log.records_end_after_ack[3];
    for at in from..to {
        let result = start_damaged(&log, &scratch, |bytes| bytes[at as usize] ^= 0x10).await;
        match result {
            Err(StartError::Corrupt(message)) => {
                assert!(
                    message.contains("r-00_000_000_000_000_000_000.wal"),
                    "flip at {at}: {message}"
                );
                assert!(message.contains("offset"), "flip at {at}: {message}");
            }
            Err(other) => panic!("flip at {at}: not reported as corruption: {other}"),
            Ok(node) => {
                let recovered = snapshot_of_state(&node);
                node.shutdown().await;
                panic!(
                    "flip at {at}: started anyway with {:?} commands",
                    log.states.iter().position(|s| *s == recovered)
                );
            }
        }
    }
}

/// A log cut below the commit mark lost entries that had committed, which no crash does (the
/// mark names only synced entries): the node refuses to start and says how to recover.
/// Without the mark (deleted, as the refusal says to accept the loss) it starts on what is
/// left.
#[tokio::test]
async fn a_log_cut_below_its_commit_mark_refuses_to_start() {
    let log = write_log().await;
    let scratch_dir = tempfile::tempdir().expect("tempdir");
    let scratch = scratch_dir.path().join("node");
    let cut = log.records_end_after_ack[COMMANDS as usize - 4] as usize;
    for zeros_after in [0, 64 << 10] {
        let cut_log = |bytes: &mut Vec<u8>| {
            bytes.truncate(cut);
            bytes.resize(cut + zeros_after, 0);
        };
        match start_damaged_with_mark(&log, &scratch, true, cut_log).await {
            Err(StartError::Corrupt(message)) => {
                assert!(message.contains("lost committed entries"), "{message}");
                assert!(message.contains("commit-mark"), "{message}");
                assert!(message.contains("rota member rm"), "{message}");
            }
            Err(other) => panic!("not refused as a loss: {other}"),
            Ok(node) => {
                node.shutdown().await;
                panic!("started on a log cut below its commit mark (+{zeros_after} zeros)");
            }
        }
        let node = start_damaged_with_mark(&log, &scratch, false, cut_log)
            .await
            .unwrap_or_else(|e| panic!("without the mark: {e}"));
        node.shutdown().await;
    }
    // The whole log, with its mark: starts.
    let node = start_damaged_with_mark(&log, &scratch, true, |_| {}).await.expect("undamaged log");
    node.shutdown().await;
}
