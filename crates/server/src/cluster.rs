//! The endpoints about the server and its cluster rather than its keys: `/version`,
//! `/health`, `/v2/members`, `/v2/machines`, `/v2/stats/*`, in etcd 3.4's shapes.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{Method, Request, Response};

use crate::app::ServerConfig;
use crate::backend::{Backend, Member, MemberError};
use crate::limits;
use crate::respond::{self, push_go_json_string, TEXT_PLAIN, X_ETCD_CLUSTER_ID};

/// The etcd versions rota answers as: clients (python-etcd, etcdctl) check them.
pub const ETCD_SERVER_VERSION: &str = "3.4.23";
pub const ETCD_CLUSTER_VERSION: &str = "3.4.0";

/// A stable cluster id from `--initial-cluster` and `--initial-cluster-token` (see
/// [`rota_raft::cluster_id`]; the consensus crate computes and persists it).
pub fn cluster_id(initial_cluster: &str, token: &str) -> u64 {
    rota_raft::cluster_id(initial_cluster, token)
}

pub(crate) struct ClusterInfo {
    config: ServerConfig,
    started_unix_ns: u64,
}

fn json_no_newline(status: u16, body: String) -> Response<Body> {
    respond::json(status, body)
}

impl ClusterInfo {
    pub(crate) fn new(config: ServerConfig) -> ClusterInfo {
        let started_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        ClusterInfo {
            config,
            started_unix_ns,
        }
    }

    /// `{"etcdserver":..,"etcdcluster":..}`, no newline, exactly as etcd (clients and the
    /// differential tests compare it). rota's own version is in `/metrics`
    /// (`rota_build_info`), `rota --version` and the start-up log line.
    pub(crate) fn version(&self, method: &Method) -> Response<Body> {
        if method != Method::GET {
            return respond::method_not_allowed("GET");
        }
        json_no_newline(
            200,
            format!(
                "{{\"etcdserver\":\"{ETCD_SERVER_VERSION}\",\"etcdcluster\":\"{ETCD_CLUSTER_VERSION}\"}}"
            ),
        )
    }

    /// `{"health":"true"}` as text/plain (as etcd), 503 and `"false"` without a leader.
    pub(crate) fn health(&self, method: &Method, backend: &impl Backend) -> Response<Body> {
        if method != Method::GET {
            return respond::method_not_allowed("GET");
        }
        let healthy = backend.status().leader_id.is_some();
        let mut response = respond::with_status(
            if healthy { 200 } else { 503 },
            if healthy {
                "{\"health\":\"true\"}"
            } else {
                "{\"health\":\"false\"}"
            },
        );
        response.headers_mut().insert(CONTENT_TYPE, TEXT_PLAIN);
        response
    }

    /// Every member's client URLs, sorted, joined with `", "`, text/plain.
    pub(crate) fn machines(&self, method: &Method, backend: &impl Backend) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            return respond::method_not_allowed("GET,HEAD");
        }
        let mut urls: Vec<String> = self
            .member_list(backend)
            .into_iter()
            .flat_map(|(_, member)| member.client_urls)
            .collect();
        urls.sort();
        let mut response = respond::with_status(200, urls.join(", "));
        response.headers_mut().insert(CONTENT_TYPE, TEXT_PLAIN);
        response
    }

    /// The members in id order (as etcd lists them), see [`with_own_member`].
    fn member_list(&self, backend: &impl Backend) -> Vec<(u64, Member)> {
        let own = Member {
            name: self.config.name.clone(),
            peer_urls: self.config.peer_urls.clone(),
            client_urls: self.config.client_urls.clone(),
        };
        with_own_member(backend.members(), backend.status().id, own)
    }

    fn member_json(out: &mut String, id: u64, member: &Member) {
        let _ = write!(out, "{{\"id\":\"{id:x}\",\"name\":");
        push_go_json_string(out, &member.name);
        out.push_str(",\"peerURLs\":");
        push_string_array(out, &member.peer_urls);
        out.push_str(",\"clientURLs\":");
        push_string_array(out, &member.client_urls);
        out.push('}');
    }

    /// `/v2/members[/leader|/{id}]`: GET lists, POST adds, DELETE removes, PUT changes peer
    /// URLs, with etcd's answers (201 + the member, 204, 404 `No such member`, 409
    /// `membership: peerURL exists`, 415 for a body that is not JSON). Without a leader: 503
    /// with `Retry-After`.
    pub(crate) async fn members(
        &self,
        request: Request<Body>,
        rest: &str,
        backend: &impl Backend,
        cluster_id: &HeaderValue,
    ) -> Response<Body> {
        let method = request.method().clone();
        let target = rest.trim_matches('/').to_string();
        let mut response = match (&method, target.as_str()) {
            (&Method::GET, "") => {
                let members = self.member_list(backend);
                let mut body = String::with_capacity(256);
                body.push_str("{\"members\":[");
                for (at, (id, member)) in members.iter().enumerate() {
                    if at > 0 {
                        body.push(',');
                    }
                    Self::member_json(&mut body, *id, member);
                }
                body.push_str("]}\n");
                respond::json(200, body)
            }
            (&Method::GET, "leader") => {
                let members = self.member_list(backend);
                let leader_id = backend.status().leader_id;
                match members.iter().find(|(id, _)| Some(*id) == leader_id) {
                    Some((id, member)) => {
                        let mut body = String::with_capacity(256);
                        Self::member_json(&mut body, *id, member);
                        body.push('\n');
                        respond::json(200, body)
                    }
                    None => no_leader_json("During election"),
                }
            }
            (&Method::GET, _) => message_json(404, "Not found"),
            (&Method::POST, "") => match peer_urls_body(request).await {
                Ok(peer_urls) => match backend.add_member(peer_urls).await {
                    Ok((id, member)) => {
                        let mut body = String::with_capacity(256);
                        Self::member_json(&mut body, id, &member);
                        respond::json(201, body)
                    }
                    Err(error) => member_error(&error, ""),
                },
                Err(response) => response,
            },
            (&Method::DELETE, id) if !id.is_empty() => match parse_member_id(id) {
                Some(parsed) => match backend.remove_member(parsed).await {
                    Ok(()) => respond::with_status(204, Body::empty()),
                    Err(error) => member_error(&error, id),
                },
                None => no_such_member(id),
            },
            (&Method::PUT, id) if !id.is_empty() => match parse_member_id(id) {
                Some(parsed) => match peer_urls_body(request).await {
                    Ok(peer_urls) => match backend.update_member(parsed, peer_urls).await {
                        Ok(()) => respond::with_status(204, Body::empty()),
                        Err(error) => member_error(&error, id),
                    },
                    Err(response) => response,
                },
                None => no_such_member(id),
            },
            _ => respond::method_not_allowed("GET,POST,DELETE,PUT"),
        };
        response
            .headers_mut()
            .insert(X_ETCD_CLUSTER_ID.clone(), cluster_id.clone());
        response
    }

    pub(crate) fn stats_self(&self, method: &Method, backend: &impl Backend) -> Response<Body> {
        if method != Method::GET {
            return respond::method_not_allowed("GET");
        }
        let status = backend.status();
        let state = if status.is_leader {
            "StateLeader"
        } else {
            "StateFollower"
        };
        let leader = status
            .leader_id
            .map(|id| format!("{id:x}"))
            .unwrap_or_default();
        let start_time = rota_core::v2::format_expiration(self.started_unix_ns);
        // Since this member first saw the current leader lead (its start while it has seen none).
        let since = status.leader_since.unwrap_or_else(|| {
            UNIX_EPOCH + std::time::Duration::from_nanos(self.started_unix_ns)
        });
        let leader_since = rota_core::v2::format_expiration(
            since.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0),
        );
        let leader_uptime = go_duration(SystemTime::now().duration_since(since).unwrap_or_default());
        let peer_stats = backend.peer_stats();
        let mut body = String::with_capacity(320);
        body.push_str("{\"name\":");
        push_go_json_string(&mut body, &status.name);
        let _ = write!(
            body,
            ",\"id\":\"{:x}\",\"state\":\"{state}\",\"startTime\":\"{start_time}\",\
             \"leaderInfo\":{{\"leader\":\"{leader}\",\"uptime\":\"{leader_uptime}\",\"startTime\":\"{leader_since}\"}},\
             \"recvAppendRequestCnt\":{}",
            status.id, peer_stats.recv_append_requests,
        );
        push_rate(&mut body, "recvPkgRate", peer_stats.recv_pkg_rate);
        push_rate(&mut body, "recvBandwidthRate", peer_stats.recv_bandwidth_rate);
        let _ = write!(body, ",\"sendAppendRequestCnt\":{}", peer_stats.send_append_requests);
        push_rate(&mut body, "sendPkgRate", peer_stats.send_pkg_rate);
        push_rate(&mut body, "sendBandwidthRate", peer_stats.send_bandwidth_rate);
        body.push('}');
        json_no_newline(200, body)
    }

    pub(crate) fn stats_leader(&self, method: &Method, backend: &impl Backend) -> Response<Body> {
        if method != Method::GET {
            return respond::method_not_allowed("GET");
        }
        let status = backend.status();
        if !status.is_leader {
            return message_json(403, "not current leader");
        }
        let mut body = format!("{{\"leader\":\"{:x}\",\"followers\":{{", status.id);
        for (at, (id, follower)) in backend.peer_stats().followers.iter().enumerate() {
            if at > 0 {
                body.push(',');
            }
            let _ = write!(
                body,
                "\"{id:x}\":{{\"latency\":{{\"current\":{},\"average\":{},\"standardDeviation\":{},\
                 \"minimum\":{},\"maximum\":{}}},\"counts\":{{\"fail\":{},\"success\":{}}}}}",
                follower.latency_current_s,
                follower.latency_average_s,
                follower.latency_standard_deviation_s(),
                follower.latency_minimum_s,
                follower.latency_maximum_s,
                follower.fail,
                follower.success,
            );
        }
        body.push_str("}}");
        json_no_newline(200, body)
    }

    /// Mutation counters come from the store (replicated, with etcd's own counting quirks);
    /// gets and watchers are this node's.
    pub(crate) fn stats_store(
        &self,
        method: &Method,
        backend: &impl Backend,
        gets: &GetStats,
        watchers: usize,
    ) -> Response<Body> {
        if method != Method::GET {
            return respond::method_not_allowed("GET");
        }
        let store = backend.read(|state| state.v2.stats());
        let body = format!(
            "{{\"getsSuccess\":{},\"getsFail\":{},\"setsSuccess\":{},\"setsFail\":{},\"deleteSuccess\":{},\
             \"deleteFail\":{},\"updateSuccess\":{},\"updateFail\":{},\"createSuccess\":{},\"createFail\":{},\
             \"compareAndSwapSuccess\":{},\"compareAndSwapFail\":{},\"compareAndDeleteSuccess\":{},\
             \"compareAndDeleteFail\":{},\"expireCount\":{},\"watchers\":{}}}",
            gets.success.load(Ordering::Relaxed),
            gets.fail.load(Ordering::Relaxed),
            store.sets_success,
            store.sets_fail,
            store.delete_success,
            store.delete_fail,
            store.update_success,
            store.update_fail,
            store.create_success,
            store.create_fail,
            store.compare_and_swap_success,
            store.compare_and_swap_fail,
            store.compare_and_delete_success,
            store.compare_and_delete_fail,
            store.expire_count,
            watchers,
        );
        json_no_newline(200, body)
    }
}

/// `{"message":...}\n` as etcd's member API answers errors.
fn message_json(status: u16, message: &str) -> Response<Body> {
    let mut body = String::from("{\"message\":");
    push_go_json_string(&mut body, message);
    // etcd writes these with json.Marshal: no newline after the object.
    body.push('}');
    respond::json(status, body)
}

/// 503 with `Retry-After: 1`: there is no leader right now; a retry soon will likely work.
fn no_leader_json(message: &str) -> Response<Body> {
    let mut response = message_json(503, message);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn no_such_member(id: &str) -> Response<Body> {
    message_json(404, &format!("No such member: {id}"))
}

/// Member ids are 16 hex digits (etcd prints them without `0x`).
fn parse_member_id(id: &str) -> Option<u64> {
    if id.is_empty() || id.len() > 16 {
        return None;
    }
    u64::from_str_radix(id, 16).ok()
}

fn member_error(error: &MemberError, id: &str) -> Response<Body> {
    match error {
        MemberError::NotFound(_) => no_such_member(id),
        // etcd's answer; its Go client and etcdctl take it as done (a retried remove).
        MemberError::AlreadyRemoved(_) => message_json(410, &format!("Member permanently removed: {id}")),
        MemberError::Conflict(_) => message_json(409, "membership: peerURL exists"),
        MemberError::InvalidPeerUrls(reason) => message_json(400, reason),
        MemberError::NoPeerListener | MemberError::RegisteredElsewhere { .. } | MemberError::Unhealthy(_) => {
            message_json(412, &error.to_string())
        }
        // This member was removed: another member takes the request.
        MemberError::NoLeader | MemberError::ShuttingDown | MemberError::Removed => {
            no_leader_json(&error.to_string())
        }
        MemberError::Failed(reason) => {
            tracing::warn!(%reason, "membership change failed");
            message_json(500, reason)
        }
    }
}

/// The `{"peerURLs": [...]}` body of a member POST or PUT (JSON only, as etcd).
#[allow(clippy::result_large_err)]
async fn peer_urls_body(request: Request<Body>) -> Result<Vec<String>, Response<Body>> {
    #[derive(serde::Deserialize)]
    struct PeerUrls {
        /// Go decodes `null` as no URLs.
        #[serde(rename = "peerURLs", default)]
        peer_urls: Option<Vec<String>>,
    }
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(message_json(
            415,
            &format!("Bad Content-Type {content_type}, accept application/json"),
        ));
    }
    let body = axum::body::to_bytes(request.into_body(), limits::MEMBERS_BODY_BYTES_MAX)
        .await
        .map_err(|_| {
            message_json(
                413,
                &format!("body over {} bytes", limits::MEMBERS_BODY_BYTES_MAX),
            )
        })?;
    let parsed: PeerUrls =
        serde_json::from_slice(&body).map_err(|error| message_json(400, &error.to_string()))?;
    // etcd's `types.NewURLs` of none (`{}`, `"peerURLs": []` or `null`).
    match parsed.peer_urls {
        Some(peer_urls) if !peer_urls.is_empty() => Ok(peer_urls),
        _ => Err(message_json(400, "no valid URLs given")),
    }
}

fn push_string_array(out: &mut String, items: &[String]) {
    out.push('[');
    for (at, item) in items.iter().enumerate() {
        if at > 0 {
            out.push(',');
        }
        push_go_json_string(out, item);
    }
    out.push(']');
}

/// A rate field of `/v2/stats/self`, left out while it is 0 as etcd's (`omitempty`).
fn push_rate(body: &mut String, name: &str, value: f64) {
    if value > 0.0 && value.is_finite() {
        let _ = write!(body, ",\"{name}\":{value}");
    }
}

/// Go's `time.Duration.String()` for durations under a few days: `1h2m3.5s`, `15.3298s`,
/// `250ms`.
pub fn go_duration(duration: std::time::Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", trim_fraction(nanos, 1_000));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", trim_fraction(nanos, 1_000_000));
    }
    let hours = nanos / 3_600_000_000_000;
    let minutes = (nanos / 60_000_000_000) % 60;
    let seconds = trim_fraction(nanos % 60_000_000_000, 1_000_000_000);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, minutes) => format!("{minutes}m{seconds}s"),
        (hours, minutes) => format!("{hours}h{minutes}m{seconds}s"),
    }
}

/// `value / unit` with the fraction's trailing zeros trimmed: (1_500, 1_000) → "1.5".
fn trim_fraction(value: u128, unit: u128) -> String {
    let whole = value / unit;
    let fraction = value % unit;
    if fraction == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// `GET /v2/keys` outcomes on this node, for `/v2/stats/store` (etcd counts them per member
/// too: reads don't go through Raft).
#[derive(Default)]
pub(crate) struct GetStats {
    success: AtomicU64,
    fail: AtomicU64,
}

impl GetStats {
    pub(crate) fn count(&self, ok: bool) {
        let counter = if ok { &self.success } else { &self.fail };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// `members` in id order, with what this node knows of itself (`own_id`, `own`) filled in:
/// all of it when the backend knows no membership, and its name and client URLs while its
/// own entry has no client URLs yet. A member publishes them through Raft only once there
/// is a leader; etcd answers clients only after that, rota answers before, and `etcdctl`
/// refuses a cluster that lists no client URLs at all ("no available published client
/// urls") for that moment after a cluster starts.
fn with_own_member(mut members: Vec<(u64, Member)>, own_id: u64, own: Member) -> Vec<(u64, Member)> {
    if members.is_empty() {
        members.push((own_id, own));
    } else if let Some((_, member)) = members.iter_mut().find(|(id, _)| *id == own_id) {
        if member.client_urls.is_empty() {
            member.client_urls = own.client_urls;
            if member.name.is_empty() {
                member.name = own.name;
            }
        }
    }
    members.sort_by_key(|(id, _)| *id);
    members
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn member(name: &str, peer: &str, client: &[&str]) -> Member {
        Member {
            name: name.into(),
            peer_urls: vec![peer.into()],
            client_urls: client.iter().map(|url| url.to_string()).collect(),
        }
    }

    #[test]
    fn a_member_lists_its_own_client_urls_before_it_published_them() {
        let own = member("m2", "http://p2", &["http://c2"]);
        let unpublished = vec![
            (3, member("m3", "http://p3", &[])),
            (2, member("m2", "http://p2", &[])),
            (1, member("m1", "http://p1", &["http://c1"])),
        ];
        assert_eq!(
            with_own_member(unpublished, 2, own.clone()),
            vec![
                (1, member("m1", "http://p1", &["http://c1"])),
                (2, member("m2", "http://p2", &["http://c2"])),
                (3, member("m3", "http://p3", &[])),
            ]
        );
        // Published: the membership wins (it is what every member answers).
        let published = vec![(2, member("m2", "http://p2", &["http://other"]))];
        assert_eq!(with_own_member(published.clone(), 2, own.clone()), published);
        // No membership known: this node alone; another node's list is left as it is.
        assert_eq!(with_own_member(Vec::new(), 2, own.clone()), vec![(2, own.clone())]);
        let others = vec![(1, member("m1", "http://p1", &[]))];
        assert_eq!(with_own_member(others.clone(), 2, own), others);
    }

    #[test]
    fn durations_print_as_go_does() {
        assert_eq!(
            go_duration(Duration::from_nanos(15_329_801_709)),
            "15.329801709s"
        );
        assert_eq!(go_duration(Duration::from_secs(62)), "1m2s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_micros(2500)), "2.5ms");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }
}
