//! `rota status` against a running node, and against an endpoint where nothing listens.

use crate::harness::{free_port_pair, Kind, Server};
use crate::http::{self, Request};
use std::time::Duration;

use crate::jobs_util::{rota, wait_until, Proc};

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
    assert_eq!(fields[..4], [server.client_url().as_str(), id.as_str(), "n1", "leader"], "{both:?}");
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
    assert!(!one.stderr.contains("different clusters"), "{one:?}");
    assert!(!one.stderr.contains("learner"), "a single node votes: {one:?}");

    // Two leaders can be two clusters (a member that listed only itself started its own):
    // status says so.
    let other = Server::try_start_with(Kind::Rota, None, vec!["--initial-cluster-token".into(), "another".into()]).unwrap_or_else(|e| panic!("{e}"));
    let two = rota(dir.path(), &["status".into(), "--endpoints".into(), format!("{},{}", server.client_url(), other.client_url())]);
    assert!(two.status.success(), "{two:?}");
    assert!(two.stderr.contains("belong to 2 different clusters") && two.stderr.contains(&other.client_url()), "{two:?}");

    // `member rm` with a name, not an id: told what to give (as etcdctl's "expecting ID in Hex").
    let by_name = rota(dir.path(), &["member".into(), "rm".into(), "n1".into(), "--endpoints".into(), server.client_url()]);
    assert_eq!(by_name.status.code(), Some(1), "{by_name:?}");
    assert!(by_name.stderr.contains("is not a member id") && by_name.stderr.contains("rota member ls"), "{by_name:?}");
    // A second node on a running node's data dir is told that another process uses it.
    let (client, peer) = free_port_pair();
    let (client_url, peer_url) = (format!("http://127.0.0.1:{client}"), format!("http://127.0.0.1:{peer}"));
    let data_dir = server.data_dir().display().to_string();
    let args: Vec<String> = ["serve", "--data-dir", &data_dir, "--listen-client-urls", &client_url, "--advertise-client-urls", &client_url, "--listen-peer-urls", &peer_url]
        .map(String::from)
        .to_vec();
    let mut second = Proc::spawn(dir.path(), "second", &args, &[]);
    assert!(!second.wait_exit(Duration::from_secs(20)).success(), "{}", second.stderr());
    assert!(second.stderr().contains("another process is using it"), "{}", second.stderr());
}

#[test]
fn serve_takes_etcds_environment_variables_and_a_flag_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, _) = free_port_pair();
    let url = format!("http://127.0.0.1:{port}");
    let data_dir = dir.path().join("from-env");
    let envs = [
        ("ETCD_NAME", "from-env".to_owned()),
        ("ETCD_DATA_DIR", data_dir.display().to_string()),
        ("ETCD_LISTEN_CLIENT_URLS", url.clone()),
        ("ETCD_ADVERTISE_CLIENT_URLS", url.clone()),
        ("ETCD_INITIAL_CLUSTER_TOKEN", "env-token".to_owned()),
        // etcd's unit files: a level in capitals, a variable of an ignored flag, a typo.
        ("ETCD_LOG_LEVEL", "INFO".to_owned()),
        ("ETCD_LOGGER", "zap".to_owned()),
        ("ETCD_NAMME", "typo".to_owned()),
    ];
    // etcd flags of a unit file that mean nothing to rota, or are off, start it.
    let serve_args = ["serve", "--name", "from-flag", "-wal-dir", "/var/lib/etcd/wal", "--proxy", "off", "--experimental-initial-corrupt-check", "--auth-token=simple"];
    let mut node = Proc::spawn(dir.path(), "env-node", &serve_args.map(String::from), &envs);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let members = wait_until(Duration::from_secs(30), "the node answers /v2/members", || {
        http::send(addr, &Request::new("GET", "/v2/members")).ok().filter(|r| r.status() == 200).map(|r| r.json())
    });
    let member = &members["members"][0];
    assert_eq!(member["name"], "from-flag", "the flag wins over ETCD_NAME: {members}");
    assert_eq!(member["clientURLs"][0], url.as_str(), "ETCD_ADVERTISE_CLIENT_URLS: {members}");
    assert!(data_dir.join("identity").exists(), "ETCD_DATA_DIR holds the data: {}", node.stderr());
    let stderr = node.stderr();
    assert!(stderr.contains("ignored: --wal-dir /var/lib/etcd/wal --proxy off --experimental-initial-corrupt-check --auth-token=simple ETCD_LOGGER"), "{stderr}");
    assert!(stderr.contains("unrecognized environment variable ETCD_NAMME"), "{stderr}");
    node.terminate();
    assert!(node.wait_exit(Duration::from_secs(10)).success(), "{}", node.stderr());

    // --force-new-cluster (or ETCD_FORCE_NEW_CLUSTER) on a data dir with nothing in it has
    // nothing to keep: said, and nothing started.
    let (forced_client, forced_peer) = free_port_pair();
    let forced_env = [
        ("ETCD_FORCE_NEW_CLUSTER", "true".to_owned()),
        ("ETCD_DATA_DIR", dir.path().join("forced").display().to_string()),
        ("ETCD_LISTEN_CLIENT_URLS", format!("http://127.0.0.1:{forced_client}")),
        ("ETCD_LISTEN_PEER_URLS", format!("http://127.0.0.1:{forced_peer}")),
    ];
    let mut forced = Proc::spawn(dir.path(), "forced", &["serve".into()], &forced_env);
    assert_eq!(forced.wait_exit(Duration::from_secs(10)).code(), Some(1));
    assert!(forced.stderr().contains("--force-new-cluster") && forced.stderr().contains("nothing to start a cluster from"), "{}", forced.stderr());
    let forced_dir = dir.path().join("forced").display().to_string();
    let mut by_flag = Proc::spawn(dir.path(), "forced-flag", &["serve", "--data-dir", &forced_dir, "-force-new-cluster=maybe"].map(String::from), &[]);
    assert_eq!(by_flag.wait_exit(Duration::from_secs(10)).code(), Some(2));
    assert!(by_flag.stderr().contains("\"maybe\" is not a boolean"), "{}", by_flag.stderr());
    let mut discovery = Proc::spawn(dir.path(), "discovery", &["serve", "--data-dir", &forced_dir, "-discovery", "https://discovery.etcd.io/abc"].map(String::from), &[]);
    assert_eq!(discovery.wait_exit(Duration::from_secs(10)).code(), Some(2));
    assert!(discovery.stderr().contains("--discovery https://discovery.etcd.io/abc is not supported") && discovery.stderr().contains("--initial-cluster"), "{}", discovery.stderr());
    assert!(!dir.path().join("forced").join("identity").exists(), "nothing started");

    // TLS, asked for by a flag or a variable, is refused: nothing may answer in the clear.
    let tls_dir = dir.path().join("tls").display().to_string();
    let flag_args = ["serve", "--data-dir", &tls_dir, "--cert-file", "/etc/ssl/server.pem"].map(String::from).to_vec();
    let mut by_flag = Proc::spawn(dir.path(), "tls-flag", &flag_args, &[]);
    assert_eq!(by_flag.wait_exit(Duration::from_secs(10)).code(), Some(2));
    assert!(by_flag.stderr().contains("--cert-file: rota serves plain HTTP only"), "{}", by_flag.stderr());
    let mut by_env = Proc::spawn(dir.path(), "tls-env", &["serve".into()], &[("ETCD_CLIENT_CERT_AUTH", "true".to_owned()), ("ETCD_DATA_DIR", tls_dir.clone())]);
    assert_eq!(by_env.wait_exit(Duration::from_secs(10)).code(), Some(2));
    assert!(by_env.stderr().contains("ETCD_CLIENT_CERT_AUTH: rota serves plain HTTP only"), "{}", by_env.stderr());
    assert!(!dir.path().join("tls").exists(), "nothing was created");
}

#[test]
fn status_warns_about_a_member_that_knows_no_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ((client, peer), (absent_a, absent_b)) = (free_port_pair(), free_port_pair());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    // One of three members: it never has a quorum, so it never knows a leader.
    let cluster = format!("a={peer_url},b=http://127.0.0.1:{absent_a},c=http://127.0.0.1:{absent_b}");
    let data_dir = dir.path().join("a").display().to_string();
    let args: Vec<String> = [
        "serve", "--name", "a", "--data-dir", &data_dir, "--listen-client-urls", &client_url, "--advertise-client-urls", &client_url,
        "--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url, "--initial-cluster", &cluster,
    ]
    .map(String::from)
    .to_vec();
    let mut node = Proc::spawn(dir.path(), "leaderless", &args, &[]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{client}").parse().expect("addr");
    wait_until(Duration::from_secs(30), "the member answers /v2/stats/self", || {
        http::send(addr, &Request::new("GET", "/v2/stats/self")).ok().filter(|r| r.status() == 200).map(|_| ())
    });
    let out = rota(dir.path(), &["status".into(), "--endpoints".into(), client_url.clone()]);
    assert!(out.status.success(), "the endpoint answered: {out:?}");
    assert!(out.stdout.lines().nth(1).is_some_and(|line| line.starts_with(&client_url) && line.split_whitespace().nth(3) == Some("no-leader")), "{out:?}");
    assert!(out.stderr.contains(&format!("warning: {client_url} knows no leader")), "{out:?}");
    // Its log says so too, at WARN, once it has gone 10 s without one (it said "an election
    // is under way" once, and then nothing while its term climbed).
    wait_until(Duration::from_secs(30), "the member warns that it has had no leader", || {
        node.stderr().lines().any(|line| line.contains("WARN") && line.contains("no leader for") && line.contains("After losing a majority")).then_some(())
    });
    node.terminate();
    node.wait_exit(Duration::from_secs(10));
}

#[test]
fn status_pointed_at_etcd_says_it_is_not_a_rota_server() {
    crate::harness::require_etcd();
    let etcd = Server::start(Kind::Etcd);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = rota(dir.path(), &["status".into(), "--endpoints".into(), etcd.client_url()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.contains("not a rota server") && out.stdout.contains("etcdctl endpoint status"), "{out:?}");
}

#[test]
fn job_cli_refuses_a_wait_apart_from_its_value_and_raises_the_backoff_max_with_the_base() {
    use crate::jobs_util::args;
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("tempdir");
    // `--wait 10s` would be a bare --wait and a queue named `10s`: refused, nothing sent.
    let apart = rota(dir.path(), &args(&server, &["job", "submit", "--wait", "10s", "--payload", "1"]));
    assert_eq!(apart.status.code(), Some(1), "{apart:?}");
    assert!(apart.stderr.contains("--wait=10s"), "{apart:?}");
    let queues = http::send(server.addr(), &Request::new("GET", "/v1/queues")).expect("queues").json();
    assert_eq!(queues["queues"], serde_json::json!([]), "no queue `10s`: {queues}");

    // A base over the current (default) max raises the max, as the API does.
    let set = rota(dir.path(), &args(&server, &["queue", "set", "slow", "--backoff-base", "2h"]));
    assert!(set.status.success(), "{set:?}");
    let queue = http::send(server.addr(), &Request::new("GET", "/v1/queues/slow")).expect("queue").json();
    assert_eq!(queue["config"]["backoff"], serde_json::json!({"base": "2h", "max": "2h"}), "{queue}");

    // With a value attached, the job is named before the wait.
    let waited = rota(dir.path(), &args(&server, &["job", "submit", "slow", "--payload", "1", "--wait=200ms"]));
    assert_eq!(waited.status.code(), Some(3), "still queued after the wait: {waited:?}");
    assert!(waited.stderr.contains("job 1 queued in slow; waiting up to 200ms"), "{waited:?}");
    assert!(waited.stderr.contains("job 1 is still queued: the wait ended before it finished"), "{waited:?}");
}

/// An etcd 3.4 command line starts rota: flags that mean nothing here (zap logging, the v3
/// quota, profiling) are named in a warning; `--host-whitelist` refuses other hosts with
/// etcd's 421 (DNS rebinding) and `--cors` limits `/v2`'s CORS headers to its origins.
#[test]
fn serve_takes_an_etcd_command_line_with_its_host_whitelist_and_cors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (port, _) = free_port_pair();
    let url = format!("http://127.0.0.1:{port}");
    let data_dir = dir.path().join("etcdish").display().to_string();
    let args: Vec<String> = [
        "serve", "-name", "etcdish", "-data-dir", &data_dir, "-listen-client-urls", &url, "-advertise-client-urls", &url,
        "--logger=zap", "--log-outputs", "stderr", "--quota-backend-bytes", "8589934592", "--auto-compaction-retention=1",
        "--enable-pprof", "--host-whitelist", "localhost,127.0.0.1", "--cors", "http://app.example", "--log-level", "info",
    ]
    .map(String::from)
    .to_vec();
    let mut node = Proc::spawn(dir.path(), "etcdish", &args, &[]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_until(Duration::from_secs(30), "the node answers", || {
        http::send(addr, &Request::new("GET", "/health")).ok().filter(|r| r.status() == 200).map(|_| ())
    });
    let stderr = node.stderr();
    assert!(
        stderr.contains("ignored: --logger=zap --log-outputs stderr --quota-backend-bytes 8589934592 --auto-compaction-retention=1 --enable-pprof"),
        "{stderr}"
    );
    let put = |host: &str, origin: Option<&str>| {
        let mut request = Request::new("PUT", "/v2/keys/k").header("Host", host).form("value=1");
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        http::send(addr, &request).expect("PUT")
    };
    let rebound = put("evil.example:2379", None);
    assert_eq!(rebound.status(), 421, "{}", rebound.text());
    assert!(rebound.text().contains("--host-whitelist"), "{}", rebound.text());
    assert!(rebound.text().contains("DNS rebinding"), "{}", rebound.text());
    // On /v1, in its JSON error shape.
    let v1 = http::send(addr, &Request::new("GET", "/v1/queues").header("Host", "evil.example")).expect("GET");
    assert_eq!(v1.status(), 421, "{}", v1.text());
    assert_eq!(v1.json()["error"]["code"], "misdirected_request", "{}", v1.text());
    assert_eq!(v1.json()["error"]["field"], "Host", "{}", v1.text());
    let listed = put(&format!("localhost:{port}"), Some("http://app.example"));
    assert!(listed.status() == 200 || listed.status() == 201, "{}", listed.text());
    assert_eq!(listed.header("access-control-allow-origin"), Some("http://app.example"));
    let other_origin = put(&format!("127.0.0.1:{port}"), Some("http://other.example"));
    assert_eq!(other_origin.status(), 200, "{}", other_origin.text());
    assert_eq!(other_origin.header("access-control-allow-origin"), None);
    node.terminate();
    assert!(node.wait_exit(Duration::from_secs(10)).success(), "{}", node.stderr());
}

/// Start-up settings etcd refuses, or that would serve the wrong thing, fail at once with a
/// message naming the flag: a data dir that is etcd's or holds other files (it got a new,
/// empty member beside them), timing flags that make elections churn, no advertised
/// client URL for a member listening on all addresses (127.0.0.1:2379 was advertised), and
/// a new cluster listing an unnamed member.
#[test]
fn serve_refuses_a_foreign_data_dir_bad_timing_and_an_unknowable_client_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer) = free_port_pair();
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let etcd_dir = dir.path().join("etcd-data");
    std::fs::create_dir_all(etcd_dir.join("member/wal")).expect("etcd-like dir");
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).expect("dir");
    std::fs::write(other_dir.join("notes.txt"), "mine").expect("file");
    let fresh = dir.path().join("fresh").display().to_string();
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, "not a dir").expect("file");
    let serve = |data_dir: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["serve", "--data-dir", data_dir, "--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url]
            .map(String::from)
            .to_vec();
        if !extra.iter().any(|flag| flag.starts_with("--listen-client-urls")) {
            args.extend(["--listen-client-urls".into(), client_url.clone(), "--advertise-client-urls".into(), client_url.clone()]);
        }
        args.extend(extra.iter().map(|flag| flag.to_string()));
        args
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (serve(&etcd_dir.display().to_string(), &[]), "looks like an etcd member's"),
        (serve(&other_dir.display().to_string(), &[]), "is not empty (notes.txt) and holds no rota member"),
        (serve(&a_file.display().to_string(), &[]), "not a directory (a file is in its place)"),
        (serve(&fresh, &["--election-timeout", "300"]), "--election-timeout[300] should be at least as 5 times as --heartbeat-interval[100]"),
        (serve(&fresh, &["--heartbeat-interval", "0"]), "--heartbeat-interval must be at least 1"),
        (
            serve(&fresh, &["--listen-client-urls", &format!("http://0.0.0.0:{client}")]),
            "--advertise-client-urls is required when --listen-client-urls listens on all addresses",
        ),
        // An unnamed entry is a member added to a running cluster (as `etcdctl member add`
        // prints one not started yet): a new cluster cannot list it.
        (
            serve(&fresh, &["--initial-cluster", &format!("default={peer_url},=http://127.0.0.1:1")]),
            "\"=http://127.0.0.1:1\" has no name",
        ),
    ];
    for (at, (args, expected)) in cases.into_iter().enumerate() {
        let mut node = Proc::spawn(dir.path(), &format!("refused-{at}"), &args, &[]);
        let status = node.wait_exit(Duration::from_secs(20));
        assert!(!status.success(), "{args:?}");
        assert!(node.stderr().contains(expected), "{args:?}: {}", node.stderr());
    }
    assert!(std::fs::read_dir(&etcd_dir).expect("dir").count() == 1, "nothing written beside etcd's member/");
    assert!(!std::path::Path::new(&fresh).join("identity").exists());
}

/// A member joining a cluster waits up to 30 s for a member to answer; a SIGTERM then
/// stops it at once (it went on waiting, then exited 1).
#[test]
fn serve_stops_at_sigterm_while_it_waits_to_join() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ((client, peer), (absent, _)) = (free_port_pair(), free_port_pair());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    // The second: `member add` of a name in use (j) prints an --initial-cluster that lists
    // both members under it; the new one joins by its own peer URL (it was told to advertise
    // the running member's URL as well, and an audit started a process as that member).
    for (at, cluster) in [format!("a=http://127.0.0.1:{absent},j={peer_url}"), format!("a=http://127.0.0.1:{absent},j=http://127.0.0.1:1,j={peer_url}")]
        .into_iter()
        .enumerate()
    {
        let data_dir = dir.path().join(format!("j{at}")).display().to_string();
        let args: Vec<String> = [
            "serve", "--name", "j", "--data-dir", &data_dir, "--listen-client-urls", &client_url, "--advertise-client-urls", &client_url,
            "--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url, "--initial-cluster", &cluster,
            "--initial-cluster-state", "existing",
        ]
        .map(String::from)
        .to_vec();
        let mut node = Proc::spawn(dir.path(), &format!("joining-{at}"), &args, &[]);
        wait_until(Duration::from_secs(20), "the member says it is joining", || node.stderr().contains("joining an existing cluster").then_some(()));
        node.terminate();
        let status = node.wait_exit(Duration::from_secs(5));
        assert!(status.success(), "{cluster}: {status}: {}", node.stderr());
        assert!(node.stderr().contains("SIGTERM while starting"), "{cluster}: {}", node.stderr());
        assert_eq!(at == 1, node.stderr().contains("another member has this name"), "{cluster}: {}", node.stderr());
    }
}

#[test]
fn status_and_member_wait_out_a_client_rate_limit() {
    // One request a second for this client: `rota status` sends three counted requests
    // and `rota member ls` one more right after, so they meet 429s and must wait them out.
    let server = Server::try_start_with(Kind::Rota, None, vec!["--client-rate-limit".into(), "1".into()])
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let status = rota(dir.path(), &["status".into(), "--endpoints".into(), server.client_url()]);
    assert!(status.status.success(), "{status:?}");
    assert!(status.stdout.lines().nth(1).is_some_and(|line| line.starts_with(&server.client_url())), "{status:?}");
    for _ in 0..2 {
        let members = rota(dir.path(), &["member".into(), "ls".into(), "--endpoints".into(), server.client_url()]);
        assert!(members.status.success(), "{members:?}");
        assert!(members.stdout.contains(&server.peer_url()), "{members:?}");
    }
}

#[test]
fn status_and_member_refuse_an_endpoint_that_is_not_an_http_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    for command in [&["status"][..], &["member", "ls"][..]] {
        let mut args: Vec<String> = command.iter().map(|arg| arg.to_string()).collect();
        args.extend(["--endpoints".into(), "foo".into()]);
        let out = rota(dir.path(), &args);
        assert_eq!(out.status.code(), Some(1), "bad arguments: {out:?}");
        assert!(out.stderr.contains(r#"bad endpoint "foo": expected http://host:port"#), "{out:?}");
    }
}

/// SIGHUP (a closed terminal, a service manager's reload) stops `rota serve` as SIGTERM
/// does: it killed the process on the spot, with no hand-over of leadership.
#[test]
fn serve_stops_gracefully_at_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (client, peer) = free_port_pair();
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let data_dir = dir.path().join("hup").display().to_string();
    let args: Vec<String> = [
        "serve", "--data-dir", &data_dir, "--listen-client-urls", &client_url, "--advertise-client-urls", &client_url,
        "--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url,
    ]
    .map(String::from)
    .to_vec();
    let mut node = Proc::spawn(dir.path(), "hup", &args, &[]);
    wait_until(Duration::from_secs(20), "the node serves", || node.stderr().contains("serving clients on").then_some(()));
    node.signal("HUP");
    let status = node.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}: {}", node.stderr());
    assert!(node.stderr().contains("SIGHUP: shutting down"), "{}", node.stderr());
    // The Raft log's own records reach the log too (filtered to warnings): its lock notice
    // at info does not.
    assert!(!node.stderr().contains("Directory lock acquired"), "{}", node.stderr());

    // Under nohup (SIGHUP ignored), SIGHUP stays ignored: an audit's `nohup rota worker`
    // stopped at one.
    let mut node = Proc::spawn_nohup(dir.path(), "nohup", &args, &[]);
    wait_until(Duration::from_secs(20), "the node serves", || node.stderr().contains("serving clients on").then_some(()));
    node.signal("HUP");
    let response = http::send(
        std::net::SocketAddr::from(([127, 0, 0, 1], client)),
        &Request::new("PUT", "/v2/keys/after-hup").form("value=1"),
    )
    .expect("still serving after SIGHUP under nohup");
    assert_eq!(response.status(), 201, "{}", response.text());
    // Had the SIGHUP been taken, it would be the one named: Linux delivers the lower-numbered
    // of two pending signals first, and an ignored one is discarded when sent.
    node.signal("TERM");
    assert!(node.wait_exit(Duration::from_secs(10)).success(), "{}", node.stderr());
    assert!(node.stderr().contains("SIGTERM: shutting down") && !node.stderr().contains("SIGHUP"), "{}", node.stderr());
    // Restarted on a log with entries, the Raft log's per-write info records (its payload
    // cache) stay out of the log too.
    assert!(!node.stderr().contains("payload cache"), "{}", node.stderr());
}

/// A client pointed at a member's peer URL (2380 where 2379 was meant) is told so: it read
/// "405: peer RPCs are POST".
#[test]
fn a_client_at_the_peer_url_is_told_to_use_the_client_url() {
    let server = Server::start(Kind::Rota);
    let dir = tempfile::tempdir().expect("tempdir");
    let peer = server.peer_url();
    let peer_addr: std::net::SocketAddr = peer.trim_start_matches("http://").parse().expect("peer addr");
    for request in [Request::new("GET", "/v2/keys/a"), Request::new("PUT", "/v2/keys/a").form("value=1"), Request::new("GET", "/version")] {
        let response = http::send(peer_addr, &request).expect("the peer port answers");
        assert_eq!(response.status(), 404, "{}", response.text());
        assert!(response.text().contains("clients use its client URL"), "{}", response.text());
    }
    let out = rota(dir.path(), &["kv".into(), "get".into(), "/a".into(), "--endpoints".into(), peer]);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("peer URL") && out.stderr.contains("client URL"), "{out:?}");
}
