//! `rota member ls|add|rm|update`: etcdctl v2's member commands over `/v2/members`, with its output
//! (`<id>: name=.. peerURLs=.. clientURLs=.. isLeader=..`, the `ETCD_*` lines after an
//! add) and exit codes (4 server error, 2 unreachable, 1 bad arguments).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Deserialize;

const EXIT_BAD_ARGS: u8 = 1;
const EXIT_BAD_CONNECTION: u8 = 2;
const EXIT_SERVER_ERROR: u8 = 4;
/// Per request; a membership change commits two entries.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Args)]
pub struct MemberArgs {
    /// Comma-separated client URLs, tried in order.
    #[arg(
        long,
        global = true,
        env = "ROTA_ENDPOINTS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: String,
    #[command(subcommand)]
    pub command: MemberCommand,
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// List the members.
    #[command(alias = "list")]
    Ls,
    /// Add a member; start it afterwards with the printed flags.
    Add {
        /// The new member's --name.
        name: String,
        /// Its peer URLs, comma-separated.
        peer_urls: String,
    },
    /// Remove a member by id.
    #[command(alias = "remove")]
    Rm {
        /// The member's id (as `rota member ls` lists it).
        id: String,
    },
    /// Change a member's peer URLs (where the others reach it).
    Update {
        /// The member's id (as `rota member ls` lists it).
        id: String,
        /// Its peer URLs, comma-separated.
        peer_urls: String,
    },
}

#[derive(Debug, Deserialize)]
struct MemberJson {
    id: String,
    name: String,
    #[serde(rename = "peerURLs")]
    peer_urls: Vec<String>,
    #[serde(rename = "clientURLs")]
    client_urls: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct MembersJson {
    members: Vec<MemberJson>,
}

enum Failure {
    Unreachable(String),
    Server(String),
}

struct Endpoints {
    http: reqwest::Client,
    urls: Vec<String>,
}

impl Endpoints {
    /// Sends the request to each endpoint in turn until one answers.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        json: Option<serde_json::Value>,
    ) -> Result<(u16, String), Failure> {
        let mut errors = Vec::new();
        let mut maybe_made = false;
        for url in &self.urls {
            let request = || {
                let request = self
                    .http
                    .request(method.clone(), format!("{}{path}", url.trim_end_matches('/')))
                    .timeout(REQUEST_TIMEOUT);
                match &json {
                    Some(json) => request.json(json),
                    None => request,
                }
            };
            match crate::send_waiting_out_429(request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body = response.text().await.unwrap_or_default();
                    return Ok((status, body));
                }
                Err(error) => {
                    // A change that reached a member whose answer never came (its leader
                    // killed mid-request, say) may have been made: an audit's `member rm`
                    // said "unreachable" for removals that were carried out.
                    maybe_made |= method != reqwest::Method::GET && !error.is_connect();
                    errors.push(format!("{url} ({})", rota_client::transport_error(&error)))
                }
            }
        }
        let mut reason = errors.join(", ");
        if maybe_made {
            reason.push_str("; a member may have made the change before its answer was lost: check with `rota member ls`");
        }
        Err(Failure::Unreachable(reason))
    }
}

fn server_message(status: u16, body: &str) -> Failure {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|json| json["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    Failure::Server(format!("{status}: {message}"))
}

pub async fn run(args: MemberArgs) -> ExitCode {
    let Some(urls) = crate::endpoint_urls(&args.endpoints) else {
        return ExitCode::from(EXIT_BAD_ARGS);
    };
    let endpoints = Endpoints {
        http: reqwest::Client::new(),
        urls,
    };
    let result = match args.command {
        MemberCommand::Ls => list(&endpoints).await,
        MemberCommand::Add { name, peer_urls } => add(&endpoints, &name, &peer_urls).await,
        MemberCommand::Rm { id } if u64::from_str_radix(&id, 16).is_err() => {
            // etcdctl: "bad member ID arg ..., expecting ID in Hex".
            eprintln!("Error:  {id:?} is not a member id: give the hex id `rota member ls` prints before the colon (a name is not an id)");
            return ExitCode::from(EXIT_BAD_ARGS);
        }
        MemberCommand::Rm { id } => remove(&endpoints, &id).await,
        MemberCommand::Update { id, peer_urls } => update(&endpoints, &id, &peer_urls).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Unreachable(reason)) => {
            eprintln!("Error:  cluster unreachable: {reason}");
            ExitCode::from(EXIT_BAD_CONNECTION)
        }
        Err(Failure::Server(reason)) => {
            eprintln!("Error:  {reason}");
            ExitCode::from(EXIT_SERVER_ERROR)
        }
    }
}

async fn members(endpoints: &Endpoints) -> Result<Vec<MemberJson>, Failure> {
    let (status, body) = endpoints
        .send(reqwest::Method::GET, "/v2/members", None)
        .await?;
    if status != 200 {
        return Err(server_message(status, &body));
    }
    serde_json::from_str::<MembersJson>(&body)
        .map(|list| list.members)
        .map_err(|error| Failure::Server(format!("unexpected /v2/members answer: {error}")))
}

async fn list(endpoints: &Endpoints) -> Result<(), Failure> {
    let members = members(endpoints).await?;
    let leader = match endpoints
        .send(reqwest::Method::GET, "/v2/members/leader", None)
        .await?
    {
        (200, body) => serde_json::from_str::<MemberJson>(&body).ok().map(|m| m.id),
        _ => None,
    };
    for member in members {
        // etcdctl's form for a member added but not started yet (it has no name).
        if member.name.is_empty() {
            println!("{}[unstarted]: peerURLs={}", member.id, member.peer_urls.join(","));
            continue;
        }
        println!(
            "{}: name={} peerURLs={} clientURLs={} isLeader={}",
            member.id,
            member.name,
            member.peer_urls.join(","),
            member.client_urls.join(","),
            leader.as_deref() == Some(member.id.as_str()),
        );
    }
    Ok(())
}

async fn add(endpoints: &Endpoints, name: &str, peer_urls: &str) -> Result<(), Failure> {
    let urls: Vec<&str> = peer_urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    // The name goes only into the flags printed for the new member: one taken already
    // would give it another member's entries in its --initial-cluster, which it refuses.
    if let Some(taken) = members(endpoints).await?.into_iter().find(|member| member.name == name) {
        return Err(Failure::Server(format!(
            "member {} is named {name:?} already: give the new member another name (nothing was added)",
            taken.id
        )));
    }
    let (status, body) = endpoints
        .send(
            reqwest::Method::POST,
            "/v2/members",
            Some(serde_json::json!({ "peerURLs": urls })),
        )
        .await?;
    if status != 201 {
        return Err(server_message(status, &body));
    }
    let added: MemberJson = serde_json::from_str(&body)
        .map_err(|error| Failure::Server(format!("unexpected answer: {error}")))?;
    println!("Added member named {name} with ID {} to cluster", added.id);
    // The new member's --initial-cluster: every member's name=peerURL, itself included, and
    // a member added but not started yet as `=peerURL` (no name yet), as etcdctl lists it.
    let mut initial_cluster = Vec::new();
    for member in members(endpoints).await? {
        let member_name = if member.id == added.id {
            name
        } else {
            member.name.as_str()
        };
        for url in &member.peer_urls {
            initial_cluster.push(format!("{member_name}={url}"));
        }
    }
    println!();
    println!("ETCD_NAME=\"{name}\"");
    println!("ETCD_INITIAL_CLUSTER=\"{}\"", initial_cluster.join(","));
    println!("ETCD_INITIAL_CLUSTER_STATE=\"existing\"");
    // etcd's v2 etcdctl stops there; without this the new member advertises the default
    // http://127.0.0.1:2380, which --initial-cluster contradicts, and refuses to start.
    println!("ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{}\"", urls.join(","));
    Ok(())
}

async fn update(endpoints: &Endpoints, id: &str, peer_urls: &str) -> Result<(), Failure> {
    let urls: Vec<&str> = peer_urls.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
    let (status, body) = endpoints
        .send(
            reqwest::Method::PUT,
            &format!("/v2/members/{id}"),
            Some(serde_json::json!({ "peerURLs": urls })),
        )
        .await?;
    if status != 204 {
        return Err(server_message(status, &body));
    }
    println!("Updated member with ID {id} in cluster");
    Ok(())
}

async fn remove(endpoints: &Endpoints, id: &str) -> Result<(), Failure> {
    let (status, body) = endpoints
        .send(reqwest::Method::DELETE, &format!("/v2/members/{id}"), None)
        .await?;
    // 410: removed already (a retry whose first try went through); etcdctl says the same.
    if status != 204 && status != 410 {
        return Err(server_message(status, &body));
    }
    println!("Removed member {id} from cluster");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// A member that takes each request and closes the connection without answering.
    fn hang_up_after_reading() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer);
            }
        });
        url
    }

    #[tokio::test]
    async fn a_change_whose_answer_was_lost_may_have_been_made() {
        let endpoints = Endpoints { http: reqwest::Client::new(), urls: vec![hang_up_after_reading()] };
        let reason = |failure| match failure {
            Err(Failure::Unreachable(reason)) => reason,
            _ => panic!("not an unreachable cluster"),
        };
        let removal = reason(endpoints.send(reqwest::Method::DELETE, "/v2/members/1", None).await);
        assert!(removal.ends_with("check with `rota member ls`"), "{removal}");
        let list = reason(endpoints.send(reqwest::Method::GET, "/v2/members", None).await);
        assert!(!list.contains("may have made"), "{list}");
        // Nothing listening: the request never reached a member.
        let refused = Endpoints { http: reqwest::Client::new(), urls: vec!["http://127.0.0.1:1".to_string()] };
        let removal = reason(refused.send(reqwest::Method::DELETE, "/v2/members/1", None).await);
        assert!(!removal.contains("may have made"), "{removal}");
    }
}
