//! A hash map split into shards that are shared copy-on-write, for the state's big tables
//! (the v2 node index, a big directory's children, the job records).
//!
//! Shards, because one big `HashMap` doubles its table in one step: at half a million keys
//! that step stalled the state machine (and so every write behind it) for ~0.3 s, and the
//! stall grows with the map; with `n` shards each doubling moves 1/n of the entries. A map
//! is one table until it holds [`ONE_SHARD_MAX`] entries, so small maps stay small.
//!
//! Copy-on-write, so that a snapshot can take the state as it is in O(shards) and encode it
//! on another thread while writes go on: cloning the map shares every shard, and the first
//! write to a shared shard copies that shard alone (`Arc::make_mut`). Many small shards
//! keep each copy short: a batch of random writes touches a few dozen of them.
//!
//! Serialized as one plain map (the same bytes as a `BTreeMap` or `HashMap` of the same
//! entries), so the snapshot format does not depend on the sharding.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A map starts as one table and is split into [`SHARDS`] once it holds more than this many
/// entries (most maps stay small: a directory's children, a test's state).
const ONE_SHARD_MAX: usize = 4096;

/// Shards of a big map: ~250 entries each at a million.
const SHARDS: usize = 4096;

#[derive(Clone, Debug)]
pub(crate) struct ShardedMap<K, V> {
    shards: Vec<Arc<Table<K, V>>>,
    len: usize,
}

/// Each table's hasher: foldhash, seeded per table from a per-process random seed. It
/// hashes a path several times faster than std's SipHash (which was a third of the time
/// the state machine spent in these maps), and the random seed keeps crafted keys from
/// being aimed at one bucket.
type TableHasher = foldhash::fast::RandomState;

type Table<K, V> = HashMap<K, V, TableHasher>;

/// Which shard a key lands in: foldhash with a fixed seed, so it is the same in every
/// process and never depends on a random seed. Crafted keys can pile into one shard, but
/// not into one bucket of its table.
const SHARD_SEED: u64 = 0x5eed_0f5b_a2d5_0a7a;
impl<K: Hash + Eq + Clone, V: Clone> ShardedMap<K, V> {
    pub fn new() -> ShardedMap<K, V> {
        ShardedMap { shards: vec![Arc::new(Table::default())], len: 0 }
    }

    fn shard_of<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        if self.shards.len() == 1 {
            return 0;
        }
        let hash = foldhash::fast::FixedState::with_seed(SHARD_SEED).hash_one(key);
        (hash % self.shards.len() as u64) as usize
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard_of(key)].get(key)
    }

    /// Copies the key's shard first if a snapshot still shares it.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard_holding_mut(key)?.get_mut(key)
    }

    /// The shard holding `key`, made unshared; `None` (and nothing copied) if it's absent.
    fn shard_holding_mut<Q>(&mut self, key: &Q) -> Option<&mut Table<K, V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shard_of(key);
        if !self.shards[shard].contains_key(key) {
            return None;
        }
        Some(Arc::make_mut(&mut self.shards[shard]))
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    /// Inserts or replaces; returns the value that was there.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let shard = self.shard_of(&key);
        let previous = Arc::make_mut(&mut self.shards[shard]).insert(key, value);
        if previous.is_none() {
            self.len += 1;
            if self.shards.len() == 1 && self.len > ONE_SHARD_MAX {
                self.split();
            }
        }
        previous
    }

    /// One table into [`SHARDS`]; once, at [`ONE_SHARD_MAX`] entries.
    fn split(&mut self) {
        let table = std::mem::take(&mut self.shards).pop().expect("one shard");
        let table = Arc::try_unwrap(table).unwrap_or_else(|shared| (*shared).clone());
        self.shards = (0..SHARDS).map(|_| Arc::new(Table::default())).collect();
        for (key, value) in table {
            let shard = self.shard_of(&key);
            Arc::make_mut(&mut self.shards[shard]).insert(key, value);
        }
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let removed = self.shard_holding_mut(key)?.remove(key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// In no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|shard| shard.iter())
    }

    #[cfg(test)]
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(key, _)| key)
    }

    #[cfg(test)]
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }
}

/// Panics when `key` is absent, as `HashMap`'s indexing does.
impl<K, V, Q> std::ops::Index<&Q> for ShardedMap<K, V>
where
    K: Hash + Eq + Clone + Borrow<Q>,
    V: Clone,
    Q: Hash + Eq + ?Sized,
{
    type Output = V;

    fn index(&self, key: &Q) -> &V {
        self.get(key).expect("key present in ShardedMap")
    }
}

/// Equal when they hold the same entries, however each is sharded.
impl<K: Hash + Eq + Clone, V: Clone + PartialEq> PartialEq for ShardedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().all(|(key, value)| other.get(key) == Some(value))
    }
}

impl<K: Hash + Eq + Clone, V: Clone + Eq> Eq for ShardedMap<K, V> {}

impl<K: Serialize, V: Serialize> Serialize for ShardedMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for shard in &self.shards {
            for (key, value) in shard.iter() {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap::new()
    }
}

impl<'de, K, V> Deserialize<'de> for ShardedMap<K, V>
where
    K: Deserialize<'de> + Hash + Eq + Clone,
    V: Deserialize<'de> + Clone,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<K, V>(PhantomData<(K, V)>);
        impl<'de, K, V> Visitor<'de> for MapVisitor<K, V>
        where
            K: Deserialize<'de> + Hash + Eq + Clone,
            V: Deserialize<'de> + Clone,
        {
            type Value = ShardedMap<K, V>;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = ShardedMap::new();
                while let Some((key, value)) = access.next_entry::<K, V>()? {
                    map.insert(key, value);
                }
                Ok(map)
            }
        }
        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn behaves_as_a_map_and_serializes_as_one() {
        let mut map = ShardedMap::new();
        let mut model = BTreeMap::new();
        let distinct = ONE_SHARD_MAX as u32 + 700;
        for i in 0..distinct + 1000 {
            let key = format!("/k/{}", i % distinct);
            assert_eq!(map.insert(key.clone(), i), model.insert(key, i));
        }
        assert_eq!(map.shard_count(), SHARDS);
        for i in (0..distinct).step_by(3) {
            let key = format!("/k/{i}");
            assert_eq!(map.remove(&key), model.remove(&key));
        }
        assert_eq!(map.remove("/absent"), None);
        assert_eq!(map.len(), model.len());
        let entries: BTreeMap<String, u32> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(entries, model);

        let json = serde_json::to_string(&map).expect("serialize");
        let as_model: BTreeMap<String, u32> = serde_json::from_str(&json).expect("a plain map");
        assert_eq!(as_model, model);
        let back: ShardedMap<String, u32> = serde_json::from_str(&json).expect("deserialize");
        // Fewer entries than a split needs by now: one table, equal all the same.
        assert_eq!(back.shard_count(), 1);
        assert_eq!(back, map);

        let mut small: ShardedMap<String, u32> = ShardedMap::new();
        small.insert("/a".to_string(), 1);
        assert_eq!(small.shard_count(), 1);
        assert_ne!(small, map);
    }

    #[test]
    fn a_clone_keeps_its_entries_while_the_original_is_written() {
        let mut map: ShardedMap<u64, String> = ShardedMap::new();
        let n = ONE_SHARD_MAX as u64 * 2;
        for i in 0..n {
            map.insert(i, format!("v{i}"));
        }
        let image = map.clone();
        for i in 0..n {
            if i % 2 == 0 {
                *map.get_mut(&i).expect("present") = format!("w{i}");
            } else {
                map.remove(&i);
            }
        }
        assert_eq!(image.len(), n as usize);
        assert!((0..n).all(|i| image.get(&i) == Some(&format!("v{i}"))));
        assert_eq!(image.get(&(n + 1)), None);
        map.insert(n + 1, "new".to_string());
        assert_eq!(image.get(&(n + 1)), None);
        assert_eq!(map.len(), n as usize / 2 + 1);
        assert_eq!(map.get(&2), Some(&"w2".to_string()));
        assert_eq!(map.get(&3), None);
    }
}
