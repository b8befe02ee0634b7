//! The openraft type configuration of rota and the identity of a member.
//!
//! Everything openraft-typed that several modules share lives here. None of it is public
//! outside this crate: the server sees node ids as `u64` and members as [`Member`].

use std::fmt;
use std::io::Cursor;

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

openraft::declare_raft_types!(
    /// rota's openraft types: entries carry a [`Batch`], node ids are `u64` derived from the
    /// member name, snapshots travel as the bytes of a snapshot file.
    pub TypeConfig:
        D = Batch,
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
    fn node_ids_of_different_names_differ() {
        assert_ne!(node_id_from_name("infra0"), node_id_from_name("infra1"));
        assert_ne!(node_id_from_name("default"), 0);
    }
}
