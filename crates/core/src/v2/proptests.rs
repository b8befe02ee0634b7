//! Property tests: random operation sequences against a deliberately simple model (files in
//! a map, dirs in a set, expirations in a map, linear scans everywhere), checking every
//! outcome (success or error code), the index rising by one per success and per expiry,
//! the resulting tree, and that the history answers `waitIndex` lookups with the right
//! event and 401 exactly outside the window.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

const T0_MS: u64 = 1_700_000_000_000;
const HISTORY_MAX: usize = 16;

#[derive(Clone, Debug)]
enum Op {
    Set { key: String, value: String, ttl_s: Option<u64>, dir: bool },
    Create { key: String, value: String, dir: bool },
    Update { key: String, value: String, ttl_s: Option<u64> },
    Refresh { key: String, ttl_s: u64 },
    CasValue { key: String, prev: String, value: String },
    CasIndex { key: String, prev_index: u64, value: String },
    Delete { key: String, dir: bool, recursive: bool },
    CadValue { key: String, prev: String },
    InOrder { dir: String, value: String },
    Advance { ms: u64 },
}

fn key() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "_h"]), 0..=3).prop_map(|segments| {
        let mut key = String::new();
        for segment in segments {
            key.push('/');
            key.push_str(segment);
        }
        if key.is_empty() {
            "/".to_string()
        } else {
            key
        }
    })
}

fn value() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", "x", "y"]).prop_map(str::to_string)
}

fn ttl() -> impl Strategy<Value = Option<u64>> {
    prop::option::weighted(0.3, 0u64..3)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), value(), ttl(), prop::bool::weighted(0.2)).prop_map(|(key, value, ttl_s, dir)| Op::Set { key, value, ttl_s, dir }),
        2 => (key(), value(), any::<bool>()).prop_map(|(key, value, dir)| Op::Create { key, value, dir }),
        2 => (key(), value(), ttl()).prop_map(|(key, value, ttl_s)| Op::Update { key, value, ttl_s }),
        1 => (key(), 0u64..3).prop_map(|(key, ttl_s)| Op::Refresh { key, ttl_s }),
        2 => (key(), prop::sample::select(vec!["x", "y"]), value()).prop_map(|(key, prev, value)| Op::CasValue { key, prev: prev.to_string(), value }),
        1 => (key(), 1u64..40, value()).prop_map(|(key, prev_index, value)| Op::CasIndex { key, prev_index, value }),
        2 => (key(), any::<bool>(), any::<bool>()).prop_map(|(key, dir, recursive)| Op::Delete { key, dir, recursive }),
        1 => (key(), prop::sample::select(vec!["x", "y"])).prop_map(|(key, prev)| Op::CadValue { key, prev: prev.to_string() }),
        1 => (key(), value()).prop_map(|(dir, value)| Op::InOrder { dir, value }),
        1 => (0u64..2500).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// The model: the simplest thing that holds the same facts.
#[derive(Default)]
struct Model {
    /// path → (value, modifiedIndex)
    files: BTreeMap<String, (String, u64)>,
    dirs: BTreeSet<String>,
    expirations_ms: BTreeMap<String, u64>,
    index: u64,
    /// Per index (1-based): was it a refresh (kept in the history, never delivered)?
    refresh: Vec<bool>,
}

fn ancestors(key: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(slash) = key[at + 1..].find('/') {
        at += 1 + slash;
        found.push(key[..at].to_string());
    }
    found
}

impl Model {
    fn is_dir(&self, key: &str) -> bool {
        key == "/" || self.dirs.contains(key)
    }

    fn exists(&self, key: &str) -> bool {
        self.is_dir(key) || self.files.contains_key(key)
    }

    fn file_above(&self, key: &str) -> bool {
        ancestors(key).iter().any(|ancestor| self.files.contains_key(ancestor))
    }

    fn remove_subtree(&mut self, key: &str) {
        let prefix = format!("{key}/");
        self.files.retain(|path, _| path != key && !path.starts_with(&prefix));
        self.dirs.retain(|path| path != key && !path.starts_with(&prefix));
        self.expirations_ms.retain(|path, _| path != key && !path.starts_with(&prefix));
    }

    fn make_parents(&mut self, key: &str) {
        for ancestor in ancestors(key) {
            self.dirs.insert(ancestor);
        }
    }

    fn set_ttl(&mut self, key: &str, now_ms: u64, ttl_s: Option<u64>) {
        match ttl_s {
            Some(ttl_s) => self.expirations_ms.insert(key.to_string(), now_ms + ttl_s * 1000),
            None => self.expirations_ms.remove(key),
        };
    }

    fn succeed(&mut self, refresh: bool) {
        self.index += 1;
        self.refresh.push(refresh);
    }

    fn put_node(&mut self, key: &str, value: &str, dir: bool, now_ms: u64, ttl_s: Option<u64>) {
        self.remove_subtree(key);
        self.make_parents(key);
        if dir {
            self.dirs.insert(key.to_string());
        } else {
            self.files.insert(key.to_string(), (value.to_string(), self.index + 1));
        }
        self.set_ttl(key, now_ms, ttl_s);
    }

    /// The expected error code, or `None` after applying the success.
    fn apply(&mut self, op: &Op, now_ms: u64) -> Option<u16> {
        match op {
            Op::Set { key, value, ttl_s, dir } => {
                let code = if self.file_above(key) {
                    Some(104)
                } else if key == "/" {
                    Some(107)
                } else if self.is_dir(key) {
                    Some(102)
                } else {
                    None
                };
                if code.is_none() {
                    self.put_node(key, value, *dir, now_ms, *ttl_s);
                    self.succeed(false);
                }
                code
            }
            Op::Create { key, value, dir } => {
                let code = if key == "/" {
                    Some(107)
                } else if self.file_above(key) {
                    Some(104)
                } else if self.exists(key) {
                    Some(105)
                } else {
                    None
                };
                if code.is_none() {
                    self.put_node(key, value, *dir, now_ms, None);
                    self.succeed(false);
                }
                code
            }
            Op::Update { key, value, ttl_s } => {
                let code = if key == "/" {
                    Some(107)
                } else if self.file_above(key) {
                    Some(104)
                } else if !self.exists(key) {
                    Some(100)
                } else if self.is_dir(key) && !value.is_empty() {
                    Some(102)
                } else {
                    None
                };
                if code.is_none() {
                    let next = self.index + 1;
                    if let Some(file) = self.files.get_mut(key) {
                        *file = (value.clone(), next);
                    }
                    self.set_ttl(key, now_ms, *ttl_s);
                    self.succeed(false);
                }
                code
            }
            Op::Refresh { key, ttl_s } => {
                // A refresh without prevExist is a set keeping the value.
                let code = if self.file_above(key) {
                    Some(104)
                } else if !self.exists(key) {
                    Some(100)
                } else if key == "/" {
                    Some(107)
                } else if self.is_dir(key) {
                    Some(102)
                } else {
                    None
                };
                if code.is_none() {
                    let value = self.files[key].0.clone();
                    self.put_node(key, &value, false, now_ms, Some(*ttl_s));
                    self.succeed(true);
                }
                code
            }
            Op::CasValue { key, value, .. } | Op::CasIndex { key, value, .. } => {
                let matches = |file: &(String, u64)| match op {
                    Op::CasValue { prev, .. } => &file.0 == prev,
                    Op::CasIndex { prev_index, .. } => file.1 == *prev_index,
                    _ => unreachable!(),
                };
                let code = if key == "/" {
                    Some(107)
                } else if self.file_above(key) {
                    Some(104)
                } else if !self.exists(key) {
                    Some(100)
                } else if self.is_dir(key) {
                    Some(102)
                } else if !matches(&self.files[key]) {
                    Some(101)
                } else {
                    None
                };
                if code.is_none() {
                    let next = self.index + 1;
                    self.files.insert(key.clone(), (value.clone(), next));
                    self.expirations_ms.remove(key);
                    self.succeed(false);
                }
                code
            }
            Op::Delete { key, dir, recursive } => {
                let has_children = {
                    let prefix = if key == "/" { "/".to_string() } else { format!("{key}/") };
                    self.files.keys().chain(self.dirs.iter()).any(|path| path.starts_with(&prefix) && path != key)
                };
                let code = if key == "/" {
                    Some(107)
                } else if self.file_above(key) {
                    Some(104)
                } else if !self.exists(key) {
                    Some(100)
                } else if self.is_dir(key) && !dir && !recursive {
                    Some(102)
                } else if self.is_dir(key) && has_children && !recursive {
                    Some(108)
                } else {
                    None
                };
                if code.is_none() {
                    self.remove_subtree(key);
                    self.succeed(false);
                }
                code
            }
            Op::CadValue { key, prev } => {
                let code = if self.file_above(key) {
                    Some(104)
                } else if !self.exists(key) {
                    Some(100)
                } else if self.is_dir(key) {
                    Some(102)
                } else if &self.files[key].0 != prev {
                    Some(101)
                } else {
                    None
                };
                if code.is_none() {
                    self.remove_subtree(key);
                    self.succeed(false);
                }
                code
            }
            Op::InOrder { dir, value } => {
                let code = if self.file_above(dir) || self.files.contains_key(dir) { Some(104) } else { None };
                if code.is_none() {
                    let key = if dir == "/" { format!("/{:020}", self.index + 1) } else { format!("{dir}/{:020}", self.index + 1) };
                    self.put_node(&key, value, false, now_ms, None);
                    self.succeed(false);
                }
                code
            }
            Op::Advance { .. } => None,
        }
    }

    /// Expires due nodes in (expiration, path) order; a removed dir takes its subtree.
    fn expire_until(&mut self, now_ms: u64) -> u64 {
        let mut expired = 0;
        loop {
            let due = self
                .expirations_ms
                .iter()
                .filter(|(_, &at)| at <= now_ms)
                .map(|(path, &at)| (at, path.clone()))
                .min();
            let Some((_, path)) = due else { return expired };
            self.remove_subtree(&path);
            self.succeed(false);
            expired += 1;
        }
    }
}

fn command(op: &Op) -> Option<V2Command> {
    let set = |key: &String, tweak: &dyn Fn(&mut SetCommand)| {
        let mut set = SetCommand { key: key.clone(), ..SetCommand::default() };
        tweak(&mut set);
        V2Command::Set(set)
    };
    Some(match op {
        Op::Set { key, value, ttl_s, dir } => set(key, &|c| {
            c.value = value.clone();
            c.ttl_s = *ttl_s;
            c.is_dir = *dir;
        }),
        Op::Create { key, value, dir } => set(key, &|c| {
            c.value = value.clone();
            c.is_dir = *dir;
            c.prev_exist = Some(false);
        }),
        Op::Update { key, value, ttl_s } => set(key, &|c| {
            c.value = value.clone();
            c.ttl_s = *ttl_s;
            c.prev_exist = Some(true);
        }),
        Op::Refresh { key, ttl_s } => set(key, &|c| {
            c.refresh = true;
            c.ttl_s = Some(*ttl_s);
        }),
        Op::CasValue { key, prev, value } => set(key, &|c| {
            c.value = value.clone();
            c.prev_value = Some(prev.clone());
        }),
        Op::CasIndex { key, prev_index, value } => set(key, &|c| {
            c.value = value.clone();
            c.prev_index = Some(*prev_index);
        }),
        Op::Delete { key, dir, recursive } => {
            V2Command::Delete(DeleteCommand { key: key.clone(), is_dir: *dir, recursive: *recursive, ..DeleteCommand::default() })
        }
        Op::CadValue { key, prev } => {
            V2Command::Delete(DeleteCommand { key: key.clone(), prev_value: Some(prev.clone()), ..DeleteCommand::default() })
        }
        Op::InOrder { dir, value } => V2Command::CreateInOrder { dir: dir.clone(), value: value.clone(), is_dir: false, ttl_s: None },
        Op::Advance { .. } => return None,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn clean_path_takes_a_clean_key_as_it_is_and_cleans_any_other_the_long_way(
        segments in prop::collection::vec(prop::sample::select(vec!["", ".", "..", "a", "bc", "é", ".x", "x."]), 0..6),
        leading_slash in any::<bool>(),
    ) {
        let key = format!("{}{}", if leading_slash { "/" } else { "" }, segments.join("/"));
        prop_assert_eq!(super::tree::clean_path(&key), super::tree::clean_segments(&key), "{}", key);
    }

    #[test]
    fn store_agrees_with_model(ops in prop::collection::vec(op(), 1..80)) {
        let mut store = Store::new(HISTORY_MAX);
        let mut model = Model::default();
        let mut now_ms = T0_MS;
        for op in &ops {
            match command(op) {
                None => {
                    if let Op::Advance { ms } = op {
                        now_ms += ms;
                    }
                    let before = store.index();
                    store.expire_until(now_ms);
                    let expired = model.expire_until(now_ms);
                    prop_assert_eq!(store.index(), before + expired, "one index per expiry");
                }
                Some(command) => {
                    let before = store.index();
                    let expected = model.apply(op, now_ms);
                    match (store.apply(now_ms, &command), expected) {
                        (Ok(response), None) => {
                            prop_assert_eq!(response.etcd_index, before + 1);
                            prop_assert_eq!(store.index(), before + 1);
                            // The event is in the history at its own index, unless a refresh.
                            let key = response.node.key.clone().unwrap_or_default();
                            let lookup = store.watch(&key, false, response.etcd_index, false).expect("just written");
                            if model.refresh[(response.etcd_index - 1) as usize] {
                                let pending = matches!(lookup, WatchLookup::Pending { .. });
                                prop_assert!(pending, "a refresh is never delivered");
                            } else {
                                prop_assert_eq!(lookup, WatchLookup::Found(response.clone()));
                            }
                        }
                        (Err(error), Some(code)) => {
                            prop_assert_eq!(error.code, code, "{:?}", op);
                            prop_assert_eq!(error.index, before);
                            prop_assert_eq!(store.index(), before);
                        }
                        (outcome, expected) => prop_assert!(false, "{:?}: store {:?}, model expected {:?}", op, outcome, expected),
                    }
                }
            }
            prop_assert_eq!(store.index(), model.index);
            store.tree().check_invariants();
            let files: BTreeMap<String, String> = model.files.iter().map(|(k, (v, _))| (k.clone(), v.clone())).collect();
            prop_assert_eq!(store.tree().files(), files);
            let mut dirs = model.dirs.clone();
            dirs.insert("/".to_string());
            prop_assert_eq!(store.tree().dirs(), dirs);
            prop_assert_eq!(store.ttl_entries(), model.expirations_ms.len());
            for (path, (_, modified)) in &model.files {
                let view = store.get(path, false, false, now_ms).expect("model file exists").node;
                prop_assert_eq!(view.modified_index, Some(*modified));
            }
        }
        // The history: every index in the window answers a recursive root watch with the
        // first non-refresh event at or after it; older ones are 401.
        let current = store.index();
        let oldest = (current + 1).saturating_sub(HISTORY_MAX as u64).max(1);
        for since in 1..=current + 1 {
            let lookup = store.watch("/", true, since, false);
            if since < oldest {
                prop_assert_eq!(lookup.expect_err("cleared").code, 401);
                continue;
            }
            let expected = (since..=current).find(|&index| !model.refresh[(index - 1) as usize]);
            match (lookup.expect("in window"), expected) {
                (WatchLookup::Found(event), Some(index)) => prop_assert_eq!(event.etcd_index, index),
                (WatchLookup::Pending { index }, None) => prop_assert_eq!(index, current),
                (lookup, expected) => prop_assert!(false, "since {}: {:?} vs {:?}", since, lookup, expected),
            }
        }
    }
}
