//! Space: dropping or compacting the oldest segment, truncation, clearing.

use super::*;

impl<M: Media> Store<M> {
    /// Drop WAL records below `seq`. Segments holding only such records are freed (their
    /// buffers released after the next durable barrier); records sharing a segment with newer
    /// ones stay on media until compaction, and may be seen again after a crash.
    pub fn truncate_before(&mut self, seq: u64) {
        self.trunc_seq = self.trunc_seq.max(seq.min(self.next_seq));
        while self.order.len() > 1 {
            let s = self.order[0];
            let all_dead = self
                .records
                .iter()
                .take_while(|r| r.seg == s)
                .all(|r| !self.is_live(r));
            if !all_dead {
                break;
            }
            self.order.pop_front();
            let mut recs = Vec::new();
            while self.records.front().is_some_and(|r| r.seg == s) {
                let r = self.records.pop_front().expect("front");
                if r.kind == Kind::Append {
                    self.live_bytes -= r.payload_len as u64;
                }
                recs.push(r);
            }
            self.segs[s as usize] = SegState::Retiring;
            self.retire.push_back(Retiree { seg: s, recs });
        }
    }

    /// WAL retention: drop the records of the oldest segment (a bounded log, like phttpd's
    /// circular one). Returns false when only the head segment is left.
    pub fn drop_oldest_segment(&mut self) -> bool {
        if self.order.len() < 2 {
            return false;
        }
        let s = self.order[0];
        let Some(next) = self.records.iter().find(|r| r.seg != s).map(|r| r.seq) else {
            return false;
        };
        self.truncate_before(next);
        true
    }

    /// Free log segments and total segments.
    pub fn segment_space(&self) -> (usize, usize) {
        (self.free_segments(), self.segs.len())
    }

    pub(super) fn is_live(&self, r: &RecMeta) -> bool {
        match r.kind {
            Kind::Append => r.seq >= self.trunc_seq,
            Kind::Put => r.key.as_ref().and_then(|k| self.index.get(k)) == Some(&r.seq),
            Kind::Delete => false,
        }
    }

    /// Space reclamation, bounded work per call: when free segments run low (or `pressure` says
    /// the pool is short of buffers), compact the oldest segment — re-append its live records
    /// (same payload extents, no copy) and retire it. Call once per batch, before `commit`.
    pub fn maintain(&mut self, pressure: bool) -> Result<bool, StoreError> {
        self.check_writable()?;
        let low = self.free_segments() * 4 < self.segs.len();
        if !(low || pressure) || self.order.len() < 2 {
            return Ok(false);
        }
        let s = self.order[0];
        let recs: Vec<usize> = (0..self.records.len())
            .take_while(|&i| self.records[i].seg == s)
            .collect();
        let live = recs
            .iter()
            .filter(|&&i| self.is_live(&self.records[i]))
            .count();
        if live == recs.len() && !recs.is_empty() {
            return Ok(false); // nothing to reclaim here
        }
        self.compact_oldest()?;
        Ok(true)
    }

    pub(super) fn compact_oldest(&mut self) -> Result<(), StoreError> {
        let s = self.order.pop_front().expect("at least two segments");
        let mut old = Vec::new();
        while self.records.front().is_some_and(|r| r.seg == s) {
            old.push(self.records.pop_front().expect("front"));
        }
        for r in &old {
            if !self.is_live(r) {
                continue;
            }
            self.live_bytes -= r.payload_len as u64; // re-added by write_record
            self.write_record(
                r.kind,
                r.key.clone(),
                r.extents.clone(),
                r.payload_len,
                r.payload_crc,
                true,
            )?;
        }
        self.segs[s as usize] = SegState::Retiring;
        // Invalidated only after the next barrier has made the re-appended records durable.
        self.retire.push_back(Retiree { seg: s, recs: old });
        self.compactions += 1;
        Ok(())
    }

    /// Delete every key (Redis FLUSHALL); returns how many.
    pub fn clear(&mut self) -> Result<usize, StoreError> {
        let keys: Vec<Arc<[u8]>> = self.index.keys().cloned().collect();
        for k in &keys {
            self.delete(k)?;
        }
        Ok(keys.len())
    }
}
