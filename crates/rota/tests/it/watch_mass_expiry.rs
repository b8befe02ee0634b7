//! Thousands of keys expiring in one step (a fleet's registrations after the node was
//! paused, or its cluster without quorum, for longer than their ttl): a waiting watch on
//! them gets its `expire` event and a waiting watch elsewhere keeps waiting, as on etcd,
//! which pushes every event to its registered watchers. rota's watchers read the history
//! after a wake-up; with 2,500 events in one applied entry they fell out of the history and
//! every waiting watch of the node ended with an empty body. And the bound on watches is a
//! flag.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::send_signal;
use crate::harness::{Kind, Server};
use crate::http::{self, Request};

const KEYS: usize = 3_000;
const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;

fn watch(server: &Server, target: &'static str) -> thread::JoinHandle<Result<http::Response, http::HttpError>> {
    let addr = server.addr();
    thread::spawn(move || http::send_with_timeout(addr, &Request::new("GET", target), Duration::from_secs(60)))
}

fn watchers(server: &Server) -> u64 {
    let metrics = http::send(server.addr(), &Request::new("GET", "/metrics")).expect("metrics").text();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("rota_watchers "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn watch_mass_expiry_reaches_a_waiting_watch_and_leaves_the_others_waiting() {
    let mut server = Server::start(Kind::Rota);
    let addr = server.addr();
    let started = Instant::now();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            thread::spawn(move || {
                for i in (w..KEYS).step_by(4) {
                    let put = Request::new("PUT", &format!("/v2/keys/svc/k{i}")).form("value=up&ttl=4");
                    let reply = http::send(addr, &put).expect("put");
                    assert_eq!(reply.status(), 201, "{}", reply.text());
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
    let written = started.elapsed();
    assert!(written < Duration::from_secs(4), "the keys took {written:?} to write: some expired meanwhile");

    let on_them = watch(&server, "/v2/keys/svc?wait=true&recursive=true");
    let elsewhere = watch(&server, "/v2/keys/other?wait=true");
    let deadline = Instant::now() + Duration::from_secs(10);
    while watchers(&server) < 2 {
        assert!(Instant::now() < deadline, "the two watches did not start waiting");
        thread::sleep(Duration::from_millis(10));
    }

    // Frozen past every key's ttl: on waking, one tick expires them all at once.
    let pid = server.pid().expect("running");
    send_signal(pid, SIGSTOP);
    let every_ttl_over = started + written + Duration::from_millis(4_500);
    thread::sleep(every_ttl_over.saturating_duration_since(Instant::now()));
    send_signal(pid, SIGCONT);

    let reply = on_them.join().expect("watch thread").expect("the watch on /svc answered");
    assert_eq!(reply.status(), 200, "{}", reply.text());
    let event: Value = serde_json::from_str(&reply.text()).unwrap_or_else(|e| panic!("{e}: {:?}", reply.text()));
    assert_eq!(event["action"], "expire", "{event}");
    assert!(event["node"]["key"].as_str().is_some_and(|key| key.starts_with("/svc/k")), "{event}");

    // The other watch still waits, and gets the next change of its key.
    assert!(!elsewhere.is_finished(), "the watch on /other ended without a change of /other");
    let put = http::send(addr, &Request::new("PUT", "/v2/keys/other").form("value=1")).expect("put");
    assert_eq!(put.status(), 201, "{}", put.text());
    let reply = elsewhere.join().expect("watch thread").expect("the watch on /other answered");
    let event: Value = serde_json::from_str(&reply.text()).unwrap_or_else(|e| panic!("{e}: {:?}", reply.text()));
    assert_eq!((event["action"].as_str(), event["node"]["key"].as_str()), (Some("set"), Some("/other")), "{event}");
    let remaining = http::send(addr, &Request::new("GET", "/v2/keys/svc")).expect("get").text();
    assert_eq!(serde_json::from_str::<Value>(&remaining).expect("json")["node"]["nodes"], Value::Null, "{remaining}");
    server.kill();
}

/// The watch bound is a flag (`--max-watchers`): a fleet with more watchers per member than
/// the default 2,048 raises it instead of getting 503s.
#[test]
fn watch_bound_is_set_by_max_watchers() {
    let server = Server::try_start_with(Kind::Rota, None, vec!["--max-watchers".into(), "3".into()]).expect("start");
    let waiting: Vec<_> = (0..3).map(|_| watch(&server, "/v2/keys/w?wait=true")).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while watchers(&server) < 3 {
        assert!(Instant::now() < deadline, "the three watches did not start waiting");
        thread::sleep(Duration::from_millis(10));
    }
    let refused = http::send(server.addr(), &Request::new("GET", "/v2/keys/w?wait=true")).expect("fourth watch");
    assert_eq!(refused.status(), 503, "{}", refused.text());
    assert!(refused.text().contains("Too many watchers"), "{}", refused.text());
    let put = http::send(server.addr(), &Request::new("PUT", "/v2/keys/w").form("value=1")).expect("put");
    assert_eq!(put.status(), 201, "{}", put.text());
    for watch in waiting {
        let reply = watch.join().expect("watch thread").expect("answered");
        assert_eq!(reply.status(), 200, "{}", reply.text());
    }
}
