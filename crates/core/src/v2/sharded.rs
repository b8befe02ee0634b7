//! A hash map split into a fixed number of shards, for the v2 tree's node index.
//!
//! One big `HashMap` doubles its table in a single step: at half a million keys that step
//! stalled the state machine (and so every write behind it) for ~0.3 s, and the stall grows
//! with the map. With [`SHARDS`] shards each doubling moves 1/64 of the entries. Serialized
//! as one plain map (the same bytes as a `BTreeMap` or `HashMap` of the same entries), so the
//! snapshot format does not depend on the sharding.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const SHARDS: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ShardedMap<V> {
    shards: Vec<HashMap<String, V>>,
    len: usize,
}

/// FNV-1a: cheap, and the same in every process (the shard of a key never depends on a
/// random seed, so two maps with the same entries compare equal shard by shard).
fn shard_of(key: &str) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % SHARDS as u64) as usize
}

impl<V> ShardedMap<V> {
    pub fn new() -> ShardedMap<V> {
        ShardedMap { shards: (0..SHARDS).map(|_| HashMap::new()).collect(), len: 0 }
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.shards[shard_of(key)].get(key)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.shards[shard_of(key)].get_mut(key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Inserts or replaces; returns the value that was there.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        let previous = self.shards[shard_of(&key)].insert(key, value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let removed = self.shards[shard_of(key)].remove(key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// In no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.shards.iter().flat_map(|shard| shard.iter())
    }
}

impl<V: Serialize> Serialize for ShardedMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for (key, value) in self.iter() {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for ShardedMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = ShardedMap<V>;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a map of paths to nodes")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = ShardedMap::new();
                while let Some((key, value)) = access.next_entry::<String, V>()? {
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
        for i in 0..1000u32 {
            let key = format!("/k/{}", i % 700);
            assert_eq!(map.insert(key.clone(), i), model.insert(key, i));
        }
        for i in (0..700u32).step_by(3) {
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
        let back: ShardedMap<u32> = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, map);
    }
}
