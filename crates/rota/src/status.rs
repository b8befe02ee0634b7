//! `rota status`: one line per endpoint, as `etcdctl endpoint status` gives: the member's id
//! and name, whether it leads, its Raft term, commit and applied index, the space free on
//! its data dir's file system and whether it takes writes (see docs/limits.md, "Disk
//! space"), and its version.
//!
//! Every endpoint is asked on its own (no failover: the point is to see each member). An
//! endpoint that does not answer gets the error on its line, and the exit code is then 2
//! (etcdctl's for a bad connection); 1 for bad arguments.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use rota_client::{error_chain, transport_error};
use serde::Deserialize;

const EXIT_BAD_ARGS: u8 = 1;
const EXIT_BAD_CONNECTION: u8 = 2;
/// Per request: these are local reads on the member.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Comma-separated client URLs; each is asked on its own.
    #[arg(long, env = "ROTA_ENDPOINTS", default_value = "http://127.0.0.1:2379")]
    pub endpoints: String,
}

#[derive(Debug, Deserialize)]
struct StatsSelf {
    id: String,
    name: String,
    state: String,
    #[serde(rename = "leaderInfo", default)]
    leader_info: LeaderInfo,
}

#[derive(Debug, Default, Deserialize)]
struct LeaderInfo {
    #[serde(default)]
    leader: String,
}

#[derive(Debug, Deserialize)]
struct Version {
    etcdserver: String,
}

/// What one member says of itself.
#[derive(Debug, Default)]
struct Status {
    id: String,
    name: String,
    leader: bool,
    /// The member knows who leads (it may be itself).
    knows_leader: bool,
    /// False while it is a learner: added, catching up, not yet voting.
    votes: bool,
    term: u64,
    commit_index: u64,
    applied_index: u64,
    free_mib: u64,
    /// False while the member refuses writes for lack of disk space.
    takes_writes: bool,
    version: String,
    /// `X-Etcd-Cluster-Id` of its answers.
    cluster_id: String,
}

pub async fn run(args: StatusArgs) -> ExitCode {
    let Some(urls) = crate::endpoint_urls(&args.endpoints) else {
        return ExitCode::from(EXIT_BAD_ARGS);
    };
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new());
    let width = urls.iter().map(|url| url.len()).max().unwrap_or(0).max(8);
    println!(
        "{:<width$}  {:<16}  {:<12}  {:<9}  {:>5}  {:>10}  {:>10}  {:>9}  {:<7}  VERSION",
        "ENDPOINT", "ID", "NAME", "ROLE", "TERM", "COMMIT", "APPLIED", "FREE_MIB", "WRITES"
    );
    let mut unreachable = false;
    let mut leaderless = Vec::new();
    let mut learners = Vec::new();
    // Endpoints that say they lead, with their cluster id and term.
    let mut leaders: Vec<(String, String, u64)> = Vec::new();
    // Cluster id → the endpoints that answered with it, in the order given.
    let mut clusters: Vec<(String, Vec<String>)> = Vec::new();
    for url in &urls {
        match status(&http, url.trim_end_matches('/')).await {
            Ok(s) => {
                if !s.knows_leader {
                    leaderless.push(url.clone());
                }
                if s.leader {
                    leaders.push((url.clone(), s.cluster_id.clone(), s.term));
                }
                if !s.votes {
                    learners.push(url.clone());
                }
                match clusters.iter_mut().find(|(id, _)| *id == s.cluster_id) {
                    Some((_, members)) => members.push(url.clone()),
                    None => clusters.push((s.cluster_id.clone(), vec![url.clone()])),
                }
                print_status(url, width, &s);
            }
            Err(error) => {
                unreachable = true;
                println!("{url:<width$}  error: {error}");
            }
        }
    }
    for url in leaderless {
        eprintln!(
            "warning: {url} knows no leader: writes and quorum reads there wait, then answer 503, until one is elected \
             (none is while a majority of the members is down: bring them back; if they are lost for good, see the \
             README's \"Back up and restore\" on --force-new-cluster)"
        );
    }
    for url in learners {
        eprintln!(
            "note: {url} is a learner: it is copying the leader's log and becomes a voter once it has nearly all of it \
             (its progress: COMMIT/APPLIED against the leader's)"
        );
    }
    if clusters.len() > 1 {
        let listed: Vec<String> = clusters.iter().map(|(id, members)| format!("cluster {id}: {}", members.join(", "))).collect();
        eprintln!(
            "warning: these endpoints belong to {} different clusters ({}); members of one cluster start with the same \
             --initial-cluster and --initial-cluster-token, and a member added later joins with --initial-cluster-state existing",
            clusters.len(),
            listed.join("; ")
        );
    }
    for warning in split_clusters(&leaders) {
        eprintln!("{warning}");
    }
    if unreachable {
        ExitCode::from(EXIT_BAD_CONNECTION)
    } else {
        ExitCode::SUCCESS
    }
}

/// A warning for each cluster id that more than one endpoint leads: one cluster has one
/// leader, so those are separate clusters with one id. `leaders`: (endpoint, cluster id,
/// term) of each endpoint that says it leads.
fn split_clusters(leaders: &[(String, String, u64)]) -> Vec<String> {
    // Each cluster id once, in the order first seen.
    let mut ids: Vec<&String> = Vec::new();
    for (_, id, _) in leaders {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids.into_iter()
        .filter_map(|id| {
            let leading: Vec<String> = leaders
                .iter()
                .filter(|(_, cluster, _)| cluster == id)
                .map(|(url, _, term)| format!("{url} (term {term})"))
                .collect();
            (leading.len() > 1).then(|| {
                format!(
                    "warning: {} all lead cluster {id}: one cluster has one leader, so these are separate clusters \
                     with the same id (each survivor of a lost majority started with --force-new-cluster?); keep \
                     one, stop the others for good and add members to the one kept (README, \"Back up and restore\")",
                    leading.join(", ")
                )
            })
        })
        .collect()
}

fn print_status(url: &str, width: usize, s: &Status) {
    println!(
        "{url:<width$}  {:<16}  {:<12}  {:<9}  {:>5}  {:>10}  {:>10}  {:>9}  {:<7}  {}",
        s.id,
        s.name,
        role(s),
        s.term,
        s.commit_index,
        s.applied_index,
        s.free_mib,
        writes(s),
        s.version
    );
}

/// `ok`; `refused` on a leader short of space (it refuses writes, 507); `short` on another
/// member short of space: the leader decides on writes (a follower forwards them), and the
/// member keeps storing what the leader replicates until its disk is full.
fn writes(s: &Status) -> &'static str {
    match (s.takes_writes, s.leader) {
        (true, _) => "ok",
        (false, true) => "refused",
        (false, false) => "short",
    }
}

/// What the member is in the cluster: `leader`; `follower`; `learner` (added with `member
/// add`, copying the log, not voting yet); `no-leader` (a voter that knows no leader: no
/// quorum, or an election under way).
fn role(s: &Status) -> &'static str {
    if s.leader {
        "leader"
    } else if !s.votes {
        "learner"
    } else if !s.knows_leader {
        "no-leader"
    } else {
        "follower"
    }
}

async fn status(http: &reqwest::Client, url: &str) -> Result<Status, String> {
    let stats: StatsSelf = get_json(http, &format!("{url}/v2/stats/self")).await?;
    // As etcd, the members list says which cluster it is of (the stats do not).
    let (members, cluster_id) = get_text_and_cluster_id(http, &format!("{url}/v2/members")).await?;
    let listed = serde_json::from_str::<serde_json::Value>(&members).ok().is_some_and(|members| {
        members["members"].as_array().is_some_and(|list| list.iter().any(|member| member["id"] == stats.id.as_str()))
    });
    let version: Version = get_json(http, &format!("{url}/version")).await?;
    let metrics = get_text(http, &format!("{url}/metrics")).await?;
    if metric(&metrics, "rota_raft_term").is_none() {
        // etcd answers the first two as rota does; its metrics have other names.
        return Err(format!(
            "not a rota server ({url}/metrics has no rota_raft_term); for etcd, use `etcdctl endpoint status`"
        ));
    }
    let gauge =
        |name: &str| metric(&metrics, name).ok_or_else(|| format!("{url}/metrics has no {name}"));
    Ok(Status {
        id: stats.id,
        name: stats.name,
        leader: stats.state == "StateLeader",
        knows_leader: !stats.leader_info.leader.is_empty(),
        // Older builds have no such metric: their members count as voters. A member no
        // longer in its own list was removed, not made a learner.
        votes: !listed || metric(&metrics, "rota_raft_is_voter").is_none_or(|votes| votes == 1),
        term: gauge("rota_raft_term")?,
        commit_index: gauge("rota_raft_commit_index")?,
        applied_index: gauge("rota_raft_applied_index")?,
        free_mib: gauge("rota_raft_data_dir_available_bytes")? >> 20,
        takes_writes: gauge("rota_raft_data_dir_short_of_space")? == 0,
        version: match build_version(&metrics) {
            Some(rota) => format!("rota {rota} (etcd {})", version.etcdserver),
            None => version.etcdserver,
        },
        cluster_id,
    })
}

async fn get_text(http: &reqwest::Client, url: &str) -> Result<String, String> {
    get_text_and_cluster_id(http, url).await.map(|(body, _)| body)
}

/// The body of a successful GET, and its `X-Etcd-Cluster-Id` ("?" without one).
async fn get_text_and_cluster_id(http: &reqwest::Client, url: &str) -> Result<(String, String), String> {
    let response = crate::send_waiting_out_429(|| http.get(url)).await.map_err(|e| format!("GET {url}: {}", transport_error(&e)))?;
    let cluster_id = response
        .headers()
        .get("x-etcd-cluster-id")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    let status = response.status();
    let body = response.text().await.map_err(|e| error_chain(&e))?;
    if !status.is_success() {
        return Err(format!("GET {url}: {status}: {}", body.trim()));
    }
    Ok((body, cluster_id))
}

async fn get_json<T: for<'de> Deserialize<'de>>(
    http: &reqwest::Client,
    url: &str,
) -> Result<T, String> {
    let body = get_text(http, url).await?;
    serde_json::from_str(&body).map_err(|e| format!("GET {url}: unexpected answer: {e}"))
}

/// The value of an unlabelled metric in Prometheus text (`name value` on its own line).
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next() == Some(name))
            .then(|| fields.next()?.parse::<f64>().ok())
            .flatten()
            .map(|value| value as u64)
    })
}

/// rota's version from `rota_build_info{version="..."} 1`.
fn build_version(text: &str) -> Option<&str> {
    text.lines().find_map(|line| {
        line.strip_prefix("rota_build_info{version=\"")?
            .split('"')
            .next()
    })
}

#[cfg(test)]
mod tests {
    use super::{build_version, metric, split_clusters, writes, Status};

    #[test]
    fn a_follower_short_of_space_is_short_not_refusing() {
        let status = |leader, takes_writes| Status { leader, takes_writes, ..Status::default() };
        assert_eq!(writes(&status(true, true)), "ok");
        assert_eq!(writes(&status(false, true)), "ok");
        assert_eq!(writes(&status(true, false)), "refused");
        assert_eq!(writes(&status(false, false)), "short", "a follower forwards writes to its leader");
    }

    #[test]
    fn two_leaders_of_one_cluster_id_are_told_as_separate_clusters() {
        let leader = |url: &str, id: &str, term: u64| (url.to_owned(), id.to_owned(), term);
        assert!(split_clusters(&[leader("http://a", "1", 3), leader("http://b", "2", 5)]).is_empty());
        let warnings = split_clusters(&[leader("http://a", "1", 14), leader("http://b", "1", 19)]);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("warning: http://a (term 14), http://b (term 19) all lead cluster 1"), "{warnings:?}");
        // Endpoints of two clusters interleaved: each cluster told once.
        let interleaved = [leader("http://a", "1", 3), leader("http://c", "2", 4), leader("http://b", "1", 5)];
        assert_eq!(split_clusters(&interleaved).len(), 1);
    }

    #[test]
    fn reads_an_unlabelled_metric_and_not_a_longer_name() {
        let text = "# HELP rota_raft_term Term.\n# TYPE rota_raft_term gauge\nrota_raft_term_total 9\nrota_raft_term 7\nrota_raft_commit_index 1.2e3\n";
        assert_eq!(metric(text, "rota_raft_term"), Some(7));
        assert_eq!(metric(text, "rota_raft_commit_index"), Some(1200));
        assert_eq!(metric(text, "rota_raft_applied_index"), None);
    }

    #[test]
    fn reads_the_version_label_of_build_info() {
        let text = "# TYPE rota_build_info gauge\nrota_build_info{version=\"0.1.0\"} 1\n";
        assert_eq!(build_version(text), Some("0.1.0"));
        assert_eq!(build_version("rota_raft_term 1\n"), None);
    }
}
