//! Redis hashes and sets for `pst kv`, stored in the same log as strings.
//!
//! A set is stored like a hash whose fields (the members) have empty values: same field
//! records, same atomic groups, same recovery; only its marker ([`SET_MARKER`]) differs.
//!
//! **On media**: each field is a record of its own under the reserved key `\xffpst:h` + the
//! hash's stored key length (u32, big-endian) + the stored key + the field name; its value is
//! the field's value, stored where it landed (zero copy, like a string value). The hash's own
//! key holds the marker value [`MARKER`], so that the keyspace commands (`EXISTS`, `DBSIZE`,
//! `KEYS`, `SCAN`, `EXPIRE`, `TTL`, `RANDOMKEY`) see a hash like any key. A command that
//! writes several records (a new hash, `HDEL` of the last field, `DEL` of a hash) writes them
//! as one atomic group, so a crash never leaves half a command. On load, field records whose
//! hash key is missing or not a hash are dropped, and a marker without fields is dropped.
//!
//! **In memory**: hash key → its field names, for `HLEN`, `HKEYS`, `HGETALL` and the type
//! checks (a string command on a hash answers `WRONGTYPE`). Fields keep their insertion order
//! like a small Redis hash (a listpack), which clients and tests rely on; past
//! [`ORDERED_UP_TO`] fields a delete moves the last field into the hole (O(1), like Redis's
//! hashtable the order is then arbitrary). After a restart the order is that of the fields'
//! latest records.

use std::collections::HashMap;

use indexmap::IndexSet;

use pst_store::StoreError;

use crate::protocol::Io;
use crate::store::PoolStore;

/// Prefix of the reserved keys holding hash fields.
pub const FIELD_PREFIX: &[u8] = b"\xffpst:h";

/// The value of a hash's own key.
pub const MARKER: &[u8] = b"\xffpst:hash";

/// The value of a set's own key.
pub const SET_MARKER: &[u8] = b"\xffpst:set";

/// Hashes (and sets) up to this many fields keep their insertion order through deletes.
pub const ORDERED_UP_TO: usize = 128;

/// What an aggregate key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A hash: field → value.
    Hash,
    /// A set: members, stored as fields with empty values.
    Set,
}

impl Kind {
    /// The marker value of the aggregate's own key.
    pub fn marker(self) -> &'static [u8] {
        match self {
            Kind::Hash => MARKER,
            Kind::Set => SET_MARKER,
        }
    }

    /// The kind a marker value names.
    fn of_marker(v: &[u8]) -> Option<Kind> {
        match v {
            MARKER => Some(Kind::Hash),
            SET_MARKER => Some(Kind::Set),
            _ => None,
        }
    }

    /// Its name for `TYPE`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hash => "hash",
            Kind::Set => "set",
        }
    }
}

/// The stored key of `field` of the hash stored as `key`.
pub fn field_key(key: &[u8], field: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(FIELD_PREFIX.len() + 4 + key.len() + field.len());
    k.extend_from_slice(FIELD_PREFIX);
    k.extend_from_slice(&(key.len() as u32).to_be_bytes());
    k.extend_from_slice(key);
    k.extend_from_slice(field);
    k
}

/// Split a field record's key into (hash key, field).
fn split_field_key(k: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = k.strip_prefix(FIELD_PREFIX)?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let rest = &rest[4..];
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The hashes and sets of the store.
#[derive(Debug, Default)]
pub struct Hashes {
    loaded: bool,
    map: HashMap<Vec<u8>, (Kind, IndexSet<Vec<u8>>)>,
}

impl Hashes {
    /// Rebuild the table from the store (once), dropping orphans.
    pub fn load(&mut self, store: &mut PoolStore) {
        if self.loaded {
            return;
        }
        self.loaded = true;
        let mut orphans = Vec::new();
        let mut v = Vec::new();
        // In the order they were last written: the closest to insertion order a restart has.
        let mut fields: Vec<(u64, Vec<u8>)> = store
            .keys()
            .filter(|k| k.starts_with(FIELD_PREFIX))
            .map(|k| (store.get(k).map_or(0, |r| r.seq), k.to_vec()))
            .collect();
        fields.sort_unstable();
        let fields = fields.into_iter().map(|(_, k)| k);
        for fk in fields {
            let Some((key, field)) = split_field_key(&fk) else {
                orphans.push(fk);
                continue;
            };
            let kind = if store.read_value(key, &mut v).is_ok_and(|found| found) {
                Kind::of_marker(&v)
            } else {
                None
            };
            if let Some(kind) = kind {
                self.map
                    .entry(key.to_vec())
                    .or_insert_with(|| (kind, IndexSet::new()))
                    .1
                    .insert(field.to_vec());
            } else {
                orphans.push(fk);
            }
        }
        // Markers without fields (a crash inside a command that was never acknowledged).
        let markers: Vec<Vec<u8>> = store
            .keys()
            .filter(|k| !k.starts_with(FIELD_PREFIX) && !self.map.contains_key(*k))
            .filter(|k| {
                store.get(k).is_some_and(|r| {
                    r.len as usize == MARKER.len() || r.len as usize == SET_MARKER.len()
                })
            })
            .map(<[u8]>::to_vec)
            .collect();
        for k in markers {
            if store.read_value(&k, &mut v).is_ok_and(|f| f) && Kind::of_marker(&v).is_some() {
                orphans.push(k);
            }
        }
        for k in &orphans {
            if let Err(e) = store.delete(k) {
                tracing::warn!(error = %e, "could not drop an orphaned hash record");
            }
        }
        if !self.map.is_empty() || !orphans.is_empty() {
            tracing::info!(
                hashes = self.map.len(),
                orphans = orphans.len(),
                "hashes loaded"
            );
        }
    }

    /// True when `key` is a hash.
    pub fn is_hash(&self, key: &[u8]) -> bool {
        self.kind(key) == Some(Kind::Hash)
    }

    /// True when `key` is a set.
    pub fn is_set(&self, key: &[u8]) -> bool {
        self.kind(key) == Some(Kind::Set)
    }

    /// What `key` holds, if it is a hash or a set.
    pub fn kind(&self, key: &[u8]) -> Option<Kind> {
        self.map.get(key).map(|e| e.0)
    }

    /// True when no hash exists (the common case: the type checks cost nothing then).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The fields of hash `key`, or the members of set `key` (empty if it is neither).
    pub fn fields(&self, key: &[u8]) -> impl Iterator<Item = &[u8]> {
        self.map
            .get(key)
            .into_iter()
            .flat_map(|f| f.1.iter().map(|x| x.as_slice()))
    }

    /// True when `field` is a field (member) of `key`.
    pub fn contains(&self, key: &[u8], field: &[u8]) -> bool {
        self.map.get(key).is_some_and(|f| f.1.contains(field))
    }

    /// Number of fields (members) of `key`.
    pub fn len(&self, key: &[u8]) -> usize {
        self.map.get(key).map_or(0, |f| f.1.len())
    }

    /// Set `field` of hash `key` to the value in `extents`. The hash is created (its marker
    /// written) if it did not exist; the caller has checked that `key` is not a string.
    /// Returns whether the field is new.
    pub fn set(
        &mut self,
        store: &mut PoolStore,
        io: &mut dyn Io,
        key: &[u8],
        field: &[u8],
        extents: pst_store::ValueExtents,
    ) -> Result<bool, StoreError> {
        self.insert(store, io, Kind::Hash, key, field, extents)
    }

    /// Add `member` to set `key` (created if absent; the caller has checked that `key` is
    /// not of another type). Returns whether it is new; an existing member writes nothing.
    pub fn add_member(
        &mut self,
        store: &mut PoolStore,
        io: &mut dyn Io,
        key: &[u8],
        member: &[u8],
    ) -> Result<bool, StoreError> {
        if self.contains(key, member) {
            return Ok(false);
        }
        self.insert(
            store,
            io,
            Kind::Set,
            key,
            member,
            pst_store::ValueExtents::new(),
        )
    }

    /// Write `field` of the `kind` aggregate `key` (its marker too if it is new).
    pub fn insert(
        &mut self,
        store: &mut PoolStore,
        io: &mut dyn Io,
        kind: Kind,
        key: &[u8],
        field: &[u8],
        extents: pst_store::ValueExtents,
    ) -> Result<bool, StoreError> {
        store.put(&field_key(key, field), extents)?;
        if !self.map.contains_key(key) {
            let marker = io.copy_in(kind.marker()).ok_or(StoreError::LogFull)?;
            store.put(key, marker)?;
        }
        Ok(self
            .map
            .entry(key.to_vec())
            .or_insert_with(|| (kind, IndexSet::new()))
            .1
            .insert(field.to_vec()))
    }

    /// Delete `field` of hash `key`; the hash goes with its last field. Returns whether the
    /// field existed.
    pub fn del_field(
        &mut self,
        store: &mut PoolStore,
        key: &[u8],
        field: &[u8],
    ) -> Result<bool, StoreError> {
        let Some((_, fields)) = self.map.get_mut(key) else {
            return Ok(false);
        };
        let removed = if fields.len() <= ORDERED_UP_TO {
            fields.shift_remove(field)
        } else {
            fields.swap_remove(field)
        };
        if !removed {
            return Ok(false);
        }
        store.delete(&field_key(key, field))?;
        if fields.is_empty() {
            self.map.remove(key);
            store.delete(key)?;
        }
        Ok(true)
    }

    /// Delete every field of hash or set `key` (not its own key: the caller deletes or overwrites
    /// that). Returns whether it was a hash.
    pub fn drop_fields(&mut self, store: &mut PoolStore, key: &[u8]) -> Result<bool, StoreError> {
        let Some((_, fields)) = self.map.remove(key) else {
            return Ok(false);
        };
        for f in fields {
            store.delete(&field_key(key, &f))?;
        }
        Ok(true)
    }

    /// Forget every hash (after `FLUSHALL` cleared the store).
    pub fn clear_all(&mut self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_keys_split_back() {
        let k = field_key(b"\xffpst:db\x03h", b"f:1");
        assert_eq!(
            split_field_key(&k),
            Some((&b"\xffpst:db\x03h"[..], &b"f:1"[..]))
        );
        assert_eq!(split_field_key(b"\xffpst:h\0\0\0\x09ab"), None);
    }
}
