//! Duplicate mapping keys anywhere in a pack's YAML are an error.
//!
//! YAML requires the keys of a mapping to be unique, but serde keeps the last value of a
//! repeated key whenever it deserializes into a map (`container:`, `parameters:`, `env:` are
//! `serde_json::Value`s), and a struct ignores repeated unknown fields. [`UniqueKeys`] walks a
//! whole document before it is deserialized for real and fails at the first repeated key. The
//! error is raised while the repeated key itself is being read, so serde_norway stamps it with
//! that key's line and column (and its path in the document).

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Visitor};
use std::collections::HashSet;
use std::fmt;

/// Checks a document (or any node of it) for repeated mapping keys; yields nothing.
pub(crate) struct UniqueKeys;

impl<'de> DeserializeSeed<'de> for UniqueKeys {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// A mapping key as YAML compares it: by its value (so `a` and `"a"` are the same key).
#[derive(Debug, PartialEq, Eq, Hash)]
enum Key {
    Null,
    Bool(bool),
    Integer(i128),
    /// The bits of the float (`1.0` and `1.00` are one key).
    Float(u64),
    String(String),
}

impl fmt::Display for Key {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Null => formatter.write_str("null"),
            Key::Bool(value) => write!(formatter, "{value}"),
            Key::Integer(value) => write!(formatter, "{value}"),
            Key::Float(bits) => write!(formatter, "{}", f64::from_bits(*bits)),
            Key::String(value) => write!(formatter, "{value:?}"),
        }
    }
}

/// Any node: scalars are fine, sequences and mappings are walked.
struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        UniqueKeys.deserialize(deserializer)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        UniqueKeys.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut sequence: A) -> Result<(), A::Error> {
        while sequence.next_element_seed(UniqueKeys)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while map.next_key_seed(KeySeed { seen: &mut seen })?.is_some() {
            map.next_value_seed(UniqueKeys)?;
        }
        Ok(())
    }

    /// A tagged node (`!tag value`): its value is walked.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        let (_, variant) = data.variant::<de::IgnoredAny>()?;
        de::VariantAccess::newtype_variant_seed(variant, UniqueKeys)
    }
}

/// One key of a mapping, checked against the keys before it.
struct KeySeed<'a> {
    seen: &'a mut HashSet<Key>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(KeyVisitor { seen: self.seen })
    }
}

struct KeyVisitor<'a> {
    seen: &'a mut HashSet<Key>,
}

impl KeyVisitor<'_> {
    /// Fails inside the key's own deserialization, so the error carries the key's position.
    fn insert<E: de::Error>(self, key: Key) -> Result<(), E> {
        if self.seen.contains(&key) {
            return Err(E::custom(format_args!(
                "duplicate key {key} (a key may appear only once in a mapping)"
            )));
        }
        self.seen.insert(key);
        Ok(())
    }
}

impl<'de> Visitor<'de> for KeyVisitor<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a mapping key")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<(), E> {
        self.insert(Key::Bool(value))
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<(), E> {
        self.insert(Key::Integer(value.into()))
    }

    fn visit_i128<E: de::Error>(self, value: i128) -> Result<(), E> {
        self.insert(Key::Integer(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<(), E> {
        self.insert(Key::Integer(value.into()))
    }

    fn visit_u128<E: de::Error>(self, value: u128) -> Result<(), E> {
        match i128::try_from(value) {
            Ok(value) => self.insert(Key::Integer(value)),
            Err(_) => self.insert(Key::String(value.to_string())),
        }
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<(), E> {
        // -0.0 and 0.0 compare equal as YAML values.
        let value = if value == 0.0 { 0.0 } else { value };
        self.insert(Key::Float(value.to_bits()))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.insert(Key::String(value.to_string()))
    }

    fn visit_bytes<E: de::Error>(self, value: &[u8]) -> Result<(), E> {
        self.insert(Key::String(String::from_utf8_lossy(value).into_owned()))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.insert(Key::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.insert(Key::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    /// A sequence used as a key (`? [a, b]`): walked, not compared.
    fn visit_seq<A: SeqAccess<'de>>(self, sequence: A) -> Result<(), A::Error> {
        NodeVisitor.visit_seq(sequence)
    }

    /// A mapping used as a key: walked, not compared.
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        NodeVisitor.visit_map(map)
    }

    /// A tagged key: walked, not compared.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        NodeVisitor.visit_enum(data)
    }
}
