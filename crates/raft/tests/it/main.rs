//! rota-raft's integration tests: real nodes on temp data dirs, in-process.

mod common;
mod proposer;
mod recovery;
mod snapshot;
mod throughput;
mod torn_tail;
mod v2;
