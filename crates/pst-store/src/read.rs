//! Reading: the KV index, stored values (checksum-verified), and the WAL from a sequence number.

use super::*;

impl<M: Media> Store<M> {
    /// The current value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<ValueRef<'_>> {
        let Some(&seq) = self.index.get(key) else {
            self.depend_on_absence();
            return None;
        };
        self.depend_on(seq + 1);
        let r = self.rec(seq)?;
        Some(ValueRef {
            extents: &r.extents,
            len: r.payload_len,
            crc: r.payload_crc,
            seq,
        })
    }

    /// True when the value's bytes still match its checksum (never serve one that does not).
    pub fn verify(&self, v: &ValueRef<'_>) -> bool {
        self.payload_crc(v.extents) == v.crc
    }

    /// Copy the value of `key` into `out` after verifying its checksum. `Ok(false)` if absent.
    pub fn read_value(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool, StoreError> {
        out.clear();
        let Some(v) = self.get(key) else {
            return Ok(false);
        };
        for &(b, o, l) in v.extents {
            self.media
                .with_bytes(self.buf_off(b, o), l as usize, |x| out.extend_from_slice(x));
        }
        if crc32c::crc32c(out) != v.crc {
            out.clear();
            return Err(StoreError::ValueCorrupt { seq: v.seq });
        }
        Ok(true)
    }

    /// Live keys.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.depend_on(self.next_seq);
        self.index.keys().map(|k| &k[..])
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.depend_on(self.next_seq);
        self.index.len()
    }

    /// True when no key is live.
    pub fn is_empty(&self) -> bool {
        self.depend_on(self.next_seq);
        self.index.is_empty()
    }

    /// Records from `seq` on (WAL consumers), skipping truncated ones and puts whose value
    /// went (overwritten, deleted or cleared: their buffers may hold other data by now).
    pub fn read_from(&self, seq: u64) -> impl Iterator<Item = RecordView<'_>> {
        self.depend_on(self.next_seq);
        let from = seq.max(self.trunc_seq).saturating_sub(self.base_seq()) as usize;
        self.records
            .range(from.min(self.records.len())..)
            .filter(|r| r.held || r.kind != Kind::Put)
            .map(|r| RecordView {
                seq: r.seq,
                kind: r.kind,
                key: r.key.as_deref().unwrap_or(&[]),
                extents: &r.extents,
                len: r.payload_len,
                crc: r.payload_crc,
            })
    }

    /// Copy a value's payload into `out` after verifying its checksum.
    pub fn read_payload(&self, v: &ValueRef<'_>, out: &mut Vec<u8>) -> Result<(), StoreError> {
        let from = out.len();
        for &(b, o, l) in v.extents {
            self.media
                .with_bytes(self.buf_off(b, o), l as usize, |x| out.extend_from_slice(x));
        }
        if crc32c::crc32c(&out[from..]) != v.crc {
            out.truncate(from);
            return Err(StoreError::ValueCorrupt { seq: v.seq });
        }
        Ok(())
    }

    /// Sequence number the next record will get (one past the newest).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The buffers the store holds for itself rather than for records: its borrowed slots,
    /// its spares and the spare being filled (for accounting checks: every held buffer is
    /// named by a record or is one of these).
    pub fn own_buffers(&self) -> Vec<u32> {
        let slots = (self.n_base..self.segs.len() as u32)
            .filter(|&s| self.segs[s as usize] != SegState::Lent)
            .flat_map(|s| self.slot_buffers(s));
        slots
            .chain(self.spares.iter().copied())
            .chain(self.target.map(|t| t.0))
            .collect()
    }

    /// True when the store holds a reference on buffer `b` (recovery: the port must treat it
    /// as allocated).
    pub fn holds(&self, b: BufIdx) -> bool {
        self.bufs.contains(b.0)
    }
}
