//! rota-failover: how long a cluster takes to accept writes again after its leader is
//! SIGKILLed, measured as a client sees it. Works for etcd and rota alike (both answer etcd's
//! v2 API): finds the leader via `GET /v2/stats/self`, SIGKILLs its process, then PUTs to
//! the surviving members round-robin (each try bounded by `--try-timeout-ms`) until one
//! succeeds. Prints `RESULT <label> failover_ms=<ms>`.
//!
//! usage: rota-failover --members http://127.0.0.1:2379=PID,... [--label rota] [--max-seconds 30]

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// `client-url=pid` of every member.
    #[arg(long, value_delimiter = ',')]
    members: Vec<String>,
    #[arg(long, default_value = "cluster")]
    label: String,
    /// Give up after this long without a successful write.
    #[arg(long, default_value_t = 30.0)]
    max_seconds: f64,
    /// Bound on each write attempt (connect + answer).
    #[arg(long, default_value_t = 300)]
    try_timeout_ms: u64,
}

struct Member {
    host_port: String,
    pid: u32,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let members = args
        .members
        .iter()
        .map(|spec| {
            let (url, pid) = spec.rsplit_once('=').ok_or_else(|| anyhow!("member {spec:?} is not url=pid"))?;
            let host_port = url.trim_start_matches("http://").trim_end_matches('/').to_string();
            Ok(Member { host_port, pid: pid.parse().with_context(|| format!("pid in {spec:?}"))? })
        })
        .collect::<Result<Vec<_>>>()?;
    let try_timeout = Duration::from_millis(args.try_timeout_ms);
    let leader = members
        .iter()
        .position(|member| {
            request(&member.host_port, "GET", "/v2/stats/self", "", try_timeout)
                .map(|(status, body)| status == 200 && body.contains("\"StateLeader\""))
                .unwrap_or(false)
        })
        .ok_or_else(|| anyhow!("no member says it is the leader"))?;
    // The cluster must be writable before the fault, or the measurement means nothing.
    let (status, body) = request(&members[leader].host_port, "PUT", "/v2/keys/failover-probe", "value=before", try_timeout)?;
    if !(200..300).contains(&status) {
        bail!("the leader refused a write before the fault: {status} {body}");
    }
    let killed = std::process::Command::new("kill").arg("-9").arg(members[leader].pid.to_string()).status()?;
    if !killed.success() {
        bail!("kill -9 {} failed", members[leader].pid);
    }
    let start = Instant::now();
    let survivors: Vec<&Member> = members.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, m)| m).collect();
    let mut attempt = 0usize;
    loop {
        if start.elapsed().as_secs_f64() > args.max_seconds {
            bail!("no write succeeded within {} s", args.max_seconds);
        }
        let member = survivors[attempt % survivors.len()];
        attempt += 1;
        let body = format!("value=after-{attempt}");
        if let Ok((status, _)) = request(&member.host_port, "PUT", "/v2/keys/failover-probe", &body, try_timeout) {
            if (200..300).contains(&status) {
                break;
            }
        }
    }
    let failover_ms = start.elapsed().as_secs_f64() * 1000.0;
    println!("RESULT {}-failover failover_ms={failover_ms:.0} attempts={attempt}", args.label);
    Ok(())
}

/// One HTTP/1.1 request on a fresh connection, bounded by `timeout` overall.
fn request(host_port: &str, method: &str, path: &str, form: &str, timeout: Duration) -> Result<(u16, String)> {
    let address = host_port.to_socket_addrs()?.next().ok_or_else(|| anyhow!("cannot resolve {host_port}"))?;
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| anyhow!("no status in {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    Ok((status, body))
}
