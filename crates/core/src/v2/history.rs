//! The event history behind `waitIndex` watches: a ring buffer of the most recent events.
//!
//! Every index the store hands out is one entry here (refreshes too, flagged so that no
//! watcher matches them), so indices are contiguous and an index finds its slot by
//! subtraction, as in etcd's `EventHistory`. Two windows:
//! - the *logical* window, the last `window_max` entries (etcd's 1000): a new watch asking
//!   for an older index gets error 401, exactly where etcd would answer it;
//! - a *slack* of older entries that watchers already waiting (`live`) may still read back,
//!   because etcd's registered watchers are pushed every event and never miss one, while
//!   ours catch up by reading the history after a wake-up (one applied batch may hold more
//!   events than the window: a `Tick` expiring thousands of keys at once, after a pause
//!   or a quorum loss). The slack holds at most `max(window_max, SLACK_ENTRIES_MIN)` entries
//!   and at most [`SLACK_BYTES_MAX`] of keys and values, so with large values the history
//!   holds about the window and no more (2 × 1000 events of 1 MB values were 4 GB before
//!   this bound). A waiting watch that falls further behind than the slack goes on waiting
//!   when its key proves that none of the dropped events was for it (`Store::watch_live`),
//!   else its connection is cut (its client watches again, and gets 401 with a `waitIndex`).
//!
//! Memory: an event's values are the store's own `Arc<str>`s, so the node of a `set` event,
//! the key's node in the tree and the next event's `prevNode` share one copy of the bytes.
//! The serialized form (snapshots) is unchanged and writes each value out in full; loading
//! it links equal values again ([`EventHistory::from`]).
//!
//! Which events a watch sees follows etcd's two code paths (etcd-v2-api.md §7):
//! `scan_matches` is `EventHistory.scan` (used by a watch whose `waitIndex` is already in
//! the history), `live_matches` is `watcherHub.notify` (used by a registered watcher).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::tree::{is_hidden_below, is_strict_ancestor, CODE_EVENT_INDEX_CLEARED, ROOT};
use super::{Action, NodeView, V2Error, V2Response};

/// The most key and value bytes the entries older than the logical window may hold (they are
/// kept only for watchers already waiting). Counted per event as its node's and previous
/// node's key and value, so values shared between events count twice: a conservative bound.
pub(super) const SLACK_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The fewest entries the slack may hold (more with a larger window): 2,500 keys expiring
/// in one `Tick` (a fleet's registrations after its quorum was lost for their ttl) used to
/// end every waiting watch of the node when the slack was the window's 1000. Small events
/// (a service registration) cost ~0.5 KB each here, so about 5 MB when full.
pub(super) const SLACK_ENTRIES_MIN: usize = 10_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct HistoryEntry {
    /// The event as a watcher receives it; `etcd_index` is the event's own index.
    event: V2Response,
    /// A TTL refresh: takes an index, is never delivered.
    refresh: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "EventHistoryWire")]
pub(super) struct EventHistory {
    entries: VecDeque<HistoryEntry>,
    window_max: usize,
    /// [`entry_bytes`] summed over the entries older than the logical window. Derived, not
    /// serialized (so the snapshot format is the one before the slack had a byte bound).
    #[serde(skip)]
    slack_bytes: usize,
}

/// The serialized form of [`EventHistory`]: the same fields, in the same order.
#[derive(Deserialize)]
struct EventHistoryWire {
    entries: VecDeque<HistoryEntry>,
    window_max: usize,
}

impl From<EventHistoryWire> for EventHistory {
    /// Rebuilds the derived byte count and shares each value that a later event's
    /// `prevNode` repeats (same key, same `modifiedIndex`, same bytes) with the earlier
    /// event's node, as the history built by `push` does.
    fn from(wire: EventHistoryWire) -> EventHistory {
        let EventHistoryWire { mut entries, window_max } = wire;
        let mut written: HashMap<(String, u64), Arc<str>> = HashMap::new();
        for entry in entries.iter_mut() {
            if let Some(prev) = entry.event.prev_node.as_mut() {
                if let (Some(key), Some(index), Some(value)) = (&prev.key, prev.modified_index, &prev.value) {
                    if let Some(shared) = written.get(&(key.clone(), index)) {
                        if shared == value {
                            prev.value = Some(Arc::clone(shared));
                        }
                    }
                }
            }
            let node = &entry.event.node;
            if let (Some(key), Some(index), Some(value)) = (&node.key, node.modified_index, &node.value) {
                written.insert((key.clone(), index), Arc::clone(value));
            }
        }
        let window_max = window_max.max(1);
        let slack_bytes = entries.iter().take(entries.len().saturating_sub(window_max)).map(entry_bytes).sum();
        let mut history = EventHistory { entries, window_max, slack_bytes };
        history.trim();
        history
    }
}

fn view_bytes(view: &NodeView) -> usize {
    view.key.as_ref().map_or(0, String::len) + view.value.as_ref().map_or(0, |value| value.len())
}

/// What an entry counts against [`SLACK_BYTES_MAX`].
fn entry_bytes(entry: &HistoryEntry) -> usize {
    view_bytes(&entry.event.node) + entry.event.prev_node.as_ref().map_or(0, view_bytes)
}

impl EventHistory {
    pub fn new(window_max: usize) -> EventHistory {
        EventHistory { entries: VecDeque::new(), window_max: window_max.max(1), slack_bytes: 0 }
    }

    pub fn push(&mut self, event: V2Response, refresh: bool) {
        debug_assert!(
            self.entries.back().is_none_or(|last| last.event.etcd_index + 1 == event.etcd_index),
            "history indices must be contiguous"
        );
        self.entries.push_back(HistoryEntry { event, refresh });
        if let Some(left_window) = self.entries.len().checked_sub(self.window_max + 1) {
            // The entry that just fell out of the logical window joins the slack.
            self.slack_bytes += entry_bytes(&self.entries[left_window]);
        }
        self.trim();
    }

    /// Drops the oldest slack entries while the slack is over either bound: amortized O(1)
    /// per push, since each entry is dropped once.
    fn trim(&mut self) {
        while self.entries.len() > self.window_max {
            let slack_entries = self.entries.len() - self.window_max;
            if slack_entries <= self.slack_entries_max() && self.slack_bytes <= SLACK_BYTES_MAX {
                break;
            }
            if let Some(dropped) = self.entries.pop_front() {
                self.slack_bytes -= entry_bytes(&dropped);
            }
        }
        debug_assert!(self.entries.len() <= self.window_max.saturating_add(self.slack_entries_max()));
    }

    /// A new window size (a node restarted with another `--max-history`): a larger one
    /// takes effect as events come (the kept ones count at once), a smaller one drops what
    /// is past it and its slack now.
    pub fn set_window_max(&mut self, window_max: usize) {
        self.window_max = window_max.max(1);
        let entries = &self.entries;
        self.slack_bytes = entries.iter().take(entries.len().saturating_sub(self.window_max)).map(entry_bytes).sum();
        self.trim();
    }

    fn slack_entries_max(&self) -> usize {
        self.window_max.max(SLACK_ENTRIES_MIN)
    }

    pub(super) fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|entry| entry.event.etcd_index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|entry| entry.event.etcd_index)
    }

    /// The oldest index a new watch may ask for (etcd's `StartIndex`), `None` when empty.
    pub fn logical_oldest(&self) -> Option<u64> {
        let first = self.first_index()?;
        let last = self.last_index()?;
        let window_first = (last + 1).saturating_sub(self.window_max as u64);
        Some(first.max(window_first))
    }

    /// The first event at or after `since_index` that the watch matches. `Ok(None)`: none
    /// yet. 401 (with `current_index`) when `since_index` is older than the window.
    /// `live`: `None` for a new watch (etcd's scan), `Some(key_exists)` for a registered
    /// watcher catching up (etcd's notify), with whether a node is at `key` (see
    /// [`live_matches_existing`]).
    pub fn find(
        &self,
        key: &str,
        recursive: bool,
        since_index: u64,
        live: Option<bool>,
        current_index: u64,
    ) -> Result<Option<&V2Response>, V2Error> {
        let oldest = if live.is_some() { self.first_index() } else { self.logical_oldest() };
        let (Some(oldest), Some(last)) = (oldest, self.last_index()) else {
            // etcd's empty history has StartIndex 0 and LastIndex 0: everything is future.
            return Ok(None);
        };
        if since_index < oldest {
            return Err(V2Error::new(
                CODE_EVENT_INDEX_CLEARED,
                Some(format!("the requested history has been cleared [{oldest}/{since_index}]")),
                current_index,
            ));
        }
        if since_index > last {
            return Ok(None);
        }
        let first = self.first_index().unwrap_or(oldest);
        let start = (since_index - first) as usize;
        let found = self
            .entries
            .range(start..)
            .filter(|entry| !entry.refresh)
            .map(|entry| &entry.event)
            .find(|event| match live {
                Some(key_exists) => live_matches_existing(event, key, recursive, key_exists),
                None => scan_matches(event, key, recursive),
            });
        Ok(found)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

fn event_key(event: &V2Response) -> &str {
    event.node.key.as_deref().unwrap_or(ROOT)
}

fn is_dir_removal(event: &V2Response) -> bool {
    matches!(event.action, Action::Delete | Action::Expire) && event.prev_node.as_ref().is_some_and(|prev| prev.dir)
}

/// etcd's `EventHistory.scan`: the exact key; with `recursive`, any key starting with
/// `key + "/"` (hidden ones included: scan has no hidden check); and the delete/expire of a
/// directory whose key is a *string* prefix of `key` (so deleting `/foo` matches `/foobar`
/// too, as etcd 3.4 answers).
pub(super) fn scan_matches(event: &V2Response, key: &str, recursive: bool) -> bool {
    let event_key = event_key(event);
    if event_key == key {
        return true;
    }
    if recursive {
        let matched = if key.ends_with('/') {
            event_key.starts_with(key)
        } else {
            event_key.len() > key.len() && event_key.starts_with(key) && event_key.as_bytes()[key.len()] == b'/'
        };
        if matched {
            return true;
        }
    }
    if is_dir_removal(event) {
        let removed = event.prev_node.as_ref().and_then(|prev| prev.key.as_deref()).unwrap_or(ROOT);
        return key.starts_with(removed);
    }
    false
}

/// etcd's `watcherHub.notify` for a watcher registered on `key`: the exact key; with
/// `recursive`, keys below it unless a segment below `key` is hidden; and the removal of a
/// directory containing `key`.
///
/// etcd wakes a watcher inside a removed directory only if a node existed at the watched
/// path (its `Remove` calls back for each node it removes); this matches as if one did.
#[cfg(test)]
pub(super) fn live_matches(event: &V2Response, key: &str, recursive: bool) -> bool {
    live_matches_existing(event, key, recursive, true)
}

/// Whether a node is at `key` right after `event`, an event a watcher on `key` matched:
/// the key's own event creates or keeps it unless it removes it, an enclosing directory's
/// removal takes it, and an event below it (a recursive watch) leaves it a directory.
pub(super) fn exists_after(event: &V2Response, key: &str) -> bool {
    let event_key = event_key(event);
    if event_key == key {
        return !matches!(event.action, Action::Delete | Action::Expire | Action::CompareAndDelete);
    }
    !is_strict_ancestor(event_key, key)
}

/// [`live_matches`], told whether a node is at `key` (`key_exists`). A watcher learns that
/// when it starts waiting and keeps it up to date from its own events: any event that
/// creates or removes the node at `key` matches it first, so the removal of an enclosing
/// directory finds the node there exactly when it was there as the watcher last looked.
pub(super) fn live_matches_existing(event: &V2Response, key: &str, recursive: bool, key_exists: bool) -> bool {
    let event_key = event_key(event);
    if event_key == key {
        return true;
    }
    if recursive && is_strict_ancestor(key, event_key) && !is_hidden_below(key, event_key) {
        return true;
    }
    key_exists && is_dir_removal(event) && is_strict_ancestor(event_key, key)
}
