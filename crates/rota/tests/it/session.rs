//! A scenario session: sends requests to one server and records normalized observations.
//!
//! A scenario is a plain function over a `Session`; the differential runner calls it once
//! against a fresh etcd and once against a fresh candidate (rota) and compares the two
//! transcripts step by step. Scenarios must be deterministic: they may use indices read
//! from earlier responses (they differ in absolute value between servers), but must not
//! branch on server-specific values. A failed exchange is recorded (never a panic), so one
//! broken step does not hide the rest of the comparison.

use std::time::Duration;

use crate::harness::{self, Server};
use crate::http::{self, Head, Request, Response, Watch};
use crate::normalize::{self, Normalizer, Observation, RequestTraits};

/// How long a watch may take to send its head (etcd flushes it at once on registration).
pub const WATCH_HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on waiting for an event that must come (TTL expiry takes up to ~1.5 s on etcd).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

pub type Scenario = fn(&mut Session);

pub struct Session<'a> {
    pub server: &'a Server,
    pub norm: Normalizer,
    pub transcript: Vec<Observation>,
    watches: Vec<(String, Option<Watch>)>,
}

/// Handle of a watch started with [`Session::watch`].
#[derive(Debug, Clone, Copy)]
pub struct WatchId(usize);

fn failed_response(e: &http::HttpError) -> Response {
    Response {
        head: Head {
            status: 0,
            headers: vec![("x-test-error".into(), e.to_string())],
        },
        body: Vec::new(),
    }
}

fn query_flag_true(target: &str, name: &str) -> bool {
    let Some((_, query)) = target.split_once('?') else {
        return false;
    };
    query.split('&').any(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        k == name && matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
    })
}

impl<'a> Session<'a> {
    pub fn new(server: &'a Server) -> Session<'a> {
        let base_index = server.store_index();
        let norm = Normalizer {
            base_index,
            client_port: server.client_port,
            peer_port: server.peer_port,
            shape_only: false,
        };
        Session {
            server,
            norm,
            transcript: Vec::new(),
            watches: Vec::new(),
        }
    }

    /// The absolute index `offset` writes after the scenario's start.
    pub fn idx(&self, offset: i64) -> u64 {
        (self.norm.base_index as i64 + offset) as u64
    }

    /// Sends without recording.
    pub fn quiet(&self, req: &Request) -> Response {
        http::send(self.server.addr(), req).unwrap_or_else(|e| failed_response(&e))
    }

    /// Sends and records the normalized response.
    pub fn send(&mut self, req: Request) -> Response {
        let label = format!(
            "{} {}{}",
            req.method,
            req.target,
            req.body
                .as_ref()
                .map(|b| format!("  body={:?}", String::from_utf8_lossy(b)))
                .unwrap_or_default()
        );
        let resp = self.quiet(&req);
        let traits = RequestTraits {
            sorted: query_flag_true(&req.target, "sorted"),
        };
        let mut obs = normalize::normalize_response(&self.norm, label, &resp, traits);
        if resp.status() == 0 {
            obs.status = format!(
                "<no response: {}>",
                resp.header("x-test-error").unwrap_or_default()
            );
        }
        self.transcript.push(obs);
        resp
    }

    pub fn get(&mut self, target: &str) -> Response {
        self.send(Request::new("GET", target))
    }

    pub fn put(&mut self, target: &str, form: &str) -> Response {
        self.send(Request::new("PUT", target).form(form))
    }

    pub fn post(&mut self, target: &str, form: &str) -> Response {
        self.send(Request::new("POST", target).form(form))
    }

    pub fn delete(&mut self, target: &str) -> Response {
        self.send(Request::new("DELETE", target))
    }

    /// Starts a long-poll watch and records its head (which etcd sends at registration, so
    /// once this returns on etcd the watcher is in place).
    pub fn watch(&mut self, target: &str) -> WatchId {
        let label = format!("WATCH {target} (head)");
        match Watch::start(self.server.addr(), target) {
            Ok(mut w) => {
                let obs = match w.wait_head(WATCH_HEAD_TIMEOUT) {
                    Ok(head) => {
                        let code = None;
                        let (status, mut headers) = self.norm.head(&head, code);
                        headers.push(("<framing>".into(), normalize::framing(&head).into()));
                        Observation {
                            label,
                            status,
                            headers,
                            body: "<pending>".into(),
                        }
                    }
                    Err(e) => Observation {
                        label,
                        status: format!("<no head within {WATCH_HEAD_TIMEOUT:?}: {e}>"),
                        headers: Vec::new(),
                        body: String::new(),
                    },
                };
                self.transcript.push(obs);
                self.watches.push((target.to_string(), Some(w)));
            }
            Err(e) => {
                self.transcript.push(Observation {
                    label,
                    status: format!("<connect failed: {e}>"),
                    headers: Vec::new(),
                    body: String::new(),
                });
                self.watches.push((target.to_string(), None));
            }
        }
        WatchId(self.watches.len() - 1)
    }

    /// Like [`Session::watch`], for a watch whose start index legitimately depends on timing:
    /// its `X-Etcd-Index` (the index when the watch registered) is recorded by presence
    /// only. Used where an expiry may or may not have happened before the watch registered:
    /// etcd sweeps expired keys about every 500 ms, rota at the deadline itself.
    pub fn watch_started_at_any_index(&mut self, target: &str) -> WatchId {
        let id = self.watch(target);
        if let Some(observation) = self.transcript.last_mut() {
            for (name, value) in observation.headers.iter_mut() {
                if name == "x-etcd-index" {
                    *value = "<present; depends on expiry timing>".into();
                }
            }
        }
        id
    }

    /// Waits (bounded) for the watch's body and records it; returns the parsed event.
    pub fn watch_event(&mut self, id: WatchId) -> serde_json::Value {
        let (target, watch) = &mut self.watches[id.0];
        let label = format!("WATCH {target} (event)");
        let sorted = query_flag_true(target, "sorted");
        let result = match watch {
            Some(w) => w.wait_body(EVENT_TIMEOUT),
            None => Err(http::HttpError("watch never connected".into())),
        };
        let (body, value) = match result {
            Ok(bytes) => {
                let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                (self.norm.body(&bytes, RequestTraits { sorted }), value)
            }
            Err(e) => (
                format!("<no event within {EVENT_TIMEOUT:?}: {e}>"),
                serde_json::Value::Null,
            ),
        };
        self.transcript.push(Observation {
            label,
            status: "<event>".into(),
            headers: Vec::new(),
            body,
        });
        value
    }

    /// Reads the next line of a `stream=true` watch and records it.
    pub fn stream_event(&mut self, id: WatchId) {
        let (target, watch) = &mut self.watches[id.0];
        let label = format!("STREAM {target} (line)");
        let result = match watch {
            Some(w) => w.next_stream_line(EVENT_TIMEOUT),
            None => Err(http::HttpError("watch never connected".into())),
        };
        let body = match result {
            Ok(bytes) => self.norm.body(&bytes, RequestTraits::default()),
            Err(e) => format!("<no line within {EVENT_TIMEOUT:?}: {e}>"),
        };
        self.transcript.push(Observation {
            label,
            status: "<event>".into(),
            headers: Vec::new(),
            body,
        });
    }

    /// Records every remaining observation with shape-only normalization (for endpoints
    /// whose values are server-specific).
    pub fn shape_only(&mut self, on: bool) {
        self.norm.shape_only = on;
    }
}

/// `node.modifiedIndex` of a response (0 when absent, so a broken step does not panic).
pub fn modified_index(resp: &Response) -> u64 {
    serde_json::from_slice::<serde_json::Value>(&resp.body)
        .ok()
        .and_then(|v| v["node"]["modifiedIndex"].as_u64())
        .unwrap_or(0)
}

/// `node.key` of a response ("" when absent).
pub fn node_key(resp: &Response) -> String {
    serde_json::from_slice::<serde_json::Value>(&resp.body)
        .ok()
        .and_then(|v| v["node"]["key"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// X-Etcd-Index (0 when absent).
pub fn etcd_index(resp: &Response) -> u64 {
    resp.header("x-etcd-index")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn transcript_text(server: &str, transcript: &[Observation]) -> String {
    let mut out = format!("== {server}\n");
    for (i, obs) in transcript.iter().enumerate() {
        out.push_str(&format!("[{i}] {}\n    {obs}\n", obs.label));
    }
    out
}

/// Runs `scenario` against a fresh etcd and a fresh candidate and fails with every
/// disagreement.
pub fn run_diff(name: &str, scenario: Scenario) {
    let (etcd, candidate) = harness::start_pair();
    let (etcd_log, cand_log) = std::thread::scope(|scope| {
        let a = scope.spawn(|| {
            let mut s = Session::new(&etcd);
            scenario(&mut s);
            s.transcript
        });
        let b = scope.spawn(|| {
            let mut s = Session::new(&candidate);
            scenario(&mut s);
            s.transcript
        });
        (
            a.join().expect("etcd scenario thread"),
            b.join().expect("candidate scenario thread"),
        )
    });
    let cand_name = candidate.kind.name();
    let dump_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("etcd-diff");
    let _ = std::fs::create_dir_all(&dump_dir);
    let dump = format!(
        "{}\n{}",
        transcript_text("etcd", &etcd_log),
        transcript_text(cand_name, &cand_log)
    );
    let dump_path = dump_dir.join(format!("{name}.txt"));
    let _ = std::fs::write(&dump_path, &dump);

    let mut report = String::new();
    let mut disagreements = 0;
    for i in 0..etcd_log.len().max(cand_log.len()) {
        match (etcd_log.get(i), cand_log.get(i)) {
            (Some(e), Some(c)) if e.key() == c.key() => {}
            (e, c) => {
                disagreements += 1;
                let label = e.or(c).map(|o| o.label.as_str()).unwrap_or_default();
                report.push_str(&format!("\n  step {i}: {label}\n"));
                report.push_str(&format!(
                    "    etcd: {}\n",
                    e.map(|o| o.to_string()).unwrap_or("<missing>".into())
                ));
                report.push_str(&format!(
                    "    {cand_name}: {}\n",
                    c.map(|o| o.to_string()).unwrap_or("<missing>".into())
                ));
            }
        }
    }
    assert!(
        etcd_log.len() >= 2,
        "scenario {name} recorded fewer than 2 observations; it checks nothing"
    );
    if disagreements > 0 {
        panic!(
            "scenario `{name}`: etcd and {cand_name} disagree at {disagreements} of {} steps \
             (full transcripts: {}):{report}",
            etcd_log.len(),
            dump_path.display()
        );
    }
}
