//! Recording histories: concurrent clients issue etcd v2 operations on a small key set and
//! record each one with its invocation and return instants, outcome and endpoint.
//!
//! What it owns: the workload (random set / quorum get / CAS / create / delete with unique
//! values) and the classification of answers into [`Outcome`]s for the checker.
//!
//! Invariants:
//! * Instants come from one monotonic clock (`Instant` since the recorder's start), shared by
//!   all clients, in nanoseconds. The invocation instant is taken before the connection is
//!   opened, the return instant after the whole answer was read.
//! * An operation whose request may have reached a server but whose answer is unknown
//!   (timeout, reset or close after sending, any 5xx) is recorded open (`return_ns: None`,
//!   [`Outcome::Unknown`]). A request that could not even connect surely did nothing: it is
//!   counted but not recorded.
//! * Every written value is unique (`c<client>-<seq>`), so a read names its write.
//! * An answer the model does not explain (a 4xx other than 100/101/105, a 200 without the
//!   written value) is a protocol error: counted and kept for the report, never guessed at.
//! * Clients start on different endpoints and move to the next one after any failure.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::crash::Rng;
use crate::http::{Connection, HttpError};
use crate::linearizability::{Input, Operation, Outcome};

/// How the clients behave.
#[derive(Clone, Debug)]
pub struct Workload {
    pub clients: usize,
    pub keys: usize,
    /// Key prefix; unique per test so runs never share keys.
    pub prefix: String,
    /// Bound on one request; a request without an answer by then is open.
    pub request_timeout: Duration,
    /// Pause after a failed connect (the node is down): keeps a dead endpoint from spinning.
    pub connect_retry_pause: Duration,
    pub seed: u64,
}

impl Workload {
    pub fn new(prefix: &str, seed: u64) -> Workload {
        Workload {
            clients: 8,
            keys: 16,
            prefix: prefix.to_string(),
            request_timeout: Duration::from_secs(3),
            connect_retry_pause: Duration::from_millis(20),
            seed,
        }
    }

    pub fn key(&self, k: usize) -> String {
        format!("{}/k{k:02}", self.prefix)
    }
}

/// Everything the clients recorded, plus counters.
#[derive(Default)]
pub struct Recorder {
    pub ops: Mutex<Vec<Operation>>,
    pub protocol_errors: Mutex<Vec<String>>,
    pub not_sent: AtomicU64,
    pub ok_ops: AtomicU64,
    pub open_ops: AtomicU64,
    pub stop: AtomicBool,
}

/// A running workload: client threads and the clock they share.
pub struct Run {
    pub recorder: Arc<Recorder>,
    pub started: Instant,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Run {
    /// Starts `workload.clients` threads over `endpoints`.
    pub fn start(workload: &Workload, endpoints: Vec<SocketAddr>) -> Run {
        let recorder = Arc::new(Recorder::default());
        let started = Instant::now();
        let endpoints = Arc::new(endpoints);
        let threads = (0..workload.clients)
            .map(|client| {
                let (recorder, endpoints, workload) = (recorder.clone(), endpoints.clone(), workload.clone());
                std::thread::spawn(move || client_loop(client, &workload, &endpoints, &recorder, started))
            })
            .collect();
        Run { recorder, started, threads }
    }

    /// Nanoseconds since the run started (the history's clock).
    pub fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Acknowledged-ok operations so far.
    pub fn ok_ops(&self) -> u64 {
        self.recorder.ok_ops.load(Ordering::Relaxed)
    }

    /// Stops the clients and returns the history.
    pub fn stop(self) -> Vec<Operation> {
        self.recorder.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("client thread panicked");
        }
        std::mem::take(&mut *self.recorder.ops.lock().expect("ops lock"))
    }
}

fn client_loop(client: usize, workload: &Workload, endpoints: &[SocketAddr], recorder: &Recorder, started: Instant) {
    let mut rng = Rng::new(workload.seed ^ (client as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut endpoint = client % endpoints.len();
    let mut seq = 0u64;
    // The last value this client saw per key: CAS expects it, so many CASes can succeed.
    let mut last_seen: Vec<Option<String>> = vec![None; workload.keys];
    while !recorder.stop.load(Ordering::Relaxed) {
        let k = rng.range(0, workload.keys as u64 - 1) as usize;
        seq += 1;
        let value = format!("c{client}-{seq}");
        let input = match rng.range(0, 99) {
            0..=29 => Input::Set(value),
            30..=69 => Input::Get,
            70..=89 => Input::Cas {
                expected: last_seen[k].clone().unwrap_or_else(|| "never-written".to_string()),
                new: value,
            },
            90..=94 => Input::Create(value),
            _ => Input::Delete,
        };
        let key = workload.key(k);
        let node = endpoint;
        let invoke_ns = started.elapsed().as_nanos() as u64;
        let answer = send(endpoints[node], &key, &input, workload.request_timeout);
        let return_ns = started.elapsed().as_nanos() as u64;
        let outcome = match answer {
            Answer::NotSent => {
                recorder.not_sent.fetch_add(1, Ordering::Relaxed);
                endpoint = (endpoint + 1) % endpoints.len();
                std::thread::sleep(workload.connect_retry_pause);
                continue;
            }
            Answer::Unknown => Outcome::Unknown,
            Answer::Response { status, body } => match classify(&input, status, &body) {
                Ok(outcome) => outcome,
                Err(why) => {
                    let text = format!("client {client} {key} {input:?}: {why}: {status} {}", String::from_utf8_lossy(&body));
                    recorder.protocol_errors.lock().expect("errors lock").push(text);
                    Outcome::Unknown
                }
            },
        };
        match &outcome {
            Outcome::Unknown => {
                recorder.open_ops.fetch_add(1, Ordering::Relaxed);
                endpoint = (endpoint + 1) % endpoints.len();
            }
            Outcome::Value(v) => last_seen[k] = Some(v.clone()),
            Outcome::Ok => last_seen[k] = input.written_value().map(str::to_string),
            _ => {}
        }
        if outcome != Outcome::Unknown {
            recorder.ok_ops.fetch_add(1, Ordering::Relaxed);
        }
        let open = outcome == Outcome::Unknown;
        recorder.ops.lock().expect("ops lock").push(Operation {
            client,
            key,
            input,
            invoke_ns,
            return_ns: (!open).then_some(return_ns),
            outcome,
            node,
        });
    }
}

enum Answer {
    /// The connection was never established: the request did nothing.
    NotSent,
    /// Sent (or maybe sent) without a complete answer.
    Unknown,
    Response { status: u16, body: Vec<u8> },
}

/// The v2 request for one operation (etcd-v2-api.md §2: CAS and create are PUTs with
/// `prevValue` / `prevExist=false`; the quorum read is `GET ?quorum=true`).
pub fn request_bytes(addr: SocketAddr, key: &str, input: &Input) -> Vec<u8> {
    // Values and keys are `[A-Za-z0-9/-]`: no escaping needed.
    let (method, target, form) = match input {
        Input::Set(v) => ("PUT", format!("/v2/keys{key}"), Some(format!("value={v}"))),
        Input::Get => ("GET", format!("/v2/keys{key}?quorum=true"), None),
        Input::Cas { expected, new } => ("PUT", format!("/v2/keys{key}?prevValue={expected}"), Some(format!("value={new}"))),
        Input::Create(v) => ("PUT", format!("/v2/keys{key}"), Some(format!("value={v}&prevExist=false"))),
        Input::Delete => ("DELETE", format!("/v2/keys{key}"), None),
    };
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    match form {
        Some(form) => out.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        )),
        None => out.push_str("\r\n"),
    }
    out.into_bytes()
}

fn send(addr: SocketAddr, key: &str, input: &Input, timeout: Duration) -> Answer {
    let deadline = Instant::now() + timeout;
    let Ok(mut conn) = Connection::open(addr, timeout) else {
        return Answer::NotSent;
    };
    let mut exchange = || -> Result<(u16, Vec<u8>), HttpError> {
        conn.write_all(&request_bytes(addr, key, input))?;
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let head = conn.read_head(left)?;
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let body = conn.read_body(&head, left)?;
        Ok((head.status, body))
    };
    match exchange() {
        Ok((status, _)) if status >= 500 => Answer::Unknown,
        Ok((status, body)) => Answer::Response { status, body },
        Err(_) => Answer::Unknown,
    }
}

/// Maps an answer to the model's outcome; `Err` for answers the model can't explain.
pub fn classify(input: &Input, status: u16, body: &[u8]) -> Result<Outcome, String> {
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let error_code = json.get("errorCode").and_then(serde_json::Value::as_u64);
    let node_value = json.pointer("/node/value").and_then(serde_json::Value::as_str);
    match (input, status, error_code) {
        (Input::Get, 200, None) => node_value
            .map(|v| Outcome::Value(v.to_string()))
            .ok_or_else(|| "GET without node.value".to_string()),
        (Input::Set(_) | Input::Cas { .. } | Input::Create(_), 200 | 201, None) => {
            let written = input.written_value();
            if node_value == written {
                Ok(Outcome::Ok)
            } else {
                Err(format!("write answered with node.value {node_value:?}, wrote {written:?}"))
            }
        }
        (Input::Delete, 200, None) => Ok(Outcome::Ok),
        (Input::Get | Input::Cas { .. } | Input::Delete, 404, Some(100)) => Ok(Outcome::NotFound),
        (Input::Cas { .. }, 412, Some(101)) => Ok(Outcome::CompareFailed),
        (Input::Create(_), 412, Some(105)) => Ok(Outcome::AlreadyExists),
        _ => Err("unexpected answer".to_string()),
    }
}

/// One operation done synchronously (for the final reads after the clients stopped): the
/// recorded operation, or `None` when it could not connect.
pub fn perform(addr: SocketAddr, key: &str, input: Input, timeout: Duration, started: Instant, client: usize, node: usize) -> Option<Operation> {
    let invoke_ns = started.elapsed().as_nanos() as u64;
    let answer = send(addr, key, &input, timeout);
    let return_ns = started.elapsed().as_nanos() as u64;
    let outcome = match answer {
        Answer::NotSent => return None,
        Answer::Unknown => Outcome::Unknown,
        Answer::Response { status, body } => classify(&input, status, &body).unwrap_or(Outcome::Unknown),
    };
    let open = outcome == Outcome::Unknown;
    Some(Operation { client, key: key.to_string(), input, invoke_ns, return_ns: (!open).then_some(return_ns), outcome, node })
}

/// Writes a history as JSON lines (for a failing run's report) and returns the path.
pub fn dump(history: &[Operation], name: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("rota-history-{name}-{}.jsonl", std::process::id()));
    let mut text = String::new();
    for op in history {
        if let Ok(line) = serde_json::to_string(op) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("could not write the history to {}: {e}", path.display());
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_the_model_outcomes() {
        let set = Input::Set("v1".into());
        let ok = br#"{"action":"set","node":{"key":"/k","value":"v1","modifiedIndex":3,"createdIndex":3}}"#;
        assert_eq!(classify(&set, 201, ok), Ok(Outcome::Ok));
        let wrong = br#"{"action":"set","node":{"key":"/k","value":"v2","modifiedIndex":3,"createdIndex":3}}"#;
        assert!(classify(&set, 200, wrong).is_err());
        let get = Input::Get;
        assert_eq!(classify(&get, 200, ok), Ok(Outcome::Value("v1".into())));
        let missing = br#"{"errorCode":100,"message":"Key not found","cause":"/k","index":4}"#;
        assert_eq!(classify(&get, 404, missing), Ok(Outcome::NotFound));
        let cas = Input::Cas { expected: "a".into(), new: "b".into() };
        let compare = br#"{"errorCode":101,"message":"Compare failed","cause":"[a != v1]","index":4}"#;
        assert_eq!(classify(&cas, 412, compare), Ok(Outcome::CompareFailed));
        assert_eq!(classify(&cas, 404, missing), Ok(Outcome::NotFound));
        let exists = br#"{"errorCode":105,"message":"Key already exists","cause":"/k","index":4}"#;
        assert_eq!(classify(&Input::Create("c".into()), 412, exists), Ok(Outcome::AlreadyExists));
        assert!(classify(&set, 412, exists).is_err(), "a set never fails with 105");
        assert!(classify(&get, 400, b"{\"errorCode\":209}").is_err());
    }
}
