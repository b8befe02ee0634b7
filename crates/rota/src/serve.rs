//! `rota serve`: start a node and serve clients until SIGTERM/SIGINT, or until this member
//! is removed from the cluster (then it logs etcd's "the member has been permanently removed
//! from the cluster" and exits 0 about a second later, as etcd 3.4 does).
//!
//! Sockets are bound (with `SO_REUSEADDR`) before the node starts, so a port conflict fails
//! at once and a restart right after a SIGKILL rebinds. Shutdown: stop accepting, let
//! in-flight requests finish briefly, end watches, then shut the node down (its log is
//! durable either way: every acknowledged write was fsynced before its answer).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use rota_raft::{ClusterState, Node, NodeConfig};
use rota_server::{App, ServerConfig};

/// A removed member stops this many heartbeat intervals after it learned of its removal
/// (etcd: `stopWithDelay(10 * TickMs)`).
const REMOVED_STOP_DELAY_HEARTBEATS: u64 = 10;

/// etcd's default peer URL.
const DEFAULT_PEER_URL: &str = "http://127.0.0.1:2380";

/// Every etcd flag can also come from etcd's environment variable (`ETCD_NAME`,
/// `ETCD_INITIAL_CLUSTER`, ...), as `etcdctl member add` and `rota member add` print them;
/// a flag on the command line wins.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Human-readable name of this member; its id derives from it.
    #[arg(env = "ETCD_NAME", long, default_value = "default")]
    pub name: String,
    /// Where the Raft log and snapshots live [default: <name>.rota]. An empty or missing
    /// directory starts a new member.
    #[arg(env = "ETCD_DATA_DIR", long)]
    pub data_dir: Option<PathBuf>,
    /// Comma-separated URLs to serve clients on (http only).
    #[arg(env = "ETCD_LISTEN_CLIENT_URLS", long, default_value = "http://127.0.0.1:2379")]
    pub listen_client_urls: String,
    /// Comma-separated client URLs to tell other members and clients (/v2/members)
    /// [default: the --listen-client-urls, unless one listens on all addresses (0.0.0.0,
    /// [::]): then it must be given, as etcd requires].
    #[arg(env = "ETCD_ADVERTISE_CLIENT_URLS", long)]
    pub advertise_client_urls: Option<String>,
    /// Comma-separated URLs to listen on for peers [default: http://127.0.0.1:2380]. A
    /// one-member cluster listens only when this is given (so that it can grow later).
    #[arg(env = "ETCD_LISTEN_PEER_URLS", long)]
    pub listen_peer_urls: Option<String>,
    /// This member's peer URLs, as the rest of the cluster reaches it.
    #[arg(env = "ETCD_INITIAL_ADVERTISE_PEER_URLS", long, default_value = "http://127.0.0.1:2380")]
    pub initial_advertise_peer_urls: String,
    /// The initial cluster, `name=peerURL,...` [default: <name>=<initial-advertise-peer-urls>].
    #[arg(env = "ETCD_INITIAL_CLUSTER", long)]
    pub initial_cluster: Option<String>,
    /// `new` for a new cluster, `existing` to join one.
    #[arg(env = "ETCD_INITIAL_CLUSTER_STATE", long, default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Distinguishes clusters with the same members (part of the cluster id).
    #[arg(env = "ETCD_INITIAL_CLUSTER_TOKEN", long, default_value = "etcd-cluster")]
    pub initial_cluster_token: String,
    /// Raft heartbeat interval in milliseconds.
    #[arg(env = "ETCD_HEARTBEAT_INTERVAL", long = "heartbeat-interval", default_value_t = 100)]
    pub heartbeat_interval_ms: u64,
    /// Raft election timeout in milliseconds: a follower campaigns after about 1 to 1.2
    /// times this without hearing from a leader.
    #[arg(env = "ETCD_ELECTION_TIMEOUT", long = "election-timeout", default_value_t = 1000)]
    pub election_timeout_ms: u64,
    /// Watch events kept for `waitIndex` (etcd keeps 1000).
    #[arg(long = "max-history", default_value_t = 1000)]
    pub history_events_max: usize,
    /// Applied entries between snapshots (the log before a snapshot is purged); etcd 3.4's
    /// default. A snapshot is also taken once 64 MiB of log were appended since the last.
    #[arg(env = "ETCD_SNAPSHOT_COUNT", long = "snapshot-count", default_value_t = 100_000)]
    pub snapshot_entries: u64,
    /// Refuse writes (507) while the data dir's file system has less than this many MiB
    /// plus room for the next snapshot free; deletes and reads go on. 0: never refuse.
    #[arg(long = "min-free-mb", default_value_t = rota_raft::DEFAULT_MIN_FREE_BYTES >> 20)]
    pub min_free_mib: u64,
    /// Requests per second each client address may send to this member (a burst of one
    /// second's worth); over it, 429 with Retry-After. /health, /metrics and /ui files are not
    /// counted.
    /// 0: no limit.
    #[arg(long = "client-rate-limit", env = "ROTA_CLIENT_RATE_LIMIT", default_value_t = 0, value_name = "PER_SECOND")]
    pub client_rate_limit: u32,
    /// Client connections open at once; at the bound, idle ones are closed for new clients.
    /// Each takes an open file (two while it watches): see the open files warning.
    /// [default: 16384, lowered to fit the open files limit]
    #[arg(long = "max-connections", env = "ROTA_MAX_CONNECTIONS",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(16..=1_000_000))]
    pub connections_max: Option<usize>,
    /// Watches (`/v2` `wait=true`, `/v1/watch`) open at once, below --max-connections; over
    /// it, 503 with Retry-After (etcd has no such bound).
    /// [default: 12288, or 3/4 of --max-connections when that is lower]
    #[arg(long = "max-watchers", env = "ROTA_MAX_WATCHERS",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub watchers_max: Option<usize>,
    /// Host names a request's `Host` header may name, comma-separated (`*`: any), against
    /// DNS rebinding: a request for another host gets 421, as etcd's. Name every name and
    /// address clients use (e.g. `localhost,127.0.0.1,rota.internal`).
    #[arg(env = "ETCD_HOST_WHITELIST", long = "host-whitelist", default_value = "*")]
    pub host_whitelist: String,
    /// Origins that web pages may read and send `/v2` requests from, comma-separated
    /// (`*`: any, etcd's default). `/v1` serves same-origin pages only.
    #[arg(env = "ETCD_CORS", long, default_value = "*")]
    pub cors: String,
    /// What to log: debug, info, warn or error (`RUST_LOG`, when set, decides instead).
    #[arg(env = "ETCD_LOG_LEVEL", long = "log-level", default_value = "info", value_parser = clap::builder::TypedValueParser::map(clap::builder::PossibleValuesParser::new(["debug", "info", "warn", "error"]), |level: String| level.to_ascii_lowercase()), ignore_case = true)]
    pub log_level: String,
    /// Start as the only member of the cluster in the data dir, keeping everything it holds
    /// committed: for a member that survived the loss of its cluster's majority (README,
    /// "Back up and restore"). Remove it for later restarts.
    #[arg(env = "ETCD_FORCE_NEW_CLUSTER", long = "force-new-cluster", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = go_bool, default_value = "false")]
    pub force_new_cluster: bool,
    /// Accepted for etcd compatibility: the v2 API is always on.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", hide = true)]
    pub enable_v2: Option<String>,
    /// etcd flags given that mean nothing to rota (see `argv::IGNORED_SERVE_FLAGS`).
    #[arg(skip)]
    pub ignored_etcd_flags: Vec<String>,
}

impl ServeArgs {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.rota", self.name)))
    }

    /// Fills in the bounds not given: the defaults, lowered so that the connections and
    /// watches fit `open_files` (each connection is a file, each waiting watch one more,
    /// and 1,024 are left for the rest), and watches 3/4 of the connections at most.
    pub fn fit_bounds(&mut self, open_files: u64) {
        let fitting = usize::try_from(open_files.saturating_sub(1024) / 2).unwrap_or(usize::MAX);
        let connections = *self
            .connections_max
            .get_or_insert_with(|| rota_server::limits::CONNECTIONS_MAX.min(fitting).max(16));
        self.watchers_max
            .get_or_insert_with(|| rota_server::limits::WATCHERS_MAX.min(connections * 3 / 4).max(1));
    }

    pub fn connections_max(&self) -> usize {
        self.connections_max.unwrap_or(rota_server::limits::CONNECTIONS_MAX)
    }

    pub fn watchers_max(&self) -> usize {
        self.watchers_max.unwrap_or(rota_server::limits::WATCHERS_MAX)
    }

    /// Watches hold their connection: a bound at or over the connections' would let them
    /// take every connection and leave none for the writes that end them.
    pub fn check_bounds(&self) -> anyhow::Result<()> {
        if self.watchers_max() >= self.connections_max() {
            anyhow::bail!(
                "--max-watchers ({}) must be below --max-connections ({}): watches hold their connections",
                self.watchers_max(),
                self.connections_max()
            );
        }
        Ok(())
    }

    /// etcd's checks of the Raft timing flags.
    pub fn check_timing(&self) -> anyhow::Result<()> {
        let (heartbeat, election) = (self.heartbeat_interval_ms, self.election_timeout_ms);
        if heartbeat == 0 {
            anyhow::bail!("--heartbeat-interval must be at least 1 (ms)");
        }
        if election < 5 * heartbeat {
            anyhow::bail!(
                "--election-timeout[{election}] should be at least as 5 times as --heartbeat-interval[{heartbeat}]"
            );
        }
        if election > 50_000 {
            anyhow::bail!("--election-timeout[{election}] is too long, and should be set less than 50 seconds");
        }
        Ok(())
    }

    pub fn initial_cluster(&self) -> String {
        self.initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", self.name, self.initial_advertise_peer_urls))
    }
}

fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_string)
        .collect()
}

/// `http://host:port` → the socket addresses to bind.
async fn resolve(url: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let Some(authority) = url.strip_prefix("http://") else {
        if url.starts_with("https://") {
            anyhow::bail!(
                "listen URL {url:?}: rota serves plain HTTP only (no TLS for clients or peers); listen on \
                 http:// on loopback or a private network, with a TLS-terminating proxy in front if clients \
                 cross an untrusted network: see docs/cli.md (\"TLS\")"
            );
        }
        if !url.contains("://") {
            anyhow::bail!("listen URL {url:?} has no scheme: write http://{url}");
        }
        anyhow::bail!("listen URL {url:?}: only http:// is supported");
    };
    let authority = authority.trim_end_matches('/');
    if authority.contains('/') {
        anyhow::bail!("listen URL {url:?}: a path is not allowed");
    }
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host(authority)
        .await
        .map_err(|error| anyhow::anyhow!("listen URL {url:?}: {error}"))?
        .collect();
    if addresses.is_empty() {
        anyhow::bail!("listen URL {url:?} resolves to nothing");
    }
    Ok(addresses)
}

/// Where this member's outgoing peer connections should come from: the address it listens
/// for peers on, when that is a single loopback address. Several members on one machine
/// then each have their own address (`127.0.0.2`, `127.0.0.3`, ...) in both directions,
/// so a peer, a firewall rule or a test's partitioning proxy can tell who connects from the
/// source address alone. Any other listen address (a real interface, `0.0.0.0`, several)
/// leaves the choice to the routing table, which knows the way to the peers better.
fn peer_source_ip(peer_addresses: &[SocketAddr]) -> Option<IpAddr> {
    let ip = peer_addresses.first()?.ip();
    let single = peer_addresses.iter().all(|address| address.ip() == ip);
    (single && ip.is_loopback()).then_some(ip)
}

pub async fn run(mut args: ServeArgs) -> ExitCode {
    init_tracing(&args.log_level);
    let environment = {
        let command = <ServeArgs as clap::Args>::augment_args(clap::Command::new("serve"));
        let known: Vec<String> = command
            .get_arguments()
            .filter_map(|arg| arg.get_env().and_then(|env| env.to_str()).map(str::to_owned))
            .collect();
        crate::argv::etcd_environment(std::env::vars(), known.iter().map(String::as_str))
    };
    if let Some(name) = environment.tls.first() {
        eprintln!("{}", crate::argv::tls_refusal(name));
        return ExitCode::from(2);
    }
    if let Some(refusal) = &environment.refused {
        eprintln!("{refusal}");
        return ExitCode::from(2);
    }
    args.ignored_etcd_flags.extend(environment.ignored);
    if !args.ignored_etcd_flags.is_empty() {
        tracing::warn!(
            "ignored: {} (etcd flags that mean nothing to rota: v3 and its auth, zap logging, gRPC, profiling, bbolt, a separate WAL dir)",
            args.ignored_etcd_flags.join(" ")
        );
    }
    for name in environment.unrecognized {
        tracing::warn!("unrecognized environment variable {name}");
    }
    match serve(args).await {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The membership keeps the peer URLs a member was added (or first started) with; the
/// `--initial-*` flags do not change them later. A member restarted listening on another
/// port is not reached by the others (writes through them find no leader) while it says
/// nothing: say it, and how to change the registered URLs.
async fn warn_if_registered_elsewhere(node: Node, listening: Vec<std::net::SocketAddr>) {
    let id = node.status().id;
    // Raft publishes the membership it loaded a moment after it started; a joining member
    // learns it from the leader.
    let mut me = None;
    for _ in 0..100 {
        me = node.members().into_iter().find(|(member, _)| *member == id);
        if me.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some((_, me)) = me else {
        return;
    };
    let port_of = |url: &str| url.rsplit(':').next().and_then(|port| port.trim_end_matches('/').parse::<u16>().ok());
    let reached = me.peer_urls.iter().any(|url| port_of(url).is_some_and(|port| listening.iter().any(|address| address.port() == port)));
    if !reached && !me.peer_urls.is_empty() {
        tracing::warn!(
            registered = %me.peer_urls.join(","),
            "the cluster knows this member by peer URLs it does not listen on: the other members cannot reach it. \
             Listen there again, or change them: rota member update {id:x} URL (or etcdctl member update, PUT /v2/members/{id:x})"
        );
    }
}

/// A data dir without a member's identity starts a new member: it must be missing, empty,
/// or hold only what a start of rota cut short left there. Anything else is refused: an
/// etcd data dir (an etcd unit file's `ETCD_DATA_DIR` sends rota there) or a mistyped path
/// would otherwise get a new, empty member's files beside what is in it, and serve an empty
/// store as if that were the data.
fn refuse_foreign_data_dir(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        // Missing (created later), or not a directory: the start says so itself.
        return Ok(());
    };
    let mut foreign: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            !matches!(name.as_str(), "raft-log" | "snapshots" | "lost+found")
                && !name.starts_with("identity")
                && !name.starts_with("commit-mark")
        })
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let shown = foreign.iter().take(5).map(String::as_str).collect::<Vec<_>>().join(", ");
    if foreign.iter().any(|name| name == "member") {
        anyhow::bail!(
            "the data dir {} looks like an etcd member's (it has member/): rota cannot read etcd's data; \
             give rota a data dir of its own (--data-dir) and copy the keys over through the v2 API",
            data_dir.display()
        );
    }
    anyhow::bail!(
        "the data dir {} is not empty ({shown}) and holds no rota member: give a new member an empty \
         or missing directory (--data-dir)",
        data_dir.display()
    );
}

/// Raises this process's soft limit of open files to its hard limit, as Go's runtime does
/// for etcd: a shell's default soft limit (often 1,024) is far below the connections and
/// watches rota bounds itself to (`limits.md`: each connection is a socket, each waiting
/// watch one more), and past it every accept fails. Returns the limit now in force.
fn raise_open_files_limit() -> u64 {
    // SAFETY: plain libc calls on a local, initialised rlimit.
    let limit = unsafe {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return u64::MAX;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        limit
    };
    limit.rlim_cur as u64
}

/// Logs the connection bounds in force, and warns when the open files limit is too low for
/// them (bounds given by flags are kept as given).
fn log_connection_bounds(open_files: u64, connections_max: usize, watchers_max: usize) {
    let wanted = 2 * connections_max as u64 + 1024;
    if open_files < wanted {
        tracing::warn!(
            open_files_limit = open_files,
            "the open files limit is low for {connections_max} connections and {watchers_max} watches; raise it (ulimit -n, LimitNOFILE=) to {wanted} or more",
        );
    } else if connections_max < rota_server::limits::CONNECTIONS_MAX {
        tracing::info!(
            open_files_limit = open_files,
            "at most {connections_max} client connections and {watchers_max} watches (raise the open files limit, ulimit -n or LimitNOFILE=, for more)"
        );
    }
}

async fn serve(mut args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Installed first: a SIGTERM that comes as soon as the node answers (or while it starts)
    // must shut it down gracefully, not find the default action still in place.
    let signals = ShutdownSignals::install();
    let open_files = raise_open_files_limit();
    args.fit_bounds(open_files);
    log_connection_bounds(open_files, args.connections_max(), args.watchers_max());
    args.check_timing()?;
    args.check_bounds()?;
    let initial_cluster_flag = args.initial_cluster();
    let initial_cluster = rota_raft::parse_initial_cluster(&initial_cluster_flag)
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    let data_dir = args.data_dir();
    // As with etcd, the --initial-* flags describe a new member; a member restarting on its
    // data dir has its cluster there, and flags left as they were at its first start (or
    // never updated after members were added or moved) must not keep it from starting.
    let restarting = data_dir.join("identity").exists();
    if !restarting {
        refuse_foreign_data_dir(&data_dir)?;
        if args.initial_cluster_state != "existing" {
            if let Some(refused) = rota_raft::unnamed_members_refused(&initial_cluster) {
                anyhow::bail!("{refused}");
            }
        }
    }
    let peer_urls = split_urls(&args.initial_advertise_peer_urls);
    let me = initial_cluster.iter().find(|member| member.name == args.name);
    // `member add` takes a name that is in use (etcd's does too), and the --initial-cluster
    // it prints then lists both members under that name, which reads as one member with the
    // URLs of both. A member joining finds its id by its own peer URLs, so that is no
    // mismatch; telling it to advertise them all sent an audit to start a process at the
    // running member's URL, as that member.
    let joining_under_a_shared_name = args.initial_cluster_state == "existing"
        && me.is_some_and(|me| me.peer_urls.len() > peer_urls.len() && peer_urls.iter().all(|url| me.peer_urls.contains(url)));
    if joining_under_a_shared_name && !restarting {
        tracing::warn!(
            "--initial-cluster lists {:?} at {:?}, more than this member's --initial-advertise-peer-urls {:?}: another member \
             has this name; joining by this member's peer URLs (give members names of their own: `rota member add` refuses a \
             name in use)",
            args.name,
            me.map(|me| me.peer_urls.clone()).unwrap_or_default(),
            peer_urls
        );
    }
    let mismatch = match me {
        None => Some(format!(
            "--initial-cluster {initial_cluster_flag:?} has no member named {:?}",
            args.name
        )),
        Some(_) if joining_under_a_shared_name => None,
        Some(me) if args.initial_cluster.is_some() && me.peer_urls != peer_urls => Some(format!(
            "--initial-cluster gives {:?} the peer URLs {:?} but --initial-advertise-peer-urls is {:?} \
             (http://127.0.0.1:2380 unless given): give --initial-advertise-peer-urls (ETCD_INITIAL_ADVERTISE_PEER_URLS) as {}",
            args.name,
            me.peer_urls,
            peer_urls,
            me.peer_urls.join(","),
        )),
        Some(_) => None,
    };
    match mismatch {
        Some(mismatch) if restarting => tracing::info!(
            "{mismatch}: ignored, this member restarts on its data dir (the --initial-* flags apply to a new member)"
        ),
        Some(mismatch) => anyhow::bail!("{mismatch}"),
        None => {}
    }

    let mut listeners = Vec::new();
    let listen_urls = split_urls(&args.listen_client_urls);
    // The URL of a listener on all addresses (0.0.0.0, [::]), which cannot be advertised.
    let mut unspecified = None;
    for url in &listen_urls {
        for address in resolve(url).await? {
            if address.ip().is_unspecified() {
                unspecified.get_or_insert(url.clone());
            }
            let listener = bind_when_free(address)
                .await
                .map_err(|error| anyhow::anyhow!("listen on {address} ({url}): {error}"))?;
            listeners.push(listener);
        }
    }
    if listeners.is_empty() {
        anyhow::bail!("--listen-client-urls is empty");
    }
    // The flag, else the listen URLs (advertising `127.0.0.1:2379` for a member listening
    // elsewhere sent etcdctl and other members' clients to a port nobody serves).
    let advertise_client_urls = match (&args.advertise_client_urls, unspecified) {
        (Some(urls), _) => urls.clone(),
        (None, Some(url)) => anyhow::bail!(
            "--advertise-client-urls is required when --listen-client-urls listens on all addresses ({url}): \
             give the URLs clients reach this member at"
        ),
        (None, None) => args.listen_client_urls.clone(),
    };
    // A one-member cluster needs no peer listener (and the default peer port may be taken
    // by another single node on the same machine, as with etcd's defaults it would not be).
    let mut peer_listeners = Vec::new();
    let mut peer_addresses = Vec::new();
    let listen_peer_urls = split_urls(args.listen_peer_urls.as_deref().unwrap_or(DEFAULT_PEER_URL));
    if initial_cluster.len() > 1 || args.initial_cluster_state == "existing" || args.listen_peer_urls.is_some() {
        for url in &listen_peer_urls {
            for address in resolve(url).await? {
                let listener = bind_when_free(address).await.map_err(|error| {
                    anyhow::anyhow!("listen for peers on {address} ({url}): {error}")
                })?;
                peer_listeners.push(listener);
                peer_addresses.push(address);
            }
        }
        if peer_listeners.is_empty() {
            anyhow::bail!("--listen-peer-urls is empty");
        }
    }

    let peers_text = if peer_listeners.is_empty() {
        "no peers (a one-member cluster does not listen for them)".to_owned()
    } else {
        format!("peers on {}", listen_peer_urls.join(","))
    };
    let client_urls = split_urls(&advertise_client_urls);
    let mut config = NodeConfig::single(args.name.clone(), data_dir.clone());
    config.core.v2_history_max = args.history_events_max.max(1);
    config.snapshot_entries = args.snapshot_entries.max(1);
    config.min_free_bytes = args.min_free_mib.saturating_mul(1 << 20);
    config.heartbeat_interval_ms = args.heartbeat_interval_ms.max(1);
    let heartbeat_interval_ms = config.heartbeat_interval_ms;
    config.set_election_timeout_ms(args.election_timeout_ms);
    config.advertise_client_urls = client_urls.clone();
    config.advertise_peer_urls = peer_urls.clone();
    config.peer_source_ip = peer_source_ip(&peer_addresses);
    config.listens_for_peers = !peer_listeners.is_empty();
    config.peer_listen_ports = peer_addresses.iter().map(std::net::SocketAddr::port).collect();
    if let Some(ip) = config.peer_source_ip {
        tracing::info!(%ip, "peer connections to other members come from the peer listen address");
    }
    config.initial_cluster = if initial_cluster.len() > 1 {
        initial_cluster.clone()
    } else {
        Vec::new()
    };
    config.initial_cluster_state = if args.initial_cluster_state == "existing" {
        ClusterState::Existing
    } else {
        ClusterState::New
    };
    config.cluster_token = args.initial_cluster_token.clone();
    config.force_new_cluster = args.force_new_cluster;
    config.cluster_id = Some(rota_server::cluster_id(
        &initial_cluster_flag,
        &args.initial_cluster_token,
    ));
    // Keep a little log behind each snapshot so a follower that missed a few entries
    // catches up from the log rather than with a whole snapshot.
    config.log_entries_kept_after_snapshot = (config.snapshot_entries / 10).min(1_000);

    // The peer listener must answer while the node starts (a restarted member is asked
    // for votes and entries at once), so it is served from here on; until the node
    // exists, requests wait in the listen backlog.
    // A start can wait (for peers to answer a member that joins): a signal ends it.
    let mut signals = signals;
    let node = tokio::select! {
        started = Node::start(config) => started.map_err(|error| anyhow::anyhow!("starting the node: {error}"))?,
        signal = signals.recv() => {
            tracing::info!("{signal} while starting: stopped before serving");
            return Ok(ExitCode::SUCCESS);
        }
    };
    if !peer_addresses.is_empty() {
        tokio::spawn(warn_if_registered_elsewhere(node.clone(), peer_addresses.clone()));
    }
    let (stop_peers, peers_stopped) = tokio::sync::watch::channel(false);
    let peer_task = tokio::spawn(rota_server::peer::serve_peers(
        node.clone(),
        peer_listeners,
        async move {
            let mut stopped = peers_stopped;
            let _ = stopped.wait_for(|stop| *stop).await;
        },
    ));

    let cluster_id = node.cluster_id();
    let server_config = ServerConfig {
        name: args.name.clone(),
        cluster_id,
        client_urls,
        peer_urls,
        watchers_max: args.watchers_max(),
        body_budget_bytes_max: rota_server::limits::BODY_BUDGET_BYTES_MAX,
        response_budget_bytes_max: rota_server::limits::RESPONSE_BUDGET_BYTES_MAX,
        client_rate_limit: args.client_rate_limit,
        host_whitelist: split_urls(&args.host_whitelist),
        cors: split_urls(&args.cors),
    };
    let app = App::new(node.clone(), server_config);
    tracing::info!(
        "rota {} serving clients on {} and {} with data in {} (member {} id {:x}, cluster {:016x})",
        env!("CARGO_PKG_VERSION"),
        listen_urls.join(","),
        peers_text,
        std::path::absolute(&data_dir).unwrap_or_else(|_| data_dir.clone()).display(),
        args.name,
        node.id(),
        cluster_id,
    );

    // Set when Raft stopped on its own (a failed fsync): the process then exits non-zero.
    let fatal = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
    // As etcd: a removed member stops this long after it learned of its removal (it refuses
    // writes meanwhile), so the last messages of its removal reach the others.
    let removed_stop_delay =
        Duration::from_millis(REMOVED_STOP_DELAY_HEARTBEATS * heartbeat_interval_ms);
    let shutdown = {
        let node = node.clone();
        let fatal = fatal.clone();
        async move {
            tokio::select! {
                signal = signals.recv() => {
                    tracing::info!("{signal}: shutting down");
                    node.hand_over_leadership().await;
                }
                reason = node.wait_fatal() => {
                    tracing::error!("raft stopped: {reason}");
                    let _ = fatal.set(reason);
                }
                () = node.wait_removed() => {
                    tracing::warn!(
                        "{}: stopping in {removed_stop_delay:?}; remove this member's data dir before it joins again",
                        rota_raft::MEMBER_REMOVED
                    );
                    tokio::time::sleep(removed_stop_delay).await;
                }
            }
        }
    };
    let options = rota_server::serve::ServeOptions { connections_max: args.connections_max(), ..Default::default() };
    rota_server::serve::serve_with(app, listeners, shutdown, options).await;
    node.shutdown().await;
    stop_peers.send_replace(true);
    let _ = peer_task.await;
    Ok(match fatal.get() {
        Some(_) => ExitCode::FAILURE,
        None => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
    })
}

/// How long an address in use is tried again before start-up fails.
const BIND_WAIT: Duration = Duration::from_secs(2);

/// Listens on `address`, waiting up to [`BIND_WAIT`] while it is in use: a member restarted
/// right after a SIGKILL finds its predecessor's listening sockets open until the kernel
/// has finished that process off (`SO_REUSEADDR` covers only the connections it leaves
/// behind), which took up to ~130 ms on a busy machine.
async fn bind_when_free(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let deadline = tokio::time::Instant::now() + BIND_WAIT;
    let mut said = false;
    loop {
        match rota_server::bind(address) {
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                if !said {
                    tracing::info!(
                        "{address} is in use; trying again for up to {}s (a process on it may be exiting)",
                        BIND_WAIT.as_secs()
                    );
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// How many threads serve HTTP: one core fewer than the machine has (at least one), unless
/// `TOKIO_WORKER_THREADS` says otherwise (`None`: tokio reads it itself).
///
/// The remaining core is the Raft thread's and the log flush thread's: a write crosses from
/// an HTTP worker to them and back, and an answer that comes back while every HTTP worker
/// sleeps wakes one of them, which under tokio's work stealing often wakes a second to take
/// the task. With two cores, one HTTP worker took the median single-client write from
/// 0.39–0.41 ms to 0.30–0.32 ms and left throughput at 16 and 64 clients, reads, jobs and
/// a 3-node cluster unchanged (bench/RESULTS.md, 2026-12-06 (second session)).
pub(crate) fn http_worker_threads() -> Option<usize> {
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    Some(cores.saturating_sub(1).max(1))
}

/// SIGTERM, SIGINT and SIGHUP, caught from the moment `install` returns. SIGHUP (a closed
/// terminal, or a service manager's "reload") stops gracefully too: its default action
/// killed the process on the spot, a leader without handing its leadership over.
/// Started under `nohup` (SIGHUP ignored), SIGHUP is left ignored.
struct ShutdownSignals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal, Option<tokio::signal::unix::Signal>)>);

impl ShutdownSignals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), crate::signals::hangup()) {
            (Ok(terminate), Ok(interrupt), Ok(hangup)) => Self(Some((terminate, interrupt, hangup))),
            _ => {
                tracing::warn!("cannot install signal handlers; stop with SIGKILL");
                Self(None)
            }
        }
    }

    /// Resolves on SIGTERM, SIGINT or SIGHUP (also one that came before the call) with its name.
    async fn recv(&mut self) -> &'static str {
        let Some((terminate, interrupt, hangup)) = self.0.as_mut() else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
            () = crate::signals::next_hangup(hangup) => "SIGHUP",
        }
    }
}

fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // openraft logs every failed retry to an unreachable follower (about 15 lines a
        // second each); the peer transport logs when a peer goes away and comes back. Its
        // core warns of messages it ignores as stale (every start, every election): those
        // are kept from a normal log, its errors are not.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!(
                "{level},openraft=warn,openraft::core::raft_core=error,openraft::replication=off,openraft::engine::handler::replication_handler=off,chunked_wal=warn,raft_log=warn",
            ))
        });
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_filter(tracing_subscriber::filter::filter_fn(|event| !is_per_peer_failure_echo(event)));
    // With tracing-subscriber's `tracing-log`, this also takes the `log` crate's records:
    // the Raft log's writer reports a failed write there (it was lost, and the node said
    // only "channel closed").
    let _ = tracing_subscriber::registry().with(filter).with(fmt).try_init();
}

/// openraft's core logs an ERROR for each peer a vote request or a read's leadership check
/// did not reach, every round (a member with a peer down logged ~3 a second during
/// elections). The peer transport already says when a peer goes away and comes back, and
/// why it refuses; these echo it. The call sites of openraft `=0.9.25`
/// (`src/core/raft_core.rs`: the read's check at line 383, the vote's timeout at 1099 and
/// its failure at 1112); an openraft upgrade must look at them again.
fn is_per_peer_failure_echo(event: &tracing::Metadata<'_>) -> bool {
    event.target() == "openraft::core::raft_core"
        && event.file().is_some_and(|file| file.ends_with("core/raft_core.rs"))
        && matches!(event.line(), Some(383 | 1099 | 1112))
}

/// A boolean as Go's `strconv.ParseBool` reads one (etcd's switches take these).
fn go_bool(value: &str) -> Result<bool, String> {
    rota_server::form::parse_bool(value).ok_or_else(|| format!("{value:?} is not a boolean: use true or false"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().expect("socket address")).collect()
    }

    #[tokio::test]
    async fn a_listen_url_without_its_scheme_is_named_with_the_fix() {
        let error = resolve("127.0.0.1:29170").await.unwrap_err().to_string();
        assert_eq!(error, "listen URL \"127.0.0.1:29170\" has no scheme: write http://127.0.0.1:29170");
        let error = resolve("unix://sock").await.unwrap_err().to_string();
        assert!(error.ends_with("only http:// is supported"), "{error}");
    }

    #[test]
    fn peer_connections_come_from_the_single_loopback_peer_listen_address() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        assert_eq!(peer_source_ip(&addresses(&["127.0.0.3:2380"])), ip("127.0.0.3"));
        assert_eq!(peer_source_ip(&addresses(&["127.0.0.3:2380", "127.0.0.3:2381"])), ip("127.0.0.3"));
        assert_eq!(peer_source_ip(&addresses(&["[::1]:2380"])), ip("::1"));
        assert_eq!(peer_source_ip(&addresses(&["127.0.0.1:2380", "[::1]:2380"])), None, "localhost: two addresses");
        assert_eq!(peer_source_ip(&addresses(&["10.0.0.7:2380"])), None, "a real interface: routing decides");
        assert_eq!(peer_source_ip(&addresses(&["0.0.0.0:2380"])), None);
        assert_eq!(peer_source_ip(&[]), None, "one member, no peer listener");
    }

    fn serve_args(flags: &[&str]) -> ServeArgs {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let argv = std::iter::once("serve").chain(flags.iter().copied());
        <Wrapper as clap::Parser>::try_parse_from(argv).expect("flags parse").serve
    }

    #[test]
    fn connection_bounds_not_given_fit_the_open_files_limit_and_given_ones_are_kept() {
        let mut roomy = serve_args(&[]);
        roomy.fit_bounds(1 << 20);
        assert_eq!((roomy.connections_max(), roomy.watchers_max()), (16_384, 12_288));
        let mut tight = serve_args(&[]);
        tight.fit_bounds(20_000);
        assert_eq!((tight.connections_max(), tight.watchers_max()), (9_488, 7_116));
        assert!(tight.check_bounds().is_ok());
        let mut tiny = serve_args(&[]);
        tiny.fit_bounds(1_024);
        assert_eq!((tiny.connections_max(), tiny.watchers_max()), (16, 12));
        let mut given = serve_args(&["--max-connections", "5000", "--max-watchers", "100"]);
        given.fit_bounds(1_024);
        assert_eq!((given.connections_max(), given.watchers_max()), (5_000, 100));
        let mut only_connections = serve_args(&["--max-connections", "400"]);
        only_connections.fit_bounds(1 << 20);
        assert_eq!(only_connections.watchers_max(), 300, "3/4 of the connections given");
        let mut over = serve_args(&["--max-watchers", "20000"]);
        over.fit_bounds(1 << 20);
        assert!(over.check_bounds().is_err(), "watches must stay below the connections");
    }
}
