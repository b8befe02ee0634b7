//! Every bound the HTTP layer enforces, in one place. docs/limits.md explains each to users;
//! keep the two in step. Going over a bound answers a 4xx (never a 500), changes nothing and
//! keeps the node up.

use std::time::Duration;

/// A request body larger than this is refused with 413 before it is read
/// (`Content-Length`); a chunked one is no longer kept once it grows past it, but is read to
/// its end (and dropped) so that one over Go's 10 MiB form limit gets etcd's 210 instead.
pub const REQUEST_BODY_BYTES_MAX: usize = 1536 * 1024;

/// Request-body bytes buffered at once across all requests (`/v2` and `/v1`): a body over
/// [`BODY_BUDGET_EXEMPT_BYTES`] reserves its size before it is read, and when the budget
/// can't cover it the request gets 503 with `Retry-After: 1` at once. Without it, stalled
/// uploads could hold `CONNECTIONS_MAX` × 17 MiB (~70 GB).
pub const BODY_BUDGET_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Bodies up to this size don't take from [`BODY_BUDGET_BYTES_MAX`], so ordinary requests
/// never contend with big uploads (all connections at once hold at most 4,096 × 64 KiB
/// = 256 MiB of them).
pub const BODY_BUDGET_EXEMPT_BYTES: usize = 64 * 1024;

/// Answer bytes held at once across all connections: an answer over
/// [`BODY_BUDGET_EXEMPT_BYTES`] (a recursive GET of a big tree, a page of big jobs) reserves
/// its size until it is sent, and when the budget can't cover it the request gets 503 with
/// `Retry-After: 1` instead. Clients that ask for big answers and do not read them held
/// ~20 MB each, without bound (250 of them: 4.9 GB).
pub const RESPONSE_BUDGET_BYTES_MAX: usize = 512 * 1024 * 1024;

/// A peer connection that has carried no request this long after it was opened is closed
/// (a member sends one at once): connections opened and left silent filled the peer
/// connection bound and kept the members' forwarded writes off the leader.
pub const PEER_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection whose client takes none of its answer for this long is closed (the answer
/// is dropped): a client that sends a request and never reads would otherwise hold the
/// answer's memory, and its share of [`RESPONSE_BUDGET_BYTES_MAX`], for good.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest `value` a key may hold (after form decoding): 413.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;

/// The longest key (the decoded path after `/v2/keys`): 414.
pub const KEY_BYTES_MAX: usize = 4 * 1024;

/// The longest raw query string: 414. etcd clients send `prevValue` in the query
/// (etcdctl's `--swap-with-value` and `rm --with-value`, the Go client's compare-and-swap,
/// python-etcd's compare-and-delete), so this bounds the values they can compare by: at
/// 32 KiB a compare failed for values over ~32 KB. The HTTP library bounds a request's
/// whole target (path and query) at 65,534 bytes (`414`, no body); etcd's bound is Go's
/// 1 MiB header section.
pub const QUERY_BYTES_MAX: usize = 60 * 1024;

/// Request line plus headers; hyper answers 431 over it. Room for the longest request
/// target the HTTP library takes (65,534 bytes) and 32 KiB of headers.
pub const HEADER_SECTION_BYTES_MAX: usize = 96 * 1024;

/// Header fields in one request: hyper's own bound, over which it answers 431 (etcd, like any
/// Go server, bounds only the bytes). Not raised: hyper parses into an array of this many
/// entries, on the stack at its default, on the heap and filled per request above it; at
/// 1,000 that filling was 3% of a cluster leader's CPU per write.
pub const HEADERS_MAX: usize = 100;

/// Open client connections at once. The accept loop stops accepting at the bound (new
/// clients wait in the kernel backlog) rather than failing them. `rota serve` lowers the
/// default to fit the open files limit (each connection a file, each watch one more).
pub const CONNECTIONS_MAX: usize = 16_384;

/// Long-poll watches (`wait=true`) at once, across all connections: 503 over it. etcd has
/// no bound, and a fleet watching its configuration (a watch per machine, all on the
/// member its client library picked) needs thousands; an idle watch costs ~33 KiB here.
pub const WATCHERS_MAX: usize = 12_288;

/// A client must send a request's whole header section within this time, or the
/// connection is closed (slowloris). It also bounds how long an idle keep-alive
/// connection is kept (hyper starts the timer when it waits for the next request), so it is
/// longer than a client keeps one idle (Go's 90 s) or waits between heartbeats: with 10 s,
/// a client refreshing a TTL every 10 s could send its request just as the connection was
/// closed, and see the write fail (etcd closes idle connections never).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// A client must send a request's whole body within this time: 408.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest `Idempotency-Key` header: 400.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;

/// On SIGTERM/SIGINT, in-flight requests get this long to finish before their connections
/// are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A `/v2/members` POST or PUT body (`{"peerURLs": [...]}`): 413 over it.
pub const MEMBERS_BODY_BYTES_MAX: usize = 64 * 1024;

/// A peer request's line plus headers (a handful of short ones): hyper answers 431 over it.
pub const PEER_HEADER_SECTION_BYTES_MAX: usize = 64 * 1024;

/// Open peer connections at once (Raft traffic, forwarded requests); the peer accept loop
/// stops accepting at the bound.
pub const PEER_CONNECTIONS_MAX: usize = 256;

/// A peer request body larger than this is refused with 413 (a snapshot chunk is 4 MiB;
/// an append carries at most 16 entries of at most 4 MiB of commands each).
pub const PEER_BODY_BYTES_MAX: usize = rota_raft::peer::PEER_BODY_BYTES_MAX;

/// rota's own `errorCode`s, in etcd's error envelope so etcd clients can still parse them.
/// They reuse the HTTP status number and lie outside etcd's code ranges.
pub const BODY_TOO_LARGE_CODE: u16 = 413;
pub const VALUE_TOO_LARGE_CODE: u16 = 413;
pub const KEY_TOO_LONG_CODE: u16 = 414;
pub const QUERY_TOO_LONG_CODE: u16 = 414;
pub const BODY_TIMEOUT_CODE: u16 = 408;
pub const IDEMPOTENCY_KEY_REUSED_CODE: u16 = 422;
pub const IDEMPOTENCY_KEY_INVALID_CODE: u16 = 400;
pub const TOO_MANY_WATCHERS_CODE: u16 = 503;
pub const BODY_BUDGET_EXHAUSTED_CODE: u16 = 503;
pub const CLIENT_RATE_LIMITED_CODE: u16 = 429;
