//! The v2 store: the node tree, the TTL index, the store index and the event history, with
//! etcd 3.4's `v2store` semantics (store.go, node.go, watcher_hub.go, apply_v2.go).
//!
//! Invariants:
//! - `index` rises by exactly one per successful mutation, expiry and refresh, and each of
//!   those pushes exactly one history entry carrying that index;
//! - `ttl_index` holds `(expiration_ns, path)` for exactly the nodes that have an expiration;
//! - a failed operation changes nothing but the failure counters.
//!
//! Costs: a write is a few map operations on its path and its parents (O(depth · log n));
//! only recursive deletes, dir expiry and recursive GETs touch a subtree.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::history::EventHistory;
use super::tree::{
    child_path, clean_path, is_hidden_name, split_parent, Node, NodeKind, Tree, CODE_DIR_NOT_EMPTY, CODE_EVENT_INDEX_CLEARED, CODE_KEY_NOT_FOUND,
    CODE_NODE_EXIST, CODE_NOT_FILE, CODE_ROOT_READ_ONLY, CODE_TEST_FAILED, ROOT,
};
use super::{
    Action, DeleteCommand, NodeView, SetCommand, StoreStats, V2Command, V2Error, V2Response, WatchLookup,
};

const NANOS_PER_MS: i64 = 1_000_000;
const NANOS_PER_S: i64 = 1_000_000_000;
/// etcd treats an expiration before 2000-01-01T00:00:00Z as permanent (`minExpireTime`).
const MIN_EXPIRATION_NS: i64 = 946_684_800 * NANOS_PER_S;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Store {
    index: u64,
    history_max: usize,
    tree: Tree,
    /// Expiring nodes in expiration order; ties by path, so a directory goes before the
    /// nodes inside it.
    ttl_index: BTreeSet<(u64, String)>,
    history: EventHistory,
    stats: StoreStats,
}

/// Which store function a PUT becomes (etcd's `apply_v2.go`).
enum SetOperation {
    Set,
    Create,
    Update,
    CompareAndSwap,
}

impl Store {
    /// An empty store (only the root directory) whose history keeps `history_max` events
    /// for `waitIndex` lookups.
    pub fn new(history_max: usize) -> Store {
        Store {
            index: 0,
            history_max,
            tree: Tree::new(),
            ttl_index: BTreeSet::new(),
            history: EventHistory::new(history_max),
            stats: StoreStats::default(),
        }
    }

    /// The store index: rises by exactly one per successful mutation (and per expiry and
    /// refresh). `X-Etcd-Index`.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Events a new `waitIndex` watch can reach back (etcd's 1000 by default).
    pub fn history_max(&self) -> usize {
        self.history_max
    }

    /// Keeps `history_max` events from now on (see [`EventHistory::set_window_max`]).
    pub fn set_history_max(&mut self, history_max: usize) {
        self.history_max = history_max;
        self.history.set_window_max(history_max);
    }

    /// The mutation counters of `/v2/stats/store`.
    pub fn stats(&self) -> StoreStats {
        self.stats
    }

    /// The oldest index a new `waitIndex` watch may ask for without error 401, if any event
    /// has happened yet.
    pub fn history_oldest_index(&self) -> Option<u64> {
        self.history.logical_oldest()
    }

    /// Nodes in the tree, the root included.
    pub fn node_count(&self) -> usize {
        self.tree.len()
    }

    /// Applies one mutation at entry time `now_ms`.
    pub fn apply(&mut self, now_ms: u64, command: &V2Command) -> Result<V2Response, V2Error> {
        let now_ns = now_ns(now_ms);
        match command {
            V2Command::Set(set) => match classify_set(set) {
                SetOperation::Set => self.set(now_ns, set),
                SetOperation::Create => {
                    let expiration_ns = expiration_ns(now_ns, set.ttl_s);
                    let result = self.create(now_ns, &set.key, set.is_dir, &set.value, false, expiration_ns);
                    count(result.is_ok(), &mut self.stats.create_success, &mut self.stats.create_fail);
                    result
                }
                SetOperation::Update => self.update(now_ns, set),
                SetOperation::CompareAndSwap => self.compare_and_swap(now_ns, set),
            },
            V2Command::CreateInOrder { dir, value, is_dir, ttl_s } => {
                let expiration_ns = expiration_ns(now_ns, *ttl_s);
                let result = self.create(now_ns, dir, *is_dir, value, true, expiration_ns);
                count(result.is_ok(), &mut self.stats.create_success, &mut self.stats.create_fail);
                result
            }
            // etcd's `applierV2store.Delete`: a comparison makes it compareAndDelete.
            V2Command::Delete(delete) if has_comparison(delete.prev_value.as_deref(), delete.prev_index) => {
                self.compare_and_delete(now_ns, delete)
            }
            V2Command::Delete(delete) => self.delete(now_ns, delete),
        }
    }

    /// `GET /v2/keys/{key}` (without wait). `now_ms` only renders the remaining `ttl`.
    pub fn get(&self, key: &str, recursive: bool, sorted: bool, now_ms: u64) -> Result<V2Response, V2Error> {
        // Children are kept in byte order, so every listing is sorted: `sorted` asks for
        // nothing more, and the unsorted order (random in etcd) is deterministic here.
        let _ = sorted;
        let path = clean_path(key);
        let node = self.tree.lookup(&path, self.index)?;
        let view = self.view(&path, node, ViewDepth::Children { recursive }, now_ns(now_ms));
        Ok(V2Response { action: Action::Get, node: view, prev_node: None, etcd_index: self.index })
    }

    /// The first event with index ≥ `since_index` that a watcher on `key` sees (see
    /// etcd-v2-api.md §7 for which events match). `since_index` older than the logical
    /// history window (the last `history_max` events) is error 401. `live` watchers, which
    /// already waited and are catching up after a wake-up, may also read the slack kept
    /// beyond the window, as etcd's registered watchers never miss events.
    ///
    /// `since_index` 0 means "from now on" (the current index + 1), as in etcd. A new watch
    /// (`live: false`) matches as etcd's history scan does; a watcher that got `Pending
    /// { index }` should ask again with `live: true` from `index + 1` (or its own
    /// `waitIndex` if later): that matches as etcd's registered watchers are notified
    /// (recursive watches skip hidden keys). A `Found` event's `etcd_index` is its own index.
    pub fn watch(&self, key: &str, recursive: bool, since_index: u64, live: bool) -> Result<WatchLookup, V2Error> {
        self.watch_with(key, recursive, since_index, live.then_some(true))
    }

    /// [`Store::watch`] for a registered watcher (`live`) that knows whether a node was at
    /// `key` when it last looked ([`Store::exists`]): the removal of a directory around
    /// `key` wakes it only if one was, as etcd's watcher hub does.
    pub fn watch_live(&self, key: &str, recursive: bool, since_index: u64, key_exists: bool) -> Result<WatchLookup, V2Error> {
        self.watch_with(key, recursive, since_index, Some(key_exists))
    }

    fn watch_with(&self, key: &str, recursive: bool, since_index: u64, live: Option<bool>) -> Result<WatchLookup, V2Error> {
        let path = clean_path(key);
        let since_index = if since_index == 0 { self.index + 1 } else { since_index };
        let found = match self.history.find(&path, recursive, since_index, live, self.index) {
            // A waiting watch that fell behind the slack (one applied batch held more events
            // than it: thousands of keys expiring at once after a pause) may go on from the
            // oldest kept event if its key shows that no dropped event was for it: a key that
            // was there and still is, not modified since, saw no set, update, delete or
            // expiry, nor a delete of a directory above it. (Not a directory: a directory's
            // TTL update is an event that leaves its modifiedIndex as it was, as in etcd.)
            Err(error)
                if error.code == CODE_EVENT_INDEX_CLEARED
                    && live == Some(true)
                    && !recursive
                    && self.tree.get(&path).is_some_and(|node| {
                        matches!(node.kind, NodeKind::File { .. }) && node.modified_index < since_index
                    }) =>
            {
                let resume = self.history.first_index().map_or(since_index, |first| first.max(since_index));
                self.history.find(&path, recursive, resume, live, self.index)
            }
            other => other,
        };
        match found? {
            Some(event) => Ok(WatchLookup::Found(event.clone())),
            None => Ok(WatchLookup::Pending { index: self.index }),
        }
    }

    /// Whether a node is at `key` right after `event`, which a watcher on `key` was given
    /// (so a stream watch can go on with [`Store::watch_live`]).
    pub fn exists_after(event: &V2Response, key: &str) -> bool {
        super::history::exists_after(event, &clean_path(key))
    }

    /// Whether a node (a key or a directory, hidden ones too) is at `key` now.
    pub fn exists(&self, key: &str) -> bool {
        self.tree.lookup(&clean_path(key), self.index).is_ok()
    }

    /// Expires every node whose expiration is at or before `now_ms`, each with an `expire`
    /// event and its own index.
    pub fn expire_until(&mut self, now_ms: u64) {
        let cutoff_ns = now_ns(now_ms);
        while let Some((expiration, path)) = self.ttl_index.first().cloned() {
            if expiration as i128 > cutoff_ns as i128 {
                break;
            }
            let Some(node) = self.tree.get(&path) else {
                debug_assert!(false, "ttl index names a missing node {path}");
                self.ttl_index.remove(&(expiration, path));
                continue;
            };
            self.index += 1;
            let prev_node = self.view(&path, node, ViewDepth::Node, cutoff_ns);
            let event = V2Response {
                action: Action::Expire,
                node: removal_view(&path, node, self.index),
                prev_node: Some(prev_node),
                etcd_index: self.index,
            };
            self.remove_subtree(&path);
            self.stats.expire_count += 1;
            self.history.push(event, false);
        }
    }

    /// The earliest expiration in the store (Unix ms, rounded up so that a `Tick` at that
    /// time expires it), if any.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.ttl_index.first().map(|(expiration_ns, _)| expiration_ns.div_ceil(NANOS_PER_MS as u64))
    }

    // ---- the store functions of etcd's store.go ----

    /// `Set`: create or replace a file; `is_dir` replaces a file by a directory.
    fn set(&mut self, now_ns: i64, set: &SetCommand) -> Result<V2Response, V2Error> {
        let result = self.set_inner(now_ns, set);
        count(result.is_ok(), &mut self.stats.sets_success, &mut self.stats.sets_fail);
        result
    }

    fn set_inner(&mut self, now_ns: i64, set: &SetCommand) -> Result<V2Response, V2Error> {
        let path = clean_path(&set.key);
        let existing = match self.tree.lookup(&path, self.index) {
            Ok(node) => Some(node),
            Err(error) if error.code == CODE_KEY_NOT_FOUND && !set.refresh => None,
            Err(error) => return Err(error),
        };
        let prev_node = existing.map(|node| self.view(&path, node, ViewDepth::Node, now_ns));
        let value = match existing {
            Some(node) if set.refresh => node.shared_value(),
            _ => Arc::from(set.value.as_str()),
        };
        let expiration_ns = expiration_ns(now_ns, set.ttl_s);
        let mut response = self.create_node(now_ns, &path, set.is_dir, value, true, expiration_ns, Action::Set)?;
        response.prev_node = prev_node;
        self.record(&response, set.refresh);
        Ok(response)
    }

    /// `Create` (`prevExist=false`, and every POST with `unique`).
    fn create(
        &mut self,
        now_ns: i64,
        key: &str,
        is_dir: bool,
        value: &str,
        unique: bool,
        expiration_ns: Option<u64>,
    ) -> Result<V2Response, V2Error> {
        let mut path = clean_path(key);
        if unique {
            path = clean_path(&format!("{path}/{:020}", self.index + 1));
        }
        let response = self.create_node(now_ns, &path, is_dir, Arc::from(value), false, expiration_ns, Action::Create)?;
        self.record(&response, false);
        Ok(response)
    }

    /// etcd's `internalCreate`: makes the parents, then the node, taking the next index.
    #[allow(clippy::too_many_arguments)]
    fn create_node(
        &mut self,
        now_ns: i64,
        path: &str,
        is_dir: bool,
        value: Arc<str>,
        replace: bool,
        expiration_ns: Option<u64>,
        action: Action,
    ) -> Result<V2Response, V2Error> {
        let current = self.index;
        let next = current + 1;
        if path == ROOT {
            return Err(V2Error::new(CODE_ROOT_READ_ONLY, Some(ROOT.to_string()), current));
        }
        let (parent, _) = split_parent(path);
        if let Err(error) = self.tree.ensure_dir(parent, next, current) {
            // etcd counts a failed walk as a failed set on top of the caller's own counter.
            self.stats.sets_fail += 1;
            return Err(error);
        }
        if let Some(existing) = self.tree.get(path) {
            if !replace {
                return Err(V2Error::new(CODE_NODE_EXIST, Some(path.to_string()), current));
            }
            if existing.is_dir() {
                return Err(V2Error::new(CODE_NOT_FILE, Some(path.to_string()), current));
            }
            self.remove_subtree(path);
        }
        let node = if is_dir { Node::dir(next, expiration_ns) } else { Node::file(value, next, expiration_ns) };
        let view = self.view(path, &node, ViewDepth::Node, now_ns);
        if let Some(expiration) = expiration_ns {
            self.ttl_index.insert((expiration, path.to_string()));
        }
        self.tree.insert(path, node);
        self.index = next;
        Ok(V2Response { action, node: view, prev_node: None, etcd_index: next })
    }

    /// `Update` (`prevExist=true`): a file's value and TTL, or a directory's TTL. A
    /// directory keeps its `modifiedIndex` (etcd's `Write` refuses dirs and `Update`
    /// ignores that), though the event shows the new index.
    fn update(&mut self, now_ns: i64, set: &SetCommand) -> Result<V2Response, V2Error> {
        let path = clean_path(&set.key);
        let current = self.index;
        let next = current + 1;
        if path == ROOT {
            // etcd returns this one without marking the call failed.
            self.stats.update_success += 1;
            return Err(V2Error::new(CODE_ROOT_READ_ONLY, Some(ROOT.to_string()), current));
        }
        let node = match self.tree.lookup(&path, current) {
            Ok(node) => node,
            Err(error) => {
                self.stats.update_fail += 1;
                return Err(error);
            }
        };
        if node.is_dir() && !set.value.is_empty() {
            self.stats.update_success += 1;
            return Err(V2Error::new(CODE_NOT_FILE, Some(path.clone()), current));
        }
        let prev_node = self.view(&path, node, ViewDepth::Node, now_ns);
        let value = if set.refresh { node.shared_value() } else { Arc::from(set.value.as_str()) };
        let expiration_ns = expiration_ns(now_ns, set.ttl_s);
        let node = self.write(&path, (!node.is_dir()).then_some(value), next, expiration_ns);
        let mut view = self.view(&path, &node, ViewDepth::Node, now_ns);
        view.modified_index = Some(next);
        self.index = next;
        let response = V2Response { action: Action::Update, node: view, prev_node: Some(prev_node), etcd_index: next };
        self.record(&response, set.refresh);
        self.stats.update_success += 1;
        Ok(response)
    }

    fn compare_and_swap(&mut self, now_ns: i64, set: &SetCommand) -> Result<V2Response, V2Error> {
        let path = clean_path(&set.key);
        let current = self.index;
        let next = current + 1;
        if path == ROOT {
            self.stats.compare_and_swap_success += 1;
            return Err(V2Error::new(CODE_ROOT_READ_ONLY, Some(ROOT.to_string()), current));
        }
        let checked = self.tree.lookup(&path, current).and_then(|node| {
            if node.is_dir() {
                return Err(V2Error::new(CODE_NOT_FILE, Some(path.clone()), current));
            }
            compare(node, set.prev_value.as_deref(), set.prev_index, current)?;
            Ok(node)
        });
        let node = match checked {
            Ok(node) => node,
            Err(error) => {
                self.stats.compare_and_swap_fail += 1;
                return Err(error);
            }
        };
        let prev_node = self.view(&path, node, ViewDepth::Node, now_ns);
        let value = if set.refresh { node.shared_value() } else { Arc::from(set.value.as_str()) };
        let expiration_ns = expiration_ns(now_ns, set.ttl_s);
        let node = self.write(&path, Some(value), next, expiration_ns);
        let view = self.view(&path, &node, ViewDepth::Node, now_ns);
        self.index = next;
        let response =
            V2Response { action: Action::CompareAndSwap, node: view, prev_node: Some(prev_node), etcd_index: next };
        self.record(&response, set.refresh);
        self.stats.compare_and_swap_success += 1;
        Ok(response)
    }

    /// `Delete` with etcd-v2-api.md §5's table; `recursive` implies `dir`.
    fn delete(&mut self, now_ns: i64, delete: &DeleteCommand) -> Result<V2Response, V2Error> {
        let path = clean_path(&delete.key);
        let current = self.index;
        let next = current + 1;
        if path == ROOT {
            self.stats.delete_success += 1;
            return Err(V2Error::new(CODE_ROOT_READ_ONLY, Some(ROOT.to_string()), current));
        }
        let dir_allowed = delete.is_dir || delete.recursive;
        let checked = self.tree.lookup(&path, current).and_then(|node| match node.children() {
            Some(_) if !dir_allowed => Err(V2Error::new(CODE_NOT_FILE, Some(path.clone()), current)),
            Some(children) if !children.is_empty() && !delete.recursive => {
                Err(V2Error::new(CODE_DIR_NOT_EMPTY, Some(path.clone()), current))
            }
            _ => Ok(node),
        });
        let node = match checked {
            Ok(node) => node,
            Err(error) => {
                self.stats.delete_fail += 1;
                return Err(error);
            }
        };
        let response = V2Response {
            action: Action::Delete,
            node: removal_view(&path, node, next),
            prev_node: Some(self.view(&path, node, ViewDepth::Node, now_ns)),
            etcd_index: next,
        };
        self.remove_subtree(&path);
        self.index = next;
        self.record(&response, false);
        self.stats.delete_success += 1;
        Ok(response)
    }

    fn compare_and_delete(&mut self, now_ns: i64, delete: &DeleteCommand) -> Result<V2Response, V2Error> {
        let path = clean_path(&delete.key);
        let current = self.index;
        let next = current + 1;
        let node = match self.tree.lookup(&path, current) {
            Ok(node) => node,
            Err(error) => {
                self.stats.compare_and_delete_fail += 1;
                return Err(error);
            }
        };
        // etcd returns these two without marking the call failed.
        if node.is_dir() {
            self.stats.compare_and_delete_success += 1;
            // etcd's root is its internal `/1`, which its HTTP layer trims to no cause.
            let cause = (path != ROOT).then(|| path.clone());
            return Err(V2Error::new(CODE_NOT_FILE, cause, current));
        }
        if let Err(error) = compare(node, delete.prev_value.as_deref(), delete.prev_index, current) {
            self.stats.compare_and_delete_success += 1;
            return Err(error);
        }
        let response = V2Response {
            action: Action::CompareAndDelete,
            node: removal_view(&path, node, next),
            prev_node: Some(self.view(&path, node, ViewDepth::Node, now_ns)),
            etcd_index: next,
        };
        self.remove_subtree(&path);
        self.index = next;
        self.record(&response, false);
        self.stats.compare_and_delete_success += 1;
        Ok(response)
    }

    // ---- helpers ----

    /// Writes a file's value (`None` leaves a directory as it is) and sets the expiration,
    /// keeping the TTL index in step. Returns a copy of the node's new header.
    fn write(&mut self, path: &str, value: Option<Arc<str>>, index: u64, expiration_ns: Option<u64>) -> Node {
        let Some(node) = self.tree.get_mut(path) else { unreachable!("write to a looked-up node") };
        if let (Some(new_value), NodeKind::File { value }) = (value, &mut node.kind) {
            *value = new_value;
            node.modified_index = index;
        }
        let old_expiration = std::mem::replace(&mut node.expiration_ns, expiration_ns);
        // A header without the children: views of a written node never list them.
        let header = Node {
            created_index: node.created_index,
            modified_index: node.modified_index,
            expiration_ns: node.expiration_ns,
            kind: match &node.kind {
                NodeKind::File { value } => NodeKind::File { value: value.clone() },
                NodeKind::Dir { .. } => NodeKind::Dir { children: Default::default() },
            },
        };
        if old_expiration != expiration_ns {
            if let Some(old) = old_expiration {
                self.ttl_index.remove(&(old, path.to_string()));
            }
            if let Some(new) = expiration_ns {
                self.ttl_index.insert((new, path.to_string()));
            }
        }
        header
    }

    fn remove_subtree(&mut self, path: &str) {
        let ttl_index = &mut self.ttl_index;
        self.tree.remove_subtree(path, |removed_path, node| {
            if let Some(expiration) = node.expiration_ns {
                ttl_index.remove(&(expiration, removed_path.to_string()));
            }
        });
    }

    fn record(&mut self, response: &V2Response, refresh: bool) {
        self.history.push(response.clone(), refresh);
    }

    /// etcd's `Repr` / `loadInternalNode`. The root has no key and no indices.
    fn view(&self, path: &str, node: &Node, depth: ViewDepth, now_ns: i64) -> NodeView {
        let is_root = path == ROOT;
        let (expiration_ns, ttl_s) = expiration_and_ttl(node.expiration_ns, now_ns);
        let mut view = NodeView {
            key: (!is_root).then(|| path.to_string()),
            value: None,
            dir: false,
            expiration_ns,
            ttl_s,
            nodes: None,
            modified_index: (!is_root).then_some(node.modified_index),
            created_index: (!is_root).then_some(node.created_index),
        };
        match &node.kind {
            NodeKind::File { value } => view.value = Some(Arc::clone(value)),
            NodeKind::Dir { children } => {
                view.dir = true;
                if let ViewDepth::Children { recursive } = depth {
                    let child_depth = if recursive { ViewDepth::Children { recursive } } else { ViewDepth::Node };
                    let mut names: Vec<&str> = children.iter().filter(|name| !is_hidden_name(name)).collect();
                    names.sort_unstable();
                    let nodes: Vec<NodeView> = names
                        .into_iter()
                        .filter_map(|name| {
                            let child = child_path(path, name);
                            self.tree.get(&child).map(|node| self.view(&child, node, child_depth, now_ns))
                        })
                        .collect();
                    view.nodes = (!nodes.is_empty()).then_some(nodes);
                }
            }
        }
        view
    }

    #[cfg(test)]
    pub(super) fn tree(&self) -> &Tree {
        &self.tree
    }

    #[cfg(test)]
    pub(super) fn ttl_entries(&self) -> usize {
        self.ttl_index.len()
    }

    #[cfg(test)]
    pub(super) fn history_len(&self) -> usize {
        self.history.len()
    }
}

#[derive(Clone, Copy)]
enum ViewDepth {
    /// The node alone (a directory without `nodes`).
    Node,
    /// A directory with its visible children; their children too when `recursive`.
    Children { recursive: bool },
}

/// etcd's `applierV2store.Put`: `prevExist` decides first, then a comparison, else a set.
fn classify_set(set: &SetCommand) -> SetOperation {
    let compared = has_comparison(set.prev_value.as_deref(), set.prev_index);
    match set.prev_exist {
        Some(true) if compared => SetOperation::CompareAndSwap,
        Some(true) => SetOperation::Update,
        Some(false) => SetOperation::Create,
        None if compared => SetOperation::CompareAndSwap,
        None => SetOperation::Set,
    }
}

/// A non-empty `prevValue` or a non-zero `prevIndex` (etcd ignores `""` and `0`).
fn has_comparison(prev_value: Option<&str>, prev_index: Option<u64>) -> bool {
    prev_index.unwrap_or(0) > 0 || prev_value.is_some_and(|value| !value.is_empty())
}

/// etcd's `node.Compare` and `getCompareFailCause`: an empty `prev_value` or a zero
/// `prev_index` is not compared.
fn compare(node: &Node, prev_value: Option<&str>, prev_index: Option<u64>, current: u64) -> Result<(), V2Error> {
    let prev_value = prev_value.unwrap_or("");
    let prev_index = prev_index.unwrap_or(0);
    let index_matches = prev_index == 0 || node.modified_index == prev_index;
    let value_matches = prev_value.is_empty() || node.value() == prev_value;
    let cause = match (value_matches, index_matches) {
        (true, true) => return Ok(()),
        (false, true) => format!("[{prev_value} != {}]", node.value()),
        (true, false) => format!("[{prev_index} != {}]", node.modified_index),
        (false, false) => {
            format!("[{prev_value} != {}] [{prev_index} != {}]", node.value(), node.modified_index)
        }
    };
    Err(V2Error::new(CODE_TEST_FAILED, Some(cause), current))
}

/// The node of a delete/compareAndDelete/expire event: key, `dir`, the new index and the
/// old `createdIndex`; no value, no TTL.
fn removal_view(path: &str, node: &Node, index: u64) -> NodeView {
    NodeView {
        key: Some(path.to_string()),
        dir: node.is_dir(),
        modified_index: Some(index),
        created_index: Some(node.created_index),
        ..NodeView::default()
    }
}

fn count(success: bool, success_counter: &mut u64, fail_counter: &mut u64) {
    if success {
        *success_counter += 1;
    } else {
        *fail_counter += 1;
    }
}

/// Entry time in Unix nanoseconds, as Go's `time.Time.UnixNano` (wrapping past 2262).
fn now_ns(now_ms: u64) -> i64 {
    (now_ms as i64).wrapping_mul(NANOS_PER_MS)
}

/// The expiration etcd stores for `ttl_s` given at `now_ns`: v2http computes
/// `now.Add(time.Duration(ttl) * time.Second).UnixNano()` in wrapping int64 arithmetic,
/// the applier treats 0 as "no TTL" and the store treats anything before 2000 as permanent,
/// so a TTL that overflows becomes permanent (`ttl=9999999999`).
///
/// One deliberate difference: when `now_ns` itself is before 2000 (test clocks), the bound
/// is `now_ns`, so small test times still expire while an overflow still goes permanent.
fn expiration_ns(now_ns: i64, ttl_s: Option<u64>) -> Option<u64> {
    let ttl_s = ttl_s?;
    let expiration = now_ns.wrapping_add((ttl_s as i64).wrapping_mul(NANOS_PER_S));
    if expiration == 0 || expiration < MIN_EXPIRATION_NS.min(now_ns) {
        return None;
    }
    Some(expiration as u64)
}

/// etcd's `expirationAndTTL`: the remaining seconds rounded up; left out when 0 (Go's
/// `omitempty`), negative once past the expiration.
fn expiration_and_ttl(expiration_ns: Option<u64>, now_ns: i64) -> (Option<u64>, Option<i64>) {
    let Some(expiration) = expiration_ns else { return (None, None) };
    let remaining_ns = expiration as i128 - now_ns as i128;
    let mut ttl_s = remaining_ns / NANOS_PER_S as i128;
    if remaining_ns % NANOS_PER_S as i128 > 0 {
        ttl_s += 1;
    }
    let ttl_s = (ttl_s != 0).then(|| ttl_s.clamp(i64::MIN as i128, i64::MAX as i128) as i64);
    (Some(expiration), ttl_s)
}
