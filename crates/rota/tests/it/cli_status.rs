//! `rota status` against a running node, and against an endpoint where nothing listens.

use crate::harness::{Kind, Server};
use crate::http::{self, Request};
use crate::jobs_util::rota;

#[test]
fn status_shows_each_endpoint_and_fails_for_one_that_does_not_answer() {
    let server = Server::start(Kind::Rota);
    let written = http::send(server.addr(), &Request::new("PUT", "/v2/keys/status").form("value=1"))
        .expect("PUT");
    assert_eq!(written.status(), 201, "{}", written.text());
    let id = http::send(server.addr(), &Request::new("GET", "/v2/stats/self"))
        .expect("stats")
        .json()["id"]
        .as_str()
        .expect("id")
        .to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    // Port 9 (discard): nothing listens on loopback here.
    let dead = "http://127.0.0.1:9";
    let both = rota(dir.path(), &["status".into(), "--endpoints".into(), format!("{},{dead}", server.client_url())]);
    assert_eq!(both.status.code(), Some(2), "an unreachable endpoint is a bad connection: {both:?}");
    let lines: Vec<&str> = both.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "a header and one line per endpoint: {both:?}");
    assert!(lines[0].starts_with("ENDPOINT"), "{both:?}");
    let fields: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(fields[..4], [server.client_url().as_str(), id.as_str(), "n1", "true"], "{both:?}");
    let number = |i: usize| fields[i].parse::<u64>().unwrap_or_else(|e| panic!("field {i} ({e}): {both:?}"));
    let (term, commit, applied) = (number(4), number(5), number(6));
    assert!(term >= 1, "{both:?}");
    // The acknowledged write is committed and applied (after the leader's first entry).
    assert!(commit >= 2 && applied == commit, "{both:?}");
    assert!(number(7) > 0, "free MiB: {both:?}");
    assert_eq!(fields[8], "ok", "{both:?}");
    assert_eq!(fields[9], "rota", "{both:?}");
    assert!(lines[2].starts_with(dead) && lines[2].contains("error:"), "{both:?}");

    let one = rota(dir.path(), &["status".into(), "--endpoints".into(), server.client_url()]);
    assert!(one.status.success(), "{one:?}");
    assert_eq!(one.stdout.lines().count(), 2, "{one:?}");
}
