//! rota-server: HTTP in, commands out.
//!
//! Serves etcd's v2 keys API (`/v2/keys`) and its cluster endpoints (`/version`, `/health`,
//! `/v2/members`, `/v2/machines`, `/v2/stats/*`) byte-compatibly with etcd 3.4, plus
//! `/metrics` and the `/ui` dashboard. The handlers map requests to `rota_core` commands
//! and answers back, nothing more: semantics live in `rota-core`, consensus in `rota-raft`,
//! behind [`Backend`].
//!
//! Module map: [`form`] (Go's form decoding), [`path`] (Go's path cleaning), [`params`]
//! (etcd's parameter validation), `app` (routing and the keys handlers), `watch`
//! (long-poll watches), `cluster` (members, stats, version), [`metrics`], `ui` (the
//! dashboard's static files), [`serve`] (sockets and connections), [`limits`] (every bound),
//! `body_budget` (request-body bytes buffered at once, node-wide).

mod app;
mod auth;
mod body_budget;
mod body_wait;
pub mod backend;
pub mod client_gone;
pub mod client_rate;
mod cluster;
mod fnv;
pub mod form;
pub mod limits;
pub mod metrics;
pub mod params;
pub mod path;
pub mod peer;
mod respond;
pub mod serve;
mod ui;
mod v3_refusal;
mod watch;
mod write_stall;
pub mod v1;

pub use app::{fingerprint, App, ServerConfig};
pub use backend::Backend;
pub use cluster::{cluster_id, go_duration, ETCD_CLUSTER_VERSION, ETCD_SERVER_VERSION};
pub use metrics::Metrics;
pub use serve::{bind, serve, serve_with, ServeOptions};
