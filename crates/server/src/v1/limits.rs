//! Every bound of the `/v1` HTTP layer, named with its unit. docs/limits.md ("/v1") lists
//! them for users; the state machine's own bounds are in `rota_core::jobs::limits`.

use std::time::Duration;

/// A `/v1` request body: a batch submit may carry 16 MiB of payloads, plus the JSON around
/// them. (A command is also bounded by the Raft entry size; over that it is a 413 too.)
pub const BODY_BYTES_MAX: usize = 17 * 1024 * 1024;
/// A body over [`BODY_BYTES_MAX`] is read and dropped up to this many bytes before its
/// `413` is sent: a client that writes its whole body before it reads the answer (Python's
/// `http.client`) otherwise meets a reset connection instead of the `413`. /v2 does the same
/// up to Go's 10 MiB form limit.
pub const OVERSIZE_BODY_DRAIN_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// How deep arrays and objects may nest in a job's payload or result: a bound of the state
/// machine's crate, so that clients check it before sending (`rota worker` stores stdout
/// nested deeper as a string).
pub use rota_core::jobs::limits::JSON_DEPTH_MAX;

/// The longest long-poll of a lease (`wait` in the lease body).
pub const LEASE_WAIT_MS_MAX: u64 = 60_000;

/// The longest wait-for-result (`?wait=` on submit and on `GET /v1/jobs/{id}`).
pub const RESULT_WAIT_MS_MAX: u64 = 60_000;

/// Lease requests long-polling at once on this server, across queues: over it a lease
/// that would wait answers 503 `unavailable` with `Retry-After`.
pub const LEASE_WAITERS_MAX: usize = 16_384;

/// Requests waiting for a job to finish at once on this server: 503 over it.
pub const RESULT_WAITERS_MAX: usize = 16_384;

/// A keep-alive comment on an idle `/v1/watch` stream this often, so proxies keep it open.
pub const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

/// Job changes read from the state per wake-up of a `/v1/watch` stream; more wait for the
/// next chunk.
pub const JOB_CHANGES_PER_READ_MAX: usize = 256;

/// How many earlier lease attempts an idempotent lease replays before it runs a new one
/// (a long-poll may take several attempts; each is stored under its own derived key).
pub const LEASE_ATTEMPTS_REPLAYED_MAX: u32 = 1_000;
