//! rota-core: the deterministic state machine.
//!
//! Commands go in, responses come out. Nothing here performs I/O, reads a clock or draws a
//! random number: time enters only as the `time_ms` of the Raft entry being applied (see
//! [`Batch`]). Every node applies the same entries in the same order and so holds the same
//! state. All semantics and all limits of rota live here and are tested here.

pub mod idempotency;
pub mod jobs;
mod sharded;
mod state;
pub mod v2;

pub use state::{Batch, Command, Config, Response, State};
