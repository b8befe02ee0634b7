//! A directory's children: a set of names that becomes sharded when it grows big.

use std::fmt;
use std::sync::Arc;

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sharded::ShardedMap;

/// A directory's children's names, unordered: a [`ShardedMap`] of names, so that a directory
/// holding every key of a workload (a million, say) never doubles one table of all of them
/// in one step, and a snapshot shares it. Serialized as a plain sequence of names (the
/// bytes of the ordered set this used to be, in another order).
#[derive(Clone, Debug, Default)]
pub(super) struct ChildSet(ShardedMap<Arc<str>, ()>);

impl ChildSet {
    pub fn insert(&mut self, name: &str) {
        self.0.insert(Arc::from(name), ());
    }

    pub fn remove(&mut self, name: &str) {
        self.0.remove(name);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// In no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(name, ())| &**name)
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
                    set.insert(&name);
                }
                Ok(set)
            }
        }
        deserializer.deserialize_seq(SeqVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_set_is_a_set_serialized_as_a_sequence() {
        let mut set = ChildSet::default();
        let mut model = std::collections::BTreeSet::new();
        // Enough names for the map to split into shards.
        for i in 0..12_000u32 {
            let name = format!("k{}", i % 9_000);
            set.insert(&name);
            model.insert(name);
        }
        for i in (0..9_000u32).step_by(3) {
            let name = format!("k{i}");
            set.remove(&name);
            model.remove(&name);
        }
        set.remove("absent");
        assert_eq!(set.len(), model.len());
        assert!(set.contains("k1") && !set.contains("k0"));
        let names: std::collections::BTreeSet<String> = set.iter().map(str::to_string).collect();
        assert_eq!(names, model);

        // The same bytes as the ordered set of the same names, up to order.
        let json = serde_json::to_string(&set).expect("serialize");
        let as_model: std::collections::BTreeSet<String> = serde_json::from_str(&json).expect("a plain sequence");
        assert_eq!(as_model, model);
        let back: ChildSet = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, set);
        set.remove("k1");
        assert_ne!(back, set);
    }
}
