//! The request router and the `/v2/keys` handlers: HTTP in, `Command` out, etcd's answer back.
//!
//! Routing follows etcd's Go mux: the path is percent-decoded, unclean paths get a 301 to the
//! cleaned path, unknown paths a text 404. Handlers hold no lock across an await: reads run
//! one short closure on the applied state, writes await only their proposal.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::header::{HeaderValue, ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{Method, Request, Response, StatusCode};
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use rota_core::v2::{
    render_json, Action, DeleteCommand, SetCommand, V2Command, V2Error, V2Response,
};
use rota_core::Command;

use crate::backend::{Applied, Backend, ProposeError, Proposed};
use crate::body_budget::{BodyBudget, BodyReservation};
use crate::client_rate::ClientRate;
use crate::cluster::{ClusterInfo, GetStats};
use crate::form::{parse_media_type, Form};
use crate::limits;
use crate::metrics::{Metrics, Route};
use crate::params::{parse_key_params, KeyParams};
use crate::respond::{
    self, IDEMPOTENT_REPLAYED, X_ETCD_CLUSTER_ID, X_ETCD_INDEX, X_RAFT_INDEX,
    X_RAFT_TERM,
};

/// What the server says about itself and its cluster (from the `serve` flags).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// `--name`.
    pub name: String,
    /// `X-Etcd-Cluster-Id`, see [`crate::cluster_id`].
    pub cluster_id: u64,
    /// `--advertise-client-urls`.
    pub client_urls: Vec<String>,
    /// `--initial-advertise-peer-urls`.
    pub peer_urls: Vec<String>,
    /// Concurrent watches allowed; [`limits::WATCHERS_MAX`] unless a test lowers it.
    pub watchers_max: usize,
    /// Request-body bytes buffered at once; [`limits::BODY_BUDGET_BYTES_MAX`] unless a test
    /// lowers it.
    pub body_budget_bytes_max: usize,
    /// Answer bytes held at once; [`limits::RESPONSE_BUDGET_BYTES_MAX`] unless a test
    /// lowers it.
    pub response_budget_bytes_max: usize,
    /// `--client-rate-limit`: requests per second per client address; 0: no limit.
    pub client_rate_limit: u32,
    /// `--host-whitelist`: the host names a request's `Host` may name (any port); empty or
    /// `*`: any. Others are refused with etcd's 421, against DNS rebinding.
    pub host_whitelist: Vec<String>,
    /// `--cors`: the origins `/v2` answers carry CORS headers for; empty or `*`: any (`*`).
    pub cors: Vec<String>,
}

impl ServerConfig {
    pub fn single(name: impl Into<String>) -> ServerConfig {
        ServerConfig {
            name: name.into(),
            cluster_id: crate::cluster_id("default=http://127.0.0.1:2380", "etcd-cluster"),
            client_urls: vec!["http://127.0.0.1:2379".into()],
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            watchers_max: limits::WATCHERS_MAX,
            body_budget_bytes_max: limits::BODY_BUDGET_BYTES_MAX,
            response_budget_bytes_max: limits::RESPONSE_BUDGET_BYTES_MAX,
            client_rate_limit: 0,
            host_whitelist: Vec::new(),
            cors: Vec::new(),
        }
    }
}

/// One server: the backend, its config, counters and the shutdown signal.
pub struct App<B> {
    pub(crate) backend: B,
    pub(crate) cluster: ClusterInfo,
    pub(crate) cluster_id_header: HeaderValue,
    pub(crate) watchers: Arc<AtomicUsize>,
    pub(crate) watchers_max: usize,
    /// Shared by every request that buffers a body (see `body_budget`).
    pub(crate) body_budget: Arc<BodyBudget>,
    /// Shared by every answer over the exempt size until it is sent (see `budget_answer`).
    response_budget: Arc<BodyBudget>,
    pub(crate) metrics: Metrics,
    pub(crate) get_stats: GetStats,
    pub(crate) shutdown: tokio::sync::watch::Sender<bool>,
    requests_total: AtomicU64,
    /// The `/v1` layer's state (lease waiters, job events, its metrics).
    pub(crate) v1: crate::v1::V1,
    /// `--client-rate-limit`, when set.
    client_rate: Option<ClientRate>,
    /// `--host-whitelist` (lowercase; empty: any host).
    host_whitelist: Vec<String>,
    /// `--cors` (empty: any origin).
    cors: Vec<String>,
}

impl<B: Backend> App<B> {
    pub fn new(backend: B, config: ServerConfig) -> Arc<App<B>> {
        Self::with_metrics(backend, config, Metrics::new())
    }

    /// Like [`App::new`] with a metrics registry that other layers already registered into.
    pub fn with_metrics(backend: B, config: ServerConfig, mut metrics: Metrics) -> Arc<App<B>> {
        backend.register_metrics(metrics.registry_mut());
        let v1 = crate::v1::V1::new(metrics.registry_mut());
        let cluster_id_header = HeaderValue::from_str(&format!("{:016x}", config.cluster_id))
            .unwrap_or(HeaderValue::from_static("0000000000000000"));
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let client_rate = (config.client_rate_limit > 0).then(|| ClientRate::new(config.client_rate_limit));
        // `*` anywhere in a list means any, as etcd reads it.
        let list = |names: &[String]| -> Vec<String> {
            let names: Vec<String> =
                names.iter().map(|name| name.trim().to_ascii_lowercase()).filter(|name| !name.is_empty()).collect();
            if names.iter().any(|name| name == "*") { Vec::new() } else { names }
        };
        let host_whitelist = list(&config.host_whitelist);
        let cors = list(&config.cors);
        Arc::new(App {
            client_rate,
            host_whitelist,
            cors,
            backend,
            watchers: Arc::new(AtomicUsize::new(0)),
            watchers_max: config.watchers_max,
            body_budget: BodyBudget::new(config.body_budget_bytes_max),
            response_budget: BodyBudget::new(config.response_budget_bytes_max),
            cluster: ClusterInfo::new(config),
            cluster_id_header,
            metrics,
            get_stats: GetStats::default(),
            shutdown,
            requests_total: AtomicU64::new(0),
            v1,
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Open watches right now.
    pub fn watcher_count(&self) -> usize {
        self.watchers.load(Ordering::SeqCst)
    }

    /// Request-body bytes reserved right now (see [`limits::BODY_BUDGET_BYTES_MAX`]).
    pub fn body_bytes_reserved(&self) -> usize {
        self.body_budget.reserved_bytes()
    }

    /// Requests answered since start.
    pub fn requests_total(&self) -> u64 {
        self.requests_total.load(Ordering::Relaxed)
    }

    /// Ends open watches (their bodies finish) so connections can close on shutdown.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// [`App::handle`] for a request from `client`, unless `client` is over its request
    /// rate (`--client-rate-limit`): then 429 with `Retry-After`, and nothing else is done.
    pub async fn handle_from(self: &Arc<Self>, client: IpAddr, request: Request<Body>) -> Response<Body> {
        if let Some(rate) = &self.client_rate {
            let path = request.uri().path();
            // Probes, scrapers and the dashboard's own files (its API calls count).
            let counted = !(path == "/health" || path == "/metrics" || path == "/ui" || path.starts_with("/ui/"));
            if counted {
                if let Err(wait) = rate.admit(client, Instant::now()) {
                    let started = Instant::now();
                    let mut response = over_client_rate(client, rate.per_second(), wait, path);
                    if !is_v1_path(path) {
                        self.add_cors(&mut response, request.headers().get(axum::http::header::ORIGIN));
                    }
                    self.metrics.observe(Route::Other, request.method(), 429, started.elapsed());
                    self.requests_total.fetch_add(1, Ordering::Relaxed);
                    return response;
                }
            }
        }
        if !crate::client_gone::may_wait(&request) {
            return self.handle(request).await;
        }
        let socket = request.extensions().get::<crate::client_gone::ClientSocket>().copied();
        let (started, method) = (Instant::now(), request.method().clone());
        let route = Route::of_v1_path(request.uri().path());
        // Boxed: the watcher holds the handling future twice over (as its argument and
        // pinned), and an unboxed one would make every request's future, which hyper moves
        // into its connection state, that much bigger.
        match crate::client_gone::unless_client_gone(socket, Box::pin(self.handle(request))).await {
            Some(response) => response,
            None => {
                let status = crate::client_gone::CLIENT_GONE_STATUS;
                self.metrics.observe(route, &method, status, started.elapsed());
                self.requests_total.fetch_add(1, Ordering::Relaxed);
                respond::with_status(status, Body::empty())
            }
        }
    }

    /// etcd's `--host-whitelist` (against DNS rebinding): a request whose `Host` names
    /// another host than those listed gets etcd's 421 and nothing else is done.
    /// Also Go's server's 400 for more than one `Host` header, before any handler: which
    /// one names the host? (The origin check and the whitelist would read only the first.)
    fn host_refusal(&self, request: &Request<Body>) -> Option<Response<Body>> {
        if request.headers().get_all(axum::http::header::HOST).iter().nth(1).is_some() {
            return Some(respond::go_server_refusal(400, "400 Bad Request: too many Host headers"));
        }
        if self.host_whitelist.is_empty() {
            return None;
        }
        let name = host_name(request_host(request).unwrap_or(""));
        if self.host_whitelist.iter().any(|allowed| allowed.eq_ignore_ascii_case(name)) {
            return None;
        }
        tracing::warn!(host = name, "refused a request for a host not in --host-whitelist (DNS rebinding?)");
        let advice = format!(
            "the Host header {name:?} is not in --host-whitelist. If clients reach rota under this name, \
             add it to the list (keep the names already in it) and restart rota: rota serve \
             --host-whitelist \"<the names listed now>,{name}\". If they do not, keep it refused: a web page \
             may be reaching rota through DNS rebinding"
        );
        if is_v1_path(request.uri().path()) {
            return Some(crate::v1::errors::ApiError::new(421, "misdirected_request", advice, Some("Host")).to_response());
        }
        let body = format!("rota received your request, but {advice}.\n");
        let mut response = respond::with_status(421, body);
        response.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Some(response)
    }

    /// etcd's CORS headers on a `/v2` (or other etcd path) answer: for any origin, or with
    /// `--cors`, for the listed origin the request came from.
    fn add_cors(&self, response: &mut Response<Body>, origin: Option<&HeaderValue>) {
        if self.cors.is_empty() {
            respond::add_cors(response, HeaderValue::from_static("*"));
            return;
        }
        if let Some(origin) = origin {
            let listed = origin
                .to_str()
                .is_ok_and(|text| self.cors.iter().any(|allowed| allowed.eq_ignore_ascii_case(text.trim_end_matches('/'))));
            if listed {
                respond::add_cors(response, origin.clone());
            }
        }
    }

    /// Answers one request. Never panics on input; every path ends in a response.
    pub async fn handle(self: &Arc<Self>, request: Request<Body>) -> Response<Body> {
        let started = Instant::now();
        let refused = self
            .host_refusal(&request)
            .or_else(|| unsupported_transfer_encoding(&request))
            .or_else(|| unmet_expectation(&request));
        if let Some(refused) = refused {
            let status = refused.status().as_u16();
            self.metrics.observe(Route::Other, request.method(), status, started.elapsed());
            self.requests_total.fetch_add(1, Ordering::Relaxed);
            return refused;
        }
        let method = request.method().clone();
        // Go's server answers `OPTIONS *` itself, before any handler (so without CORS).
        let server_wide = request.uri().path() == "*";
        // etcd's CORS headers (any origin) are for etcd's API. rota's own API gets none, so a
        // browser keeps other sites' pages from reading it or sending it JSON, PUT or DELETE;
        // and a write that a page of another site sends anyway (a form's POST needs no
        // permission) is refused.
        let own_api = is_v1_path(request.uri().path());
        // The dashboard's files are rota's own too: no CORS (ui.md says only etcd's API has it).
        let dashboard = path_is_dashboard(request.uri().path());
        let origin = request.headers().get(axum::http::header::ORIGIN).cloned();
        let (route, mut response) = if server_wide {
            let status = if method == Method::OPTIONS { 200 } else { 400 };
            (Route::Other, respond::with_status(status, Body::empty()))
        } else if own_api && is_cross_site_write(&request) {
            (Route::Other, cross_site_refused())
        } else {
            self.route(request).await
        };
        response = self.budget_answer(response, own_api, method == Method::GET).await;
        if !server_wide && !own_api && !dashboard {
            self.add_cors(&mut response, origin.as_ref());
        }
        self.metrics.observe(
            route,
            &method,
            response.status().as_u16(),
            started.elapsed(),
        );
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        response
    }

    /// An answer of a known size over the exempt one holds its bytes from the response
    /// budget ([`limits::RESPONSE_BUDGET_BYTES_MAX`]) until hyper has taken its last part;
    /// when the budget cannot cover a read's answer, the client gets 503 with
    /// `Retry-After: 1` instead. Another request's answer (a big batch submit) goes out
    /// uncounted then: it reports a change already made, which a 503 would deny.
    async fn budget_answer(&self, response: Response<Body>, own_api: bool, read: bool) -> Response<Body> {
        use axum::body::HttpBody as _;
        let Some(bytes) = response.body().size_hint().exact() else {
            return response; // a stream (a watch): no answer of that size held at once
        };
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        if bytes <= limits::BODY_BUDGET_EXEMPT_BYTES {
            return response;
        }
        // One answer bigger than the whole budget takes all of it (and waits for an empty one).
        let bytes_max = self.response_budget.bytes_max();
        let mut reservation = self.response_budget.reservation();
        if reservation.cover(bytes.min(bytes_max)) {
            let (parts, body) = response.into_parts();
            // Already in memory (the size is exact): taken at once.
            let Ok(whole) = axum::body::to_bytes(body, usize::MAX).await else {
                return respond::with_status(500, Body::empty());
            };
            let body = Body::new(ReservedBody { rest: whole, _reservation: reservation });
            return Response::from_parts(parts, body);
        }
        if !read {
            return response;
        }
        let cause = format!(
            "answers being sent hold the node's {bytes_max} byte budget and this one is {bytes} bytes; retry shortly"
        );
        let mut refused = if own_api {
            crate::v1::error_reply(&crate::v1::errors::ApiError::new(503, crate::v1::errors::UNAVAILABLE, cause, None), false)
        } else {
            respond::rota_error(503, limits::BODY_BUDGET_EXHAUSTED_CODE, "Too many large answers in flight", &cause, 0)
        };
        refused.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(1u64));
        refused
    }

    async fn route(self: &Arc<Self>, request: Request<Body>) -> (Route, Response<Body>) {
        let raw_path = request.uri().path();
        let raw_v1 = is_v1_path(raw_path);
        // etcd's CORS wrapper answers every OPTIONS before the mux sees it (not on rota's own
        // API, which serves no CORS: there it is a method like any other it does not take).
        if request.method() == Method::OPTIONS && !raw_v1 {
            return (Route::Other, respond::with_status(200, Body::empty()));
        }
        // `/v1` names (queues, counters) never hold a `/`: an encoded one would be routed as
        // a separator (`pa%2Fjobs` submitted to queue `pa`), so it is refused as the name rule
        // refuses it, in `/v1`'s error shape, as is a broken escape.
        if raw_v1 {
            let refusal = if raw_path.to_ascii_lowercase().contains("%2f") {
                Some("a name in the path holds an encoded '/' (%2F); names are A-Z a-z 0-9 _ . -")
            } else if crate::path::decode(raw_path).is_err() {
                Some("the path has a broken %-escape")
            } else {
                None
            };
            if let Some(message) = refusal {
                let error = crate::v1::errors::ApiError::invalid("path", message);
                return (Route::of_v1_path(raw_path), error.to_response());
            }
        }
        let (decoded, path_is_utf8) = match crate::path::decode(raw_path) {
            Ok(decoded) => decoded,
            Err(_) => return (Route::Other, respond::go_bad_request()),
        };
        // Go's mux redirects unclean paths, and etcd clients expect it; `/v1` is rota's own
        // API, where a `..` segment (from a name like `../jobs/7`) must not lead elsewhere.
        let is_v1 = decoded == "/v1" || decoded.starts_with("/v1/");
        if !is_v1 && (decoded.contains("//") || decoded.contains("/.")) {
            if let Some(location) = crate::path::redirect_location(&decoded, request.uri().query())
            {
                let method = request.method();
                let response = respond::moved_permanently(
                    &location,
                    method == Method::GET,
                    method == Method::HEAD,
                );
                return (Route::Other, response);
            }
        }
        let path = decoded.as_str();
        if path == "/v2/keys" || path.starts_with("/v2/keys/") {
            let suffix = path["/v2/keys".len()..].to_string();
            return self.keys(request, &suffix, path_is_utf8).await;
        }
        if path == "/v1" || path.starts_with("/v1/") {
            let path = path.to_owned();
            return (Route::of_v1_path(&path), crate::v1::handle(self, request, &path).await);
        }
        let method = request.method().clone();
        let cluster = &self.cluster;
        match path {
            "/version" => (Route::Version, cluster.version(&method)),
            "/health" => (Route::Health, cluster.health(&method, &self.backend)),
            "/v2/machines" => (Route::Machines, cluster.machines(&method, &self.backend)),
            "/v2/stats/self" => (Route::Stats, cluster.stats_self(&method, &self.backend)),
            "/v2/stats/leader" => (Route::Stats, cluster.stats_leader(&method, &self.backend)),
            "/v2/stats/store" => {
                let watchers = self.watcher_count();
                (
                    Route::Stats,
                    cluster.stats_store(&method, &self.backend, &self.get_stats, watchers),
                )
            }
            "/metrics" => (Route::Metrics, self.metrics_response(&request)),
            _ if path == "/ui" || path.starts_with("/ui/") => {
                (Route::Ui, crate::ui::handle(&method, path))
            }
            _ if path.starts_with("/v2/auth/") => {
                let mut response = crate::auth::handle(&method, path);
                // etcd's JSON answers carry the cluster id; its 405 page does not.
                if response.status() != StatusCode::METHOD_NOT_ALLOWED {
                    response
                        .headers_mut()
                        .insert(X_ETCD_CLUSTER_ID.clone(), self.cluster_id_header.clone());
                }
                (Route::Other, response)
            }
            _ if path == "/v2/members" || path.starts_with("/v2/members/") => {
                let rest = path["/v2/members".len()..].to_string();
                let response = cluster
                    .members(request, &rest, &self.backend, &self.cluster_id_header)
                    .await;
                (Route::Members, response)
            }
            _ if crate::v3_refusal::is_gateway_path(path) => {
                (Route::Other, crate::v3_refusal::gateway_answer())
            }
            _ => (Route::Other, respond::not_found()),
        }
    }

    /// `/metrics`: the Prometheus text format (0.0.4), as etcd serves it; OpenMetrics to a
    /// scraper whose `Accept` asks for it (Prometheus does).
    fn metrics_response(&self, request: &Request<Body>) -> Response<Body> {
        let method = request.method();
        if method != Method::GET && method != Method::HEAD {
            return respond::method_not_allowed("GET");
        }
        let (etcd_index, v2_expires, queues, idempotency) = self.backend.read(|state| {
            let now_ms = unix_now_ms().max(state.time_ms());
            let queues = state.jobs.queues(now_ms);
            let mut tallies: HashMap<String, _> = state.jobs.queue_tallies().into_iter().collect();
            let queues = queues.into_iter().map(|queue| crate::metrics::QueueSample {
                tally: tallies.remove(&queue.name).unwrap_or_default(),
                paused: queue.config.paused,
                name: queue.name,
                counts: queue.counts,
                leases_held: queue.leases_held,
                rate_tokens: queue.rate_tokens,
            });
            let idempotency = (state.idempotency_stats(), state.idempotency_evicted_remaining_ms());
            (state.v2.index(), state.v2.stats().expire_count, queues.collect(), idempotency)
        });
        self.backend.refresh_metrics();
        let openmetrics = self.metrics.render(crate::metrics::NodeSample {
            etcd_index,
            v2_expires,
            watchers: self.watcher_count(),
            queues,
            idempotency: idempotency.0,
            idempotency_evicted_remaining_ms: idempotency.1,
        });
        let wants_openmetrics = request
            .headers()
            .get_all(ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| value.contains("application/openmetrics-text"));
        let (text, content_type) = if wants_openmetrics {
            (openmetrics, "application/openmetrics-text; version=1.0.0; charset=utf-8")
        } else {
            (
                crate::metrics::prometheus_text(&openmetrics),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        };
        let mut response = respond::with_status(200, text);
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }

    /// `/v2/keys{suffix}`.
    async fn keys(
        self: &Arc<Self>,
        request: Request<Body>,
        suffix: &str,
        key_is_utf8: bool,
    ) -> (Route, Response<Body>) {
        let method = request.method().clone();
        if !matches!(
            method,
            Method::GET | Method::HEAD | Method::PUT | Method::POST | Method::DELETE
        ) {
            return (
                Route::Keys,
                respond::method_not_allowed("HEAD,GET,PUT,POST,DELETE"),
            );
        }
        let (route, mut response) = if key_is_utf8 {
            self.keys_inner(request, &method, suffix).await
        } else {
            (Route::Keys, self.non_utf8_key(&request, &method, suffix))
        };
        response
            .headers_mut()
            .insert(X_ETCD_CLUSTER_ID.clone(), self.cluster_id_header.clone());
        (route, response)
    }

    /// A key whose bytes are not UTF-8 (see [`crate::params::not_utf8`]): none is ever
    /// written, so writing one is error 209, and reading or deleting one finds nothing
    /// (etcd's 100, as for any key that does not exist); a watch of one is refused (209)
    /// rather than left waiting for a write that cannot come.
    fn non_utf8_key(&self, request: &Request<Body>, method: &Method, suffix: &str) -> Response<Body> {
        let mut query = Form::default();
        let _ = query.extend_from_urlencoded(request.uri().query().unwrap_or_default().as_bytes());
        let watches = query.get("wait").and_then(crate::form::parse_bool) == Some(true);
        let reads = matches!(*method, Method::GET | Method::HEAD | Method::DELETE);
        if reads && !watches {
            let index = self.backend.read(|state| state.v2.index());
            let key = crate::path::key_from_suffix(suffix);
            return respond::v2_error(&V2Error::new(100, Some(key), index));
        }
        respond::v2_error(&crate::params::not_utf8("the key"))
    }

    async fn keys_inner(
        self: &Arc<Self>,
        request: Request<Body>,
        method: &Method,
        suffix: &str,
    ) -> (Route, Response<Body>) {
        let key = crate::path::key_from_suffix(suffix);
        let client_socket = request.extensions().get::<crate::client_gone::ClientSocket>().copied();
        if key.len() > limits::KEY_BYTES_MAX {
            let cause = format!(
                "key is {} bytes, limit {}",
                key.len(),
                limits::KEY_BYTES_MAX
            );
            return (
                Route::Keys,
                respond::rota_error(414, limits::KEY_TOO_LONG_CODE, "Key too long", &cause, 0),
            );
        }
        let query = request.uri().query().unwrap_or_default();
        if query.len() > limits::QUERY_BYTES_MAX {
            let cause = format!(
                "query is {} bytes, limit {}",
                query.len(),
                limits::QUERY_BYTES_MAX
            );
            let response = respond::rota_error(
                414,
                limits::QUERY_TOO_LONG_CODE,
                "Query too long",
                &cause,
                0,
            );
            return (Route::Keys, response);
        }
        let idempotency_key = match idempotency_key(&request) {
            Ok(key) => key,
            Err(response) => return (Route::Keys, response),
        };

        // Go's ParseForm: a urlencoded body first (PUT/POST only), then the query. A
        // Content-Type that doesn't parse is an error; a missing one means "not a form".
        let mut form = Form::default();
        let mut form_error: Option<String> = None;
        let takes_body = matches!(*method, Method::PUT | Method::POST);
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .map(|value| value.as_bytes())
            .unwrap_or_default();
        let has_form_body = if takes_body && !content_type.is_empty() {
            match parse_media_type(content_type) {
                Ok(is_form) => is_form,
                Err(error) => {
                    form_error = Some(error.to_string());
                    false
                }
            }
        } else {
            false
        };
        let query = query.to_string();
        // Held until the request is answered: the form decoded from the body is about as big.
        let mut _body_reservation = None;
        if has_form_body {
            match read_body(request, &self.body_budget).await {
                Ok(FormBody::Read(body, reservation)) => {
                    _body_reservation = Some(reservation);
                    if let Err(error) = form.extend_from_urlencoded(&body) {
                        form_error = Some(error.to_string());
                    }
                }
                Ok(FormBody::OverGoLimit) => form_error = Some("http: POST too large".to_string()),
                Err(response) => return (Route::Keys, response),
            }
        }
        if let Err(error) = form.extend_from_urlencoded(query.as_bytes()) {
            form_error.get_or_insert(error.to_string());
        }
        if let Some(error) = form_error {
            return (
                Route::Keys,
                respond::v2_error(&V2Error::new(210, Some(error), 0)),
            );
        }
        let params = match parse_key_params(&form, *method == Method::GET) {
            Ok(params) => params,
            Err(error) => return (Route::Keys, respond::v2_error(&error)),
        };
        let takes_prev_value = matches!(*method, Method::PUT | Method::DELETE);
        if let Some(field) = crate::params::non_utf8_field(&form, takes_body, takes_prev_value) {
            return (Route::Keys, respond::v2_error(&crate::params::not_utf8(field)));
        }
        if takes_body && params.value.len() > limits::VALUE_BYTES_MAX {
            let cause = format!(
                "value is {} bytes, limit {}",
                params.value.len(),
                limits::VALUE_BYTES_MAX
            );
            let response = respond::rota_error(
                413,
                limits::VALUE_TOO_LARGE_CODE,
                "Value too large",
                &cause,
                0,
            );
            return (Route::Keys, response);
        }

        // etcd makes a quorum GET a Raft read (`QGET`) before it looks at `wait`, so the
        // pair is a plain linearizable read, never a watch.
        let watch = params.wait && !(*method == Method::GET && params.quorum);
        match *method {
            Method::GET | Method::HEAD if watch => (
                Route::Watch,
                self.watch(key, params.recursive, params.stream, params.wait_index, client_socket)
                    .await,
            ),
            Method::GET | Method::HEAD => (Route::Keys, self.get(&key, &params).await),
            _ => {
                let command = mutation(method, key, &params);
                (
                    Route::Keys,
                    self.mutate(command, idempotency_key, &params).await,
                )
            }
        }
    }

    async fn get(&self, key: &str, params: &KeyParams) -> Response<Body> {
        let applied = if params.quorum && !test_mutant::is(test_mutant::LOCAL_QUORUM_READS) {
            match self.backend.linearizable_read().await {
                Ok(applied) => applied,
                Err(error) => return propose_error(&error),
            }
        } else {
            *self.applied().borrow()
        };
        let now_ms = unix_now_ms();
        let answer = || {
            let result = self
                .backend
                .read(|state| state.v2.get(key, params.recursive, params.sorted, now_ms));
            let (result, applied) = test_mutant::stale_quorum_read(key, params.quorum, result, applied);
            self.get_stats.count(result.is_ok());
            match result {
                Ok(response) => {
                    self.v2_success(&response, applied.raft_index, applied.raft_term, false)
                }
                Err(error) => respond::v2_error(&error),
            }
        };
        // A recursive read of a big tree takes seconds to copy and render (1.4M keys: 5 s
        // for 516 MB). On the HTTP worker (one, on two cores) it held up every other client
        // and the peer RPCs that arrive there: a follower answering one missed the leader's
        // heartbeats, and the leader, hearing from no majority, stopped taking writes (a
        // large-state audit). Its worker thread hands its other tasks to another meanwhile.
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if params.recursive && multi_thread {
            tokio::task::block_in_place(answer)
        } else {
            answer()
        }
    }

    async fn mutate(
        &self,
        command: V2Command,
        idempotency_key: Option<String>,
        params: &KeyParams,
    ) -> Response<Body> {
        let command = match idempotency_key {
            Some(key) => {
                let fingerprint = fingerprint(&command);
                Command::Idempotent {
                    key,
                    fingerprint,
                    command: Box::new(Command::V2(command)),
                }
            }
            None => Command::V2(command),
        };
        let proposed = match self.backend.propose(command).await {
            Ok(proposed) => proposed,
            Err(error) => return propose_error(&error),
        };
        let Proposed {
            response,
            raft_index,
            raft_term,
        } = proposed;
        let (response, replayed) = match response {
            rota_core::Response::Replayed(inner) => (*inner, true),
            other => (other, false),
        };
        let mut http = match response {
            rota_core::Response::V2(Ok(v2)) => {
                self.v2_success(&v2, raft_index, raft_term, params.no_value_on_success)
            }
            rota_core::Response::V2(Err(error)) => respond::v2_error(&error),
            rota_core::Response::IdempotencyKeyReused { key } => {
                let index = self.backend.read(|state| state.v2.index());
                let cause =
                    format!("Idempotency-Key {key:?} was first used with a different request");
                respond::rota_error(
                    422,
                    limits::IDEMPOTENCY_KEY_REUSED_CODE,
                    "Idempotency key reused",
                    &cause,
                    index,
                )
            }
            other => {
                tracing::error!(?other, "a /v2/keys command got a response of another kind");
                respond::rota_error(
                    500,
                    300,
                    "Raft Internal Error",
                    "unexpected response kind",
                    0,
                )
            }
        };
        if replayed {
            http.headers_mut().insert(
                IDEMPOTENT_REPLAYED.clone(),
                HeaderValue::from_static("true"),
            );
        }
        http
    }

    pub(crate) fn v2_success(
        &self,
        response: &V2Response,
        raft_index: u64,
        raft_term: u64,
        no_value: bool,
    ) -> Response<Body> {
        let body = if no_value
            && matches!(
                response.action,
                Action::Set | Action::CompareAndSwap | Action::Create | Action::Update
            ) {
            format!("{{\"action\":\"{}\"}}\n", response.action.as_str())
        } else {
            render_json(response)
        };
        let mut http = respond::json(response.http_status(), body);
        let headers = http.headers_mut();
        headers.insert(X_ETCD_INDEX.clone(), HeaderValue::from(response.etcd_index));
        headers.insert(X_RAFT_INDEX.clone(), HeaderValue::from(raft_index));
        headers.insert(X_RAFT_TERM.clone(), HeaderValue::from(raft_term));
        http
    }

    /// A receiver of the applied position (kept in the backend's channel; cheap to make).
    pub(crate) fn applied(&self) -> tokio::sync::watch::Receiver<Applied> {
        self.backend.subscribe()
    }
}

/// The command a PUT, POST or DELETE asks for. etcd's PUT decision order (create, CAS,
/// update, set) is the store's job: the command carries every condition.
fn mutation(method: &Method, key: String, params: &KeyParams) -> V2Command {
    let prev_index = (params.prev_index != 0).then_some(params.prev_index);
    match *method {
        Method::POST => V2Command::CreateInOrder {
            dir: key,
            value: params.value.clone(),
            is_dir: params.dir,
            ttl_s: params.ttl_s,
        },
        Method::DELETE => V2Command::Delete(DeleteCommand {
            key,
            is_dir: params.dir,
            recursive: params.recursive,
            prev_value: params.prev_value.clone(),
            prev_index,
        }),
        _ => V2Command::Set(SetCommand {
            key,
            value: params.value.clone(),
            is_dir: params.dir,
            ttl_s: params.ttl_s,
            prev_exist: params.prev_exist,
            prev_value: params.prev_value.clone(),
            prev_index,
            refresh: params.refresh == Some(true),
        }),
    }
}

/// The host (and port) a request was sent to: its `Host` header, or its target's authority.
fn request_host(request: &Request<Body>) -> Option<&str> {
    request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| request.uri().authority().map(|authority| authority.as_str()))
}

/// The host name of a `Host` header (`name:port`, `[v6]:port`), without the port.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host })
}

/// `/v1` or under it (before percent-decoding: `%2F` is not a separator there either).
/// The dashboard's page and files (`/ui`, `/ui/...`).
fn path_is_dashboard(raw_path: &str) -> bool {
    raw_path == "/ui" || raw_path.starts_with("/ui/")
}

fn is_v1_path(raw_path: &str) -> bool {
    raw_path == "/v1" || raw_path.starts_with("/v1/")
}

/// A request that changes something, sent by a browser from a page of another origin: it
/// has an `Origin` header whose host and port differ from the `Host` it was sent to (a
/// browser sends `Origin` with every such request; curl and the rota clients send none).
fn is_cross_site_write(request: &Request<Body>) -> bool {
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return false;
    }
    let Some(origin) = request.headers().get(axum::http::header::ORIGIN) else {
        return false;
    };
    let origin = origin.to_str().ok().and_then(|origin| origin.split_once("://"));
    match (origin, request_host(request)) {
        (Some((scheme, authority)), Some(host)) => {
            // `http://localhost` and `Host: localhost:80` name the same server.
            let default_port = if scheme.eq_ignore_ascii_case("https") { ":443" } else { ":80" };
            let normal = |authority: &str| {
                let authority = authority.trim_end_matches('/');
                authority.strip_suffix(default_port).unwrap_or(authority).to_ascii_lowercase()
            };
            normal(authority) != normal(host)
        }
        // `Origin: null` (a sandboxed page, a file) or no Host to compare with.
        _ => true,
    }
}

fn cross_site_refused() -> Response<Body> {
    crate::v1::errors::ApiError::new(
        403,
        "cross_origin",
        "a write to /v1 from a page of another origin is refused (the Origin header names \
         another host than the Host header)",
        Some("Origin"),
    )
    .to_response()
}

/// The `Idempotency-Key` header, if any; a key that is empty, too long or not visible ASCII
/// is a 400.
#[allow(clippy::result_large_err)]
fn idempotency_key(request: &Request<Body>) -> Result<Option<String>, Response<Body>> {
    respond::idempotency_key(request.headers()).map_err(|cause| {
        respond::rota_error(400, limits::IDEMPOTENCY_KEY_INVALID_CODE, "Invalid Idempotency-Key", &cause, 0)
    })
}

/// Go's server answers an `Expect` other than `100-continue` with `417 Expectation Failed`
/// before any handler (hyper hands the request on as if the header were not there).
fn unmet_expectation(request: &Request<Body>) -> Option<Response<Body>> {
    let expect = request.headers().get(axum::http::header::EXPECT)?;
    if expect.as_bytes().eq_ignore_ascii_case(b"100-continue") {
        return None;
    }
    Some(respond::go_server_refusal(417, ""))
}

/// Go's server takes one `Transfer-Encoding` header, `chunked`, and answers anything else
/// `501 Unsupported transfer encoding` before any handler. hyper reads `gzip, chunked` as
/// chunked and hands the handler the still-compressed bytes (a form of garbage, stored as
/// an empty value), and takes two `chunked` headers as one.
fn unsupported_transfer_encoding(request: &Request<Body>) -> Option<Response<Body>> {
    let mut codings = request.headers().get_all(axum::http::header::TRANSFER_ENCODING).iter();
    let first = codings.next()?;
    if codings.next().is_none() && first.as_bytes().eq_ignore_ascii_case(b"chunked") {
        return None;
    }
    Some(respond::go_server_refusal(501, "Unsupported transfer encoding"))
}

/// Go's `maxFormSize`: a form body over it is etcd's error 210 `http: POST too large`.
const GO_FORM_BYTES_MAX: u64 = 10 << 20;

enum FormBody {
    /// The body, and its share of the body budget (given back when dropped).
    Read(Bytes, BodyReservation),
    /// Over Go's form limit: answered as etcd answers it.
    OverGoLimit,
}

/// 429 for a client over `--client-rate-limit`, with `Retry-After` in whole seconds
/// (rounded up): `/v1`'s error shape on `/v1` paths, etcd's envelope elsewhere.
fn over_client_rate(client: IpAddr, per_second: u32, wait: Duration, path: &str) -> Response<Body> {
    let message = format!(
        "client {client} is over its request rate of {per_second} per second on this member; retry in {} ms",
        wait.as_millis().max(1)
    );
    let mut response = if path == "/v1" || path.starts_with("/v1/") {
        crate::v1::errors::ApiError::new(429, "rate_limited", message, None).to_response()
    } else {
        respond::rota_error(429, limits::CLIENT_RATE_LIMITED_CODE, "Too many requests", &message, 0)
    };
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response.headers_mut().insert(axum::http::header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

/// 503 with `Retry-After: 1` in etcd's envelope: the node-wide body budget
/// ([`limits::BODY_BUDGET_BYTES_MAX`]) can't take a body of this size now.
fn body_budget_exhausted(budget_bytes_max: usize) -> Response<Body> {
    let cause = format!(
        "request bodies being read use the node's {budget_bytes_max} byte budget; retry shortly"
    );
    let mut response = respond::rota_error(
        503,
        limits::BODY_BUDGET_EXHAUSTED_CODE,
        "Too many request bodies in flight",
        &cause,
        0,
    );
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from_static("1"),
    );
    response
}

/// Reads and drops up to `bytes_max` bytes of `body`, for at most
/// [`limits::BODY_READ_TIMEOUT`].
pub(crate) async fn drain(body: Body, bytes_max: u64) {
    let mut stream = body.into_data_stream();
    let _ = tokio::time::timeout(limits::BODY_READ_TIMEOUT, drain_stream(&mut stream, 0, bytes_max)).await;
}

/// Reads and drops the rest of a body whose first `read_bytes` were read, until it ends or
/// more than `bytes_max` were read in all.
pub(crate) async fn drain_stream(stream: &mut axum::body::BodyDataStream, read_bytes: u64, bytes_max: u64) {
    let mut total_bytes = read_bytes;
    while total_bytes <= bytes_max {
        match stream.next().await {
            Some(Ok(chunk)) => total_bytes += chunk.len() as u64,
            _ => break,
        }
    }
}

/// Reads a form body, bounded in size ([`limits::REQUEST_BODY_BYTES_MAX`], 413; over Go's
/// own 10 MiB form limit, etcd's 210), in time ([`limits::BODY_READ_TIMEOUT`], 408) and by
/// the node-wide `budget` (503). Past rota's limit the rest is read and dropped, only to tell
/// the two answers apart; the reservation made so far is kept until then.
#[allow(clippy::result_large_err)]
async fn read_body(
    request: Request<Body>,
    budget: &Arc<BodyBudget>,
) -> Result<FormBody, Response<Body>> {
    // At the connection bound, a connection waiting long for a body is closed.
    let _waiting = crate::body_wait::reading_body(&request);
    let too_large = || {
        let cause = format!("limit {} bytes", limits::REQUEST_BODY_BYTES_MAX);
        respond::rota_error(
            413,
            limits::BODY_TOO_LARGE_CODE,
            "Request body too large",
            &cause,
            0,
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if let Some(bytes) = declared.filter(|&bytes| bytes > limits::REQUEST_BODY_BYTES_MAX as u64) {
        // Refused from the header, but read (and dropped) up to Go's form limit first, as
        // Go's server reads it: a client that sends its whole body before it reads the
        // answer (Python's http.client does) would otherwise meet a reset connection.
        drain(request.into_body(), GO_FORM_BYTES_MAX).await;
        return if bytes > GO_FORM_BYTES_MAX { Ok(FormBody::OverGoLimit) } else { Err(too_large()) };
    }
    // Under the body limit now, so the cast is exact.
    let declared_bytes = declared.unwrap_or(0) as usize;
    let mut reservation = budget.reservation();
    if !reservation.cover(declared_bytes) {
        return Err(body_budget_exhausted(budget.bytes_max()));
    }
    let read = async {
        let mut stream = request.into_body().into_data_stream();
        let mut body = BytesMut::with_capacity(declared_bytes);
        let mut total_bytes: u64 = 0;
        while let Some(chunk) = stream.next().await {
            // etcd's error for a body Go's form parser could not read (a bad chunk, a body
            // cut short): 210 `Invalid POST form`, the reader's error as the cause.
            let chunk = chunk.map_err(|error| {
                let cause = match std::error::Error::source(&error) {
                    Some(source) => format!("the body could not be read: {source}"),
                    None => format!("the body could not be read: {error}"),
                };
                respond::v2_error(&V2Error::new(210, Some(cause), 0))
            })?;
            total_bytes += chunk.len() as u64;
            if total_bytes > GO_FORM_BYTES_MAX {
                return Ok(FormBody::OverGoLimit);
            }
            if total_bytes > limits::REQUEST_BODY_BYTES_MAX as u64 {
                body = BytesMut::new();
                continue;
            }
            // A chunked body: reserve what it has grown to before keeping it.
            if !reservation.cover(total_bytes as usize) {
                return Err(body_budget_exhausted(budget.bytes_max()));
            }
            if body.is_empty() && Some(chunk.len() as u64) == declared {
                // The whole body in one chunk, the common case: no copy.
                return Ok(FormBody::Read(chunk, reservation));
            }
            body.extend_from_slice(&chunk);
        }
        if total_bytes > limits::REQUEST_BODY_BYTES_MAX as u64 {
            return Err(too_large());
        }
        Ok(FormBody::Read(body.freeze(), reservation))
    };
    match tokio::time::timeout(limits::BODY_READ_TIMEOUT, read).await {
        Ok(result) => result,
        Err(_) => {
            let cause = format!("the body took longer than {:?}", limits::BODY_READ_TIMEOUT);
            Err(respond::rota_error(
                408,
                limits::BODY_TIMEOUT_CODE,
                "Request body timeout",
                &cause,
                0,
            ))
        }
    }
}

/// A proposal that didn't reach the state machine, in etcd's error envelope: without a
/// leader etcd answers 300 "Raft Internal Error" (after its request timeout); rota answers
/// the same body with HTTP 503 once its leader wait is over. 300 for the rest (HTTP 500, as
/// etcd), 413 for a command over the Raft entry bound, and 507 while the data dir is short
/// of space.
pub(crate) fn propose_error(error: &ProposeError) -> Response<Body> {
    match error {
        // Not applied: another member (or this one, once a leader is back) can take the
        // request. 503 (clients move on to another member on a 5xx), without `Retry-After`:
        // with it, HTTP libraries resend to this member by themselves (urllib3, under
        // python-etcd, 3 more times 1 s apart: a 12 s call during a quorum loss, where etcd
        // answers once after 7 s). A node shutting down, or removed from the cluster,
        // answers its queued writes this way too.
        ProposeError::NoLeader
        | ProposeError::LeaderUnreachable { .. }
        | ProposeError::ShuttingDown
        | ProposeError::Removed => {
            let cause = match error {
                ProposeError::NoLeader => "etcdserver: no leader (request timed out waiting for one)".to_string(),
                ProposeError::LeaderUnreachable { .. } => format!("etcdserver: {error}"),
                ProposeError::Removed => error.to_string(),
                other => format!("{other}; retry on another member"),
            };
            let mut response = respond::v2_error(&V2Error::new(300, Some(cause), 0));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
        }
        // The write may still be applied: etcd's 500 (errorCode 300, its timeout's words),
        // without Retry-After, which HTTP libraries take as leave to send a PUT or DELETE
        // again (urllib3 does, under python-etcd): a compare-and-swap sent twice could
        // report that it failed when its first copy won.
        ProposeError::OutcomeUnknown(_) => respond::v2_error(&V2Error::new(
            300,
            Some("etcdserver: request timed out, possibly due to previous leader failure".to_string()),
            0,
        )),
        ProposeError::TooLarge { .. } => respond::rota_error(
            413,
            limits::BODY_TOO_LARGE_CODE,
            "Request too large",
            &error.to_string(),
            0,
        ),
        ProposeError::Fatal(_) => respond::v2_error(&V2Error::new(300, Some(error.to_string()), 0)),
        // etcd's v2 API has no such error; its envelope, with 507 Insufficient Storage.
        ProposeError::NoSpace { .. } => {
            let mut response = respond::v2_error(&V2Error::new(300, Some(error.to_string()), 0));
            *response.status_mut() = StatusCode::INSUFFICIENT_STORAGE;
            response
        }
    }
}

pub(crate) fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A stable 64-bit FNV-1a hash of a command's meaning (method, key and every parsed
/// parameter), so a retried request matches its first attempt on any node and any version.
pub fn fingerprint(command: &V2Command) -> u64 {
    let mut hash = crate::fnv::Fnv1a::default();
    match command {
        V2Command::Set(set) => {
            hash.tag(b'P');
            hash.text(&set.key);
            hash.text(&set.value);
            hash.flag(set.is_dir);
            hash.option_u64(set.ttl_s);
            hash.option_u64(set.prev_exist.map(u64::from));
            hash.option_text(set.prev_value.as_deref());
            hash.option_u64(set.prev_index);
            hash.flag(set.refresh);
        }
        V2Command::CreateInOrder {
            dir,
            value,
            is_dir,
            ttl_s,
        } => {
            hash.tag(b'O');
            hash.text(dir);
            hash.text(value);
            hash.flag(*is_dir);
            hash.option_u64(*ttl_s);
        }
        V2Command::Delete(delete) => {
            hash.tag(b'D');
            hash.text(&delete.key);
            hash.flag(delete.is_dir);
            hash.flag(delete.recursive);
            hash.option_text(delete.prev_value.as_deref());
            hash.option_u64(delete.prev_index);
        }
    }
    hash.0
}


/// Deliberately broken behaviours, the negative controls of the linearizability suite
/// (`crates/rota/tests/it/kv_linearizable.rs`): `ROTA_TEST_MUTANT=<name>` in the environment
/// of a **debug** build switches one on. Release builds compile the no-op version below and
/// never read the variable.
#[cfg(debug_assertions)]
mod test_mutant {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    use rota_core::v2::{V2Error, V2Response};

    use crate::backend::Applied;

    /// `quorum=true` GETs skip the ReadIndex and read local state (etcd 0.4's bug, Jepsen
    /// 2014): a partitioned old leader then answers stale reads.
    pub(super) const LOCAL_QUORUM_READS: &str = "local-quorum-reads";
    /// `quorum=true` GETs may answer from a per-key cache up to [`STALE_FOR`] old (a read
    /// cache nobody invalidates on writes): stale reads even on one node.
    const STALE_QUORUM_READS: &str = "stale-quorum-reads";
    const STALE_FOR: Duration = Duration::from_millis(250);
    const CACHED_KEYS_MAX: usize = 10_000;

    pub(super) fn is(name: &str) -> bool {
        rota_raft::test_mutant_is(name)
    }

    type Read = (Result<V2Response, V2Error>, Applied);

    pub(super) fn stale_quorum_read(key: &str, quorum: bool, result: Result<V2Response, V2Error>, applied: Applied) -> Read {
        if !quorum || !is(STALE_QUORUM_READS) {
            return (result, applied);
        }
        static CACHE: OnceLock<Mutex<HashMap<String, (Instant, Read)>>> = OnceLock::new();
        let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, cached)) = cache.get(key) {
            if at.elapsed() < STALE_FOR {
                return cached.clone();
            }
        }
        if cache.len() >= CACHED_KEYS_MAX {
            cache.clear();
        }
        cache.insert(key.to_string(), (Instant::now(), (result.clone(), applied)));
        (result, applied)
    }
}

#[cfg(not(debug_assertions))]
mod test_mutant {
    use rota_core::v2::{V2Error, V2Response};

    use crate::backend::Applied;

    pub(super) const LOCAL_QUORUM_READS: &str = "local-quorum-reads";

    pub(super) fn is(_name: &str) -> bool {
        false
    }

    pub(super) fn stale_quorum_read(
        _key: &str,
        _quorum: bool,
        result: Result<V2Response, V2Error>,
        applied: Applied,
    ) -> (Result<V2Response, V2Error>, Applied) {
        (result, applied)
    }
}

/// An answer's body with its reservation from the response budget. It is handed to hyper
/// in parts of [`limits::BODY_BUDGET_EXEMPT_BYTES`], which hyper takes only as its write
/// buffer drains, so the reservation is given back (on drop) when the last part is taken
/// or the connection is gone; as one part, hyper took it at once and dropped the body while
/// the bytes still waited for the client.
struct ReservedBody {
    rest: bytes::Bytes,
    _reservation: BodyReservation,
}

impl axum::body::HttpBody for ReservedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, axum::Error>>> {
        if self.rest.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let part = self.rest.len().min(limits::BODY_BUDGET_EXEMPT_BYTES);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(self.rest.split_to(part)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.rest.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> V2Command {
        V2Command::Set(SetCommand {
            key: key.into(),
            value: value.into(),
            ..SetCommand::default()
        })
    }

    #[test]
    fn fingerprint_hash_is_standard_fnv1a() {
        // The hash is stored in replicated state and compared on other nodes and versions,
        // so it must be a fixed function: FNV-1a 64's published test vectors.
        let mut hash = crate::fnv::Fnv1a::default();
        hash.bytes(b"a");
        assert_eq!(hash.0, 0xaf63_dc4c_8601_ec8c);
        let mut hash = crate::fnv::Fnv1a::default();
        hash.bytes(b"foobar");
        assert_eq!(hash.0, 0x8594_4171_f739_67e8);
    }

    #[test]
    fn fingerprint_separates_fields() {
        assert_ne!(fingerprint(&set("/ab", "c")), fingerprint(&set("/a", "bc")));
        assert_ne!(fingerprint(&set("/a", "b")), fingerprint(&set("/a", "c")));
        let delete = V2Command::Delete(DeleteCommand {
            key: "/a".into(),
            ..DeleteCommand::default()
        });
        assert_ne!(fingerprint(&set("/a", "")), fingerprint(&delete));
    }
}
