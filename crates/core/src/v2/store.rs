//! The tree, the TTL index and the event history. (Skeleton: the contract is fixed, the
//! bodies are being written.)

use serde::{Deserialize, Serialize};

use super::{V2Command, V2Error, V2Response, WatchLookup};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Store {
    index: u64,
    history_max: usize,
}

impl Store {
    /// An empty store (only the root directory) whose history keeps `history_max` events
    /// for `waitIndex` lookups.
    pub fn new(history_max: usize) -> Store {
        Store { index: 0, history_max }
    }

    /// The store index: rises by exactly one per successful mutation (and per expiry and
    /// refresh). `X-Etcd-Index`.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Applies one mutation at entry time `now_ms`.
    pub fn apply(&mut self, now_ms: u64, command: &V2Command) -> Result<V2Response, V2Error> {
        let _ = (now_ms, command);
        todo!()
    }

    /// `GET /v2/keys/{key}` (without wait). `now_ms` only renders the remaining `ttl`.
    pub fn get(&self, key: &str, recursive: bool, sorted: bool, now_ms: u64) -> Result<V2Response, V2Error> {
        let _ = (key, recursive, sorted, now_ms);
        todo!()
    }

    /// The first event with index ≥ `since_index` that a watcher on `key` sees (see
    /// etcd-v2-api.md §7 for which events match). `since_index` older than the logical
    /// history window (the last `history_max` events) is error 401. `live` watchers, which
    /// already waited and are catching up after a wake-up, may also read the slack kept
    /// beyond the window, as etcd's registered watchers never miss events.
    pub fn watch(&self, key: &str, recursive: bool, since_index: u64, live: bool) -> Result<WatchLookup, V2Error> {
        let _ = (key, recursive, since_index, live);
        todo!()
    }

    /// Expires every node whose expiration is at or before `now_ms`, each with an `expire`
    /// event and its own index.
    pub fn expire_until(&mut self, now_ms: u64) {
        let _ = now_ms;
    }

    /// The earliest expiration in the store (Unix ms), if any.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        None
    }
}
