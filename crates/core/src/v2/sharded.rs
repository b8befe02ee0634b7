//! A hash map split into a fixed number of shards, for the v2 tree's node index, and a set
//! of names that becomes one when it grows big, for a directory's children.
//!
//! One big `HashMap` doubles its table in a single step: at half a million keys that step
//! stalled the state machine (and so every write behind it) for ~0.3 s, and the stall grows
//! with the map. With [`SHARDS`] shards each doubling moves 1/64 of the entries. Serialized
//! as one plain map (the same bytes as a `BTreeMap` or `HashMap` of the same entries), so the
//! snapshot format does not depend on the sharding.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
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

/// Above this many names a [`ChildSet`] is sharded: a directory holding every key of a
/// workload (a million, say) would otherwise double one table of all of them in one step.
const CHILD_SET_FLAT_MAX: usize = 4096;

/// A directory's children's names, unordered. Small sets are one `HashSet`; a set that grows
/// past [`CHILD_SET_FLAT_MAX`] becomes a [`ShardedMap`] (and stays one). Serialized as a plain
/// sequence of names either way.
#[derive(Clone, Debug)]
pub(super) enum ChildSet {
    Flat(HashSet<String>),
    Sharded(Box<ShardedMap<()>>),
}

impl Default for ChildSet {
    fn default() -> Self {
        ChildSet::Flat(HashSet::new())
    }
}

impl ChildSet {
    pub fn insert(&mut self, name: String) {
        match self {
            ChildSet::Flat(set) if set.len() >= CHILD_SET_FLAT_MAX => {
                let mut sharded = ShardedMap::new();
                for existing in set.drain() {
                    sharded.insert(existing, ());
                }
                sharded.insert(name, ());
                *self = ChildSet::Sharded(Box::new(sharded));
            }
            ChildSet::Flat(set) => {
                set.insert(name);
            }
            ChildSet::Sharded(map) => {
                map.insert(name, ());
            }
        }
    }

    pub fn remove(&mut self, name: &str) {
        match self {
            ChildSet::Flat(set) => {
                set.remove(name);
            }
            ChildSet::Sharded(map) => {
                map.remove(name);
            }
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            ChildSet::Flat(set) => set.contains(name),
            ChildSet::Sharded(map) => map.contains_key(name),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            ChildSet::Flat(set) => set.len(),
            ChildSet::Sharded(map) => map.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// In no particular order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = &String> + '_> {
        match self {
            ChildSet::Flat(set) => Box::new(set.iter()),
            ChildSet::Sharded(map) => Box::new(map.iter().map(|(name, ())| name)),
        }
    }
}

/// Equal when they hold the same names, however each is laid out.
impl PartialEq for ChildSet {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|name| other.contains(name))
    }
}

impl Eq for ChildSet {}

impl Serialize for ChildSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for name in self.iter() {
            seq.serialize_element(name)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for ChildSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SeqVisitor;
        impl<'de> Visitor<'de> for SeqVisitor {
            type Value = ChildSet;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a sequence of child names")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut set = ChildSet::default();
                while let Some(name) = access.next_element::<String>()? {
                    set.insert(name);
                }
                Ok(set)
            }
        }
        deserializer.deserialize_seq(SeqVisitor)
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

    #[test]
    fn child_set_behaves_as_a_set_across_the_switch_to_shards() {
        let mut set = ChildSet::default();
        let mut model = std::collections::BTreeSet::new();
        for i in 0..(CHILD_SET_FLAT_MAX as u32 * 2) {
            let name = format!("k{}", i % (CHILD_SET_FLAT_MAX as u32 + 700));
            set.insert(name.clone());
            model.insert(name);
        }
        assert!(matches!(set, ChildSet::Sharded(_)));
        for i in (0..CHILD_SET_FLAT_MAX as u32).step_by(3) {
            let name = format!("k{i}");
            set.remove(&name);
            model.remove(&name);
        }
        set.remove("absent");
        assert_eq!(set.len(), model.len());
        assert!(set.contains("k1") && !set.contains("k0"));
        let names: std::collections::BTreeSet<String> = set.iter().cloned().collect();
        assert_eq!(names, model);

        // The same bytes as the ordered set of the same names, up to order; equal to a flat
        // set of the same names.
        let json = serde_json::to_string(&set).expect("serialize");
        let as_model: std::collections::BTreeSet<String> = serde_json::from_str(&json).expect("a plain sequence");
        assert_eq!(as_model, model);
        let back: ChildSet = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, set);
        let flat = ChildSet::Flat(model.iter().cloned().collect());
        assert_eq!(flat, set);
        assert_ne!(ChildSet::Flat(model.iter().skip(1).cloned().collect()), set);
    }
}
