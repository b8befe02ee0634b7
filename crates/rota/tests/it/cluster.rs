//! N real `rota serve` processes as one cluster, with the faults the linearizability tests
//! inject: SIGKILL and restart on the same data dir, SIGSTOP/SIGCONT, and network
//! partitions between peers through a userspace TCP proxy.
//!
//! What it owns: ports, data dirs and the child processes of one cluster; the peer proxy.
//! It reuses the harness's binary path, its rota/etcd switch and HTTP client;
//! `harness::Server` itself is built for one node with fixed flags, so nodes here are
//! spawned by this module. With `ROTA_IT_AGAINST=etcd` the nodes are etcd 3.4 members
//! started with the same flags: that checks this harness and the cluster tests against the
//! reference.
//!
//! Invariants:
//! * No process outlives its `Cluster` (Drop SIGKILLs, SIGCONTs and reaps every node).
//! * Every node gets `--initial-cluster n1=..,nN=..`, `--initial-cluster-state new` and the
//!   per-test `--initial-cluster-token`, etcd's flags; `ROTA_TEST_MUTANT` is set or removed
//!   explicitly per process, never inherited.
//! * Node `i` has its own loopback address, 127.0.0.`i + 2`, for everything (client and
//!   peer listeners, the proxy in front of it). rota binds its outgoing peer connections to
//!   the address it listens for peers on when that is a loopback address, so a connection's
//!   source address names its sender.
//! * With a proxy, each node listens for peers on a private port and *advertises* the
//!   proxy's port in front of it, so every peer connection passes the proxy. The proxy
//!   knows which node opened a connection from its source address (for a member that does
//!   not bind its source, i.e. etcd, from `/proc`: the socket's owner), so it can cut
//!   single directed links (`from` → `to`: the RPCs `from` sends to `to` and their answers)
//!   without root, iptables or network namespaces (RELIABILITY.md §7.3: netem is missing here
//!   and etcd's robustness suite uses a proxy too). A cut link is a blackhole: connections
//!   in flight stop being forwarded (their bytes are read and dropped, the upstream side is
//!   closed) and new ones are accepted but never forwarded, so the sender sees timeouts, as
//!   in a real partition, not resets. Healing closes the blackholed connections (their
//!   streams lost bytes and cannot resume), so senders reconnect at once.

use std::collections::HashSet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness;
use crate::http::{self, Request};

/// Ports for cluster tests come from a range no other harness uses (single node:
/// 26000-29999, in-process clusters: 30000-30999, membership tests: 32200-32767), below the
/// kernel's ephemeral ports (32768-60999 by default), so an outgoing connection cannot hold
/// one of them between our probe and the node's bind.
const PORT_RANGE_START: u16 = 31_000;
const PORT_RANGE_LEN: u32 = 1_200;
const START_ATTEMPTS_MAX: usize = 3;
/// Bound on one status probe (`/health`, `/v2/stats/self`).
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

static PORT_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Node `i`'s own loopback address. 127.0.0.1 is nobody's: it is where processes that do
/// not bind their source address (the tests themselves, etcd) connect from.
pub fn node_ip(i: usize) -> Ipv4Addr {
    let last = u8::try_from(i + 2).ok().filter(|last| *last < 255).expect("at most 252 nodes");
    Ipv4Addr::new(127, 0, 0, last)
}

/// `count` distinct ports on `ip` that were free a moment ago.
fn free_ports(ip: Ipv4Addr, count: usize) -> Vec<u16> {
    let pid_offset = std::process::id().wrapping_mul(7919);
    let mut found = Vec::with_capacity(count);
    for _ in 0..PORT_RANGE_LEN {
        let n = PORT_COUNTER.fetch_add(1, Ordering::Relaxed);
        let port = PORT_RANGE_START + (pid_offset.wrapping_add(n) % PORT_RANGE_LEN) as u16;
        if TcpListener::bind((ip, port)).is_ok() {
            found.push(port);
            if found.len() == count {
                return found;
            }
        }
    }
    panic!("no {count} free loopback ports in {PORT_RANGE_START}..{}", PORT_RANGE_START as u32 + PORT_RANGE_LEN);
}

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub nodes: usize,
    /// `--initial-cluster-token`; also names the test in temp dirs.
    pub token: String,
    /// Route peer traffic through a [`PeerProxy`] (needed for partitions).
    pub proxied_peers: bool,
    /// `ROTA_TEST_MUTANT` for every node (debug builds of rota honour it).
    pub mutant: Option<String>,
    /// Extra flags for every node (e.g. `--election-timeout`).
    pub extra_args: Vec<String>,
    /// Bound on all nodes being healthy after a start.
    pub startup_timeout: Duration,
    /// rota, or etcd 3.4 with the same flags to check the harness and the tests themselves
    /// (`ROTA_IT_AGAINST=etcd`, as for the differential tests).
    pub kind: harness::Kind,
}

impl ClusterConfig {
    pub fn new(nodes: usize, token: &str) -> ClusterConfig {
        ClusterConfig {
            nodes,
            token: token.to_string(),
            proxied_peers: false,
            mutant: None,
            extra_args: Vec::new(),
            startup_timeout: harness::STARTUP_TIMEOUT,
            kind: harness::candidate_kind(),
        }
    }
}

/// One member process.
pub struct NodeProc {
    pub name: String,
    /// The node's own loopback address ([`node_ip`]): all its ports are on it.
    pub ip: Ipv4Addr,
    pub client_port: u16,
    /// Where the node listens for peers.
    pub peer_listen_port: u16,
    /// What the node and its peers call its peer URL (the proxy's port when proxied).
    pub peer_advertise_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Number of launches (names each run's log).
    starts: u32,
    paused: bool,
}

impl NodeProc {
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.client_port))
    }

    pub fn client_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.client_port)
    }

    /// The peer URL the node advertises (the proxy's, when proxied).
    pub fn peer_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.peer_advertise_port)
    }

    fn peer_listen_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.peer_listen_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("stderr.{}.log", self.starts))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The tail of the current run's log.
    pub fn log_tail(&self, lines_max: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(lines_max)..].join("\n")
    }
}

/// A running cluster. Node `i` is named `n{i+1}`.
pub struct Cluster {
    pub config: ClusterConfig,
    pub nodes: Vec<NodeProc>,
    pub proxy: Option<PeerProxy>,
    /// Node pids as the proxy sees them (index = node); `None` while a node is down. Only
    /// used to find the sender of a connection from an unbound source (etcd).
    pids: Arc<Mutex<Vec<Option<u32>>>>,
    /// Holds every node's dir; removed after the processes are gone.
    root: tempfile::TempDir,
}

impl Cluster {
    /// Starts every node, waits until all are healthy and one is leader.
    pub fn start(config: ClusterConfig) -> Cluster {
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS_MAX {
            match Cluster::try_start(config.clone()) {
                Ok(cluster) => return cluster,
                Err(e) => {
                    let port_race = e.contains("ddress already in use");
                    last_error = e;
                    if !port_race {
                        break;
                    }
                }
            }
        }
        panic!("cluster start failed: {last_error}");
    }

    fn try_start(config: ClusterConfig) -> Result<Cluster, String> {
        let root = tempfile::Builder::new()
            .prefix(&format!("rota-cluster-{}-", config.token))
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let ports_per_node = if config.proxied_peers { 3 } else { 2 };
        let pids = Arc::new(Mutex::new(vec![None; config.nodes]));
        let mut nodes = Vec::with_capacity(config.nodes);
        for i in 0..config.nodes {
            let ip = node_ip(i);
            let p = free_ports(ip, ports_per_node);
            let dir = root.path().join(format!("n{}", i + 1));
            std::fs::create_dir_all(&dir).map_err(|e| format!("node dir: {e}"))?;
            nodes.push(NodeProc {
                name: format!("n{}", i + 1),
                ip,
                client_port: p[0],
                peer_listen_port: p[1],
                peer_advertise_port: if config.proxied_peers { p[2] } else { p[1] },
                dir,
                child: None,
                starts: 0,
                paused: false,
            });
        }
        let proxy = if config.proxied_peers {
            let routes: Vec<ProxyRoute> = nodes
                .iter()
                .map(|n| ProxyRoute {
                    node_ip: IpAddr::V4(n.ip),
                    listen: SocketAddr::from((n.ip, n.peer_advertise_port)),
                    upstream: SocketAddr::from((n.ip, n.peer_listen_port)),
                })
                .collect();
            Some(PeerProxy::start(&routes, pids.clone())?)
        } else {
            None
        };
        let mut cluster = Cluster { config, nodes, proxy, pids, root };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i)?;
        }
        let deadline = Instant::now() + cluster.config.startup_timeout;
        for i in 0..cluster.nodes.len() {
            cluster.wait_healthy(i, deadline)?;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        cluster.wait_leader(left.max(Duration::from_secs(1)))?;
        Ok(cluster)
    }

    fn initial_cluster(&self) -> String {
        self.nodes.iter().map(|n| format!("{}={}", n.name, n.peer_url())).collect::<Vec<_>>().join(",")
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let initial_cluster = self.initial_cluster();
        let config = &self.config;
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "spawn while {} is still running", node.name);
        node.starts += 1;
        let log = File::create(node.log_path()).map_err(|e| format!("log file: {e}"))?;
        let log_out = log.try_clone().map_err(|e| format!("log file: {e}"))?;
        let mut cmd = match config.kind {
            harness::Kind::Rota => {
                let mut cmd = Command::new(harness::rota_bin());
                cmd.arg("serve");
                cmd
            }
            harness::Kind::Etcd => {
                harness::require_etcd();
                let mut cmd = Command::new(harness::ETCD_PATH);
                cmd.arg("--enable-v2=true");
                cmd
            }
        };
        cmd.arg("--name")
            .arg(&node.name)
            .arg("--data-dir")
            .arg(node.data_dir())
            .arg("--listen-client-urls")
            .arg(node.client_url())
            .arg("--advertise-client-urls")
            .arg(node.client_url())
            .arg("--listen-peer-urls")
            .arg(node.peer_listen_url())
            .arg("--initial-advertise-peer-urls")
            .arg(node.peer_url())
            .arg("--initial-cluster")
            .arg(&initial_cluster)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg(&config.token)
            .args(&config.extra_args);
        match &config.mutant {
            Some(mutant) => cmd.env("ROTA_TEST_MUTANT", mutant),
            None => cmd.env_remove("ROTA_TEST_MUTANT"),
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_out)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot spawn rota: {e}"))?;
        self.pids.lock().expect("pids lock")[i] = Some(child.id());
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// Polls `/health` until it says true; fails with the node's log if it exits or the
    /// deadline passes.
    fn wait_healthy(&mut self, i: usize, deadline: Instant) -> Result<(), String> {
        loop {
            let node = &mut self.nodes[i];
            if let Some(status) = node.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                node.child = None;
                self.pids.lock().expect("pids lock")[i] = None;
                return Err(format!("{} exited with {status}; its log:\n{}", node.name, node.log_tail(40)));
            }
            let healthy = http::send_with_timeout(node.client_addr(), &Request::new("GET", "/health"), PROBE_TIMEOUT)
                .is_ok_and(|r| r.status() == 200 && r.text().contains("\"true\""));
            if healthy {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{} not healthy in time; its log:\n{}", node.name, node.log_tail(40)));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(NodeProc::client_addr).collect()
    }

    /// SIGKILL node `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
        self.pids.lock().expect("pids lock")[i] = None;
    }

    /// Node `i`'s exit status once it has exited on its own (it is reaped then); `None` while
    /// it runs (or when it is not running).
    pub fn try_wait(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let status = self.nodes[i].child.as_mut()?.try_wait().ok().flatten()?;
        self.nodes[i].child = None;
        self.nodes[i].paused = false;
        self.pids.lock().expect("pids lock")[i] = None;
        Some(status)
    }

    /// Starts a stopped node again on the same data dir and ports, without waiting for
    /// anything (for a node expected to exit by itself).
    pub fn start_again(&mut self, i: usize) {
        if let Err(e) = self.spawn(i) {
            panic!("start of {} failed: {e}", self.nodes[i].name);
        }
    }

    /// Starts a killed node again on the same data dir and ports; waits until healthy.
    pub fn restart(&mut self, i: usize) {
        let deadline = Instant::now() + self.config.startup_timeout;
        for attempt in 0.. {
            let result = self.spawn(i).and_then(|()| self.wait_healthy(i, deadline));
            match result {
                Ok(()) => return,
                // The old process's listening sockets may linger for a moment after SIGKILL.
                Err(e) if e.contains("ddress already in use") && attempt < 20 && Instant::now() < deadline => {
                    self.kill(i);
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("restart of {} failed: {e}", self.nodes[i].name),
            }
        }
    }

    /// SIGSTOP: the process stays alive (its sockets accept) but does nothing.
    /// Freezes node `i`; returns once every one of its threads is stopped (SIGSTOP is
    /// delivered asynchronously: a thread running on the other core can still answer a
    /// request right after `kill` returns).
    pub fn pause(&mut self, i: usize) {
        if let Some(pid) = self.nodes[i].pid() {
            send_signal(pid, SIGSTOP);
            self.nodes[i].paused = true;
            let deadline = Instant::now() + Duration::from_secs(5);
            while !all_threads_stopped(pid) {
                assert!(Instant::now() < deadline, "node {i} (pid {pid}) did not stop within 5 s of SIGSTOP");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    pub fn resume(&mut self, i: usize) {
        if let Some(pid) = self.nodes[i].pid() {
            send_signal(pid, SIGCONT);
            self.nodes[i].paused = false;
        }
    }

    /// The one node that says it leads, when exactly one does.
    pub fn leader(&self) -> Option<usize> {
        leader_among(&self.endpoints(), &self.running_mask())
    }

    fn running_mask(&self) -> Vec<bool> {
        self.nodes.iter().map(|n| n.child.is_some() && !n.paused).collect()
    }

    pub fn wait_leader(&self, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader() {
                return Ok(leader);
            }
            if Instant::now() >= deadline {
                return Err(format!("no leader within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Cuts every peer link to and from node `i` (both directions).
    pub fn isolate(&self, i: usize) {
        let proxy = self.proxy.as_ref().expect("isolate needs ClusterConfig::proxied_peers");
        let mut cuts = Vec::new();
        for j in 0..self.nodes.len() {
            if j != i {
                cuts.push((i, j));
                cuts.push((j, i));
            }
        }
        proxy.cut(&cuts);
    }

    /// Cuts the peer links `(from, to)`: what `from` sends to `to` is dropped, the other
    /// direction still flows.
    pub fn cut_links(&self, links: &[(usize, usize)]) {
        let proxy = self.proxy.as_ref().expect("cut_links needs ClusterConfig::proxied_peers");
        proxy.cut(links);
    }

    /// Restores every peer link.
    pub fn heal(&self) {
        if let Some(proxy) = &self.proxy {
            proxy.heal_all();
        }
    }

    /// Log tails of every node, for failure messages.
    pub fn logs(&self, lines_max: usize) -> String {
        let tails = self
            .nodes
            .iter()
            .map(|n| format!("--- {} (run {}) ---\n{}", n.name, n.starts, n.log_tail(lines_max)))
            .collect::<Vec<_>>()
            .join("\n");
        format!("(in {}, removed after the test)\n{tails}", self.root.path().display())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused {
                self.resume(i);
            }
            self.kill(i);
        }
    }
}

/// The node that alone reports `StateLeader` among those marked live, if any.
pub fn leader_among(endpoints: &[SocketAddr], live: &[bool]) -> Option<usize> {
    let mut leaders = Vec::new();
    for (i, addr) in endpoints.iter().enumerate() {
        if !live.get(i).copied().unwrap_or(true) {
            continue;
        }
        let Ok(resp) = http::send_with_timeout(*addr, &Request::new("GET", "/v2/stats/self"), PROBE_TIMEOUT) else {
            continue;
        };
        let state = serde_json::from_slice::<serde_json::Value>(&resp.body)
            .ok()
            .and_then(|json| json.get("state").and_then(|s| s.as_str()).map(str::to_string));
        if state.as_deref() == Some("StateLeader") {
            leaders.push(i);
        }
    }
    (leaders.len() == 1).then(|| leaders[0])
}

// ---- signals -----------------------------------------------------------------------------

pub const SIGCONT: i32 = 18;
pub const SIGSTOP: i32 = 19;

extern "C" {
    // libc's kill(2); std links libc already.
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub fn send_signal(pid: u32, signal: i32) {
    let pid = i32::try_from(pid).expect("pid fits in i32");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child's.
    unsafe {
        libc_kill(pid, signal);
    }
}

// ---- the peer proxy ----------------------------------------------------------------------

/// A directed link: RPC connections opened by node `.0` towards node `.1`.
pub type Link = (usize, usize);

/// Accepted peer connections: (sender when identified, target).
type AcceptLog = Arc<Mutex<Vec<(Option<usize>, usize)>>>;

/// The proxy in front of one node.
#[derive(Clone, Copy, Debug)]
pub struct ProxyRoute {
    /// The node's own address: connections from it come from this node.
    pub node_ip: IpAddr,
    /// Where the proxy listens (the node's advertised peer address).
    pub listen: SocketAddr,
    /// Where the node listens for peers.
    pub upstream: SocketAddr,
}

/// A TCP proxy in front of every node's peer port (see the module docs).
pub struct PeerProxy {
    cuts: Arc<Mutex<HashSet<Link>>>,
    /// Bumped on every change so live connections re-check their link.
    epoch: tokio::sync::watch::Sender<u64>,
    runtime: Option<tokio::runtime::Runtime>,
    /// Connections accepted per (sender or `None` when unknown, target).
    pub accepted: AcceptLog,
}

impl PeerProxy {
    /// `routes[j]` is node `j`'s. `pids` (index = node) find the sender of a connection
    /// whose source address is no node's (a member that does not bind it: etcd).
    pub fn start(routes: &[ProxyRoute], pids: Arc<Mutex<Vec<Option<u32>>>>) -> Result<PeerProxy, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("proxy runtime: {e}"))?;
        let cuts = Arc::new(Mutex::new(HashSet::new()));
        let (epoch, _) = tokio::sync::watch::channel(0u64);
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let node_ips: Arc<Vec<IpAddr>> = Arc::new(routes.iter().map(|route| route.node_ip).collect());
        for (target, route) in routes.iter().enumerate() {
            let listener =
                std::net::TcpListener::bind(route.listen).map_err(|e| format!("proxy bind {}: {e}", route.listen))?;
            listener.set_nonblocking(true).map_err(|e| format!("proxy: {e}"))?;
            let context = LinkContext {
                target,
                upstream: route.upstream,
                listen: route.listen,
                node_ips: node_ips.clone(),
                cuts: cuts.clone(),
                epoch: epoch.subscribe(),
                pids: pids.clone(),
                accepted: accepted.clone(),
            };
            let _guard = runtime.enter();
            let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| format!("proxy: {e}"))?;
            runtime.spawn(accept_loop(listener, context));
        }
        Ok(PeerProxy { cuts, epoch, runtime: Some(runtime), accepted })
    }

    pub fn cut(&self, links: &[Link]) {
        self.cuts.lock().expect("cuts lock").extend(links.iter().copied());
        self.epoch.send_modify(|e| *e += 1);
    }

    pub fn heal_all(&self) {
        self.cuts.lock().expect("cuts lock").clear();
        self.epoch.send_modify(|e| *e += 1);
    }
}

impl Drop for PeerProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[derive(Clone)]
struct LinkContext {
    target: usize,
    upstream: SocketAddr,
    listen: SocketAddr,
    /// Index = node.
    node_ips: Arc<Vec<IpAddr>>,
    cuts: Arc<Mutex<HashSet<Link>>>,
    epoch: tokio::sync::watch::Receiver<u64>,
    pids: Arc<Mutex<Vec<Option<u32>>>>,
    accepted: AcceptLog,
}

impl LinkContext {
    /// A connection from an unknown sender is cut when anything towards the target is.
    fn is_cut(&self, sender: Option<usize>) -> bool {
        let cuts = self.cuts.lock().expect("cuts lock");
        match sender {
            Some(from) => cuts.contains(&(from, self.target)),
            None => cuts.iter().any(|&(_, to)| to == self.target),
        }
    }

    /// The node that opened a connection from `peer`: by its source address; for a source
    /// that is no node's, by the socket's owner in `/proc`.
    async fn sender(&self, peer: SocketAddr) -> Option<usize> {
        if let Some(node) = self.node_ips.iter().position(|ip| *ip == peer.ip()) {
            return Some(node);
        }
        // The owner's socket may not be listed yet: a few quick retries. Each reads the
        // whole TCP table, which takes seconds when it holds tens of thousands of TIME_WAIT
        // sockets (after other tests) on a loaded machine: meanwhile the connection waits
        // and often is closed by its sender before it is found.
        for _ in 0..IDENTIFY_ATTEMPTS {
            let pids: Vec<Option<u32>> = self.pids.lock().expect("pids lock").clone();
            let listen = self.listen;
            let lookup = tokio::task::spawn_blocking(move || connection_owner(peer, listen, &pids));
            if let Some(node) = lookup.await.ok().flatten() {
                return Some(node);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }
}

/// Lookups of a new connection's owner before it counts as unidentified.
const IDENTIFY_ATTEMPTS: usize = 3;

async fn accept_loop(listener: tokio::net::TcpListener, context: LinkContext) {
    loop {
        let Ok((downstream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let context = context.clone();
        tokio::spawn(async move {
            let sender = context.sender(peer).await;
            context.accepted.lock().expect("accepted lock").push((sender, context.target));
            serve_connection(downstream, sender, context).await;
        });
    }
}

/// An IPv4 socket address as `/proc/net/tcp` prints it: the address as a little-endian
/// 32-bit hex number, then the port in hex (`127.0.0.2:80` is `0200007F:0050`).
fn proc_net_address(address: SocketAddr) -> Option<String> {
    let SocketAddr::V4(address) = address else { return None };
    let [a, b, c, d] = address.ip().octets();
    Some(format!("{d:02X}{c:02X}{b:02X}{a:02X}:{:04X}", address.port()))
}

/// Forwards one connection until either side closes or its link is cut; once cut, the
/// downstream bytes are read and dropped until the sender gives up.
async fn serve_connection(mut downstream: tokio::net::TcpStream, sender: Option<usize>, mut context: LinkContext) {
    use tokio::io::AsyncReadExt;
    let _ = downstream.set_nodelay(true);
    if !context.is_cut(sender) {
        if let Ok(mut upstream) = tokio::net::TcpStream::connect(context.upstream).await {
            let _ = upstream.set_nodelay(true);
            // Both directions are copied concurrently (a loop that awaits one write while
            // the other side fills its buffer could deadlock on large messages).
            let cut = {
                let (mut down_read, mut down_write) = downstream.split();
                let (mut up_read, mut up_write) = upstream.split();
                let to_upstream = tokio::io::copy(&mut down_read, &mut up_write);
                let to_downstream = tokio::io::copy(&mut up_read, &mut down_write);
                tokio::pin!(to_upstream, to_downstream);
                loop {
                    tokio::select! {
                        _ = &mut to_upstream => break false,
                        _ = &mut to_downstream => break false,
                        changed = context.epoch.changed() => {
                            if changed.is_err() || context.is_cut(sender) { break true }
                        }
                    }
                }
            };
            if !cut {
                return;
            }
            // Cut: `upstream` is dropped (closed) here; the sender keeps a silent socket.
        }
        // An unreachable upstream (node down) closes the connection, like a refused one.
        else {
            return;
        }
    }
    // Blackholed: drop what the sender writes until it gives up, or until the link heals;
    // then close, so the sender reconnects at once instead of waiting on a dead stream.
    let mut sink = vec![0u8; 64 << 10];
    loop {
        tokio::select! {
            read = downstream.read(&mut sink) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            changed = context.epoch.changed() => {
                if changed.is_err() || !context.is_cut(sender) { return }
            }
        }
    }
}

/// Which of `pids` owns the IPv4 client socket `client` connected to `server`: looks the
/// socket's inode up in `/proc/net/tcp`, then in each process's open files. `None` when no
/// listed process owns it.
pub fn connection_owner(client: SocketAddr, server: SocketAddr, pids: &[Option<u32>]) -> Option<usize> {
    // The table can hold tens of thousands of TIME_WAIT sockets from the tests' clients:
    // find the line by substring ("<local>:<port> <remote>:<port>") instead of parsing all.
    let ports = format!("{} {} ", proc_net_address(client)?, proc_net_address(server)?);
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = text.lines().filter(|line| line.contains(&ports)).find_map(|line| {
        let inode = line.split_whitespace().nth(9)?;
        (inode != "0").then(|| inode.to_string())
    })?;
    let wanted = format!("socket:[{inode}]");
    pids.iter().enumerate().find_map(|(i, pid)| {
        let pid = (*pid)?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str()))
            .then_some(i)
    })
}

/// Polls which node leads (`/v2/stats/self`) every 100 ms on a background thread.
pub struct LeaderMonitor {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Option<usize>>>,
}

impl LeaderMonitor {
    const POLL: Duration = Duration::from_millis(100);

    pub fn start(endpoints: Vec<SocketAddr>) -> LeaderMonitor {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let live = vec![true; endpoints.len()];
            let mut seen = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                seen.push(leader_among(&endpoints, &live));
                std::thread::sleep(Self::POLL);
            }
            seen
        });
        LeaderMonitor { stop, thread }
    }

    /// The number of times the observed leader became another node, and the observations
    /// run-length encoded (`n1×52 -×12 n2×40`; `-` = no single leader).
    pub fn stop(self) -> (usize, String) {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.thread.join().expect("leader monitor panicked");
        let mut timeline: Vec<(Option<usize>, usize)> = Vec::new();
        for leader in &seen {
            match timeline.last_mut() {
                Some((last, count)) if last == leader => *count += 1,
                _ => timeline.push((*leader, 1)),
            }
        }
        let text = timeline
            .iter()
            .map(|(leader, count)| format!("{}×{count}", leader.map_or("-".to_string(), |i| format!("n{}", i + 1))))
            .collect::<Vec<_>>()
            .join(" ");
        let leaders: Vec<usize> = seen.into_iter().flatten().collect();
        (leaders.windows(2).filter(|pair| pair[0] != pair[1]).count(), text)
    }
}

/// True when every thread of `pid` is in state `T` (stopped) according to `/proc`.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An echo server on a free port; returns its port.
    fn echo_server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        port
    }

    /// An echo expected through: the proxy may first scan /proc/net/tcp for the sender,
    /// which a loaded machine can stretch to seconds.
    const ECHO_TIMEOUT: Duration = Duration::from_secs(5);
    /// How long an echo expected not to come is waited for.
    const NO_ECHO_TIMEOUT: Duration = Duration::from_millis(300);

    fn echo_through(stream: &mut std::net::TcpStream, msg: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        stream.read_exact(&mut got)?;
        Ok(got)
    }

    /// SIGSTOP freezes a node (requests time out) and SIGCONT brings it back.
    #[test]
    fn paused_node_answers_nothing_until_resumed() {
        let mut cluster = Cluster::start(ClusterConfig::new(1, &format!("pause-{}", std::process::id())));
        let addr = cluster.endpoints()[0];
        let get = Request::new("GET", "/v2/keys/");
        assert!(http::send_with_timeout(addr, &get, PROBE_TIMEOUT).is_ok_and(|r| r.status() == 200));
        cluster.pause(0);
        assert!(http::send_with_timeout(addr, &get, PROBE_TIMEOUT).is_err(), "a stopped process answered");
        cluster.resume(0);
        let resp = http::send_with_timeout(addr, &get, Duration::from_secs(5)).expect("answer after SIGCONT");
        assert_eq!(resp.status(), 200);
        assert_eq!(cluster.leader(), Some(0), "a single node leads itself");
    }

    /// A TCP connection to `to` from the local address `source` (std cannot bind first).
    fn connect_from(source: Ipv4Addr, to: SocketAddr) -> std::net::TcpStream {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("runtime");
        let stream = runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.bind(SocketAddr::from((source, 0))).expect("bind the source address");
            socket.connect(to).await.expect("connect")
        });
        let stream = stream.into_std().expect("std stream");
        stream.set_nonblocking(false).expect("blocking");
        stream
    }

    /// This test process plays node 0 (the sender); the echo server is node 1.
    #[test]
    fn proxy_forwards_identifies_the_sender_and_blackholes_cut_links() {
        let echo_port = echo_server();
        let pids = Arc::new(Mutex::new(vec![None, None]));
        // Node 0's own proxy route is unused here; node 1 (the echo server) sits behind it.
        let route = |node: usize, upstream_port: Option<u16>| {
            let listen = SocketAddr::from((node_ip(node), free_ports(node_ip(node), 1)[0]));
            let upstream = upstream_port.map_or(listen, |port| SocketAddr::from(([127, 0, 0, 1], port)));
            ProxyRoute { node_ip: IpAddr::V4(node_ip(node)), listen, upstream }
        };
        let routes = [route(0, None), route(1, Some(echo_port))];
        let proxy = PeerProxy::start(&routes, pids.clone()).expect("proxy");
        let addr = routes[1].listen;

        // From node 0's address: identified by it, without any process list.
        let mut conn = connect_from(node_ip(0), addr);
        assert_eq!(echo_through(&mut conn, b"hello", ECHO_TIMEOUT).expect("echo"), b"hello");
        assert_eq!(proxy.accepted.lock().unwrap().as_slice(), &[(Some(0), 1)], "sender identified by its address");

        // From an address that is no node's (etcd does not bind): found through /proc.
        pids.lock().unwrap()[0] = Some(std::process::id());
        let mut unbound = std::net::TcpStream::connect(addr).expect("connect");
        assert_eq!(echo_through(&mut unbound, b"hi", ECHO_TIMEOUT).expect("echo"), b"hi");
        assert_eq!(proxy.accepted.lock().unwrap().last(), Some(&(Some(0), 1)), "sender identified via /proc");
        drop(unbound);

        // A cut in the other direction does not affect this link.
        proxy.cut(&[(1, 0)]);
        assert_eq!(echo_through(&mut conn, b"still", ECHO_TIMEOUT).expect("echo"), b"still");

        // Cutting 0 -> 1 blackholes the live connection: no answer, no reset.
        proxy.cut(&[(0, 1)]);
        std::thread::sleep(Duration::from_millis(50));
        let err = echo_through(&mut conn, b"lost", NO_ECHO_TIMEOUT).expect_err("cut link must not answer");
        assert!(matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{err:?}");
        // New connections are accepted but not forwarded either.
        let mut fresh = connect_from(node_ip(0), addr);
        assert!(echo_through(&mut fresh, b"lost", NO_ECHO_TIMEOUT).is_err());

        // Healing closes the blackholed connections, and new connections work again.
        proxy.heal_all();
        conn.set_read_timeout(Some(ECHO_TIMEOUT)).expect("timeout");
        let mut rest = Vec::new();
        assert!(conn.read_to_end(&mut rest).is_ok(), "a healed blackhole is closed (EOF)");
        let mut healed = connect_from(node_ip(0), addr);
        assert_eq!(echo_through(&mut healed, b"back", ECHO_TIMEOUT).expect("echo after heal"), b"back");
    }
}
