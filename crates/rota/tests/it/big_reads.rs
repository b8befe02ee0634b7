//! A recursive read of a big tree does not hold up the node's other clients: building and
//! rendering it takes its thread for a while (1.4M keys: 5 s), and the HTTP worker that
//! takes it hands its other requests to another thread meanwhile. Before, one such read
//! stalled every client of the node, and on a follower the peer RPCs too: the leader then
//! heard from no majority and stopped taking writes (a large-state audit).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{Kind, Server};
use crate::http::{self, Request};

const KEYS: usize = 20_000;
const WRITERS: usize = 16;

#[test]
fn a_big_recursive_read_does_not_hold_up_other_clients() {
    // One HTTP worker, as on a two-core machine, whatever this machine has. (nextest runs
    // each test in a process of its own: the variable reaches only this test's server.)
    std::env::set_var("TOKIO_WORKER_THREADS", "1");
    let server = Server::try_start_with(Kind::Rota, None, Vec::new()).unwrap_or_else(|e| panic!("{e}"));
    let addr = server.addr();
    let value = "v".repeat(1_000);
    std::thread::scope(|scope| {
        for writer in 0..WRITERS {
            let value = &value;
            scope.spawn(move || {
                for i in (writer..KEYS).step_by(WRITERS) {
                    let request = Request::new("PUT", &format!("/v2/keys/big/d{}/k{i}", i % 100)).form(&format!("value={value}"));
                    let answer = http::send_with_timeout(addr, &request, Duration::from_secs(30)).expect("a write");
                    assert_eq!(answer.status(), 201, "{}", answer.text());
                }
            });
        }
    });

    // Probes one after another while the big read runs; each probe's time is recorded.
    let reading = Arc::new(AtomicBool::new(true));
    let probes = {
        let reading = reading.clone();
        std::thread::spawn(move || {
            let mut probes = Vec::new();
            while reading.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let answer = http::send_with_timeout(addr, &Request::new("GET", "/v2/keys/big/d7/k7"), Duration::from_secs(30)).expect("a probe");
                assert_eq!(answer.status(), 200, "{}", answer.text());
                probes.push(sent.elapsed());
                std::thread::sleep(Duration::from_millis(2));
            }
            probes
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let sent = Instant::now();
    let read = http::send_with_timeout(addr, &Request::new("GET", "/v2/keys/big?recursive=true"), Duration::from_secs(60)).expect("the big read");
    let took = sent.elapsed();
    reading.store(false, Ordering::Relaxed);
    let probes = probes.join().expect("the probe thread");
    assert_eq!(read.status(), 200);
    assert!(read.body.len() > KEYS * 1_000, "{} bytes", read.body.len());
    let slowest = probes.iter().max().copied().unwrap_or_default();
    eprintln!("the big read took {took:?}; {} probes meanwhile, the slowest {slowest:?}", probes.len());
    // Held up, a probe waits for the whole build and render: most of the read's time.
    assert!(slowest < took / 2, "a probe waited {slowest:?} of the read's {took:?}\n{}", server.stderr_tail());
}
