//! The etcd v2 keys store: a tree of files and directories, TTLs, in-order keys, the store
//! index and a bounded event history for `waitIndex` watches.
//!
//! Semantics follow etcd 3.4's v2 store exactly (`../shared/etcd-v2-api.md`); where this
//! file and real etcd disagree, etcd is right. Parameter parsing (the 2xx error codes) is
//! the server's job; the store answers the store errors (1xx, 401).
//!
//! Time: `now_ms` is the applied entry's time for mutations and the reader's clock for
//! reads (only to render the remaining `ttl`). Expiry happens only in `expire_until`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A mutation of the keys store. Keys are absolute, cleaned paths (`/a/b`); the root is `/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum V2Command {
    /// `PUT /v2/keys/{key}`: set, create (`prev_exist: Some(false)`), update
    /// (`prev_exist: Some(true)`), compareAndSwap (`prev_value`/`prev_index`), refresh.
    Set(SetCommand),
    /// `POST /v2/keys/{dir}`: a new child named by the new index, zero-padded to 20 digits.
    CreateInOrder { dir: String, value: String, is_dir: bool, ttl_s: Option<u64> },
    /// `DELETE /v2/keys/{key}`: delete or compareAndDelete.
    Delete(DeleteCommand),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetCommand {
    pub key: String,
    /// Ignored when `is_dir` makes a directory (set, create). An update (`prev_exist:
    /// Some(true)`) ignores `is_dir` and uses the value, as etcd does: pass it through as
    /// the client sent it (a non-empty value on a directory is 102 there).
    pub value: String,
    pub is_dir: bool,
    /// Seconds to live; `None` makes the node permanent. `Some(0)` expires it at once.
    pub ttl_s: Option<u64>,
    pub prev_exist: Option<bool>,
    /// `Some("")` is rejected by the server (201) before it gets here.
    pub prev_value: Option<String>,
    /// `Some(0)` counts as absent, as in etcd.
    pub prev_index: Option<u64>,
    pub refresh: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteCommand {
    pub key: String,
    pub is_dir: bool,
    pub recursive: bool,
    pub prev_value: Option<String>,
    pub prev_index: Option<u64>,
}

/// etcd's `action` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    Get,
    Set,
    Create,
    Update,
    CompareAndSwap,
    Delete,
    CompareAndDelete,
    Expire,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Get => "get",
            Action::Set => "set",
            Action::Create => "create",
            Action::Update => "update",
            Action::CompareAndSwap => "compareAndSwap",
            Action::Delete => "delete",
            Action::CompareAndDelete => "compareAndDelete",
            Action::Expire => "expire",
        }
    }
}

/// A node as etcd renders it (`NodeExtern`). `key` and the indices are `None` for the root.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub key: Option<String>,
    /// `Some` on files (also `""`), `None` on directories. Shared with the store's node and
    /// with the events that carry the same value (serialized as a plain string).
    pub value: Option<Arc<str>>,
    pub dir: bool,
    /// Absolute expiry, Unix nanoseconds; `None` for permanent nodes.
    pub expiration_ns: Option<u64>,
    /// Seconds remaining, rounded up (etcd's `expirationAndTTL`); `None` when permanent or
    /// exactly 0. Negative for a node past its expiration not yet swept (etcd renders
    /// `"ttl":-1` then, e.g. for `ttl=18446744073709551615`, which wraps to -1 s in Go).
    pub ttl_s: Option<i64>,
    /// `Some` only for directories that have visible children in this view.
    pub nodes: Option<Vec<NodeView>>,
    pub modified_index: Option<u64>,
    pub created_index: Option<u64>,
}

/// A successful answer, and also what an event in the history holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct V2Response {
    pub action: Action,
    pub node: NodeView,
    pub prev_node: Option<NodeView>,
    /// The store index after the operation (`X-Etcd-Index`); for an event, its own index.
    pub etcd_index: u64,
}

/// An etcd v2 error (`errorCode`, `message`, `cause`, `index`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct V2Error {
    pub code: u16,
    pub cause: Option<String>,
    pub index: u64,
}

/// What a watch finds in the history.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant, reason = "returned once per watch lookup and matched at once; a box would cost an allocation per event found")]
pub enum WatchLookup {
    /// The first matching event at or after the asked index.
    Found(V2Response),
    /// Nothing matches yet; wait for the store index to pass `index`.
    Pending { index: u64 },
}

/// Mutation counters as etcd's `/v2/stats/store` reports them (`setsSuccess`, ...). Gets
/// and watchers are counted by the server. Deterministic, so part of the replicated state.
///
/// etcd counts some failures as successes (a store function that returns its error without
/// assigning it to the variable its deferred counter reads): CAS and update on `/`, update
/// of a dir with a value, delete of `/`, and compareAndDelete's 101/102. Observed on etcd
/// 3.4.23 and reproduced here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    pub sets_success: u64,
    pub sets_fail: u64,
    pub delete_success: u64,
    pub delete_fail: u64,
    pub update_success: u64,
    pub update_fail: u64,
    pub create_success: u64,
    pub create_fail: u64,
    pub compare_and_swap_success: u64,
    pub compare_and_swap_fail: u64,
    pub compare_and_delete_success: u64,
    pub compare_and_delete_fail: u64,
    pub expire_count: u64,
}

mod children;
mod history;
mod store;
mod tree;
mod wire;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use store::Store;
pub use wire::{format_expiration, render_json};
