//! A closed-loop HTTP/1.1 load generator for the etcd v2 PUT benchmark, cheaper in CPU than
//! wrk with a Lua script: the server shares the machine's two cores with its load
//! generator, and wrk with `../shared/bench/etcd_v2_put.lua` spent ~29 µs of CPU per
//! request, more than rota itself (bench/RESULTS.md). It sends the same requests to any
//! server (etcd and rota alike): `PUT /v2/keys/bench/<new key>` with the form body
//! `value=<64 × v>`, `-c` keep-alive connections with one request in flight each, for
//! `-d` seconds, and prints wrk's SUMMARY line as the shared script does (`non2xx` counts
//! answers with a status of 300 or more, `sockerr` failed connections and reads).
//!
//! usage: rota-v2load --addr 127.0.0.1:2379 -c 64 -d 10

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser, Debug)]
#[command(about = "Closed-loop etcd v2 PUT load: c connections, one request in flight each")]
struct Args {
    /// host:port of the server.
    #[arg(long)]
    addr: String,
    /// Connections (the concurrency).
    #[arg(short = 'c', long, default_value_t = 64)]
    connections: usize,
    /// Seconds to run.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    duration: f64,
    /// Worker threads of the generator (1 leaves the most CPU to the server).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Key prefix.
    #[arg(long, default_value = "/v2/keys/bench/")]
    prefix: String,
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    /// Latency of each answered request, in µs.
    latencies_us: Vec<u32>,
    non2xx: u64,
    sockerr: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let duration = Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let deadline = started + duration;
    // Keys differ between runs and connections: a base from the clock, the connection, a
    // counter (the shared script draws random numbers out of 10^9 for the same effect).
    let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() % 1_000_000_000;
    let tasks: Vec<_> = (0..args.connections)
        .map(|conn| {
            let (addr, prefix) = (args.addr.clone(), args.prefix.clone());
            tokio::spawn(async move { connection(&addr, &format!("{prefix}{base}-{conn}-"), deadline).await })
        })
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        let tally = task.await.context("a connection task")?;
        all.latencies_us.extend(tally.latencies_us);
        all.non2xx += tally.non2xx;
        all.sockerr += tally.sockerr;
    }
    let elapsed = started.elapsed().max(duration).as_secs_f64();
    let mut latencies = all.latencies_us;
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let at = ((latencies.len() as f64 * p / 100.0).ceil() as usize).clamp(1, latencies.len()) - 1;
        f64::from(latencies[at]) / 1000.0
    };
    println!(
        "SUMMARY req={} dur_s={:.2} rps={:.0} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2} non2xx={} sockerr={}",
        latencies.len(),
        elapsed,
        latencies.len() as f64 / elapsed,
        percentile(50.0),
        percentile(90.0),
        percentile(99.0),
        latencies.last().map_or(0.0, |&max| f64::from(max) / 1000.0),
        all.non2xx,
        all.sockerr
    );
    Ok(())
}

/// One connection's loop until `deadline`; a failed connection is counted and made again.
async fn connection(addr: &str, key_prefix: &str, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let stream = match TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(_) => {
                tally.sockerr += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut stream = BufReader::new(stream);
        if let Err(_error) = requests(&mut stream, addr, key_prefix, &mut n, deadline, &mut tally).await {
            tally.sockerr += 1;
        }
    }
    tally
}

const BODY: &str = "value=vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv";

async fn requests(
    stream: &mut BufReader<TcpStream>,
    addr: &str,
    key_prefix: &str,
    n: &mut u64,
    deadline: Instant,
    tally: &mut Tally,
) -> Result<()> {
    let tail = format!(
        " HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let mut request = Vec::with_capacity(256);
    let mut line = String::with_capacity(256);
    let mut body = Vec::with_capacity(1024);
    loop {
        let sent_at = Instant::now();
        if sent_at >= deadline {
            return Ok(());
        }
        *n += 1;
        request.clear();
        request.extend_from_slice(b"PUT ");
        request.extend_from_slice(key_prefix.as_bytes());
        request.extend_from_slice(n.to_string().as_bytes());
        request.extend_from_slice(tail.as_bytes());
        stream.get_mut().write_all(&request).await?;
        let status = read_response(stream, &mut line, &mut body).await?;
        if status >= 300 {
            tally.non2xx += 1;
        }
        tally.latencies_us.push(u32::try_from(sent_at.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
}

/// Reads one response (status line, headers, a `Content-Length` or chunked body); returns
/// its status.
async fn read_response(stream: &mut BufReader<TcpStream>, line: &mut String, body: &mut Vec<u8>) -> Result<u16> {
    line.clear();
    if stream.read_line(line).await? == 0 {
        bail!("connection closed");
    }
    let status: u16 = line.split_whitespace().nth(1).and_then(|code| code.parse().ok()).context("status line")?;
    let (mut length, mut chunked) = (0usize, false);
    loop {
        line.clear();
        if stream.read_line(line).await? == 0 {
            bail!("connection closed in the headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().context("content-length")?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            }
        }
    }
    if !chunked {
        body.resize(length, 0);
        stream.read_exact(body).await?;
        return Ok(status);
    }
    loop {
        line.clear();
        stream.read_line(line).await?;
        let size = usize::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16).context("chunk size")?;
        body.resize(size + 2, 0);
        stream.read_exact(body).await?;
        if size == 0 {
            return Ok(status);
        }
    }
}
