//! The openraft type configuration of rota and the identity of a member.
//!
//! Everything openraft-typed that several modules share lives here. None of it is public
//! outside this crate: the server sees node ids as `u64` and members as [`Member`].

use std::fmt;
use std::io::Cursor;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use rota_core::{Batch, Response};

/// A member of the cluster as etcd describes one (`/v2/members`): its name and URLs.
///
/// This is openraft's `Node` type, so the membership stored in the log and in snapshots
/// carries it; the peer transport (cluster issue) dials `peer_urls`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name, self.peer_urls.join(","))
    }
}

/// What applying one entry returns to the proposer: one response per command of the batch
/// (empty for blank and membership entries).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EntryResponses {
    pub responses: Vec<Response>,
}

/// A [`Batch`] as entries carry it: shared, so the copies openraft makes of an entry (one
/// to apply, one per follower it is sent to) and the log store's cache of recent entries
/// share one decoded batch. Encoded exactly as a [`Batch`] (log, snapshots, peers).
#[derive(Clone, Debug, PartialEq)]
pub struct SharedBatch(pub Arc<Batch>);

impl From<Batch> for SharedBatch {
    fn from(batch: Batch) -> SharedBatch {
        SharedBatch(Arc::new(batch))
    }
}

impl std::ops::Deref for SharedBatch {
    type Target = Batch;

    fn deref(&self) -> &Batch {
        &self.0
    }
}

impl Serialize for SharedBatch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedBatch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Batch::deserialize(deserializer).map(SharedBatch::from)
    }
}

openraft::declare_raft_types!(
    /// rota's openraft types: entries carry a [`Batch`] (shared), node ids are `u64` derived from the
    /// member name, snapshots travel as the bytes of a snapshot file.
    pub TypeConfig:
        D = SharedBatch,
        R = EntryResponses,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type Raft = openraft::Raft<TypeConfig>;

/// A storage error whose text says what failed in words ("writing the snapshot of log
/// index 49: ..."): openraft's own `Display` shows the subject as a debug dump, and the
/// reason a member stops is read by operators ([`fatal_reason`]).
pub(crate) fn storage_failure(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    reason: impl fmt::Display,
) -> StorageError {
    use openraft::{ErrorSubject, ErrorVerb};
    let doing = match verb {
        ErrorVerb::Read => "reading",
        ErrorVerb::Write => "writing",
        ErrorVerb::Seek => "seeking in",
        ErrorVerb::Delete => "deleting",
    };
    let what = match &subject {
        ErrorSubject::Store => "the data dir".to_string(),
        ErrorSubject::Vote => "the Raft vote".to_string(),
        ErrorSubject::Logs => "the Raft log".to_string(),
        ErrorSubject::Log(id) => format!("Raft log entry {}", id.index),
        ErrorSubject::LogIndex(index) => format!("Raft log entry {index}"),
        ErrorSubject::Apply(id) => format!("the state machine (applying entry {})", id.index),
        ErrorSubject::StateMachine => "the state machine".to_string(),
        ErrorSubject::Snapshot(Some(signature)) => match signature.last_log_id {
            Some(id) => format!("the snapshot of log index {}", id.index),
            None => "the empty snapshot".to_string(),
        },
        ErrorSubject::Snapshot(None) => "a snapshot".to_string(),
        ErrorSubject::None => "storage".to_string(),
    };
    let text = format!("{doing} {what}: {reason}");
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::error(text)).into()
}

/// Why openraft stopped, in words: for a storage error the text [`storage_failure`] gave
/// it (openraft's `Display` puts a debug dump of the subject before it).
pub(crate) fn fatal_reason(fatal: &openraft::error::Fatal<NodeId>) -> String {
    match fatal {
        openraft::error::Fatal::StorageError(error) => {
            let mut innermost: &dyn std::error::Error = error;
            while let Some(source) = innermost.source() {
                innermost = source;
            }
            innermost.to_string()
        }
        other => other.to_string(),
    }
}

/// The node id of the member called `name`: 64-bit FNV-1a of the name, never zero.
///
/// Stable across versions and machines, so every member of a cluster derives the same id for
/// the same `--name` (as the cluster issue's bootstrap from `--initial-cluster` needs).
pub fn node_id_from_name(name: &str) -> NodeId {
    const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = name.bytes().fold(FNV_OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    });
    // Zero is reserved (openraft's test suite and "no node" in some APIs use it).
    if hash == 0 {
        1
    } else {
        hash
    }
}

/// A stable cluster id from `--initial-cluster` and `--initial-cluster-token`: 64-bit FNV-1a
/// over the `name=url` entries sorted (so every member computes the same id whatever order
/// its flag lists them in), a zero byte and the token. The top bit is set so the id always
/// prints as 16 hex digits.
pub fn cluster_id(initial_cluster: &str, token: &str) -> u64 {
    let mut entries: Vec<&str> = initial_cluster
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect();
    entries.sort_unstable();
    let mut hash = Fnv1a::default();
    hash.feed(entries.join(",").as_bytes());
    hash.feed(&[0]);
    hash.feed(token.as_bytes());
    hash.0 | (1 << 63)
}

/// The id the leader assigns to a member added at runtime (`POST /v2/members`): FNV-1a of
/// the cluster id, `salt` (the leader's last log index) and the sorted peer URLs. etcd
/// derives it from the same inputs plus the time: a member added again with the same URLs
/// after its removal gets a new id, so its old data dir is refused. A clash is refused as
/// a conflict.
pub(crate) fn member_id_from_peer_urls(cluster_id: u64, salt: u64, peer_urls: &[String]) -> NodeId {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut hash = Fnv1a::default();
    hash.feed(&cluster_id.to_be_bytes());
    hash.feed(&salt.to_be_bytes());
    hash.feed(urls.join(",").as_bytes());
    if hash.0 == 0 {
        1
    } else {
        hash.0
    }
}

/// `--initial-cluster`: `name=url[,name=url...]`; a name repeated gives that member several
/// peer URLs (etcd's syntax). Members keep the flag's order. An entry without a name
/// (`=url`) is a member added but not started yet, as `etcdctl member add` lists it (etcd
/// accepts it): it is kept on its own, unnamed; only a member that joins may be given one
/// (see [`unnamed_members_refused`]).
pub fn parse_initial_cluster(flag: &str) -> Result<Vec<Member>, String> {
    let mut members: Vec<Member> = Vec::new();
    for entry in flag.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, url)) = entry.split_once('=') else {
            return Err(format!("--initial-cluster entry {entry:?} is not name=url"));
        };
        let (name, url) = (name.trim(), url.trim());
        if url.is_empty() {
            return Err(format!("--initial-cluster entry {entry:?} is not name=url"));
        }
        if !url.starts_with("http://") {
            return Err(format!(
                "--initial-cluster URL {url:?}: only http:// is supported"
            ));
        }
        if let Err(error) = reqwest::Url::parse(url) {
            return Err(format!("--initial-cluster URL {url:?} is not valid: {error}"));
        }
        // etcd: "has duplicate url"; two members at one URL could never both be reached.
        let normalized = url.trim_end_matches('/');
        if members
            .iter()
            .flat_map(|member| &member.peer_urls)
            .any(|other| other.trim_end_matches('/') == normalized)
        {
            return Err(format!("--initial-cluster has the URL {url:?} twice"));
        }
        match members.iter_mut().find(|member| !name.is_empty() && member.name == name) {
            Some(member) => member.peer_urls.push(url.to_string()),
            None => members.push(Member {
                name: name.to_string(),
                peer_urls: vec![url.to_string()],
                client_urls: Vec::new(),
            }),
        }
    }
    if members.is_empty() {
        return Err("--initial-cluster is empty".to_string());
    }
    let named = members.iter().filter(|m| !m.name.is_empty());
    let mut ids: Vec<NodeId> = named.clone().map(|m| node_id_from_name(&m.name)).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != named.count() {
        return Err("--initial-cluster: two names hash to the same node id".to_string());
    }
    Ok(members)
}

/// Why a member that starts a new cluster cannot take `members` (parsed from
/// `--initial-cluster`), if it cannot: every member of a new cluster is named; an unnamed
/// entry is a member added to a running one, which only a joining member may list.
pub fn unnamed_members_refused(members: &[Member]) -> Option<String> {
    let unnamed = members.iter().find(|member| member.name.is_empty())?;
    Some(format!(
        "--initial-cluster entry \"={}\" has no name: that is how `etcdctl member add` lists a member \
         added but not started yet, which only a member joining a running cluster \
         (--initial-cluster-state existing) may list; a new cluster's members all have names",
        unnamed.peer_urls.join(",")
    ))
}

struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_id_is_fnv1a_of_the_name() {
        // Reference values of 64-bit FNV-1a (from the algorithm's published test vectors).
        assert_eq!(node_id_from_name(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(node_id_from_name("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(node_id_from_name("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn cluster_id_ignores_member_order_and_depends_on_the_token() {
        let a = cluster_id("a=http://1,b=http://2", "t");
        assert_eq!(a, cluster_id("b=http://2, a=http://1", "t"));
        assert_ne!(a, cluster_id("a=http://1,b=http://2", "u"));
        assert_eq!(format!("{a:x}").len(), 16);
    }

    #[test]
    fn initial_cluster_groups_repeated_names_into_one_member() {
        let members =
            parse_initial_cluster("a=http://h:1, b=http://h:2,a=http://h:3").expect("parses");
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].peer_urls, ["http://h:1", "http://h:3"]);
        assert!(parse_initial_cluster("a").is_err());
        let twice = parse_initial_cluster("a=http://h:1,b=http://h:1/,c=http://h:3").expect_err("same URL twice");
        assert!(twice.contains("\"http://h:1/\" twice"), "{twice}");
        assert!(parse_initial_cluster("a=http://h:1,a=http://h:1").is_err());
        assert!(parse_initial_cluster("a=https://h:1").is_err());
        let bad = parse_initial_cluster("a=http://[::1").expect_err("a broken IPv6 address");
        assert!(bad.contains("is not valid"), "{bad}");
        assert!(parse_initial_cluster("").is_err());
    }

    #[test]
    fn unnamed_entries_are_members_not_started_yet_each_on_its_own() {
        // As `etcdctl member add` prints ETCD_INITIAL_CLUSTER while two members it added
        // have not started: each unnamed entry is one member.
        let flag = "a=http://h:1,=http://h:2,n6=http://h:6,=http://h:3";
        let members = parse_initial_cluster(flag).expect("parses");
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "", "n6", ""]);
        assert_eq!(members[3].peer_urls, ["http://h:3"]);
        let refused = unnamed_members_refused(&members).expect("refused for a new cluster");
        assert!(refused.contains("\"=http://h:2\" has no name") && refused.contains("existing"), "{refused}");
        assert_eq!(unnamed_members_refused(&members[2..3]), None);
        assert!(parse_initial_cluster("a=").is_err());
        assert!(parse_initial_cluster("=http://h:1,b=http://h:1").is_err(), "a URL twice");
    }

    #[test]
    fn a_member_added_again_with_the_same_urls_gets_another_id() {
        let urls = vec!["http://10.0.1.13:2380".to_string(), "http://n4:2380".to_string()];
        let reversed: Vec<String> = urls.iter().rev().cloned().collect();
        assert_eq!(member_id_from_peer_urls(7, 40, &urls), member_id_from_peer_urls(7, 40, &reversed));
        assert_ne!(member_id_from_peer_urls(7, 40, &urls), member_id_from_peer_urls(7, 97, &urls));
        assert_ne!(member_id_from_peer_urls(7, 40, &urls), member_id_from_peer_urls(8, 40, &urls));
    }

    #[test]
    fn node_ids_of_different_names_differ() {
        assert_ne!(node_id_from_name("infra0"), node_id_from_name("infra1"));
        assert_ne!(node_id_from_name("default"), 0);
    }
}
