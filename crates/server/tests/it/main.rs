//! rota-server's integration tests: the HTTP layer against a fake backend (a
//! `rota_core::State` under a mutex, no Raft), in-process through `App::handle` and, where
//! the connection matters (watches, timeouts), through real sockets on ports 25100-25199.

mod cluster;
mod keys;
mod limits;
mod params;
mod paths;
mod support;
mod watch;
mod v1_errors;
mod v1_idempotency;
mod v1_jobs;
mod v1_queues;
mod v1_raft;
mod v1_support;
mod v1_waits;
mod v1_watch;
mod raft_cluster;
