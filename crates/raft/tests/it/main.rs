//! rota-raft's integration tests: real nodes on temp data dirs, in-process.

mod common;
mod proposer;
mod recovery;
mod snapshot;
mod torn_tail;
mod v2;
