//! Redis sets for `pst kv`: `SADD`, `SREM`, `SCARD`, `SISMEMBER`, `SMISMEMBER`, `SMEMBERS`,
//! `SRANDMEMBER`, `SPOP`, `SMOVE`, `SINTER`, `SUNION`, `SDIFF` and their `…STORE` forms
//! (`SSCAN` shares `HSCAN`'s code). A set is stored like a hash whose members are fields with
//! empty values ([`crate::hashes`]): durable, grouped and recovered the same way. The type
//! check of the first key is done before (`SET_COMMANDS`); the other keys are checked here.

use std::collections::BTreeSet;
use std::ops::Range;

use pst_resp::reply;

use super::{db_key, parse_int, random_index, write_err, Out, WRONGTYPE};
use crate::expiry::Ttl;
use crate::hashes::{Hashes, Kind};
use crate::protocol::Io;
use crate::store::PoolStore;

/// Set commands whose first key must be a set or absent (checked before they run).
pub(super) const SET_COMMANDS: [&str; 13] = [
    "SADD",
    "SREM",
    "SCARD",
    "SISMEMBER",
    "SMISMEMBER",
    "SMEMBERS",
    "SRANDMEMBER",
    "SPOP",
    "SSCAN",
    "SMOVE",
    "SINTER",
    "SUNION",
    "SDIFF",
];

/// The head of a set reply of `n` members: `~n` in RESP3, an array in RESP2.
fn set_head(out: &mut Out<'_>, n: usize) {
    if out.resp3 {
        use std::io::Write as _;
        let _ = write!(out.buf, "~{n}\r\n");
    } else {
        reply::array(&mut out.buf, n);
    }
}

/// Run set command `name`; `None` when `name` is not one (or its arity is wrong: the caller
/// answers that).
#[allow(clippy::too_many_arguments)]
pub(super) fn exec(
    name: &str,
    db: u8,
    args: &[Range<u64>],
    io: &mut dyn Io,
    store: &mut PoolStore,
    ttl: &mut Ttl,
    hs: &mut Hashes,
    out: &mut Out<'_>,
) -> Option<bool> {
    let n = args.len();
    let arg = |io: &dyn Io, i: usize| {
        let mut v = Vec::new();
        io.gather(args[i].clone(), &mut v);
        v
    };
    let key = |io: &dyn Io, i: usize| db_key(db, arg(io, i));
    // The members of every key in `from..n` (absent = empty); `None`: one is not a set.
    let sources = |io: &dyn Io, hs: &Hashes, store: &PoolStore, from: usize| {
        let mut sets = Vec::new();
        for i in from..n {
            let k = key(io, i);
            if store.get(&k).is_some() && !hs.is_set(&k) {
                return None;
            }
            sets.push(hs.fields(&k).map(<[u8]>::to_vec).collect::<BTreeSet<_>>());
        }
        Some(sets)
    };
    match name {
        "SADD" if n >= 3 => {
            let k = key(&*io, 1);
            let mut added = 0;
            for i in 2..n {
                let m = arg(&*io, i);
                match hs.add_member(store, io, &k, &m) {
                    Ok(new) => added += new as i64,
                    Err(e) => {
                        write_err(out, e);
                        return Some(true);
                    }
                }
            }
            reply::int(&mut out.buf, added);
        }
        "SREM" if n >= 3 => {
            let k = key(&*io, 1);
            let members: Vec<Vec<u8>> = (2..n).map(|i| arg(&*io, i)).collect();
            match remove_fields(store, ttl, hs, &k, &members) {
                Ok(removed) => reply::int(&mut out.buf, removed),
                Err(e) => write_err(out, e),
            }
        }
        "SCARD" if n == 2 => reply::int(&mut out.buf, hs.len(&key(&*io, 1)) as i64),
        "SISMEMBER" if n == 3 => {
            let yes = hs.contains(&key(&*io, 1), &arg(&*io, 2));
            reply::int(&mut out.buf, yes as i64);
        }
        "SMISMEMBER" if n >= 3 => {
            let k = key(&*io, 1);
            reply::array(&mut out.buf, n - 2);
            for i in 2..n {
                reply::int(&mut out.buf, hs.contains(&k, &arg(&*io, i)) as i64);
            }
        }
        "SMEMBERS" if n == 2 => {
            let k = key(&*io, 1);
            set_head(out, hs.len(&k));
            for m in hs.fields(&k) {
                reply::bulk(&mut out.buf, m);
            }
        }
        "SRANDMEMBER" | "SPOP" if n == 2 => {
            let k = key(&*io, 1);
            let members: Vec<Vec<u8>> = hs.fields(&k).map(<[u8]>::to_vec).collect();
            if members.is_empty() {
                out.null();
                return Some(true);
            }
            let m = &members[random_index(members.len())];
            if name == "SPOP" {
                if let Err(e) = remove_fields(store, ttl, hs, &k, std::slice::from_ref(m)) {
                    write_err(out, e);
                    return Some(true);
                }
            }
            reply::bulk(&mut out.buf, m);
        }
        "SRANDMEMBER" | "SPOP" if n == 3 => {
            let k = key(&*io, 1);
            let Some(count) = parse_int(&arg(&*io, 2)) else {
                reply::error(&mut out.buf, "ERR value is not an integer or out of range");
                return Some(true);
            };
            if name == "SPOP" && count < 0 {
                reply::error(&mut out.buf, "ERR value is out of range, must be positive");
                return Some(true);
            }
            if count == i64::MIN {
                reply::error(&mut out.buf, "ERR value is out of range");
                return Some(true);
            }
            let members: Vec<Vec<u8>> = hs.fields(&k).map(<[u8]>::to_vec).collect();
            // Positive: distinct members, at most all; negative: that many, repeats allowed.
            let picks: Vec<Vec<u8>> = if members.is_empty() {
                Vec::new()
            } else if count >= 0 {
                let mut idx: Vec<usize> = (0..members.len()).collect();
                for i in (1..idx.len()).rev() {
                    idx.swap(i, random_index(i + 1));
                }
                idx.into_iter()
                    .take(count as usize)
                    .map(|i| members[i].clone())
                    .collect()
            } else {
                (0..count.unsigned_abs().min(1 << 20))
                    .map(|_| members[random_index(members.len())].clone())
                    .collect()
            };
            if name == "SPOP" {
                if let Err(e) = remove_fields(store, ttl, hs, &k, &picks) {
                    write_err(out, e);
                    return Some(true);
                }
                set_head(out, picks.len());
            } else {
                reply::array(&mut out.buf, picks.len());
            }
            for m in &picks {
                reply::bulk(&mut out.buf, m);
            }
        }
        "SRANDMEMBER" | "SPOP" if n > 3 => reply::error(&mut out.buf, "ERR syntax error"),
        "SMOVE" if n == 4 => {
            let (src, dst, m) = (key(&*io, 1), key(&*io, 2), arg(&*io, 3));
            if store.get(&dst).is_some() && !hs.is_set(&dst) {
                reply::error(&mut out.buf, WRONGTYPE);
                return Some(true);
            }
            if !hs.contains(&src, &m) {
                reply::int(&mut out.buf, 0);
                return Some(true);
            }
            if src != dst {
                let moved = hs
                    .add_member(store, io, &dst, &m)
                    .and_then(|_| remove_fields(store, ttl, hs, &src, std::slice::from_ref(&m)));
                if let Err(e) = moved {
                    write_err(out, e);
                    return Some(true);
                }
            }
            reply::int(&mut out.buf, 1);
        }
        "SINTER" | "SUNION" | "SDIFF" if n >= 2 => {
            let Some(sets) = sources(&*io, hs, store, 1) else {
                reply::error(&mut out.buf, WRONGTYPE);
                return Some(true);
            };
            let result = combine(name, sets);
            set_head(out, result.len());
            for m in &result {
                reply::bulk(&mut out.buf, m);
            }
        }
        "SINTERSTORE" | "SUNIONSTORE" | "SDIFFSTORE" if n >= 3 => {
            let Some(sets) = sources(&*io, hs, store, 2) else {
                reply::error(&mut out.buf, WRONGTYPE);
                return Some(true);
            };
            let result = combine(name.trim_end_matches("STORE"), sets);
            let dst = key(&*io, 1);
            // Whatever the destination held goes, then the result is written.
            let written = hs
                .drop_fields(store, &dst)
                .and_then(|_| store.delete(&dst).map(|_| ()))
                .and_then(|_| ttl.clear(store, &dst).map(|_| ()))
                .and_then(|_| {
                    for m in &result {
                        hs.insert(
                            store,
                            io,
                            Kind::Set,
                            &dst,
                            m,
                            pst_store::ValueExtents::new(),
                        )?;
                    }
                    Ok(())
                });
            match written {
                Ok(()) => reply::int(&mut out.buf, result.len() as i64),
                Err(e) => write_err(out, e),
            }
        }
        _ => return None,
    }
    Some(true)
}

/// Remove `fields` (members) from hash or set `k` (`HDEL`, `SREM`, `SPOP`, `SMOVE`); the key
/// and its deadline go with its last one. Returns how many existed.
pub(super) fn remove_fields(
    store: &mut PoolStore,
    ttl: &mut Ttl,
    hs: &mut Hashes,
    k: &[u8],
    fields: &[Vec<u8>],
) -> Result<i64, pst_store::StoreError> {
    let mut removed = 0;
    for f in fields {
        removed += hs.del_field(store, k, f)? as i64;
    }
    if hs.kind(k).is_none() {
        ttl.clear(store, k)?;
    }
    Ok(removed)
}

/// `SINTER`, `SUNION` or `SDIFF` of `sets` (the first minus the others for `SDIFF`).
fn combine(op: &str, sets: Vec<BTreeSet<Vec<u8>>>) -> BTreeSet<Vec<u8>> {
    let mut it = sets.into_iter();
    let first = it.next().unwrap_or_default();
    it.fold(first, |acc, s| match op {
        "SINTER" => acc.intersection(&s).cloned().collect(),
        "SUNION" => acc.union(&s).cloned().collect(),
        _ => acc.difference(&s).cloned().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::combine;
    use std::collections::BTreeSet;

    fn set(items: &[&str]) -> BTreeSet<Vec<u8>> {
        items.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn combine_follows_set_algebra() {
        let (a, b) = (set(&["1", "2", "3"]), set(&["2", "3", "4"]));
        assert_eq!(
            combine("SINTER", vec![a.clone(), b.clone()]),
            set(&["2", "3"])
        );
        assert_eq!(
            combine("SUNION", vec![a.clone(), b.clone()]),
            set(&["1", "2", "3", "4"])
        );
        assert_eq!(combine("SDIFF", vec![a.clone(), b]), set(&["1"]));
        assert_eq!(combine("SINTER", vec![a, BTreeSet::new()]), BTreeSet::new());
    }
}
