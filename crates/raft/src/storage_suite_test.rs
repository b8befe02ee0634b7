//! openraft's storage test suite against rota's log store and state machine.

use openraft::testing::{StoreBuilder, Suite};

use crate::log_store::{LogStore, LogStoreConfig};
use crate::metrics::RaftMetrics;
use crate::snapshot_file::SnapshotDir;
use crate::state_machine::StateMachineStore;
use crate::types::{StorageError, TypeConfig};

struct TempStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for TempStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let temp = tempfile::tempdir().expect("tempdir");
        let metrics = RaftMetrics::default();
        let log_store = LogStore::open(
            &LogStoreConfig {
                dir: temp.path().join("raft-log"),
            },
            metrics.clone(),
        )
        .expect("open log");
        let snapshots = SnapshotDir::open(temp.path().join("snapshots")).expect("open snapshots");
        let (state_machine, _shared) =
            StateMachineStore::open(snapshots, rota_core::Config::default(), metrics)
                .expect("open state machine");
        Ok((temp, log_store, state_machine))
    }
}

#[test]
fn log_store_and_state_machine_pass_openraft_suite() {
    Suite::test_all(TempStoreBuilder).expect("openraft storage suite");
}
