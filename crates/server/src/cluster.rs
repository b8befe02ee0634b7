//! The endpoints about the server and its cluster rather than its keys: `/version`,
//! `/health`, `/v2/members`, `/v2/machines`, `/v2/stats/*`, in etcd 3.4's shapes.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::header::{HeaderValue, CONTENT_TYPE};
use axum::http::{Method, Response};

use crate::app::ServerConfig;
use crate::backend::{Backend, Member};
use crate::respond::{self, push_go_json_string, TEXT_PLAIN, X_ETCD_CLUSTER_ID};

/// The etcd versions rota answers as: clients (python-etcd, etcdctl) check them.
pub const ETCD_SERVER_VERSION: &str = "3.4.23";
pub const ETCD_CLUSTER_VERSION: &str = "3.4.0";

/// A stable cluster id from `--initial-cluster` and `--initial-cluster-token`: FNV-1a 64 over
/// the members sorted by name (so every member computes the same id whatever order its
/// flag lists them in) and the token. The top bit is set so the id always prints as 16 hex
/// digits.
pub fn cluster_id(initial_cluster: &str, token: &str) -> u64 {
    let mut members: Vec<&str> = initial_cluster
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    members.sort_unstable();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(members.join(",").as_bytes());
    feed(&[0]);
    feed(token.as_bytes());
    hash | (1 << 63)
}

pub(crate) struct ClusterInfo {
    config: ServerConfig,
    started_unix_ns: u64,
    started: Instant,
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
            started: Instant::now(),
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

    /// The members in id order (as etcd lists them); this node from the config when the
    /// backend doesn't know the membership.
    fn member_list(&self, backend: &impl Backend) -> Vec<(u64, Member)> {
        let mut members = backend.members();
        if members.is_empty() {
            let member = Member {
                name: self.config.name.clone(),
                peer_urls: self.config.peer_urls.clone(),
                client_urls: self.config.client_urls.clone(),
            };
            members.push((backend.status().id, member));
        }
        members.sort_by_key(|(id, _)| *id);
        members
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

    /// `GET /v2/members` and `GET /v2/members/leader`.
    pub(crate) fn members(
        &self,
        method: &Method,
        rest: &str,
        backend: &impl Backend,
        cluster_id: &HeaderValue,
    ) -> Response<Body> {
        if method != Method::GET {
            return respond::method_not_allowed("GET");
        }
        let members = self.member_list(backend);
        let mut body = String::with_capacity(256);
        let mut response = match rest.trim_matches('/') {
            "" => {
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
            "leader" => {
                let leader_id = backend.status().leader_id;
                match members.iter().find(|(id, _)| Some(*id) == leader_id) {
                    Some((id, member)) => {
                        Self::member_json(&mut body, *id, member);
                        body.push('\n');
                        respond::json(200, body)
                    }
                    None => respond::json(503, "{\"message\":\"During leader election\"}\n"),
                }
            }
            _ => respond::json(404, "{\"message\":\"Not found\"}\n"),
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
        let uptime = go_duration(self.started.elapsed());
        let mut body = String::with_capacity(320);
        body.push_str("{\"name\":");
        push_go_json_string(&mut body, &status.name);
        let _ = write!(
            body,
            ",\"id\":\"{:x}\",\"state\":\"{state}\",\"startTime\":\"{start_time}\",\
             \"leaderInfo\":{{\"leader\":\"{leader}\",\"uptime\":\"{uptime}\",\"startTime\":\"{start_time}\"}},\
             \"recvAppendRequestCnt\":0,\"sendAppendRequestCnt\":0}}",
            status.id
        );
        json_no_newline(200, body)
    }

    pub(crate) fn stats_leader(&self, method: &Method, backend: &impl Backend) -> Response<Body> {
        if method != Method::GET {
            return respond::method_not_allowed("GET");
        }
        let status = backend.status();
        if !status.is_leader {
            return respond::json(403, "{\"message\":\"not current leader\"}\n");
        }
        json_no_newline(
            200,
            format!("{{\"leader\":\"{:x}\",\"followers\":{{}}}}", status.id),
        )
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn cluster_id_ignores_member_order_and_depends_on_the_token() {
        let a = cluster_id("a=http://1,b=http://2", "t");
        assert_eq!(a, cluster_id("b=http://2, a=http://1", "t"));
        assert_ne!(a, cluster_id("a=http://1,b=http://2", "u"));
        assert_eq!(format!("{a:x}").len(), 16);
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
