//! Real processes for the tests: an `etcd` 3.4 (the reference) or a `rota serve` on free
//! loopback ports with a fresh temporary data dir.
//!
//! Invariants: no process outlives its `Server` (Drop sends SIGKILL and reaps it); startup
//! waits on `/health` with a bound and fails with the process's stderr; ports come from a
//! range probed by binding, starting at a per-process offset so parallel test processes
//! (nextest) and threads (cargo test) do not collide, and a start that lost a port race is
//! retried on new ports.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::http::{self, Request};

/// Where Debian's `etcd-server` installs etcd.
pub const ETCD_PATH: &str = "/usr/bin/etcd";
/// Bound on a process becoming healthy (etcd elects itself in ~1 s; a debug rota is quick too,
/// but the machine is shared by parallel tests).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const PORT_RANGE_START: u16 = 26000;
const PORT_RANGE_LEN: u32 = 4000;
const START_ATTEMPTS_MAX: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Etcd,
    Rota,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Etcd => "etcd",
            Kind::Rota => "rota",
        }
    }
}

/// A running (or killed, restartable) server process with its own data dir and ports.
pub struct Server {
    pub kind: Kind,
    /// Member name given with `--name` (shows in `/v2/members`).
    pub member_name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// Holds the data dir and the log files; removed on drop (after the process is gone).
    root: tempfile::TempDir,
    child: Option<Child>,
    /// Number of times this server was started (names the stderr log of each run).
    starts: u32,
    /// Where the data dir is, if not `<root>/data`.
    data_dir: Option<PathBuf>,
    /// More flags for the server.
    extra_args: Vec<String>,
}

static PORT_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Two distinct ports on 127.0.0.1 that were free a moment ago, from the harness's range
/// (below the kernel's ephemeral ports, so no outgoing connection takes them meanwhile).
pub fn free_port_pair() -> (u16, u16) {
    let pid_offset = std::process::id().wrapping_mul(7919);
    let mut found = Vec::with_capacity(2);
    for _ in 0..PORT_RANGE_LEN {
        let n = PORT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let port = PORT_RANGE_START + (pid_offset.wrapping_add(n) % PORT_RANGE_LEN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            found.push(port);
            if found.len() == 2 {
                return (found[0], found[1]);
            }
        }
    }
    panic!(
        "no free loopback ports in {PORT_RANGE_START}..{}",
        PORT_RANGE_START as u32 + PORT_RANGE_LEN
    );
}

/// Fails the test (never skips) when etcd is missing.
pub fn require_etcd() {
    if !Path::new(ETCD_PATH).exists() {
        panic!(
            "etcd 3.4 is not installed at {ETCD_PATH}: the differential tests need the real etcd. \
             Run the README's test command (.ci/run), which installs Debian's etcd-server, \
             or `apt-get install -y etcd-server`."
        );
    }
}

pub fn rota_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rota")
}

impl Server {
    /// Starts a fresh server and waits until it is healthy.
    pub fn start(kind: Kind) -> Server {
        Server::try_start(kind).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start(kind: Kind) -> Result<Server, String> {
        Server::try_start_with(kind, None, Vec::new())
    }

    /// A fresh server with its data dir at `data_dir` (default: in its own temp dir) and
    /// `extra_args` after the usual flags.
    pub fn try_start_with(
        kind: Kind,
        data_dir: Option<PathBuf>,
        extra_args: Vec<String>,
    ) -> Result<Server, String> {
        if kind == Kind::Etcd {
            require_etcd();
        }
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS_MAX {
            let (client_port, peer_port) = free_port_pair();
            let root = tempfile::Builder::new()
                .prefix(&format!("rota-it-{}-", kind.name()))
                .tempdir()
                .map_err(|e| format!("temp dir: {e}"))?;
            let mut server = Server {
                kind,
                member_name: "n1".into(),
                client_port,
                peer_port,
                root,
                child: None,
                starts: 0,
                data_dir: data_dir.clone(),
                extra_args: extra_args.clone(),
            };
            match server.launch_and_wait() {
                Ok(()) => return Ok(server),
                Err(e) => {
                    let port_race = e.contains("address already in use")
                        || e.contains("Address already in use");
                    last_error = e;
                    if !port_race {
                        break;
                    }
                }
            }
        }
        Err(last_error)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| self.root.path().join("data"))
    }

    fn stderr_path(&self) -> PathBuf {
        self.root.path().join(format!("stderr.{}.log", self.starts))
    }

    fn command(&self) -> Command {
        let client = self.client_url();
        let peer = self.peer_url();
        let cluster = format!("{}={peer}", self.member_name);
        let mut cmd = match self.kind {
            Kind::Etcd => {
                let mut cmd = Command::new(ETCD_PATH);
                cmd.arg("--enable-v2=true");
                cmd
            }
            Kind::Rota => {
                let mut cmd = Command::new(rota_bin());
                cmd.arg("serve");
                cmd
            }
        };
        cmd.arg("--name")
            .arg(&self.member_name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(cluster)
            .args(&self.extra_args);
        cmd
    }

    /// Spawns the process (same data dir and ports as before) and waits until it is healthy.
    fn launch_and_wait(&mut self) -> Result<(), String> {
        assert!(
            self.child.is_none(),
            "launch while a process is still running"
        );
        self.starts += 1;
        let stderr = File::create(self.stderr_path()).map_err(|e| format!("stderr log: {e}"))?;
        let stdout = stderr.try_clone().map_err(|e| format!("stderr log: {e}"))?;
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot spawn {}: {e}", self.kind.name()))?;
        self.child = Some(child);
        self.wait_healthy(STARTUP_TIMEOUT)
    }

    /// Restarts a killed server on the same data dir and ports.
    pub fn restart(&mut self) {
        if let Err(e) = self.launch_and_wait() {
            panic!("restart failed: {e}");
        }
    }

    /// [`Server::restart`] that may fail (the error holds the server's stderr).
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.launch_and_wait()
    }

    /// The tail of the current run's stderr (for failure messages).
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(self.stderr_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        lines[from..].join("\n")
    }

    /// Polls until `/health` says true (and, for etcd, the cluster version is decided, so
    /// its internal store writes are done and the store index is stable).
    fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "{} exited during startup with {status}; its stderr:\n{}",
                    self.kind.name(),
                    self.stderr_tail()
                ));
            }
            if self.is_ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tail = self.stderr_tail();
                self.kill();
                return Err(format!(
                    "{} did not become healthy on {} within {timeout:?}; its stderr:\n{tail}",
                    self.kind.name(),
                    self.client_url()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn is_ready(&self) -> bool {
        let timeout = Duration::from_millis(500);
        let healthy =
            http::send_with_timeout(self.addr(), &Request::new("GET", "/health"), timeout)
                .is_ok_and(|r| r.status() == 200 && r.text().contains("\"true\""));
        if !healthy {
            return false;
        }
        let keys_ok =
            http::send_with_timeout(self.addr(), &Request::new("GET", "/v2/keys/"), timeout)
                .is_ok_and(|r| r.status() == 200);
        if !keys_ok {
            return false;
        }
        match self.kind {
            Kind::Rota => true,
            Kind::Etcd => {
                http::send_with_timeout(self.addr(), &Request::new("GET", "/version"), timeout)
                    .is_ok_and(|r| r.status() == 200 && !r.text().contains("not_decided"))
            }
        }
    }

    /// True while the process has not exited.
    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to `grace` for exit. Returns the exit status, or None when
    /// the process had to be SIGKILLed after the grace period.
    pub fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        send_signal(child.id(), SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// The current store index (X-Etcd-Index of `GET /v2/keys/`).
    pub fn store_index(&self) -> u64 {
        let resp = http::send(self.addr(), &Request::new("GET", "/v2/keys/"))
            .unwrap_or_else(|e| panic!("GET /v2/keys/ on {}: {e}", self.kind.name()));
        resp.etcd_index()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

const SIGTERM: i32 = 15;

extern "C" {
    // libc's kill(2); std links libc already, so no crate is needed for one call.
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

fn send_signal(pid: u32, signal: i32) {
    let pid = i32::try_from(pid).expect("pid fits in i32");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child's.
    unsafe {
        libc_kill(pid, signal);
    }
}

/// Starts an etcd and a second server (rota, or etcd again when `ROTA_IT_AGAINST=etcd`,
/// which checks the normalizer itself) in parallel.
pub fn start_pair() -> (Server, Server) {
    let candidate = candidate_kind();
    std::thread::scope(|scope| {
        let etcd = scope.spawn(|| Server::try_start(Kind::Etcd));
        let other = scope.spawn(move || Server::try_start(candidate));
        let etcd = etcd.join().expect("etcd start thread");
        let other = other.join().expect("candidate start thread");
        match (etcd, other) {
            (Ok(e), Ok(o)) => (e, o),
            (Err(e), _) => panic!("etcd: {e}"),
            (_, Err(e)) => panic!("{}: {e}", candidate.name()),
        }
    })
}

/// The server compared against etcd: rota unless `ROTA_IT_AGAINST=etcd`.
pub fn candidate_kind() -> Kind {
    match std::env::var("ROTA_IT_AGAINST").as_deref() {
        Ok("etcd") => Kind::Etcd,
        _ => Kind::Rota,
    }
}
