//! A small blocking HTTP/1.1 client over `std::net::TcpStream`.
//!
//! The differential tests need exact control of the bytes on the wire: `//` in paths, methods
//! like PATCH, HEAD bodies, the raw header list, chunked watch responses whose headers arrive
//! long before the body, and garbage bytes. A general client (reqwest) normalizes or refuses
//! most of these, so the tests speak HTTP themselves. Every request uses `Connection: close`;
//! every read has a timeout, so a silent server fails a test instead of hanging it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Default bound on one whole request/response exchange (excluding watches).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest response body the client accepts (listing 1000+ keys fits easily).
const RESPONSE_BODY_BYTES_MAX: usize = 64 << 20;
const HEAD_BYTES_MAX: usize = 64 << 10;
/// Requests above this size are written concurrently with reading the answer.
const LARGE_REQUEST_BYTES: usize = 256 << 10;

/// The head of a response: status line and headers in wire order.
#[derive(Debug, Clone)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Response {
    pub head: Head,
    pub body: Vec<u8>,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.head.status
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.text()))
    }
    /// `X-Etcd-Index` as a number (panics with context when absent or malformed).
    pub fn etcd_index(&self) -> u64 {
        let raw = self
            .header("x-etcd-index")
            .unwrap_or_else(|| panic!("no X-Etcd-Index in {self:?}"));
        raw.parse()
            .unwrap_or_else(|_| panic!("bad X-Etcd-Index {raw:?}"))
    }
}

/// One request. `body` is sent with a Content-Length; `content_type` defaults to a form when
/// there is a body.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl Request {
    pub fn new(method: &str, target: &str) -> Request {
        Request {
            method: method.to_string(),
            target: target.to_string(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// A form body (`application/x-www-form-urlencoded`), sent exactly as given.
    pub fn form(mut self, body: &str) -> Request {
        self.headers.push((
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        ));
        self.body = Some(body.as_bytes().to_vec());
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn raw_body(mut self, body: Vec<u8>) -> Request {
        self.body = Some(body);
        self
    }

    fn to_bytes(&self, addr: SocketAddr) -> Vec<u8> {
        // The address as `Host`, unless the request names its own.
        let host = if self.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
            String::new()
        } else {
            format!("Host: {addr}\r\n")
        };
        let mut out = format!(
            "{} {} HTTP/1.1\r\n{host}Connection: close\r\n",
            self.method, self.target
        )
        .into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        if let Some(body) = &self.body {
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
        } else {
            out.extend_from_slice(b"\r\n");
        }
        out
    }
}

/// Error of one exchange: connection refused/reset, timeout, or a malformed response.
#[derive(Debug)]
pub struct HttpError(pub String);

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<std::io::Error> for HttpError {
    fn from(e: std::io::Error) -> HttpError {
        HttpError(e.to_string())
    }
}

/// Sends one request and reads the whole response.
pub fn send(addr: SocketAddr, req: &Request) -> Result<Response, HttpError> {
    send_with_timeout(addr, req, REQUEST_TIMEOUT)
}

pub fn send_with_timeout(
    addr: SocketAddr,
    req: &Request,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let mut conn = Connection::open(addr, timeout)?;
    let bytes = req.to_bytes(addr);
    let head = if bytes.len() <= LARGE_REQUEST_BYTES {
        conn.write_all(&bytes)?;
        conn.read_head(timeout)?
    } else {
        // A server may answer (413, or etcd's "POST too large") and close before reading a
        // large body: write from another thread so that answer is read, not lost to EPIPE.
        let mut writer = conn.stream.get_ref().try_clone()?;
        let write = std::thread::spawn(move || writer.write_all(&bytes));
        let head = conn.read_head(timeout);
        let written = write
            .join()
            .map_err(|_| HttpError("writer thread panicked".into()))?;
        match (head, written) {
            (Ok(head), _) => head,
            (Err(e), Ok(())) => return Err(e),
            (Err(e), Err(w)) => return Err(HttpError(format!("{e} (writing the request: {w})"))),
        }
    };
    let body =
        if req.method == "HEAD" || head.status == 204 || head.status == 304 || head.status < 200 {
            Vec::new()
        } else {
            conn.read_body(&head, timeout)?
        };
    Ok(Response { head, body })
}

/// Sends arbitrary bytes and returns whatever the server answers until it closes (or the
/// timeout passes). Used for garbage on the socket.
pub fn send_raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Result<Vec<u8>, HttpError> {
    let mut conn = Connection::open(addr, timeout)?;
    // The server may close early on garbage; a failed write is an answer too.
    let _ = conn.write_all(bytes);
    let _ = conn.stream.get_mut().shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        conn.stream.get_mut().set_read_timeout(Some(left))?;
        match conn.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// One TCP connection with a buffered reader.
pub struct Connection {
    stream: BufReader<TcpStream>,
}

impl Connection {
    pub fn open(addr: SocketAddr, timeout: Duration) -> Result<Connection, HttpError> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Connection {
            stream: BufReader::new(stream),
        })
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), HttpError> {
        self.stream.get_mut().write_all(bytes)?;
        Ok(())
    }

    fn read_line(&mut self, deadline: Instant) -> Result<String, HttpError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError("timed out".into()));
        }
        self.stream.get_mut().set_read_timeout(Some(left))?;
        let mut line = Vec::new();
        let n = (&mut self.stream)
            .take(HEAD_BYTES_MAX as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(HttpError("connection closed by the server".into()));
        }
        if !line.ends_with(b"\n") {
            return Err(HttpError("line too long or truncated".into()));
        }
        let text = String::from_utf8_lossy(&line);
        Ok(text.trim_end_matches(['\r', '\n']).to_string())
    }

    /// Reads the status line and headers.
    pub fn read_head(&mut self, timeout: Duration) -> Result<Head, HttpError> {
        let deadline = Instant::now() + timeout;
        let status_line = self.read_line(deadline)?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(HttpError(format!(
                "not an HTTP/1 status line: {status_line:?}"
            )));
        }
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| HttpError(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = self.read_line(deadline)?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| HttpError(format!("bad header line {line:?}")))?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        Ok(Head { status, headers })
    }

    /// Reads a whole body framed by the head (chunked, Content-Length, or until close).
    pub fn read_body(&mut self, head: &Head, timeout: Duration) -> Result<Vec<u8>, HttpError> {
        let deadline = Instant::now() + timeout;
        if head.is_chunked() {
            let mut body = Vec::new();
            while let Some(chunk) = self.read_chunk(deadline)? {
                body.extend_from_slice(&chunk);
                if body.len() > RESPONSE_BODY_BYTES_MAX {
                    return Err(HttpError("response body too large".into()));
                }
            }
            return Ok(body);
        }
        if let Some(len) = head.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| HttpError(format!("bad Content-Length {len:?}")))?;
            if len > RESPONSE_BODY_BYTES_MAX {
                return Err(HttpError("response body too large".into()));
            }
            let mut body = vec![0u8; len];
            self.read_exact(&mut body, deadline)?;
            return Ok(body);
        }
        let mut body = Vec::new();
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        self.stream.get_mut().set_read_timeout(Some(left))?;
        (&mut self.stream)
            .take(RESPONSE_BODY_BYTES_MAX as u64)
            .read_to_end(&mut body)?;
        Ok(body)
    }

    fn read_exact(&mut self, buf: &mut [u8], deadline: Instant) -> Result<(), HttpError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HttpError("timed out".into()));
        }
        self.stream.get_mut().set_read_timeout(Some(left))?;
        self.stream.read_exact(buf)?;
        Ok(())
    }

    /// Reads one chunk of a chunked body; `None` at the terminating zero-size chunk.
    pub fn read_chunk(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>, HttpError> {
        let size_line = self.read_line(deadline)?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| HttpError(format!("bad chunk size line {size_line:?}")))?;
        if size > RESPONSE_BODY_BYTES_MAX {
            return Err(HttpError("chunk too large".into()));
        }
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            loop {
                if self.read_line(deadline)?.is_empty() {
                    return Ok(None);
                }
            }
        }
        let mut data = vec![0u8; size];
        self.read_exact(&mut data, deadline)?;
        let mut crlf = [0u8; 2];
        self.read_exact(&mut crlf, deadline)?;
        Ok(Some(data))
    }
}

/// A long-poll request whose head and body are read at different times: the head is
/// flushed by etcd as soon as the watch is registered, the body when the event fires.
pub struct Watch {
    conn: Connection,
    pub head: Option<Head>,
    /// Stream bytes read but not yet returned as a line.
    pending: Vec<u8>,
}

impl Watch {
    pub fn start(addr: SocketAddr, target: &str) -> Result<Watch, HttpError> {
        let mut conn = Connection::open(addr, REQUEST_TIMEOUT)?;
        conn.write_all(&Request::new("GET", target).to_bytes(addr))?;
        Ok(Watch {
            conn,
            head: None,
            pending: Vec::new(),
        })
    }

    /// Waits up to `timeout` for the head. An error means it did not arrive in time (a
    /// server that does not flush watch headers) or the connection failed.
    pub fn wait_head(&mut self, timeout: Duration) -> Result<Head, HttpError> {
        if let Some(head) = &self.head {
            return Ok(head.clone());
        }
        let head = self.conn.read_head(timeout)?;
        self.head = Some(head.clone());
        Ok(head)
    }

    /// Reads the whole body (the event) within `timeout`.
    pub fn wait_body(&mut self, timeout: Duration) -> Result<Vec<u8>, HttpError> {
        let deadline = Instant::now() + timeout;
        let head = self.wait_head(timeout)?;
        let left = deadline.saturating_duration_since(Instant::now());
        self.conn
            .read_body(&head, left.max(Duration::from_millis(1)))
    }

    /// Reads the next line of a `stream=true` watch within `timeout`.
    pub fn next_stream_line(&mut self, timeout: Duration) -> Result<Vec<u8>, HttpError> {
        let deadline = Instant::now() + timeout;
        let head = self.wait_head(timeout)?;
        if !head.is_chunked() {
            return Err(HttpError("stream watch is not chunked".into()));
        }
        loop {
            if let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=pos).collect();
                return Ok(line);
            }
            match self.conn.read_chunk(deadline)? {
                Some(chunk) => self.pending.extend_from_slice(&chunk),
                None => return Err(HttpError("stream ended".into())),
            }
        }
    }
}
