//! The peer protocol: Raft and cluster RPCs between members, over HTTP on the peer URLs.
//!
//! Every RPC is `POST <peer-url>/rota/peer/v1/<name>` with a bincode body; the answer is a
//! bincode body (200) or a short text error (403 token mismatch, 400 undecodable body, 503
//! shutting down, 410 the sender was removed from the cluster). Two headers carry who is asking: the cluster token
//! (`--initial-cluster-token`, a node refuses peers of another cluster) and the sender's
//! node id. This module owns the wire shapes shared by both sides; the client lives in
//! `network` (openraft's RPCs) and `forward` (proposals, reads, membership), the server side
//! is [`crate::Node::handle_peer`], which the server crate mounts on the peer listener
//! without knowing any of these types.
//!
//! Compatibility: the version is in the path (`v1`). Bodies are bincode 1 of the types below
//! and of openraft's serde types, so every member of a cluster must run a build with the
//! same openraft version (pinned `=0.9.25`).

use serde::{Deserialize, Serialize};

use crate::types::{Member, NodeId};
use crate::{ProposeError, Proposed, MEMBER_REMOVED};

/// Path prefix of every peer RPC.
pub const PEER_PATH_PREFIX: &str = "/rota/peer/v1/";
/// Header with the sender's cluster token.
pub const PEER_TOKEN_HEADER: &str = "x-rota-cluster-token";
/// Header with the sender's node id (16 hex digits; 0 for a process that is not a member
/// yet, e.g. a joining node asking for the membership).
pub const PEER_FROM_HEADER: &str = "x-rota-from";
/// The member id a peer RPC is meant for (hex). Absent for calls to whoever answers at a
/// URL (asking for the membership before joining). A process of another id at that URL (a
/// different rota, or a removed member on its old data dir) refuses the call, so a leader
/// never replicates to, nor promotes, the wrong process.
pub const PEER_TO_HEADER: &str = "x-rota-to";
/// The sender's cluster id (16 hex digits), as etcd's peers send `X-Etcd-Cluster-ID`: a
/// member refuses Raft traffic of another cluster id. Absent from a process that is not a
/// member yet (its membership questions).
pub const PEER_CLUSTER_ID_HEADER: &str = "x-rota-cluster-id";
/// The largest peer request body accepted: a snapshot chunk or an append of at most
/// `max_payload_entries` entries of at most `batch_bytes_max` each stays well below it.
pub const PEER_BODY_BYTES_MAX: usize = 128 << 20;

/// The HTTP status of [`PeerError::WrongMember`]: 421 Misdirected Request.
pub const PEER_WRONG_MEMBER_STATUS: u16 = 421;

/// The HTTP status of [`PeerError::SenderRemoved`] (etcd's peers answer a removed member's
/// messages with 410 Gone).
pub const PEER_REMOVED_STATUS: u16 = 410;

/// The RPCs of the peer protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerRpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    /// A follower forwards commands (a batch of concurrent ones) to the leader's proposer.
    Propose,
    /// A follower asks the leader for a read index (ReadIndex).
    ReadIndex,
    /// Membership, leader and cluster id: for joining members and for forwarding.
    ClusterInfo,
    /// A membership change forwarded to the leader.
    ChangeMembers,
    /// The leader asks this follower to start an election now (leadership hand-over).
    TimeoutNow,
}

impl PeerRpc {
    pub const ALL: [PeerRpc; 8] = [
        PeerRpc::AppendEntries,
        PeerRpc::Vote,
        PeerRpc::InstallSnapshot,
        PeerRpc::Propose,
        PeerRpc::ReadIndex,
        PeerRpc::ClusterInfo,
        PeerRpc::ChangeMembers,
        PeerRpc::TimeoutNow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PeerRpc::AppendEntries => "append-entries",
            PeerRpc::Vote => "vote",
            PeerRpc::InstallSnapshot => "install-snapshot",
            PeerRpc::Propose => "propose",
            PeerRpc::ReadIndex => "read-index",
            PeerRpc::ClusterInfo => "cluster-info",
            PeerRpc::ChangeMembers => "change-members",
            PeerRpc::TimeoutNow => "timeout-now",
        }
    }

    pub fn from_name(name: &str) -> Option<PeerRpc> {
        PeerRpc::ALL.into_iter().find(|rpc| rpc.name() == name)
    }
}

/// Why a peer request was refused (the server crate maps it to an HTTP status).
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cluster token mismatch: this member belongs to cluster token {ours:?}, the request came from node {from:x} with token {theirs:?} (the members of a new cluster must start with one --initial-cluster-token; a member keeps the token of its first start, so one started with another must start again from an empty data dir)")]
    TokenMismatch {
        ours: String,
        theirs: String,
        from: u64,
    },
    /// The sender belongs to another cluster id under the same token: typically a member
    /// that lost its data dir and bootstrapped a cluster of its own with changed flags. Its
    /// votes and entries must not reach this cluster.
    #[error("cluster id mismatch: this member belongs to cluster {ours:016x}, the request came from node {from:x} of cluster {theirs:016x} (members started with different --initial-cluster lists or tokens; a member added with `member add` but started with --initial-cluster-state new instead of existing; or a member that lost its data dir, or was removed, and started a new cluster)")]
    ClusterIdMismatch { ours: u64, theirs: u64, from: u64 },
    #[error("undecodable {rpc} request: {reason}")]
    BadRequest { rpc: &'static str, reason: String },
    #[error("node is shutting down")]
    ShuttingDown,
    /// A Raft RPC from a member this node knows was removed (see
    /// `membership::sender_was_removed`): 410 Gone, as etcd's peers answer. The sender then
    /// knows it was removed and stops.
    #[error("member {from:x}: {MEMBER_REMOVED}")]
    SenderRemoved { from: u64 },
    #[error("this is member {ours:x}, not member {meant:x}: the peer URL reaches another process than the member it was given for")]
    WrongMember { ours: u64, meant: u64 },
}

impl PeerError {
    pub fn http_status(&self) -> u16 {
        match self {
            PeerError::TokenMismatch { .. } => 403,
            // etcd's answer to a peer of another cluster id.
            PeerError::ClusterIdMismatch { .. } => 412,
            PeerError::BadRequest { .. } => 400,
            PeerError::ShuttingDown => 503,
            PeerError::SenderRemoved { .. } => PEER_REMOVED_STATUS,
            PeerError::WrongMember { .. } => PEER_WRONG_MEMBER_STATUS,
        }
    }
}

/// The leader's answer to one forwarded proposal (a `Propose` RPC answers a `Vec` of these,
/// one per command, in order).
// A wire type built and consumed at once; boxing the large variant would only add a copy.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ForwardedProposal {
    /// Proposed through the leader's proposer; this is its outcome.
    Done(Result<Proposed, ProposeError>),
    /// The receiver is not the leader and proposed nothing: safe to retry elsewhere.
    NotLeader { leader: Option<NodeId> },
}

/// The leader's answer to a read-index request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ReadIndexReply {
    /// Leadership confirmed by a quorum; reads are linearizable once applied up to here.
    Index(u64),
    NotLeader {
        leader: Option<NodeId>,
    },
    Failed(String),
}

/// What a member tells others (and joining processes) about the cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub cluster_id: u64,
    pub leader: Option<NodeId>,
    pub members: Vec<(NodeId, Member)>,
    pub voters: Vec<NodeId>,
    /// The cluster token, for a member joining with `--initial-cluster-state existing`: it
    /// takes the cluster's token as it takes its id, so it needs no `--initial-cluster-token`
    /// (etcd's joining members need none). Being added first (`member add`) is what lets a
    /// process join; the token only keeps apart clusters that were set up by mistake to
    /// talk to each other.
    pub token: String,
}

/// A membership change as the leader carries it out.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum MemberChange {
    /// Add a learner with these peer URLs (its id is derived from them).
    Add {
        peer_urls: Vec<String>,
    },
    Remove {
        id: NodeId,
    },
    UpdatePeerUrls {
        id: NodeId,
        peer_urls: Vec<String>,
    },
    /// A member publishes its name and client URLs (etcd's attribute publish).
    Publish {
        id: NodeId,
        name: String,
        client_urls: Vec<String>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum MemberChangeReply {
    Done(Result<(NodeId, Member), crate::MemberError>),
    NotLeader { leader: Option<NodeId> },
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // bincode 1 into a Vec fails only for types serde cannot size (not ours).
    bincode::serialize(value).unwrap_or_default()
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    rpc: PeerRpc,
    body: &[u8],
) -> Result<T, PeerError> {
    bincode::deserialize(body).map_err(|error| PeerError::BadRequest {
        rpc: rpc.name(),
        reason: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_name_round_trips() {
        for rpc in PeerRpc::ALL {
            assert_eq!(PeerRpc::from_name(rpc.name()), Some(rpc));
        }
        assert_eq!(PeerRpc::from_name("nope"), None);
    }
}
