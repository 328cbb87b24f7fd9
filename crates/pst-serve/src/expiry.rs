//! Key expiry for `pst kv` (Redis's `EXPIRE` family and `SET .. EX`), durable like the values.
//!
//! **On media**: a key's deadline is a record of its own in the same store, under the reserved
//! key `\xffpst:ttl` + the stored key, whose value is the deadline in Unix milliseconds (8
//! bytes, little-endian). Setting, changing or clearing a deadline is therefore one more log
//! record in the same batch as the write it belongs to, made durable by the same group commit;
//! the value itself keeps being stored where it landed (no header in front of it, so `GET`
//! stays zero copy). The store's format does not change. A deadline record whose key is gone
//! (a crash between the two records of a command that was never acknowledged) is dropped when
//! the table is loaded.
//!
//! **In memory**: a map key → deadline and an ordered set of (deadline, key), loaded from the
//! store on first use. Expiry is lazy (every command first expires the keys it names) and
//! active (each batch expires up to [`ACTIVE_BATCH`] keys whose deadline passed; commands
//! that count or list keys expire every due key first), as in Redis. An expired key is deleted
//! with a logged delete, so it stays deleted after a restart.

use std::collections::{BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use pst_store::StoreError;

use crate::protocol::Io;
use crate::store::PoolStore;

/// Prefix of the reserved keys that hold deadlines (never a key of any database: database
/// keys that start with `\xff` are stored under `\xffpst:db`).
pub const TTL_PREFIX: &[u8] = b"\xffpst:ttl";

/// Keys whose deadline passed expired per batch by the active sweep.
pub const ACTIVE_BATCH: usize = 64;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn meta_key(key: &[u8]) -> Vec<u8> {
    [TTL_PREFIX, key].concat()
}

/// The deadlines of the store's keys.
#[derive(Debug, Default)]
pub struct Ttl {
    loaded: bool,
    at: HashMap<Vec<u8>, i64>,
    by_time: BTreeSet<(i64, Vec<u8>)>,
}

impl Ttl {
    /// Load the deadlines from the store (once). Deadline records of keys that are gone are
    /// deleted.
    pub fn load(&mut self, store: &mut PoolStore) {
        if self.loaded {
            return;
        }
        self.loaded = true;
        let metas: Vec<Vec<u8>> = store
            .keys()
            .filter(|k| k.starts_with(TTL_PREFIX))
            .map(<[u8]>::to_vec)
            .collect();
        let mut v = Vec::new();
        for m in metas {
            let key = &m[TTL_PREFIX.len()..];
            let ok = store.get(key).is_some()
                && store.read_value(&m, &mut v).is_ok_and(|found| found)
                && v.len() == 8;
            if ok {
                let at = i64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
                self.insert(key.to_vec(), at);
            } else if let Err(e) = store.delete(&m) {
                tracing::warn!(error = %e, "could not drop an orphaned expiry record");
            }
        }
        if !self.at.is_empty() {
            tracing::info!(keys = self.at.len(), "expiry deadlines loaded");
        }
    }

    fn insert(&mut self, key: Vec<u8>, at: i64) {
        if let Some(old) = self.at.insert(key.clone(), at) {
            self.by_time.remove(&(old, key.clone()));
        }
        self.by_time.insert((at, key));
    }

    fn forget(&mut self, key: &[u8]) -> Option<i64> {
        let at = self.at.remove(key)?;
        self.by_time.remove(&(at, key.to_vec()));
        Some(at)
    }

    /// True when no key has a deadline (the common case: expiry costs nothing then).
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }

    /// The deadline of `key`, if it has one.
    pub fn get(&self, key: &[u8]) -> Option<i64> {
        self.at.get(key).copied()
    }

    /// Keys with a deadline whose key satisfies `f` (`INFO`'s `expires=`).
    pub fn count(&self, f: impl Fn(&[u8]) -> bool) -> usize {
        self.at.keys().filter(|k| f(k)).count()
    }

    /// Expire `key` if its deadline passed: delete it and its deadline. True if it expired.
    pub fn reap(&mut self, store: &mut PoolStore, key: &[u8], now: i64) -> bool {
        match self.at.get(key) {
            Some(&at) if at <= now => {}
            _ => return false,
        }
        // A full log refuses new data but keeps room for deletes; if even that fails, nothing
        // changes: the key and its deadline stay, and the expiry is retried at the next access
        // or sweep (never a key without its deadline).
        match store.delete(key).and_then(|_| store.delete(&meta_key(key))) {
            Ok(_) => {
                self.forget(key);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not log an expiry");
                false
            }
        }
    }

    /// Expire up to `max` keys whose deadline passed; returns them.
    pub fn reap_due(&mut self, store: &mut PoolStore, now: i64, max: usize) -> Vec<Vec<u8>> {
        let due: Vec<Vec<u8>> = self
            .by_time
            .iter()
            .take_while(|(at, _)| *at <= now)
            .take(max)
            .map(|(_, k)| k.clone())
            .collect();
        for k in &due {
            self.reap(store, k, now);
        }
        due
    }

    /// Give `key` the deadline `at` (Unix ms), durably (a record in the same batch).
    pub fn set(
        &mut self,
        store: &mut PoolStore,
        io: &mut dyn Io,
        key: &[u8],
        at: i64,
    ) -> Result<(), StoreError> {
        // Room first (the same reserve as any write: a deadline must not eat the buffers kept
        // for deletes).
        let exts = io
            .has_room(8)
            .then(|| io.copy_in(&at.to_le_bytes()))
            .flatten()
            .ok_or(StoreError::LogFull)?;
        store.put(&meta_key(key), exts)?;
        self.insert(key.to_vec(), at);
        Ok(())
    }

    /// Remove `key`'s deadline (a logged delete) if it has one; returns whether it had.
    pub fn clear(&mut self, store: &mut PoolStore, key: &[u8]) -> Result<bool, StoreError> {
        if !self.at.contains_key(key) {
            return Ok(false);
        }
        store.delete(&meta_key(key))?;
        self.forget(key);
        Ok(true)
    }

    /// Forget every deadline (after `FLUSHALL` cleared the store, records included).
    pub fn clear_all(&mut self) {
        self.at.clear();
        self.by_time.clear();
    }
}
