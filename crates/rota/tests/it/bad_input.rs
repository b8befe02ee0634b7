//! Bad input end to end: malformed paths, queries, form bodies, numbers, oversized requests
//! and garbage bytes, sent to a real etcd and to rota side by side.
//!
//! Rules checked for rota on every case: never a 5xx, the process stays alive and `/health`
//! answers, and an error (or a dropped connection) changes nothing (X-Etcd-Index is the same
//! before and after). Where etcd answers a JSON error, rota must answer the same error
//! (normalized as in the differential test); where etcd rejects at the HTTP level, rota must
//! answer a 4xx (or close the connection, for bytes that are not HTTP); where etcd accepts,
//! rota must either do the same or refuse with a clear 4xx (a documented limit, e.g. the
//! value size).

use std::time::Duration;

use crate::crash::Rng;
use crate::harness::{self, Server};
use crate::http::{self, Request};
use crate::normalize::{self, Normalizer, Observation, RequestTraits};

const RAW_TIMEOUT: Duration = Duration::from_secs(5);

enum Probe {
    Http(Request),
    /// Bytes written as they are; the answer is read until the server closes.
    Raw(Vec<u8>),
}

struct Case {
    name: String,
    probe: Probe,
}

fn http_case(name: &str, req: Request) -> Case {
    Case {
        name: name.to_string(),
        probe: Probe::Http(req),
    }
}

fn raw_case(name: &str, bytes: impl Into<Vec<u8>>) -> Case {
    Case {
        name: name.to_string(),
        probe: Probe::Raw(bytes.into()),
    }
}

/// What one server did with one case.
struct Outcome {
    /// None: no HTTP answer (connection closed or timed out).
    status: Option<u16>,
    /// Normalized answer (HTTP probes only).
    observation: Option<Observation>,
    body_len: usize,
    index_before: u64,
    index_after: Option<u64>,
    healthy_after: bool,
}

fn raw_status(bytes: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).into_owned();
    let rest = text.strip_prefix("HTTP/1.")?;
    rest.get(2..5)?.parse().ok()
}

fn index_of(server: &Server) -> Option<u64> {
    http::send(server.addr(), &Request::new("GET", "/v2/keys/"))
        .ok()
        .and_then(|r| r.header("x-etcd-index").and_then(|v| v.parse().ok()))
}

fn run_case(server: &Server, case: &Case) -> Outcome {
    let index_before = index_of(server).unwrap_or_else(|| {
        panic!(
            "{} is not answering before case {}",
            server.kind.name(),
            case.name
        )
    });
    let norm = Normalizer {
        base_index: index_before,
        client_port: server.client_port,
        peer_port: server.peer_port,
        shape_only: false,
    };
    let (status, observation, body_len) = match &case.probe {
        Probe::Http(req) => match http::send(server.addr(), req) {
            Ok(resp) => {
                let traits = RequestTraits::default();
                let obs = normalize::normalize_response(&norm, case.name.clone(), &resp, traits);
                (Some(resp.status()), Some(obs), resp.body.len())
            }
            Err(_) => (None, None, 0),
        },
        Probe::Raw(bytes) => {
            let answer = http::send_raw(server.addr(), bytes, RAW_TIMEOUT).unwrap_or_default();
            (raw_status(&answer), None, answer.len())
        }
    };
    let healthy_after = http::send(server.addr(), &Request::new("GET", "/health"))
        .is_ok_and(|r| r.status() == 200 && r.text().contains("true"));
    Outcome {
        status,
        observation,
        body_len,
        index_before,
        index_after: index_of(server),
        healthy_after,
    }
}

fn describe(o: &Outcome) -> String {
    match (&o.observation, o.status) {
        (Some(obs), _) => obs.to_string(),
        (None, Some(status)) => format!("{status} (raw answer, {} bytes)", o.body_len),
        (None, None) => "<no HTTP answer>".into(),
    }
}

/// Runs every case against a fresh etcd and a fresh candidate and fails listing each broken
/// rule.
fn run_bad_input(suite: &str, cases: Vec<Case>) {
    let (mut etcd, mut candidate) = harness::start_pair();
    let (etcd_out, cand_out) = std::thread::scope(|scope| {
        let a = scope.spawn(|| cases.iter().map(|c| run_case(&etcd, c)).collect::<Vec<_>>());
        let b = scope.spawn(|| {
            cases
                .iter()
                .map(|c| run_case(&candidate, c))
                .collect::<Vec<_>>()
        });
        (
            a.join().expect("etcd thread"),
            b.join().expect("candidate thread"),
        )
    });
    let name = candidate.kind.name();
    let mut failures = Vec::new();
    for ((case, e), c) in cases.iter().zip(&etcd_out).zip(&cand_out) {
        let mut broken = Vec::new();
        // etcd's own 501 (Go's server refusing a transfer coding) is no server failure.
        if c.status.is_some_and(|s| s >= 500) && !(c.status == Some(501) && e.status == Some(501)) {
            broken.push("answered 5xx".to_string());
        }
        if !c.healthy_after {
            broken.push("/health failed afterwards (crashed or wedged)".to_string());
        }
        let candidate_refused = c.status.is_none_or(|s| s >= 400);
        if candidate_refused && c.index_after != Some(c.index_before) {
            broken.push(format!(
                "state changed on an error: index {} → {:?}",
                c.index_before, c.index_after
            ));
        }
        if let (Some(400..=499), Some(eo)) = (e.status, &e.observation) {
            let etcd_json_error = eo.body.starts_with("{\"errorCode\"");
            if etcd_json_error && c.observation.as_ref().map(Observation::key) != Some(eo.key()) {
                broken.push("etcd answers a JSON error; the answer must be the same".to_string());
            }
        }
        match (e.status, c.status) {
            (Some(400..=499), Some(400..=499)) | (Some(400..=499), None)
                if matches!(case.probe, Probe::Raw(_)) => {}
            (Some(400..=499), cs) if !matches!(cs, Some(400..=499)) => {
                broken.push("etcd refuses with a 4xx; so must it".to_string());
            }
            (None, cs) if cs.is_some_and(|s| s < 400) => {
                broken.push("etcd gives no HTTP answer; accepting this is wrong".to_string());
            }
            (Some(500..), cs) if cs.is_some_and(|s| s < 400) => {
                broken.push("etcd refuses this (5xx); accepting it is wrong".to_string());
            }
            (Some(200..=399), Some(400..=499)) if c.body_len == 0 && !is_head(case) => {
                broken.push("refused with an empty body: not a clear error".to_string());
            }
            (Some(es @ 200..=399), Some(cs @ 200..=399)) => {
                let same = match (&e.observation, &c.observation) {
                    (Some(eo), Some(co)) => eo.key() == co.key(),
                    _ => es == cs,
                };
                if !same {
                    broken.push("etcd accepts this; the answer differs".to_string());
                }
            }
            _ => {}
        }
        // The harness itself: etcd must keep the same rules, else the case is miswritten.
        if e.status.is_none_or(|s| s >= 400) && e.index_after != Some(e.index_before) {
            broken.push(format!(
                "(harness) etcd changed state on an error: {} → {:?}",
                e.index_before, e.index_after
            ));
        }
        if !broken.is_empty() {
            failures.push(format!(
                "\n  case {}: {}\n    etcd: {}\n    {name}: {}",
                case.name,
                broken.join("; "),
                describe(e),
                describe(c)
            ));
        }
    }
    let etcd_alive = etcd.is_running();
    let cand_alive = candidate.is_running();
    assert!(etcd_alive, "(harness) etcd died during {suite}");
    assert!(
        cand_alive,
        "{name} died during {suite}: {}",
        candidate.stderr_tail()
    );
    assert!(
        failures.is_empty(),
        "bad input `{suite}`: {} of {} cases broke a rule:{}",
        failures.len(),
        cases.len(),
        failures.join("")
    );
}

fn is_head(case: &Case) -> bool {
    matches!(&case.probe, Probe::Http(r) if r.method == "HEAD")
}

fn put(target: &str, form: &str) -> Request {
    Request::new("PUT", target).form(form)
}

#[test]
fn malformed_paths_get_etcds_error_or_a_clear_4xx() {
    let deep = format!("/v2/keys/{}", "a/".repeat(500));
    run_bad_input(
        "paths",
        vec![
            http_case(
                "bad escape in path (GET)",
                Request::new("GET", "/v2/keys/%zz"),
            ),
            http_case("bad escape in path (PUT)", put("/v2/keys/%zz", "value=x")),
            http_case("lone percent", Request::new("GET", "/v2/keys/%")),
            http_case("truncated escape", put("/v2/keys/a%2", "value=x")),
            http_case("NUL in key (GET)", Request::new("GET", "/v2/keys/a%00b")),
            http_case(
                "invalid UTF-8 key (GET)",
                Request::new("GET", "/v2/keys/%FF%FE"),
            ),
            http_case(
                "invalid UTF-8 key (DELETE)",
                Request::new("DELETE", "/v2/keys/%FF%FE"),
            ),
            http_case(
                "encoded dot-dot",
                Request::new("GET", "/v2/keys/%2e%2e/%2e%2e/etc/passwd"),
            ),
            http_case(
                "encoded slash dot-dot (PUT)",
                put("/v2/keys/x%2F..%2F..%2Fy/%2E%2E", "value=x"),
            ),
            http_case("deep path GET", Request::new("GET", &deep)),
            http_case("asterisk target", Request::new("OPTIONS", "*")),
            http_case(
                "absolute-form target",
                Request::new("GET", "http://127.0.0.1/v2/keys/"),
            ),
            http_case("no leading slash", Request::new("GET", "v2/keys/a")),
            raw_case(
                "space in path",
                "GET /v2/keys/a b HTTP/1.1\r\nHost: x\r\n\r\n",
            ),
            raw_case(
                "raw non-ASCII in path",
                b"GET /v2/keys/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            ),
            raw_case(
                "control char in path",
                b"GET /v2/keys/a\x01b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            ),
            // Last: etcd stores it (rota refuses, a clear 4xx: as text it would be the key
            // `/u\u{FFFD}`, and `/u%FE` the same key), which would change later answers.
            http_case("invalid UTF-8 key (PUT)", put("/v2/keys/u%FF", "value=x")),
        ],
    );
}

#[test]
fn malformed_queries_get_etcds_error_or_a_clear_4xx() {
    run_bad_input(
        "queries",
        vec![
            http_case(
                "waitIndex=-1",
                Request::new("GET", "/v2/keys/k?wait=true&waitIndex=-1"),
            ),
            http_case(
                "waitIndex=abc",
                Request::new("GET", "/v2/keys/k?wait=true&waitIndex=abc"),
            ),
            http_case(
                "waitIndex overflow",
                Request::new(
                    "GET",
                    "/v2/keys/k?wait=true&waitIndex=99999999999999999999999",
                ),
            ),
            http_case(
                "waitIndex empty",
                Request::new("GET", "/v2/keys/k?wait=true&waitIndex="),
            ),
            http_case(
                "bad escape in query name",
                Request::new("GET", "/v2/keys/k?%zz=1"),
            ),
            http_case(
                "bad escape in query value",
                Request::new("GET", "/v2/keys/k?recursive=%zz"),
            ),
            http_case(
                "duplicate param, valid first",
                Request::new("GET", "/v2/keys/?recursive=true&recursive=maybe"),
            ),
            http_case(
                "duplicate param, invalid first",
                Request::new("GET", "/v2/keys/?recursive=maybe&recursive=true"),
            ),
            http_case(
                "semicolon separator",
                Request::new("GET", "/v2/keys/?recursive=true;sorted=true"),
            ),
            http_case(
                "empty bools",
                Request::new("GET", "/v2/keys/?sorted=&wait="),
            ),
            http_case(
                "DELETE prevIndex=-1",
                Request::new("DELETE", "/v2/keys/k?prevIndex=-1"),
            ),
            http_case(
                "DELETE prevIndex=abc",
                Request::new("DELETE", "/v2/keys/k?prevIndex=abc"),
            ),
            http_case(
                "DELETE prevValue empty",
                Request::new("DELETE", "/v2/keys/k?prevValue="),
            ),
            http_case(
                "DELETE dir=maybe",
                Request::new("DELETE", "/v2/keys/k?dir=maybe"),
            ),
            http_case(
                "DELETE recursive=2",
                Request::new("DELETE", "/v2/keys/k?recursive=2"),
            ),
            http_case(
                "PUT ttl in query",
                Request::new("PUT", "/v2/keys/k?value=x&ttl=abc"),
            ),
            http_case(
                "PUT prevExist in query",
                Request::new("PUT", "/v2/keys/k?value=x&prevExist=maybe"),
            ),
            http_case(
                "huge query (64 KiB)",
                Request::new("GET", &format!("/v2/keys/k?x={}", "q".repeat(64 << 10))),
            ),
        ],
    );
}

#[test]
fn malformed_form_bodies_and_numbers_get_etcds_error_or_a_clear_4xx() {
    let form = |name: &str, body: &str| http_case(name, put("/v2/keys/f", body));
    run_bad_input(
        "forms",
        vec![
            form("value=%zz", "value=%zz"),
            form("ttl=%zz", "value=x&ttl=%zz"),
            form("lone percent", "value=%"),
            form("truncated escape", "value=%1"),
            form("empty pairs", "&&&=&="),
            form("ttl=-1", "value=x&ttl=-1"),
            form("ttl=1.5", "value=x&ttl=1.5"),
            form("ttl=+5", "value=x&ttl=%2B5"),
            form("ttl= 5", "value=x&ttl=%205"),
            form("ttl=2^64", "value=x&ttl=18446744073709551616"),
            form("ttl=abc", "value=x&ttl=abc"),
            form("prevIndex=-1", "value=x&prevIndex=-1"),
            form("prevIndex=abc", "value=x&prevIndex=abc"),
            form("prevIndex=2^64", "value=x&prevIndex=18446744073709551616"),
            form("prevExist=maybe", "value=x&prevExist=maybe"),
            form("refresh=maybe", "value=x&refresh=maybe"),
            form("dir=maybe", "dir=maybe"),
            form("refresh with value", "refresh=true&ttl=5&value=x"),
            form("refresh without ttl", "refresh=true"),
            form("prevValue empty", "value=x&prevValue="),
            http_case(
                "POST value=%zz",
                Request::new("POST", "/v2/keys/q").form("value=%zz"),
            ),
            http_case(
                "POST ttl=-1",
                Request::new("POST", "/v2/keys/q").form("value=x&ttl=-1"),
            ),
            http_case(
                "non-UTF-8 form bytes",
                Request::new("PUT", "/v2/keys/f")
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .raw_body(b"value=\xff\xfe&ttl=\xff".to_vec()),
            ),
            http_case(
                "JSON under a form content type",
                Request::new("PUT", "/v2/keys/f")
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .raw_body(br#"{"value":"x","ttl":"abc"}"#.to_vec()),
            ),
            http_case(
                "broken multipart body",
                Request::new("PUT", "/v2/keys/f")
                    .header("Content-Type", "multipart/form-data; boundary=xx")
                    .raw_body(b"--xx\r\ngarbage".to_vec()),
            ),
            http_case(
                "bad content type",
                Request::new("PUT", "/v2/keys/f")
                    .header("Content-Type", ";;;=")
                    .raw_body(b"value=x".to_vec()),
            ),
            // Last, as etcd stores it (rota refuses: see "invalid UTF-8 key (PUT)").
            http_case("value not UTF-8", put("/v2/keys/f8", "value=a%FFb")),
        ],
    );
}

#[test]
fn oversized_requests_get_etcds_answer_or_a_clear_4xx() {
    let value_1mib_plus = format!("value={}", "v".repeat((1 << 20) + 1));
    let value_2mib = format!("value={}", "v".repeat(2 << 20));
    let body_11mib = format!("value={}", "b".repeat(11 << 20));
    run_bad_input(
        "oversized",
        vec![
            http_case("value of 1 MiB + 1", put("/v2/keys/big1", &value_1mib_plus)),
            http_case("value of 2 MiB", put("/v2/keys/big2", &value_2mib)),
            http_case("form body of 11 MiB", put("/v2/keys/big3", &body_11mib)),
            http_case(
                "key of 5000 bytes",
                put(&format!("/v2/keys/{}", "k".repeat(5000)), "value=x"),
            ),
            http_case(
                "key of 64 KiB",
                put(&format!("/v2/keys/{}", "k".repeat(64 << 10)), "value=x"),
            ),
            http_case(
                "GET key of 64 KiB",
                Request::new("GET", &format!("/v2/keys/{}", "k".repeat(64 << 10))),
            ),
            http_case(
                "header of 2 MiB",
                Request::new("GET", "/v2/keys/").header("X-Big", &"h".repeat(2 << 20)),
            ),
            http_case(
                "10000 form fields",
                put("/v2/keys/many", &"a=b&".repeat(10_000)),
            ),
        ],
    );
}

#[test]
fn garbage_bytes_on_the_socket_never_crash_or_change_state() {
    let mut rng = Rng::new(crate::crash::seed());
    let mut random = |len: usize| (0..len).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>();
    run_bad_input(
        "garbage",
        vec![
            raw_case("64 random bytes", random(64)),
            raw_case("4 KiB random bytes", random(4096)),
            raw_case("empty lines", "\r\n\r\n\r\n"),
            raw_case("unknown HTTP version", "GET /v2/keys/ HTTP/9.9\r\nHost: x\r\n\r\n"),
            raw_case("no version", "GET /v2/keys/\r\n\r\n"),
            raw_case("header without colon", "GET /v2/keys/ HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n"),
            raw_case(
                "negative Content-Length",
                "PUT /v2/keys/g HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: -1\r\n\r\nvalue=x",
            ),
            raw_case(
                "conflicting Content-Length",
                "PUT /v2/keys/g HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\nContent-Length: 9\r\n\r\nvalue=x",
            ),
            raw_case(
                "bad chunk size",
                "PUT /v2/keys/g HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nvalue=x\r\n0\r\n\r\n",
            ),
            raw_case(
                "truncated body then close",
                "PUT /v2/keys/g HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nvalue=x",
            ),
            raw_case(
                "gzip then chunked",
                "PUT /v2/keys/g HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: gzip, chunked\r\n\r\n7\r\nvalue=x\r\n0\r\n\r\n",
            ),
            raw_case(
                "two chunked headers",
                "PUT /v2/keys/g HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nvalue=x\r\n0\r\n\r\n",
            ),
            raw_case(
                "an expectation other than 100-continue",
                "PUT /v2/keys/g HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\nvalue=x",
            ),
            raw_case(
                "two Host headers",
                "PUT /v2/keys/g HTTP/1.1\r\nHost: x\r\nHost: y\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\nvalue=x",
            ),
            raw_case(
                "HTTP/1.1 without Host",
                "PUT /v2/keys/g HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\nvalue=x",
            ),
            raw_case("HTTP/1.0 without Host", "GET /v2/keys/g HTTP/1.0\r\n\r\n"),
            raw_case("NUL bytes in request line", b"GET /v2/keys/\0\0 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            raw_case("HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            raw_case("TLS client hello", vec![0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x00]),
            raw_case("request line of 100 KiB", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100 << 10))),
        ],
    );
}

/// The deepest tree a client can make (keys are at most 4 KiB: 2,047 levels under the root)
/// is read, sorted, read through the leader and removed like any other: etcd answers each
/// with 200 (a 4 MB body); rota's threads ran out of stack at ~1,850 levels and the process
/// aborted.
#[test]
fn the_deepest_tree_a_key_can_make_is_read_and_removed_without_a_crash() {
    let mut server = Server::start(harness::Kind::Rota);
    let deep = vec!["d"; 2047].join("/");
    let put = http::send(server.addr(), &Request::new("PUT", &format!("/v2/keys/{deep}")).form("value=x")).expect("put");
    assert_eq!(put.status(), 201, "{}", put.text());
    for query in ["recursive=true", "recursive=true&sorted=true", "recursive=true&quorum=true"] {
        let reply = http::send_with_timeout(server.addr(), &Request::new("GET", &format!("/v2/keys/?{query}")), Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("GET ?{query}: {e}"));
        assert_eq!(reply.status(), 200, "?{query}");
        let body = reply.text();
        assert!(body.len() > 2047 * 2 * 40, "?{query}: {} bytes", body.len());
        assert_eq!(body.matches('{').count(), body.matches('}').count(), "?{query}: a whole JSON body");
        assert!(server.is_running(), "the node died on ?{query}");
    }
    let delete = http::send(server.addr(), &Request::new("DELETE", "/v2/keys/d?recursive=true")).expect("delete");
    assert_eq!(delete.status(), 200, "{}", delete.text());
    assert!(server.is_running(), "the node died on the delete");
}

/// A client that shuts down its sending side once its request is out (`nc -N`, `socat`, some
/// proxies) gets its answer from etcd (Go's server answers a half-closed connection). rota
/// used to drop the request at the end of the stream while the write was applied, so the
/// client could not tell, and a retry of an in-order POST added a second key.
#[test]
fn a_client_that_half_closes_after_its_request_gets_its_answer_from_both() {
    for kind in [harness::Kind::Etcd, harness::Kind::Rota] {
        let server = Server::start(kind);
        for (method, path) in [("PUT", "/v2/keys/half"), ("POST", "/v2/keys/queue")] {
            let request = format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
                 Content-Length: 10\r\n\r\nvalue=half"
            );
            let before = index_of(&server).expect("index before");
            let answer = http::send_raw(server.addr(), request.as_bytes(), RAW_TIMEOUT).expect("send");
            let text = String::from_utf8_lossy(&answer);
            assert_eq!(raw_status(&answer), Some(201), "{}: {method} {path}: {text:?}", kind.name());
            assert!(text.contains("\"value\":\"half\""), "{}: {text}", kind.name());
            assert_eq!(index_of(&server), Some(before + 1), "{}: one write, answered", kind.name());
        }
    }
}
