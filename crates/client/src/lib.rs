//! rota-client: a small async client for rota's etcd v2 keys API (and etcd's own).
//!
//! Endpoints are tried in order, starting from the last one that answered. Connection
//! failures are retried on the next endpoint, a bounded number of rounds with backoff.
//! Reads and watches are safe to repeat; every mutation carries an `Idempotency-Key`
//! generated once per call, so a retry after a server restart or a lost answer never
//! applies twice (rota replays the first outcome; etcd ignores the header).
//!
//! A caller learns when the cluster stops and starts answering through
//! [`Client::on_reachability`] (the command line says it is retrying instead of going
//! quiet), and a call that gives up names each endpoint with its own failure
//! ([`Unreachable`]).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;

pub mod jobs;
mod raw_json;

/// Rounds over all endpoints before giving up on a connection failure.
pub const RETRY_ROUNDS_MAX: u32 = 4;
/// Backoff after a failed round: doubles from here, capped at [`RETRY_BACKOFF_MAX`].
pub const RETRY_BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The longest a `429`'s `Retry-After` makes a keys request wait between rounds.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(5);
/// One endpoint gets this long to answer a request that does not wait on purpose (a
/// long-poll gets its wait on top); then the request goes to the next endpoint, with the same
/// idempotency key. A live member answers within its leader wait (about 4 s with the default
/// election timeout) or says why; a frozen one (a stopped process, a paused VM, a host whose
/// packets are dropped) never does, and was waited on for 30 s: longer than a job's lease
/// (an audit saw leases expire and finished jobs run again while two members were fine).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connecting to one endpoint gets this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A node as etcd renders it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// `None` only for the root.
    pub key: Option<String>,
    /// `None` for directories.
    pub value: Option<String>,
    #[serde(default)]
    pub dir: bool,
    pub expiration: Option<String>,
    pub ttl: Option<i64>,
    #[serde(default)]
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub modified_index: u64,
    #[serde(default)]
    pub created_index: u64,
}

/// A successful answer (or a watch event).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KvResponse {
    pub action: String,
    #[serde(default)]
    pub node: Node,
    pub prev_node: Option<Node>,
    /// `X-Etcd-Index` of the answer (for a watch: the index when it started).
    #[serde(skip)]
    pub etcd_index: u64,
    /// `Idempotent-Replayed: true`: a retried mutation whose first attempt had applied.
    #[serde(skip)]
    pub replayed: bool,
}

/// An error the server answered in etcd's envelope.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdError {
    pub error_code: u16,
    pub message: String,
    #[serde(default)]
    pub cause: String,
    #[serde(default)]
    pub index: u64,
}

impl fmt::Display for EtcdError {
    /// etcd's client format: `100: Key not found (/foo) [12]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({}) [{}]",
            self.error_code, self.message, self.cause, self.index
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the request (`errorCode`...).
    #[error("{0}")]
    Etcd(EtcdError),
    /// No endpoint could be reached: each one's failure in the last round.
    #[error("cluster unreachable: {0}")]
    Unavailable(Unreachable),
    /// An answer that is neither etcd JSON nor an etcd error.
    #[error("unexpected answer: HTTP {status}: {body}")]
    Unexpected { status: u16, body: String },
    #[error("bad endpoint {0:?}: expected http://host:port")]
    BadEndpoint(String),
    /// The endpoint list names none (`--endpoints ""`, or `ROTA_ENDPOINTS` set but empty).
    #[error("--endpoints is empty (or ROTA_ENDPOINTS is set but empty): give http://host:port[,...]")]
    NoEndpoints,
    #[error("{0}")]
    Client(String),
}

impl Error {
    /// The etcd error code, if the server answered one.
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Etcd(error) => Some(error.error_code),
            _ => None,
        }
    }
}

/// One endpoint that did not take a request: it could not be reached, or it answered that
/// it cannot handle it now (`503`, `429`; for the keys API etcd's `301` no leader).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointFailure {
    pub endpoint: String,
    /// `connection refused`, `timed out`, `503 no_leader: ...`.
    pub error: String,
}

/// A round over all the endpoints that none took: each endpoint's own failure, in the order
/// they were tried. Shown as `http://a:2379 (connection refused), http://b:2379 (503 ...)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unreachable {
    pub failures: Vec<EndpointFailure>,
    /// A mutation that a member took and may have applied, or may yet apply once a leader
    /// commits it: one answered `504 outcome_unknown`, or a connection broke after the
    /// request went out. Sending it again with its idempotency key is safe.
    pub maybe_applied: bool,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (at, failure) in self.failures.iter().enumerate() {
            if at > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} ({})", failure.endpoint, failure.error)?;
        }
        Ok(())
    }
}

/// A change in whether the cluster takes requests, as [`Client::on_reachability`] tells it.
#[derive(Clone, Copy, Debug)]
pub enum Reachability<'a> {
    /// A call found no endpoint taking its request and retries for up to `retry_for`
    /// (the `/v1` calls; the keys API's few quick rounds are not reported). Told once, at
    /// the first failed round, and not again until an endpoint has answered.
    Lost {
        unreachable: &'a Unreachable,
        retry_for: Duration,
    },
    /// An endpoint answered again: the request it answered was sent `after` the
    /// [`Reachability::Lost`] (a long poll's answer comes later).
    Regained { endpoint: &'a str, after: Duration },
    /// The endpoint tried first failed (`error`: `timed out` for a frozen member, `connection
    /// refused`, a `503`) and `to` answered the same request: `to` is tried first from now
    /// on. Told once per switch, for the `/v1` calls.
    Switched { from: &'a str, error: &'a str, to: &'a str },
}

type ReachabilityObserver = Arc<dyn Fn(Reachability<'_>) + Send + Sync>;

#[derive(Clone, Copy, Debug, Default)]
pub struct GetOptions {
    pub recursive: bool,
    pub sorted: bool,
    pub quorum: bool,
}

#[derive(Clone, Debug, Default)]
pub struct SetOptions {
    pub ttl_s: Option<u64>,
    pub prev_value: Option<String>,
    pub prev_index: Option<u64>,
    pub prev_exist: Option<bool>,
    pub dir: bool,
    pub refresh: bool,
}

#[derive(Clone, Debug, Default)]
pub struct RmOptions {
    pub dir: bool,
    pub recursive: bool,
    pub prev_value: Option<String>,
    pub prev_index: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct WatchOptions {
    pub recursive: bool,
    /// Watch from this index (`waitIndex`); `None` waits for the next change.
    pub wait_index: Option<u64>,
}

/// Characters a form value or query value may keep as they are.
const FORM_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// In a key path, `/` separates segments and stays.
const PATH_KEEP: &AsciiSet = &FORM_KEEP.remove(b'/');

pub struct Client {
    endpoints: Vec<String>,
    http: reqwest::Client,
    /// The endpoint to try first: the last one that answered.
    preferred: AtomicUsize,
    observer: Option<ReachabilityObserver>,
    /// When calls started finding no endpoint answering; `None` while one answers. A std
    /// mutex: held for a comparison, never across an await.
    lost_since: Mutex<Option<Instant>>,
    /// `/v1` reads ask the member reached for its own state (`?consistency=local`).
    local_reads: bool,
}

impl Client {
    /// A client for `endpoints` (`http://host:port`, tried in order).
    pub fn new<S: AsRef<str>>(endpoints: impl IntoIterator<Item = S>) -> Result<Client, Error> {
        let mut list = Vec::new();
        for endpoint in endpoints {
            let endpoint = endpoint.as_ref().trim().trim_end_matches('/');
            if endpoint.is_empty() {
                continue;
            }
            if !endpoint.starts_with("http://") {
                return Err(Error::BadEndpoint(endpoint.to_string()));
            }
            list.push(endpoint.to_string());
        }
        if list.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .map_err(|error| Error::Client(error.to_string()))?;
        Ok(Client {
            endpoints: list,
            http,
            preferred: AtomicUsize::new(0),
            observer: None,
            lost_since: Mutex::new(None),
            local_reads: false,
        })
    }

    /// With `local`, the `/v1` reads (jobs, queues, listings) ask the member reached for its
    /// own state (`?consistency=local`) instead of the leader's: they answer without a
    /// quorum (after losing a majority), perhaps behind the leader.
    pub fn local_reads(mut self, local: bool) -> Client {
        self.local_reads = local;
        self
    }

    /// Has `observer` told when calls start retrying because no endpoint takes them
    /// ([`Reachability::Lost`], once) and when one answers again
    /// ([`Reachability::Regained`]). It runs on the calling task: keep it short.
    pub fn on_reachability(
        mut self,
        observer: impl Fn(Reachability<'_>) + Send + Sync + 'static,
    ) -> Client {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// A round over the endpoints failed and the call will retry for up to `retry_for`.
    fn lost(&self, unreachable: &Unreachable, retry_for: Duration) {
        let first = {
            let mut since = self.lost_since.lock().unwrap_or_else(|e| e.into_inner());
            since.is_none() && {
                *since = Some(Instant::now());
                true
            }
        };
        if let (true, Some(observer)) = (first, &self.observer) {
            observer(Reachability::Lost {
                unreachable,
                retry_for,
            });
        }
    }

    /// Endpoint `at` answered a request sent at `sent_at`: it is tried first from now on, and
    /// the outage (if one was told) ended by then. Not when the answer came: a long poll
    /// answers only after its wait. `passed_over`: the endpoint tried first for this request
    /// and its failure, when another one answered.
    fn answered(&self, at: usize, sent_at: Instant, passed_over: Option<(usize, &str)>) {
        let previous = self.preferred.swap(at, Ordering::Relaxed);
        let since = self
            .lost_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(observer) = &self.observer else { return };
        match (since, passed_over) {
            (Some(since), _) => observer(Reachability::Regained {
                endpoint: &self.endpoints[at],
                after: sent_at.saturating_duration_since(since),
            }),
            // Once per switch: concurrent calls that failed over together tell it once.
            (None, Some((from, error))) if from != at && previous == from => {
                observer(Reachability::Switched { from: &self.endpoints[from], error, to: &self.endpoints[at] })
            }
            (None, _) => {}
        }
    }

    /// `GET /v2/keys{key}`.
    pub async fn kv_get(&self, key: &str, options: GetOptions) -> Result<KvResponse, Error> {
        let mut query = Vec::new();
        flag(&mut query, "recursive", options.recursive);
        flag(&mut query, "sorted", options.sorted);
        flag(&mut query, "quorum", options.quorum);
        self.call(Method::Get, key, &query, &[], None, false).await
    }

    /// `PUT /v2/keys{key}`: set, or with options create/update/compare-and-swap/mkdir/refresh.
    pub async fn kv_set(
        &self,
        key: &str,
        value: &str,
        options: SetOptions,
    ) -> Result<KvResponse, Error> {
        let mut form = Vec::new();
        if !options.dir && !options.refresh {
            form.push(("value", value.to_string()));
        }
        if let Some(ttl_s) = options.ttl_s {
            form.push(("ttl", ttl_s.to_string()));
        }
        if let Some(prev_value) = options.prev_value {
            form.push(("prevValue", prev_value));
        }
        if let Some(prev_index) = options.prev_index {
            form.push(("prevIndex", prev_index.to_string()));
        }
        if let Some(prev_exist) = options.prev_exist {
            form.push(("prevExist", prev_exist.to_string()));
        }
        flag(&mut form, "dir", options.dir);
        flag(&mut form, "refresh", options.refresh);
        self.call(Method::Put, key, &[], &form, Some(idempotency_key()), false)
            .await
    }

    /// Creates `key` only if it doesn't exist (`prevExist=false`).
    pub async fn kv_mk(
        &self,
        key: &str,
        value: &str,
        ttl_s: Option<u64>,
    ) -> Result<KvResponse, Error> {
        let options = SetOptions {
            ttl_s,
            prev_exist: Some(false),
            ..SetOptions::default()
        };
        self.kv_set(key, value, options).await
    }

    /// `POST /v2/keys{dir}`: a new in-order key under `dir`.
    pub async fn kv_mk_in_order(
        &self,
        dir: &str,
        value: &str,
        ttl_s: Option<u64>,
    ) -> Result<KvResponse, Error> {
        let mut form = vec![("value", value.to_string())];
        if let Some(ttl_s) = ttl_s {
            form.push(("ttl", ttl_s.to_string()));
        }
        self.call(
            Method::Post,
            dir,
            &[],
            &form,
            Some(idempotency_key()),
            false,
        )
        .await
    }

    /// `DELETE /v2/keys{key}` (parameters in the query, where etcd reads them).
    pub async fn kv_rm(&self, key: &str, options: RmOptions) -> Result<KvResponse, Error> {
        let mut query = Vec::new();
        flag(&mut query, "dir", options.dir);
        flag(&mut query, "recursive", options.recursive);
        if let Some(prev_value) = options.prev_value {
            query.push(("prevValue", prev_value));
        }
        if let Some(prev_index) = options.prev_index {
            query.push(("prevIndex", prev_index.to_string()));
        }
        self.call(
            Method::Delete,
            key,
            &query,
            &[],
            Some(idempotency_key()),
            false,
        )
        .await
    }

    /// Lists a directory, sorted (recursively with `recursive`).
    pub async fn kv_ls(&self, key: &str, recursive: bool) -> Result<KvResponse, Error> {
        self.kv_get(
            key,
            GetOptions {
                recursive,
                sorted: true,
                quorum: false,
            },
        )
        .await
    }

    /// Waits for the next change of `key` (or its subtree) and returns the event.
    pub async fn kv_watch(&self, key: &str, options: WatchOptions) -> Result<KvResponse, Error> {
        let mut query = vec![("wait", "true".to_string())];
        flag(&mut query, "recursive", options.recursive);
        if let Some(wait_index) = options.wait_index {
            query.push(("waitIndex", wait_index.to_string()));
        }
        self.call(Method::Get, key, &query, &[], None, true).await
    }

    /// Sends one request, retrying connection failures over the endpoints.
    async fn call(
        &self,
        method: Method,
        key: &str,
        query: &[(&str, String)],
        form: &[(&str, String)],
        idempotency_key: Option<String>,
        is_watch: bool,
    ) -> Result<KvResponse, Error> {
        let mut path_and_query = String::from("/v2/keys");
        if !key.starts_with('/') {
            path_and_query.push('/');
        }
        path_and_query.extend(utf8_percent_encode(key, PATH_KEEP));
        if !query.is_empty() {
            path_and_query.push('?');
            path_and_query.push_str(&encode_form(query));
        }
        let body = encode_form(form);
        let mut backoff = RETRY_BACKOFF_FIRST;
        let mut unreachable = Unreachable::default();
        // The longest `Retry-After` of the round's 429s: the next round waits that long.
        let mut told_to_wait: Option<Duration> = None;
        for round in 0..RETRY_ROUNDS_MAX {
            if round > 0 {
                let wait = told_to_wait.take().map_or(backoff, |told| told.min(RETRY_AFTER_MAX).max(backoff));
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
            }
            unreachable.failures.clear();
            let first = self.preferred.load(Ordering::Relaxed);
            for offset in 0..self.endpoints.len() {
                let at = (first + offset) % self.endpoints.len();
                let url = format!("{}{}", self.endpoints[at], path_and_query);
                let mut request = self.http.request(method.as_reqwest(), &url);
                if !is_watch {
                    request = request.timeout(REQUEST_TIMEOUT);
                }
                if !form.is_empty() {
                    request = request
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(body.clone());
                }
                if let Some(key) = &idempotency_key {
                    request = request.header("idempotency-key", key.as_str());
                }
                let sent_at = Instant::now();
                let error = match request.send().await {
                    Ok(response) => {
                        self.preferred.store(at, Ordering::Relaxed);
                        match decode(response).await {
                            // No leader yet (election after a restart): worth another round.
                            Decoded::Answer(Err(Error::Etcd(error))) if error.error_code == 301 => {
                                error.to_string()
                            }
                            // The member went away while it answered (a watch is cut off
                            // when its member stops): a read, a watch or a mutation with an
                            // idempotency key is sent again, to the next endpoint.
                            Decoded::BodyCut(error)
                                if method == Method::Get || idempotency_key.is_some() =>
                            {
                                error
                            }
                            Decoded::BodyCut(error) => return Err(Error::Client(error)),
                            Decoded::TooMany { error, retry_after } => {
                                told_to_wait = told_to_wait.max(retry_after.or(Some(RETRY_BACKOFF_MAX)));
                                error
                            }
                            Decoded::Answer(other) => {
                                self.answered(at, sent_at, None);
                                return other;
                            }
                        }
                    }
                    Err(error) => transport_error(&error),
                };
                unreachable.failures.push(EndpointFailure {
                    endpoint: self.endpoints[at].clone(),
                    error,
                });
            }
        }
        Err(Error::Unavailable(unreachable))
    }
}

/// An error and its causes, `: `-joined (reqwest's own text hides the cause).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An answer's `Retry-After` in whole seconds (the only form rota and etcd send).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let text = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// What went wrong sending to one endpoint, briefly, for a line that names the endpoint
/// beside it: `connection refused`, `timed out`, or the innermost cause (reqwest's own text
/// repeats the URL and hides the cause behind `error sending request`).
pub fn transport_error(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".to_string();
    }
    let mut innermost: &(dyn std::error::Error + 'static) = error;
    while let Some(cause) = innermost.source() {
        innermost = cause;
    }
    let text = innermost.to_string();
    // An OS error's text is `Connection refused (os error 111)`: keep the words.
    let text = match innermost.downcast_ref::<std::io::Error>() {
        Some(io) if io.raw_os_error().is_some() => match text.rfind(" (os error ") {
            Some(end) => text[..end].to_string(),
            None => text,
        },
        _ => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => error_chain(error),
    }
}

/// What [`decode`] made of an answer.
#[allow(clippy::large_enum_variant, reason = "one per answer, matched at once")]
enum Decoded {
    Answer(Result<KvResponse, Error>),
    /// The body could not be read to its end: the connection broke after the head.
    BodyCut(String),
    /// `429`: this member takes no more from this client just now (`--client-rate-limit`);
    /// another member may, or this one after `Retry-After`.
    TooMany { error: String, retry_after: Option<Duration> },
}

async fn decode(response: reqwest::Response) -> Decoded {
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    let etcd_index = header("x-etcd-index")
        .and_then(|text| text.parse().ok())
        .unwrap_or(0);
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    let retry_after = retry_after(response.headers());
    let body = match response.text().await {
        Ok(body) => body,
        Err(error) => return Decoded::BodyCut(format!("answer cut off: {}", transport_error(&error))),
    };
    if status == 429 {
        let error = match serde_json::from_str::<EtcdError>(&body) {
            Ok(error) => error.to_string(),
            Err(_) => format!("429 {}", body.trim()),
        };
        return Decoded::TooMany { error, retry_after };
    }
    if (200..300).contains(&status) {
        return Decoded::Answer(match serde_json::from_str::<KvResponse>(&body) {
            Ok(mut parsed) => {
                parsed.etcd_index = etcd_index;
                parsed.replayed = replayed;
                Ok(parsed)
            }
            Err(_) => Err(Error::Unexpected { status, body }),
        });
    }
    Decoded::Answer(match serde_json::from_str::<EtcdError>(&body) {
        Ok(error) => Err(Error::Etcd(error)),
        Err(_) => Err(Error::Unexpected { status, body }),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Get,
    Put,
    Post,
    Delete,
}

impl Method {
    fn as_reqwest(self) -> reqwest::Method {
        match self {
            Method::Get => reqwest::Method::GET,
            Method::Put => reqwest::Method::PUT,
            Method::Post => reqwest::Method::POST,
            Method::Delete => reqwest::Method::DELETE,
        }
    }
}

fn flag(fields: &mut Vec<(&'static str, String)>, name: &'static str, on: bool) {
    if on {
        fields.push((name, "true".to_string()));
    }
}

fn encode_form(fields: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (at, (name, value)) in fields.iter().enumerate() {
        if at > 0 {
            out.push('&');
        }
        out.extend(utf8_percent_encode(name, FORM_KEEP));
        out.push('=');
        out.extend(utf8_percent_encode(value, FORM_KEEP));
    }
    out
}

/// A fresh key per logical mutation: 128 bits from the std hasher's per-process random
/// seed, the time and a counter. Unique enough that two clients never collide.
pub fn idempotency_key() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut words = [0u64; 2];
    for (salt, word) in words.iter_mut().enumerate() {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        hasher.write_u64(count);
        hasher.write_u32(std::process::id());
        hasher.write_usize(salt);
        *word = hasher.finish();
    }
    format!("rota-{:016x}{:016x}", words[0], words[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_errors_print_as_etcdctl_does() {
        let error = EtcdError {
            error_code: 100,
            message: "Key not found".into(),
            cause: "/foo".into(),
            index: 12,
        };
        assert_eq!(error.to_string(), "100: Key not found (/foo) [12]");
    }

    #[test]
    fn forms_escape_everything_but_unreserved() {
        let encoded = encode_form(&[("value", "a b&c=d/é".to_string()), ("ttl", "5".to_string())]);
        assert_eq!(encoded, "value=a%20b%26c%3Dd%2F%C3%A9&ttl=5");
    }

    #[test]
    fn idempotency_keys_differ_per_call() {
        let keys: std::collections::HashSet<String> =
            (0..1000).map(|_| idempotency_key()).collect();
        assert_eq!(keys.len(), 1000);
        assert!(keys
            .iter()
            .all(|key| key.len() <= 64 && key.bytes().all(|b| b.is_ascii_graphic())));
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        assert!(matches!(
            Client::new(["localhost:2379"]),
            Err(Error::BadEndpoint(_))
        ));
        assert!(matches!(
            Client::new(Vec::<String>::new()),
            Err(Error::NoEndpoints)
        ));
        assert!(matches!(Client::new([""]), Err(Error::NoEndpoints)));
        assert!(Client::new(["http://127.0.0.1:2379/", "http://127.0.0.1:22379"]).is_ok());
    }

    #[test]
    fn events_decode_from_etcds_json() {
        let body = r#"{"action":"set","node":{"key":"/a","value":"1","modifiedIndex":4,"createdIndex":4},"prevNode":{"key":"/a","value":"0","modifiedIndex":3,"createdIndex":3}}"#;
        let parsed: KvResponse = serde_json::from_str(body).expect("decode");
        assert_eq!(parsed.node.value.as_deref(), Some("1"));
        assert_eq!(
            parsed.prev_node.and_then(|node| node.value).as_deref(),
            Some("0")
        );
    }
}
