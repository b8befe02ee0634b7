//! The peer transport as openraft sees it: a factory of per-peer clients.
//!
//! For now rota runs single-node clusters only, so every peer is [`Unreachable`]: openraft
//! backs off and retries, and a one-member cluster never calls this at all. The cluster issue
//! replaces [`PeerClient`]'s bodies with Raft RPCs over HTTP to `Member::peer_urls`; nothing
//! outside this module needs to change for that.

use std::fmt;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::types::{Member, NodeId, TypeConfig};

/// Creates a [`PeerClient`] per peer openraft replicates to.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerNetwork {}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            target,
            member: node.clone(),
        }
    }
}

/// The connection to one peer.
pub(crate) struct PeerClient {
    target: NodeId,
    member: Member,
}

#[derive(Debug)]
struct NoPeerTransport {
    target: NodeId,
    member: String,
}

impl fmt::Display for NoPeerTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no peer transport yet: cannot reach node {} ({})",
            self.target, self.member
        )
    }
}

impl std::error::Error for NoPeerTransport {}

impl PeerClient {
    fn unreachable(&self) -> Unreachable {
        Unreachable::new(&NoPeerTransport {
            target: self.target,
            member: self.member.to_string(),
        })
    }
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }
}
