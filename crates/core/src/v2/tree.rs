//! The node tree of the v2 store, flat: every node lives in one map under its full, cleaned
//! path, and each directory keeps the set of its children's names.
//!
//! Flat rather than nested so that nothing (serde, `Drop`, our own walks) recurses once per
//! path segment over the whole tree, and so that a lookup by full path is one map probe.
//!
//! Invariants (checked by `Tree::check_invariants` in tests):
//! - `/` always exists and is a directory created at index 0;
//! - every node but `/` has its parent in the map, the parent is a directory, and the
//!   parent's `children` holds exactly the names of the nodes directly below it.

#[cfg(test)]
use std::collections::{BTreeMap, BTreeSet};

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::children::ChildSet;
use crate::sharded::ShardedMap;
use super::V2Error;

pub(super) const ROOT: &str = "/";

pub(super) const CODE_KEY_NOT_FOUND: u16 = 100;
pub(super) const CODE_TEST_FAILED: u16 = 101;
pub(super) const CODE_NOT_FILE: u16 = 102;
pub(super) const CODE_NOT_DIR: u16 = 104;
pub(super) const CODE_NODE_EXIST: u16 = 105;
pub(super) const CODE_ROOT_READ_ONLY: u16 = 107;
pub(super) const CODE_DIR_NOT_EMPTY: u16 = 108;
pub(super) const CODE_EVENT_INDEX_CLEARED: u16 = 401;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Node {
    pub created_index: u64,
    /// Set at creation and by writes to a file; a directory's never changes after creation
    /// (etcd's `node.Write` refuses directories and `Update` ignores that refusal).
    pub modified_index: u64,
    /// Absolute expiry in Unix nanoseconds; `None` is permanent.
    pub expiration_ns: Option<u64>,
    pub kind: NodeKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum NodeKind {
    /// Shared, so that copying a shard of the node index (the first write to it after a
    /// snapshot took the state) copies no value bytes.
    File { value: Arc<str> },
    /// Children's names (one path segment each). Hashed, not ordered: in a directory with a
    /// million keys the ordered insert (memcmp down a B-tree of heap strings) was the top
    /// CPU cost of a PUT. Listings sort when they are built, on the read path. Serialized
    /// as a sequence, the same bytes as the ordered set this used to be (in another order).
    Dir { children: ChildSet },
}

impl Node {
    pub fn file(value: Arc<str>, index: u64, expiration_ns: Option<u64>) -> Node {
        Node { created_index: index, modified_index: index, expiration_ns, kind: NodeKind::File { value } }
    }

    pub fn dir(index: u64, expiration_ns: Option<u64>) -> Node {
        Node {
            created_index: index,
            modified_index: index,
            expiration_ns,
            kind: NodeKind::Dir { children: ChildSet::default() },
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir { .. })
    }

    /// A file's value; `""` for a directory, as etcd's `node.Value` is for dirs.
    pub fn value(&self) -> &str {
        match &self.kind {
            NodeKind::File { value } => value,
            NodeKind::Dir { .. } => "",
        }
    }

    /// A file's value, shared (no bytes copied); `""` for a directory.
    pub fn shared_value(&self) -> Arc<str> {
        match &self.kind {
            NodeKind::File { value } => Arc::clone(value),
            NodeKind::Dir { .. } => Arc::from(""),
        }
    }

    pub fn children(&self) -> Option<&ChildSet> {
        match &self.kind {
            NodeKind::Dir { children } => Some(children),
            NodeKind::File { .. } => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Tree {
    /// Hashed, not ordered: every write probes it a few times with paths that share long
    /// prefixes, which made ordered comparisons (memcmp) the top CPU cost of a PUT. Sharded,
    /// so that growing it never stalls a write for long (see `sharded`). Nothing iterates it
    /// in an order that reaches a client; listings use `children`.
    /// Paths are shared strings, so that copying a shard copies no path bytes.
    nodes: ShardedMap<Arc<str>, Node>,
}

impl Tree {
    pub fn new() -> Tree {
        let mut nodes = ShardedMap::new();
        nodes.insert(Arc::from(ROOT), Node::dir(0, None));
        Tree { nodes }
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn get_mut(&mut self, path: &str) -> Option<&mut Node> {
        self.nodes.get_mut(path)
    }

    /// etcd's `internalGet`: the node at `path`, or 104 naming the file met on the way, or
    /// 100 naming the first missing prefix.
    pub fn lookup(&self, path: &str, current_index: u64) -> Result<&Node, V2Error> {
        if let Some(node) = self.nodes.get(path) {
            return Ok(node);
        }
        // A miss under an existing directory names the path itself: that directory's
        // ancestors all exist and are directories (the tree's invariant).
        if path != ROOT && self.nodes.get(split_parent(path).0).is_some_and(Node::is_dir) {
            return Err(V2Error::new(CODE_KEY_NOT_FOUND, Some(path.to_string()), current_index));
        }
        // Otherwise walk down to find which component is at fault.
        let mut parent = ROOT;
        for end in segment_ends(path) {
            let prefix = &path[..end];
            let Some(parent_node) = self.nodes.get(parent) else { break };
            if !parent_node.is_dir() {
                return Err(V2Error::new(CODE_NOT_DIR, Some(parent.to_string()), current_index));
            }
            if !self.nodes.contains_key(prefix) {
                return Err(V2Error::new(CODE_KEY_NOT_FOUND, Some(prefix.to_string()), current_index));
            }
            parent = prefix;
        }
        // Unreachable for a cleaned path that missed the map; answer 100 rather than panic.
        Err(V2Error::new(CODE_KEY_NOT_FOUND, Some(path.to_string()), current_index))
    }

    /// etcd's `walk(dirName, checkDir)`: makes sure `dir_path` is a directory, creating
    /// the missing ones (permanent, created at `new_index`); 104 names a file on the way.
    /// Nothing is created when it fails: a file can only sit below existing directories.
    pub fn ensure_dir(&mut self, dir_path: &str, new_index: u64, current_index: u64) -> Result<(), V2Error> {
        match self.nodes.get(dir_path) {
            Some(node) if node.is_dir() => return Ok(()),
            Some(_) => return Err(V2Error::new(CODE_NOT_DIR, Some(dir_path.to_string()), current_index)),
            None => {}
        }
        // Find the file in the way before changing anything.
        for end in segment_ends(dir_path) {
            match self.nodes.get(&dir_path[..end]) {
                Some(node) if node.is_dir() => continue,
                Some(_) => return Err(V2Error::new(CODE_NOT_DIR, Some(dir_path[..end].to_string()), current_index)),
                None => break,
            }
        }
        for end in segment_ends(dir_path) {
            if !self.nodes.contains_key(&dir_path[..end]) {
                self.insert(&dir_path[..end], Node::dir(new_index, None));
            }
        }
        Ok(())
    }

    /// Puts `node` at `path`, which must be absent, and links it into its parent, which
    /// must already be a directory.
    pub fn insert(&mut self, path: &str, node: Node) {
        debug_assert!(path != ROOT && !self.nodes.contains_key(path));
        let (parent, name) = split_parent(path);
        match self.nodes.get_mut(parent).map(|parent| &mut parent.kind) {
            Some(NodeKind::Dir { children }) => {
                children.insert(name);
            }
            _ => panic!("v2 tree: parent of {path:?} is not a directory"),
        }
        self.nodes.insert(Arc::from(path), node);
    }

    /// Removes the node at `path` and everything below it, calling `removed` once per node
    /// (so the caller can drop TTL entries). Iterative: deep trees don't grow the stack.
    pub fn remove_subtree(&mut self, path: &str, mut removed: impl FnMut(&str, &Node)) {
        debug_assert!(path != ROOT);
        let (parent, name) = split_parent(path);
        if let Some(NodeKind::Dir { children }) = self.nodes.get_mut(parent).map(|parent| &mut parent.kind) {
            children.remove(name);
        }
        let mut pending = vec![path.to_string()];
        while let Some(current) = pending.pop() {
            let Some(node) = self.nodes.remove(current.as_str()) else { continue };
            if let NodeKind::Dir { children } = &node.kind {
                pending.extend(children.iter().map(|child| child_path(&current, child)));
            }
            removed(&current, &node);
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Every file's value, by path (tests compare against a model with it).
    #[cfg(test)]
    pub fn files(&self) -> BTreeMap<String, String> {
        self.nodes
            .iter()
            .filter_map(|(path, node)| match &node.kind {
                NodeKind::File { value } => Some((path.to_string(), value.to_string())),
                NodeKind::Dir { .. } => None,
            })
            .collect()
    }

    #[cfg(test)]
    pub fn dirs(&self) -> BTreeSet<String> {
        self.nodes.iter().filter(|(_, node)| node.is_dir()).map(|(path, _)| path.to_string()).collect()
    }

    #[cfg(test)]
    pub fn check_invariants(&self) {
        let root = self.nodes.get(ROOT).expect("root exists");
        assert!(root.is_dir());
        for (path, node) in self.nodes.iter() {
            if &**path != ROOT {
                let (parent, name) = split_parent(path);
                let parent_node = self.nodes.get(parent).unwrap_or_else(|| panic!("parent of {path} exists"));
                let children = parent_node.children().unwrap_or_else(|| panic!("parent of {path} is a dir"));
                assert!(children.contains(name), "{parent} lists {name}");
            }
            if let Some(children) = node.children() {
                for child in children.iter() {
                    assert!(self.nodes.contains_key(child_path(path, child).as_str()), "{path} child {child} exists");
                }
            }
        }
    }
}

/// Go's `path.Clean(path.Join("/", key))`: absolute, no empty, `.` or `..` segments, no
/// trailing slash; the root is `/`. Whatever a client sends comes out as a valid path.
pub(super) fn clean_path(key: &str) -> String {
    // Nearly every key a client sends is clean already: one pass, one copy.
    if key.len() > 1
        && key.starts_with('/')
        && key[1..].split('/').all(|segment| !matches!(segment, "" | "." | ".."))
    {
        return key.to_string();
    }
    clean_segments(key)
}

/// [`clean_path`] the long way, segment by segment.
pub(super) fn clean_segments(key: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in key.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    if segments.is_empty() {
        return ROOT.to_string();
    }
    let mut cleaned = String::with_capacity(key.len() + 1);
    for segment in segments {
        cleaned.push('/');
        cleaned.push_str(segment);
    }
    cleaned
}

/// `("/a/b", "c")` for `/a/b/c`, `("/", "c")` for `/c`. `path` is clean and not the root.
pub(super) fn split_parent(path: &str) -> (&str, &str) {
    let slash = path.rfind('/').unwrap_or(0);
    let parent = if slash == 0 { ROOT } else { &path[..slash] };
    (parent, &path[slash + 1..])
}

pub(super) fn child_path(parent: &str, name: &str) -> String {
    if parent == ROOT {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// The end offsets of each proper-or-full prefix of a clean path: `/a/b/c` → 2, 4, 6.
fn segment_ends(path: &str) -> impl Iterator<Item = usize> + '_ {
    path.char_indices()
        .skip(1)
        .filter(|&(_, c)| c == '/')
        .map(|(at, _)| at)
        .chain(if path.len() > 1 { Some(path.len()) } else { None })
}

/// `ancestor` is a strict ancestor of `path` segment-wise (`/` is everyone's ancestor).
pub(super) fn is_strict_ancestor(ancestor: &str, path: &str) -> bool {
    if ancestor == ROOT {
        return path != ROOT;
    }
    path.len() > ancestor.len() && path.starts_with(ancestor) && path.as_bytes()[ancestor.len()] == b'/'
}

/// etcd's watcher-hub `isHidden(watchPath, keyPath)`: a segment of `key` below `watch`
/// starts with `_`.
pub(super) fn is_hidden_below(watch: &str, key: &str) -> bool {
    if watch.len() > key.len() || !key.starts_with(watch) {
        return false;
    }
    key[watch.len()..].split('/').any(|segment| segment.starts_with('_'))
}

pub(super) fn is_hidden_name(name: &str) -> bool {
    name.starts_with('_')
}
