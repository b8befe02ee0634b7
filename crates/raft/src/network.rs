//! The client side of the peer protocol: openraft's RPCs (append, vote, snapshot chunks) and
//! rota's own (forwarded proposals and reads, membership, hand-over) as HTTP POSTs with
//! bincode bodies to a member's first peer URL.
//!
//! Timeouts: openraft bounds each append/vote by its own timer (the heartbeat interval, the
//! election timeout); the HTTP request gets the same bound from `RPCOption::hard_ttl`, so a
//! stalled connection is dropped rather than left behind. Snapshot chunks get
//! `install_snapshot_timeout` each (long: the last chunk makes the receiver verify, write
//! and fsync the whole snapshot before it answers).
//!
//! Errors: a refused connection is [`Unreachable`] (openraft backs off before retrying), a
//! timeout or a broken body is a network error (retried at once), a token mismatch is
//! logged loudly on both sides and treated as unreachable. A 410 saying this member was
//! removed from the cluster sets the node's removed flag (the process then stops, as etcd's). The per-follower latency and
//! success/failure counts of appends feed `/v2/stats/leader`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::AnyError;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::peer::{
    self, PeerRpc, PEER_CLUSTER_ID_HEADER, PEER_FROM_HEADER, PEER_PATH_PREFIX, PEER_REMOVED_STATUS, PEER_TOKEN_HEADER, PEER_TO_HEADER,
    PEER_WRONG_MEMBER_STATUS,
};
use crate::types::{Member, NodeId, TypeConfig};
use crate::MEMBER_REMOVED;

/// How long to wait for a TCP connection to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Idle keep-alive connections kept per peer.
const IDLE_CONNECTIONS_PER_PEER_MAX: usize = 8;
/// After a peer was unreachable, openraft waits this long before trying it again.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);

/// One HTTP client and this member's identity, shared by every peer connection.
#[derive(Clone)]
pub(crate) struct PeerTransport {
    inner: Arc<TransportInner>,
}

struct TransportInner {
    http: reqwest::Client,
    token: String,
    from: NodeId,
    /// Sent with every call; 0 (a process that is not a member yet) sends none.
    cluster_id: u64,
    stats: PeerStats,
    hints: Arc<crate::split_vote::ElectionHints>,
    /// This member's "removed from the cluster" flag (the node's `removed`): set when a peer
    /// answers that we were removed.
    removed: tokio::sync::watch::Sender<bool>,
    /// Peers whose last call failed to get through. openraft retries an unreachable
    /// follower five times a second and logs each failure; rota logs the change (and a
    /// reminder each [`STILL_UNREACHABLE_EVERY`]).
    unreachable: Mutex<BTreeMap<NodeId, TroubleSpell>>,
    /// Senders whose RPCs we refuse (another token, meant for another member), by kind:
    /// when that was last logged. Their heartbeats come several times a second.
    refusing: Mutex<BTreeMap<(NodeId, &'static str), Instant>>,
}

/// How often a peer that stays unreachable is logged again.
const STILL_UNREACHABLE_EVERY: Duration = Duration::from_secs(60);

/// A call that timed out or was cut off is logged only once the peer has failed this long:
/// on a loaded machine a single append now and then times out and the next one gets through
/// a few milliseconds later (an audit counted ~60 such warnings in 15 minutes, each followed
/// by "reachable again"). A refused connection (nothing listens: the member is down) and a
/// peer refusing us are logged at once.
const TIMEOUTS_LOGGED_AFTER: Duration = Duration::from_secs(1);

/// One run of failed calls to a peer.
#[derive(Debug)]
struct TroubleSpell {
    kind: Trouble,
    /// The first failed call.
    since: Instant,
    /// The latest failed call.
    last_failed: Instant,
    /// When it was last logged (`None`: not yet).
    logged: Option<Instant>,
}

/// Counts of appends sent to followers and received from a leader (`/v2/stats/*`). As
/// etcd's, they count appends that carry entries: openraft's heartbeats are appends with
/// none, which etcd sends as heartbeat messages it does not count.
#[derive(Default)]
pub(crate) struct PeerStats {
    pub send_append: AtomicU64,
    pub recv_append: AtomicU64,
    send_rate: Mutex<RateQueue>,
    recv_rate: Mutex<RateQueue>,
    pub followers: Mutex<BTreeMap<NodeId, FollowerStats>>,
}

impl PeerStats {
    /// An append with entries, of `bytes` encoded, sent to a follower.
    pub(crate) fn sent_append(&self, bytes: usize) {
        self.send_append.fetch_add(1, Ordering::Relaxed);
        lock(&self.send_rate).record(Instant::now(), bytes);
    }

    /// An append with entries, of `bytes` encoded, received from the leader.
    pub(crate) fn received_append(&self, bytes: usize) {
        self.recv_append.fetch_add(1, Ordering::Relaxed);
        lock(&self.recv_rate).record(Instant::now(), bytes);
    }

    /// (packets, bytes) per second of the appends sent lately, and of those received.
    pub(crate) fn rates(&self, now: Instant) -> ((f64, f64), (f64, f64)) {
        (lock(&self.send_rate).rates(now), lock(&self.recv_rate).rates(now))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The latest appends sent (or received), for etcd's `sendPkgRate` and `sendBandwidthRate`
/// (`recv...` on a follower) in `/v2/stats/self`: as etcd's stats queue, the last 200, rated
/// over the time they span, and nothing once the newest is more than a second old.
#[derive(Debug, Default)]
pub(crate) struct RateQueue {
    samples: std::collections::VecDeque<(Instant, usize)>,
    bytes: usize,
}

impl RateQueue {
    const CAPACITY: usize = 200;
    const STALE_AFTER: Duration = Duration::from_secs(1);

    pub(crate) fn record(&mut self, at: Instant, bytes: usize) {
        if self.samples.len() == Self::CAPACITY {
            if let Some((_, oldest)) = self.samples.pop_front() {
                self.bytes -= oldest;
            }
        }
        self.samples.push_back((at, bytes));
        self.bytes += bytes;
    }

    /// (packets per second, bytes per second) at `now`; (0, 0) when there is nothing to
    /// rate (etcd then leaves both fields out).
    pub(crate) fn rates(&mut self, now: Instant) -> (f64, f64) {
        let (Some(&(first, _)), Some(&(last, _))) = (self.samples.front(), self.samples.back()) else {
            return (0.0, 0.0);
        };
        if now.saturating_duration_since(last) > Self::STALE_AFTER {
            self.samples.clear();
            self.bytes = 0;
            return (0.0, 0.0);
        }
        let span = last.duration_since(first).as_secs_f64();
        if span == 0.0 {
            return (0.0, 0.0);
        }
        (self.samples.len() as f64 / span, self.bytes as f64 / span)
    }
}

/// What `/v2/stats/leader` reports about one follower (etcd's shape; latencies of
/// successful appends in seconds, as etcd 3.4 reports them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FollowerStats {
    pub success: u64,
    pub fail: u64,
    pub latency_current_s: f64,
    pub latency_average_s: f64,
    pub latency_minimum_s: f64,
    pub latency_maximum_s: f64,
    /// Sum of squares, for the standard deviation.
    latency_squares_s: f64,
}

impl FollowerStats {
    fn record(&mut self, latency_s: f64) {
        self.success += 1;
        let n = self.success as f64;
        self.latency_current_s = latency_s;
        self.latency_average_s += (latency_s - self.latency_average_s) / n;
        self.latency_squares_s += latency_s * latency_s;
        if self.success == 1 || latency_s < self.latency_minimum_s {
            self.latency_minimum_s = latency_s;
        }
        self.latency_maximum_s = self.latency_maximum_s.max(latency_s);
    }

    pub fn latency_standard_deviation_s(&self) -> f64 {
        if self.success == 0 {
            return 0.0;
        }
        let n = self.success as f64;
        (self.latency_squares_s / n - self.latency_average_s * self.latency_average_s)
            .max(0.0)
            .sqrt()
    }
}

/// Why a peer call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// Nothing was delivered (connection refused or not established in time).
    #[error("node {target:x} at {url} is unreachable: {reason}")]
    Unreachable {
        target: NodeId,
        url: String,
        reason: String,
    },
    /// Sent, but no usable answer came back (timeout, broken connection, bad body): the
    /// request may or may not have been acted on.
    #[error("node {target:x} at {url}: {reason}")]
    Network {
        target: NodeId,
        url: String,
        reason: String,
    },
    /// The peer refused the request (token mismatch, undecodable, shutting down).
    #[error("node {target:x} at {url} refused the request ({status}): {reason}")]
    Refused {
        target: NodeId,
        url: String,
        status: u16,
        reason: String,
    },
    #[error("node {target:x} has no peer URL")]
    NoUrl { target: NodeId },
}

impl CallError {
    /// True if the request certainly did not reach the peer's handler.
    pub(crate) fn not_delivered(&self) -> bool {
        matches!(
            self,
            CallError::Unreachable { .. } | CallError::NoUrl { .. } | CallError::Refused { .. }
        )
    }
}

impl PeerTransport {
    /// `source_ip`: bind every outgoing peer connection to this local address (see
    /// `NodeConfig::peer_source_ip`).
    pub(crate) fn new(
        token: String,
        from: NodeId,
        cluster_id: u64,
        hints: Arc<crate::split_vote::ElectionHints>,
        source_ip: Option<std::net::IpAddr>,
    ) -> PeerTransport {
        let http = reqwest::Client::builder()
            .local_address(source_ip)
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_PEER_MAX)
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            // Building fails only if the TLS backend cannot initialize; there is none.
            .unwrap_or_else(|_| reqwest::Client::new());
        PeerTransport {
            inner: Arc::new(TransportInner {
                http,
                token,
                from,
                cluster_id,
                stats: PeerStats::default(),
                hints,
                removed: tokio::sync::watch::Sender::new(false),
                unreachable: Mutex::new(BTreeMap::new()),
                refusing: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Logs a peer becoming unreachable once, then every [`STILL_UNREACHABLE_EVERY`].
    /// `at_once`: the call could not connect; otherwise (it timed out, was cut off) only
    /// after [`TIMEOUTS_LOGGED_AFTER`] of failures.
    fn note_unreachable(&self, target: NodeId, url: &str, reason: &str, at_once: bool) {
        self.note_trouble(target, url, reason, Trouble::Unreachable, at_once);
    }

    /// Like [`Self::note_unreachable`], for a peer URL where something answers and refuses
    /// us (another cluster's token, another member): once, then every
    /// [`STILL_UNREACHABLE_EVERY`], not at each heartbeat.
    fn note_refused(&self, target: NodeId, url: &str, reason: &str) {
        self.note_trouble(target, url, reason, Trouble::Refused, true);
    }

    /// Whether refusing an RPC of `kind` from `from` should be logged now: the first time,
    /// then every [`STILL_UNREACHABLE_EVERY`].
    pub(crate) fn log_refusal(&self, from: NodeId, kind: &'static str) -> bool {
        let now = Instant::now();
        let mut refusing = self.inner.refusing.lock().unwrap_or_else(|e| e.into_inner());
        match refusing.get(&(from, kind)) {
            Some(logged) if now.duration_since(*logged) < STILL_UNREACHABLE_EVERY => false,
            _ => {
                refusing.insert((from, kind), now);
                true
            }
        }
    }

    fn note_trouble(&self, target: NodeId, url: &str, reason: &str, trouble: Trouble, at_once: bool) {
        if target == 0 {
            return;
        }
        let now = Instant::now();
        let mut unreachable = self.inner.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        let spell = match unreachable.get_mut(&target) {
            Some(spell) if spell.kind == trouble => {
                spell.last_failed = now;
                spell
            }
            // New, or another kind of trouble than before.
            _ => {
                let spell = TroubleSpell { kind: trouble, since: now, last_failed: now, logged: None };
                unreachable.insert(target, spell);
                unreachable.get_mut(&target).expect("just inserted")
            }
        };
        let for_s = match spell.logged {
            Some(logged) if now.duration_since(logged) < STILL_UNREACHABLE_EVERY => return,
            Some(_) => Some(now.duration_since(spell.since).as_secs()),
            None if !at_once && now.duration_since(spell.since) < TIMEOUTS_LOGGED_AFTER => return,
            None => None,
        };
        spell.logged = Some(now);
        let peer = format!("{target:x}");
        match (trouble, for_s) {
            (Trouble::Unreachable, None) => {
                tracing::warn!(%peer, %url, %reason, "peer unreachable; retrying")
            }
            (Trouble::Unreachable, Some(for_s)) => {
                tracing::warn!(%peer, %url, %reason, for_s, "peer still unreachable; retrying")
            }
            (Trouble::Refused, None) => {
                tracing::error!(%peer, %url, %reason, "peer refused us; retrying")
            }
            (Trouble::Refused, Some(for_s)) => {
                tracing::error!(%peer, %url, %reason, for_s, "peer still refuses us; retrying")
            }
        }
    }

    /// The peers whose last call failed (unreachable, or refusing us), until one succeeds.
    /// On a leader, which calls every follower at each heartbeat, these are the followers
    /// it cannot reach now.
    pub(crate) fn troubled_peers(&self) -> std::collections::BTreeSet<NodeId> {
        let unreachable = self.inner.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        unreachable.keys().copied().collect()
    }

    fn note_reachable(&self, target: NodeId, url: &str) {
        let mut unreachable = self.inner.unreachable.lock().unwrap_or_else(|e| e.into_inner());
        let Some(spell) = unreachable.remove(&target) else { return };
        let peer = format!("{target:x}");
        // How long calls failed, from the first failed call to the last: the peer may have
        // been back for a while when this member next called it (a follower calls another
        // member only to forward a write or ask for a vote).
        let failed_for_ms = spell.last_failed.duration_since(spell.since).as_millis() as u64;
        let last_failed_ms_ago = spell.last_failed.elapsed().as_millis() as u64;
        if spell.logged.is_some() {
            tracing::info!(%peer, %url, failed_for_ms, last_failed_ms_ago, "peer reachable again");
        } else {
            tracing::debug!(%peer, %url, failed_for_ms, "a call to the peer failed, the next got through");
        }
    }

    pub(crate) fn stats(&self) -> &PeerStats {
        &self.inner.stats
    }

    pub(crate) fn hints(&self) -> &Arc<crate::split_vote::ElectionHints> {
        &self.inner.hints
    }

    /// The flag set once a peer answered that this member was removed (the node shares it).
    pub(crate) fn removed(&self) -> &tokio::sync::watch::Sender<bool> {
        &self.inner.removed
    }

    /// One RPC to the member `target` at its first peer URL.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        member: &Member,
        rpc: PeerRpc,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        self.call_encoded(target, member, rpc, peer::encode(request), timeout).await
    }

    /// [`Self::call`] with the request encoded already (`peer::encode`).
    pub(crate) async fn call_encoded<Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        member: &Member,
        rpc: PeerRpc,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let base = member
            .peer_urls
            .first()
            .ok_or(CallError::NoUrl { target })?;
        self.call_url_encoded(target, base, rpc, body, timeout).await
    }

    pub(crate) async fn call_url<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        base_url: &str,
        rpc: PeerRpc,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        self.call_url_encoded(target, base_url, rpc, peer::encode(request), timeout).await
    }

    async fn call_url_encoded<Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        base_url: &str,
        rpc: PeerRpc,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let url = format!(
            "{}{PEER_PATH_PREFIX}{}",
            base_url.trim_end_matches('/'),
            rpc.name()
        );
        let mut post = self
            .inner
            .http
            .post(&url)
            .header(PEER_TOKEN_HEADER, &self.inner.token)
            .header(PEER_FROM_HEADER, format!("{:016x}", self.inner.from))
            .header("content-type", "application/octet-stream");
        if target != 0 {
            post = post.header(PEER_TO_HEADER, format!("{target:016x}"));
        }
        if self.inner.cluster_id != 0 {
            post = post.header(PEER_CLUSTER_ID_HEADER, format!("{:016x}", self.inner.cluster_id));
        }
        let sent = post.timeout(timeout).body(body).send().await;
        let response = match sent {
            Ok(response) => response,
            Err(error) if error.is_connect() => {
                let reason = error_chain(&error);
                self.note_unreachable(target, &url, &reason, !error.is_timeout());
                return Err(CallError::Unreachable { target, url, reason });
            }
            Err(error) => {
                let reason = error_chain(&error);
                self.note_unreachable(target, &url, &reason, false);
                return Err(CallError::Network { target, url, reason });
            }
        };
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|error| CallError::Network {
            target,
            url: url.clone(),
            reason: error_chain(&error),
        })?;
        let refusal = match status {
            // Our request's body did not decode there: most likely a member running an older
            // rota, which cannot read what this version writes (its log stops there).
            400 => Some("the peer cannot decode what this member sent (a member running another rota version? all members must run the same one)"),
            403 => Some("cluster token mismatch"),
            412 => Some("cluster id mismatch"),
            PEER_WRONG_MEMBER_STATUS => Some("another member answers at this URL"),
            _ => None,
        };
        match refusal {
            Some(what) => {
                // The peer's answer names the refusal itself (its first words are `what`);
                // say it once, and that it is the peer speaking.
                let answer = String::from_utf8_lossy(&bytes);
                let reason = if answer.starts_with(what) {
                    format!("the peer answers: {answer}")
                } else {
                    format!("{what}: the peer answers: {answer}")
                };
                self.note_refused(target, &url, &reason);
            }
            None => self.note_reachable(target, &url),
        }
        if status != 200 {
            let reason = String::from_utf8_lossy(&bytes).into_owned();
            // A member of our cluster (the token matched) says we were removed: the body
            // must say so too, so that a 410 from something else at that URL does not count.
            let told_removed = status == PEER_REMOVED_STATUS && reason.contains(MEMBER_REMOVED);
            let first_time = told_removed && !self.inner.removed.send_replace(true);
            if first_time {
                tracing::warn!(
                    peer = %format!("{target:x}"),
                    %reason,
                    "a peer refused our {} as from a removed member",
                    rpc.name()
                );
            }
            return Err(CallError::Refused {
                target,
                url,
                status,
                reason,
            });
        }
        bincode::deserialize(&bytes).map_err(|error| CallError::Network {
            target,
            url,
            reason: format!("undecodable answer: {error}"),
        })
    }
}

/// What [`PeerTransport::note_trouble`] logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trouble {
    Unreachable,
    Refused,
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Creates a [`PeerClient`] per peer openraft replicates to.
#[derive(Clone)]
pub(crate) struct PeerNetwork {
    pub transport: PeerTransport,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            target,
            member: node.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// The connection to one peer (HTTP keep-alive connections are pooled by the transport).
pub(crate) struct PeerClient {
    target: NodeId,
    member: Member,
    transport: PeerTransport,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

impl PeerClient {
    /// `body`: the request, encoded (`peer::encode`).
    async fn raft_call<Resp, E>(&self, rpc: PeerRpc, body: Vec<u8>, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Result<Resp, RaftError<NodeId, E>>, CallError> = self
            .transport
            .call_encoded(self.target, &self.member, rpc, body, option.hard_ttl())
            .await;
        match answer {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.member.clone(),
                remote,
            ))),
            Err(error) if error.not_delivered() => Err(RPCError::Unreachable(Unreachable::new(
                &Message(error.to_string()),
            ))),
            Err(error) => Err(RPCError::Network(NetworkError::from(AnyError::error(
                error.to_string(),
            )))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let started = Instant::now();
        let stats = self.transport.stats();
        let body = peer::encode(&rpc);
        if !rpc.entries.is_empty() {
            stats.sent_append(body.len());
        }
        let result = self.raft_call(PeerRpc::AppendEntries, body, &option).await;
        let mut followers = stats
            .followers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let follower = followers.entry(self.target).or_default();
        match &result {
            Ok(_) => follower.record(started.elapsed().as_secs_f64()),
            Err(_) => follower.fail += 1,
        }
        result
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.raft_call(PeerRpc::InstallSnapshot, peer::encode(&rpc), &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.raft_call(PeerRpc::Vote, peer::encode(&rpc), &option).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transport() -> PeerTransport {
        let hints = Arc::new(crate::split_vote::ElectionHints::new(1_000));
        PeerTransport::new("token".into(), 1, 0, hints, None)
    }

    fn logged(transport: &PeerTransport, target: NodeId) -> Option<bool> {
        let unreachable = transport.inner.unreachable.lock().unwrap();
        unreachable.get(&target).map(|spell| spell.logged.is_some())
    }

    #[test]
    fn rates_span_the_latest_200_appends_and_lapse_after_a_second() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut queue = RateQueue::default();
        assert_eq!(queue.rates(at(0)), (0.0, 0.0), "nothing sent");
        queue.record(at(0), 100);
        assert_eq!(queue.rates(at(0)), (0.0, 0.0), "one append spans no time");
        queue.record(at(500), 300);
        // 2 appends and 400 bytes over 0.5 s.
        assert_eq!(queue.rates(at(600)), (4.0, 800.0));
        // 300 more over the next 299 ms: the oldest of the 302 fall out, 200 stay.
        for i in 1..=300 {
            queue.record(at(500 + i), 10);
        }
        let (packets, bytes) = queue.rates(at(800));
        assert_eq!(packets, 200.0 / 0.199, "200 appends from 601 ms to 800 ms");
        assert_eq!(bytes, 2_000.0 / 0.199);
        // A second after the newest: nothing, as etcd, and the queue starts again.
        assert_eq!(queue.rates(at(1_801)), (0.0, 0.0));
        queue.record(at(2_000), 50);
        queue.record(at(2_100), 50);
        assert_eq!(queue.rates(at(2_100)), (20.0, 1_000.0));
    }

    #[test]
    fn a_timeout_is_logged_only_once_the_peer_has_failed_for_a_while() {
        let transport = transport();
        transport.note_unreachable(2, "http://p2", "operation timed out", false);
        assert_eq!(logged(&transport, 2), Some(false), "one timeout: noted, not logged");
        assert!(transport.troubled_peers().contains(&2), "but counted as troubled at once");
        transport.note_reachable(2, "http://p2");
        assert_eq!(logged(&transport, 2), None);

        transport.note_unreachable(2, "http://p2", "operation timed out", false);
        transport.inner.unreachable.lock().unwrap().get_mut(&2).unwrap().since -= TIMEOUTS_LOGGED_AFTER;
        transport.note_unreachable(2, "http://p2", "operation timed out", false);
        assert_eq!(logged(&transport, 2), Some(true), "failing for a second: logged");
    }

    #[test]
    fn a_refused_connection_or_a_refusal_is_logged_at_once() {
        let transport = transport();
        transport.note_unreachable(2, "http://p2", "connection refused", true);
        assert_eq!(logged(&transport, 2), Some(true));
        transport.note_refused(3, "http://p3", "cluster token mismatch");
        assert_eq!(logged(&transport, 3), Some(true));
    }
}
