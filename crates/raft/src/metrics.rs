//! Consensus metrics: one [`RaftMetrics`] per node, so in-process test clusters stay apart.
//!
//! The consensus code updates these handles; the server registers them into its
//! prometheus-client `Registry` with [`RaftMetrics::register`]. Cloning a handle shares the
//! underlying value (prometheus-client metrics are `Arc`s inside).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// A follower, as the leader labels its replication gauges: its member id in hex (as
/// `/v2/members` and the logs write it) and its name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FollowerLabels {
    pub member: String,
    pub name: String,
}

#[derive(Clone, Debug)]
pub struct RaftMetrics {
    pub term: Gauge,
    pub is_leader: Gauge,
    /// 1 while this member knows a leader that has its quorum (what `/health` says).
    pub has_leader: Gauge,
    /// On the leader: the last log index each follower is known to hold.
    pub follower_matched_index: Family<FollowerLabels, Gauge>,
    /// On the leader: how many entries each follower is behind the leader's log.
    pub follower_lag_entries: Family<FollowerLabels, Gauge>,
    /// 1 while this member votes; 0 while it is a learner catching up (or was removed).
    pub is_voter: Gauge,
    pub leader_changes: Counter,
    pub last_log_index: Gauge,
    pub commit_index: Gauge,
    pub applied_index: Gauge,
    pub snapshot_index: Gauge,
    /// Size of the latest snapshot file written or installed.
    pub snapshot_bytes: Gauge,
    /// Encoding, writing and syncing one snapshot (off the apply path).
    pub snapshot_seconds: Histogram,
    /// How long applying waited while a snapshot took the state.
    pub snapshot_pause_seconds: Histogram,
    /// From handing appended entries to the log's flush thread until `sync_data` returned.
    pub log_fsync_seconds: Histogram,
    /// Commands per proposed Raft entry (group commit).
    pub batch_commands: Histogram,
    /// Encoded command bytes per proposed Raft entry.
    pub batch_bytes: Histogram,
    /// Proposals answered, by any outcome.
    pub proposals: Counter,
    /// Free space on the data dir's file system (for an unprivileged writer).
    pub data_dir_available_bytes: Gauge,
    /// 1 while writes are refused for lack of space (see `disk`).
    pub data_dir_short_of_space: Gauge,
    /// Free space below which writes are refused (see `disk`).
    pub data_dir_needed_bytes: Gauge,
}

impl Default for RaftMetrics {
    fn default() -> Self {
        RaftMetrics {
            term: Gauge::default(),
            is_leader: Gauge::default(),
            has_leader: Gauge::default(),
            follower_matched_index: Family::default(),
            follower_lag_entries: Family::default(),
            is_voter: Gauge::default(),
            leader_changes: Counter::default(),
            last_log_index: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            snapshot_index: Gauge::default(),
            snapshot_bytes: Gauge::default(),
            // 1 ms .. ~65 s
            snapshot_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 50 µs .. ~1.6 s
            snapshot_pause_seconds: Histogram::new(exponential_buckets(50e-6, 2.0, 16)),
            // 25 µs .. ~1.6 s
            log_fsync_seconds: Histogram::new(exponential_buckets(25e-6, 2.0, 17)),
            // 1 .. 4096 commands
            batch_commands: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            // 64 B .. 4 MiB
            batch_bytes: Histogram::new(exponential_buckets(64.0, 4.0, 9)),
            proposals: Counter::default(),
            data_dir_available_bytes: Gauge::default(),
            data_dir_short_of_space: Gauge::default(),
            data_dir_needed_bytes: Gauge::default(),
        }
    }
}

impl RaftMetrics {
    /// Registers every metric under `rota_raft_*`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("rota_raft");
        registry.register("term", "Current Raft term", self.term.clone());
        registry.register(
            "is_leader",
            "1 if this node is the Raft leader",
            self.is_leader.clone(),
        );
        registry.register(
            "has_leader",
            "1 if this member knows a leader that has its quorum (as /health says); 0 during elections and when cut off",
            self.has_leader.clone(),
        );
        registry.register(
            "follower_matched_index",
            "On the leader only: the last log index each follower is known to hold",
            self.follower_matched_index.clone(),
        );
        registry.register(
            "follower_lag_entries",
            "On the leader only: how many log entries each follower is behind the leader",
            self.follower_lag_entries.clone(),
        );
        registry.register(
            "is_voter",
            "1 if this node is a voter; 0 while it is a learner catching up with the leader's log",
            self.is_voter.clone(),
        );
        registry.register(
            "leader_changes",
            "Times this node saw a new leader",
            self.leader_changes.clone(),
        );
        registry.register(
            "last_log_index",
            "Index of the last entry in the log",
            self.last_log_index.clone(),
        );
        registry.register(
            "commit_index",
            "Highest committed Raft index",
            self.commit_index.clone(),
        );
        registry.register(
            "applied_index",
            "Highest Raft index applied to the state",
            self.applied_index.clone(),
        );
        registry.register(
            "snapshot_index",
            "Last Raft index in the latest snapshot",
            self.snapshot_index.clone(),
        );
        registry.register_with_unit(
            "snapshot_size",
            "Size of the latest snapshot file",
            Unit::Bytes,
            self.snapshot_bytes.clone(),
        );
        registry.register_with_unit(
            "snapshot_duration",
            "Encoding, writing and syncing a snapshot (applying goes on meanwhile)",
            Unit::Seconds,
            self.snapshot_seconds.clone(),
        );
        registry.register_with_unit(
            "snapshot_pause",
            "How long applying waited while a snapshot took the state",
            Unit::Seconds,
            self.snapshot_pause_seconds.clone(),
        );
        registry.register_with_unit(
            "log_fsync",
            "Latency of a log flush (write + sync_data)",
            Unit::Seconds,
            self.log_fsync_seconds.clone(),
        );
        registry.register_with_unit(
            "data_dir_available",
            "Free space on the data dir's file system",
            Unit::Bytes,
            self.data_dir_available_bytes.clone(),
        );
        registry.register_with_unit(
            "data_dir_needed",
            "Free space below which writes are refused: --min-free-mb plus room for the next snapshot",
            Unit::Bytes,
            self.data_dir_needed_bytes.clone(),
        );
        registry.register(
            "data_dir_short_of_space",
            "1 while writes are refused because the data dir is short of space",
            self.data_dir_short_of_space.clone(),
        );
        registry.register(
            "batch_commands",
            "Commands per proposed Raft entry",
            self.batch_commands.clone(),
        );
        registry.register_with_unit(
            "batch_size",
            "Encoded command bytes per proposed Raft entry",
            Unit::Bytes,
            self.batch_bytes.clone(),
        );
        registry.register(
            "proposals",
            "Commands this member proposed as leader (writes sent to any member) and answered, whatever the outcome",
            self.proposals.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_metrics_appear_in_the_text_exposition() {
        let metrics = RaftMetrics::default();
        metrics.term.set(7);
        metrics.log_fsync_seconds.observe(0.0002);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(text.contains("rota_raft_term 7"), "{text}");
        assert!(
            text.contains("rota_raft_log_fsync_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("rota_raft_snapshot_size_bytes"), "{text}");
    }
}
