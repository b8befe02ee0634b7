//! End-to-end tests of the `rota` binary with real processes: a differential test against
//! real etcd 3.4 (`etcd_diff`), crash durability under SIGKILL (`crash`) and bad input end
//! to end (`bad_input`). etcd must be installed (`/usr/bin/etcd`, Debian's `etcd-server`),
//! and Chromium for the dashboard (`ui`, `/usr/bin/chromium`); the tests fail, never skip,
//! without them.
//!
//! `ROTA_IT_AGAINST=etcd` runs the differential and bad-input comparisons etcd against etcd,
//! which must always agree: that checks the normalizer and the scenarios themselves.

mod bad_input;
mod big_reads;
mod cli_status;
mod cluster;
mod cluster_jobs;
mod cluster_membership;
mod crash;
mod disk_full;
mod etcd_clients;
mod etcd_diff;
mod harness;
mod history;
mod http;
mod jobs_api;
mod jobs_client;
mod jobs_crash;
mod jobs_lease;
mod jobs_lease_deadline;
mod jobs_limits;
mod jobs_payload;
mod jobs_unreachable;
mod jobs_util;
mod kv_linearizable;
mod linearizability;
mod log_loss;
mod normalize;
mod session;
mod ui;
mod watch_mass_expiry;
