//! The three wire protocols, each over one keep-alive TCP connection with one request in
//! flight. Hand-rolled on purpose: a few lines each, and the same cost model for all three.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::Backend;

/// Upper bound on any one reply, so a confused server cannot make us allocate without limit.
const REPLY_BYTES_MAX: usize = 16 << 20;

pub struct Conn {
    backend: Backend,
    queue: String,
    host: String,
    stream: BufReader<TcpStream>,
    out: Vec<u8>,
    /// rota: complete with `lease_next`, so a consumer's cycle is one request per job.
    lease_next: bool,
    /// rota: the job the last complete leased, worked on next.
    next: Option<serde_json::Value>,
}

impl Conn {
    pub async fn connect(backend: Backend, addr: &str, queue: &str) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn { backend, queue: queue.to_string(), host: addr.to_string(), stream: BufReader::new(stream), out: Vec::with_capacity(512), lease_next: false, next: None };
        if backend == Backend::Beanstalk {
            let queue = conn.queue.clone();
            conn.beanstalk(format!("use {queue}\r\n").as_bytes(), "USING").await?;
            conn.beanstalk(format!("watch {queue}\r\n").as_bytes(), "WATCHING").await?;
            conn.beanstalk(b"ignore default\r\n", "WATCHING").await?;
        }
        Ok(conn)
    }

    /// Empties the queue before a run where the protocol allows it.
    pub async fn reset(&mut self) -> Result<()> {
        match self.backend {
            Backend::Redis => {
                let processing = format!("{}:processing", self.queue);
                let queue = self.queue.clone();
                self.redis(&[b"DEL", queue.as_bytes(), processing.as_bytes()]).await?;
            }
            Backend::Rota | Backend::Beanstalk => {}
        }
        Ok(())
    }

    pub async fn enqueue(&mut self, body: &str, priority: u64) -> Result<()> {
        match self.backend {
            Backend::Redis => {
                let queue = self.queue.clone();
                self.redis(&[b"LPUSH", queue.as_bytes(), body.as_bytes()]).await?;
            }
            Backend::Beanstalk => {
                let command = format!("put {priority} 0 60 {}\r\n{body}\r\n", body.len());
                self.beanstalk(command.as_bytes(), "INSERTED").await?;
            }
            Backend::Rota => {
                let path = format!("/v1/queues/{}/jobs", self.queue);
                let payload = serde_json::json!({"payload": body, "priority": priority});
                let (status, _) = self.http_post(&path, &payload.to_string()).await?;
                if status != 202 && status != 200 && status != 201 {
                    bail!("submit answered {status}");
                }
            }
        }
        Ok(())
    }

    /// rota only: queues `jobs` (body, priority) in one request (one Raft entry).
    pub async fn enqueue_batch(&mut self, jobs: &[(String, u64)]) -> Result<()> {
        if self.backend != Backend::Rota {
            bail!("batch submit is a rota feature");
        }
        let jobs: Vec<serde_json::Value> =
            jobs.iter().map(|(body, priority)| serde_json::json!({"payload": body, "priority": priority})).collect();
        let path = format!("/v1/queues/{}/jobs", self.queue);
        let (status, body) = self.http_post(&path, &serde_json::json!({ "jobs": jobs }).to_string()).await?;
        if status != 202 {
            bail!("batch submit answered {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(())
    }

    /// Takes one job, acknowledges it, returns its body; `None` if none came within `wait`.
    pub async fn dequeue_ack(&mut self, wait: Duration) -> Result<Option<String>> {
        match self.backend {
            Backend::Redis => {
                let queue = self.queue.clone();
                let processing = format!("{queue}:processing");
                let secs = wait.as_secs().max(1).to_string();
                let reply = self.redis(&[b"BLMOVE", queue.as_bytes(), processing.as_bytes(), b"RIGHT", b"LEFT", secs.as_bytes()]).await?;
                let Some(job) = reply else { return Ok(None) };
                self.redis(&[b"LREM", processing.as_bytes(), b"1", job.as_bytes()]).await?;
                Ok(Some(job))
            }
            Backend::Beanstalk => {
                let command = format!("reserve-with-timeout {}\r\n", wait.as_secs().max(1));
                self.send(command.as_bytes()).await?;
                let line = self.line().await?;
                if line.starts_with("TIMED_OUT") {
                    return Ok(None);
                }
                let mut parts = line.split_whitespace();
                let (Some("RESERVED"), Some(id), Some(bytes)) = (parts.next(), parts.next(), parts.next()) else {
                    bail!("beanstalkd: unexpected reply to reserve: {line}");
                };
                let id = id.to_string();
                let body = self.exact(bytes.parse::<usize>()? + 2).await?;
                self.beanstalk(format!("delete {id}\r\n").as_bytes(), "DELETED").await?;
                Ok(Some(String::from_utf8_lossy(&body[..body.len() - 2]).into_owned()))
            }
            Backend::Rota => {
                let job = match self.next.take() {
                    Some(job) => job,
                    None => {
                        let path = format!("/v1/queues/{}/lease", self.queue);
                        let wait_ms = wait.as_millis();
                        let request = format!(r#"{{"worker":"bench","max":1,"wait":"{wait_ms}ms"}}"#);
                        let (status, body) = self.http_post(&path, &request).await?;
                        if status != 200 {
                            bail!("lease answered {status}: {}", String::from_utf8_lossy(&body));
                        }
                        let mut reply: serde_json::Value = serde_json::from_slice(&body)?;
                        match reply["jobs"].as_array_mut().and_then(|jobs| jobs.pop()) {
                            Some(job) => job,
                            None => return Ok(None),
                        }
                    }
                };
                let id = job["id"].as_u64().ok_or_else(|| anyhow!("leased job without id: {job}"))?;
                let token = job["lease_token"].as_u64().ok_or_else(|| anyhow!("leased job without lease_token: {job}"))?;
                let payload = job["payload"].as_str().unwrap_or_default().to_string();
                let request = if self.lease_next {
                    format!(r#"{{"lease_token":{token},"lease_next":{{"worker":"bench"}}}}"#)
                } else {
                    format!(r#"{{"lease_token":{token}}}"#)
                };
                let (status, body) = self.http_post(&format!("/v1/jobs/{id}/complete"), &request).await?;
                if status != 200 {
                    bail!("complete answered {status}: {}", String::from_utf8_lossy(&body));
                }
                if self.lease_next {
                    let mut reply: serde_json::Value = serde_json::from_slice(&body)?;
                    self.next = reply["jobs"].as_array_mut().and_then(|jobs| jobs.pop());
                }
                Ok(Some(payload))
            }
        }
    }

    /// rota: complete each job with `lease_next` (one request per job for a consumer).
    pub fn set_lease_next(&mut self, lease_next: bool) {
        self.lease_next = lease_next;
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.get_mut().write_all(bytes).await?;
        Ok(())
    }

    async fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stream.read_line(&mut line).await? == 0 {
            bail!("connection closed by the server");
        }
        Ok(line.trim_end().to_string())
    }

    async fn exact(&mut self, bytes: usize) -> Result<Vec<u8>> {
        if bytes > REPLY_BYTES_MAX {
            bail!("reply of {bytes} bytes is over the limit");
        }
        let mut buffer = vec![0; bytes];
        self.stream.read_exact(&mut buffer).await?;
        Ok(buffer)
    }

    async fn beanstalk(&mut self, command: &[u8], expect: &str) -> Result<()> {
        self.send(command).await?;
        let line = self.line().await?;
        if !line.starts_with(expect) {
            bail!("beanstalkd: expected {expect}, got {line}");
        }
        Ok(())
    }

    /// Sends one RESP command; a bulk string reply comes back as `Some`, nil as `None`.
    async fn redis(&mut self, parts: &[&[u8]]) -> Result<Option<String>> {
        self.out.clear();
        self.out.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
        for part in parts {
            self.out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
            self.out.extend_from_slice(part);
            self.out.extend_from_slice(b"\r\n");
        }
        let out = std::mem::take(&mut self.out);
        self.send(&out).await?;
        self.out = out;
        let line = self.line().await?;
        match line.as_bytes().first() {
            Some(b'+') | Some(b':') => Ok(None),
            Some(b'-') => bail!("redis: {line}"),
            Some(b'$') | Some(b'*') if line[1..].starts_with('-') => Ok(None),
            Some(b'$') => {
                let body = self.exact(line[1..].parse::<usize>()? + 2).await?;
                Ok(Some(String::from_utf8_lossy(&body[..body.len() - 2]).into_owned()))
            }
            _ => bail!("redis: unexpected reply {line}"),
        }
    }

    /// One HTTP/1.1 POST on the keep-alive connection; returns status and body.
    async fn http_post(&mut self, path: &str, body: &str) -> Result<(u16, Vec<u8>)> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.send(request.as_bytes()).await?;
        let status_line = self.line().await?;
        let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
        let mut content_length = None;
        let mut chunked = false;
        loop {
            let header = self.line().await?;
            if header.is_empty() {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(value) = lower.strip_prefix("content-length:") {
                content_length = Some(value.trim().parse::<usize>()?);
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let body = if chunked {
            let mut body = Vec::new();
            loop {
                let size = usize::from_str_radix(self.line().await?.split(';').next().unwrap_or("0").trim(), 16)?;
                let chunk = self.exact(size + 2).await?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
            body
        } else {
            self.exact(content_length.unwrap_or(0)).await?
        };
        Ok((status, body))
    }
}
