//! Space: dropping or compacting the oldest segment, truncation, clearing, and borrowing
//! segments from the data region.

use super::*;

/// The log asks for a slot of the data region when it has fewer free segments than this
/// (puts need three: `open_segment`).
pub const GROW_BELOW: usize = 5;

/// Spare buffers a version 2 store asks for, to pack relocated values into.
pub const SPARES: usize = 32;

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
            let mut recs = self.spare_recs.pop().unwrap_or_default();
            while self.records.front().is_some_and(|r| r.seg == s) {
                let r = self.records.pop_front().expect("front");
                if r.kind == Kind::Append {
                    self.live_bytes -= r.payload_len as u64;
                } else {
                    self.dead_log_bytes -= r.log_len(); // all dead, checked above
                }
                recs.push(r);
            }
            self.set_seg(s, SegState::Retiring);
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

    /// Whether `records` removals (tombstones or a clear record) with `key_bytes` of keys in
    /// all fit in the log now: in the head segment's remainder and the free segments deletes
    /// may open (all but the one kept for rotation). Conservative (each record counted at its
    /// largest padding, each segment less one record's slack). A server holds a delete back
    /// while this is false, rather than refusing it: space comes back within a few commits.
    pub fn removal_room(&self, records: usize, key_bytes: usize) -> bool {
        let need = (records * (REC_HEADER + 8) + key_bytes) as u64;
        let slack = (REC_HEADER + 8 + key_bytes.min(format::MAX_KEY)) as u64;
        let fresh = self.free_segments().saturating_sub(1) as u64
            * self.seg_capacity().saturating_sub(slack);
        need <= self.head_room() + fresh
    }

    /// Whether a put of a `key_bytes` key and `value_bytes` of value must wait for log space
    /// rather than be refused: its record does not fit now (the head's remainder, or a fresh
    /// segment under the tier puts keep), but space is on its way back — dead records the
    /// cleaner will rotate out, or rotated segments waiting for their invalidation barrier.
    /// The cleaner frees at most one segment per barrier, so a pipelined flood of overwrites
    /// (`redis-benchmark -P 16`: 1.7 segments of records per batch) outruns it for a moment
    /// on a nearly empty pool; such writes used to get `-OOM`. A log full of live records
    /// (nothing coming back) answers `false`: the put is refused as before.
    pub fn put_must_wait(&self, key_bytes: usize, value_bytes: u64) -> bool {
        let bs = self.header.geometry.buf_size.max(1) as u64;
        let extents = (value_bytes / bs + 2).min(format::MAX_EXTENTS as u64) as usize;
        let need = format::record_len(key_bytes.min(format::MAX_KEY), extents) as u64;
        let fits = need <= self.head_room() || self.free_segments() >= 3;
        // Coming back: a rotated segment awaiting its barrier, or dead records a cleaner that
        // is not stuck will rotate out (a stuck one gets a slot instead, when the pool has one).
        let returning = !self.retire.is_empty()
            || self.invalidating.is_some()
            || (self.dead_log_bytes > 0 && !self.cleaner_stuck());
        !fits && returning
    }

    /// Whether free log segments run low: below a quarter of the log, or down to the three
    /// that new records need (a small log of a few segments never gets below a quarter). The
    /// cleaner rotates, and WAL retention drops the oldest segment, when they do.
    pub fn segments_low(&self) -> bool {
        let free = self.free_segments();
        free * 4 < self.owned_segments() || free <= 3
    }

    /// Free log segments and the segments the log has (its region's and borrowed slots).
    pub fn segment_space(&self) -> (usize, usize) {
        (self.free_segments(), self.owned_segments())
    }

    /// Whether the log wants one more segment from the data region, and if so how many
    /// buffers the slot is (version 2 pools; see the format docs). The caller takes a free,
    /// aligned run of that many buffers from its allocator — when the pool can spare them —
    /// and hands it over with [`Store::grant_segment`].
    ///
    /// The log grows when it runs short of free segments (fewer than `GROW_BELOW`, five) while
    /// most of it is live: then cleaning would win little, and the pool's free buffers are
    /// better spent on the log than left empty beside a full one. When half of it is dead,
    /// the cleaner ([`Store::maintain`]) makes room instead — unless the cleaner itself has no
    /// room: no free segment, none on its way back, and the oldest segment's live records do
    /// not fit in the head. The cleaner waits for a free segment then, and
    /// with none coming (after a restart, say) deletes were refused for good on a log three
    /// quarters dead; one borrowed slot lets it move again.
    pub fn segment_wanted(&self) -> Option<u32> {
        if self.slot_bufs == 0 || self.poisoned.is_some() {
            return None;
        }
        let free = self.free_segments();
        let capacity = self.owned_segments() as u64 * self.seg_capacity();
        // Not while rotated segments queue up for their barriers (batches outrunning commits):
        // slots borrowed then fill with records that are dead by the time they come back,
        // and a pool of 3,838 buffers lent 201 of them to the log that way.
        let backlog = self.retire.len() + self.invalidating.is_some() as usize;
        let wanted = free < GROW_BELOW
            && ((self.dead_log_bytes * 2 < capacity && backlog <= 2) || self.cleaner_stuck());
        let any = self.seg_counts.1 > 0;
        (wanted && any).then_some(self.slot_bufs)
    }

    /// The cleaner cannot rotate the oldest segment and nothing will change that by itself
    /// (the `free == 0` case of [`Store::maintain`]): no free segment, no retired segment
    /// coming back, and the oldest segment's live records larger than the head's room.
    ///
    /// Or it will not, with puts blocked: fewer than the three free segments puts need, an
    /// oldest segment less than three quarters dead and a head with less than a quarter
    /// segment left ([`Store::maintain`] rotates such a segment then only with fewer than two
    /// free). A review's `redis-benchmark` INCR flood left a log there for good, 72% dead with
    /// two segments free: every `SET` waited 5 s for space and got `-OOM`, even after a
    /// restart.
    fn cleaner_stuck(&self) -> bool {
        let returning = !self.retire.is_empty() || self.invalidating.is_some();
        let free = self.free_segments();
        if free >= 3 || returning || self.order.len() < 2 {
            return false;
        }
        let (live, dead) = self.oldest_use(self.order[0]);
        let head_room = self.head_room();
        let cap = self.seg_capacity();
        (free == 0 && live > head_room)
            || (free >= 2 && live > 0 && dead * 4 < cap * 3 && head_room < cap / 4)
    }

    /// Take the buffers of `run` (one reference each, contiguous, starting at a multiple of
    /// the slot size: one whole slot the allocator has given up) as a free log segment.
    /// Gives the run back when it is not such a slot, or the slot is already the log's.
    pub fn grant_segment(&mut self, run: Vec<Extent>) -> Result<(), Vec<Extent>> {
        let k = self.slot_bufs;
        let first = run.first().map(|e| e.buf().0);
        let slot = first.filter(|f| k > 0 && f % k == 0).map(|f| f / k);
        let fits = slot.is_some_and(|j| {
            run.len() == k as usize
                && run
                    .iter()
                    .enumerate()
                    .all(|(i, e)| e.buf().0 == j * k + i as u32)
                && self.segs.get((self.n_base + j) as usize) == Some(&SegState::Lent)
        });
        let Some(j) = slot.filter(|_| fits) else {
            return Err(run);
        };
        let s = self.n_base + j;
        for e in run {
            self.hold_own(e);
        }
        self.set_seg(s, SegState::Free);
        tracing::debug!(segment = s, "log borrowed a slot of the data region");
        Ok(())
    }

    /// Give one free borrowed slot back to the buffers when the log has plenty of free
    /// segments (or the pool is short of buffers and it has a few): its buffers come back
    /// through [`Store::take_released`]. Its header is already invalid on media: a segment
    /// becomes free only after its invalidation is durable, and a granted slot never had a
    /// header of this log's. Returns whether it gave one back.
    pub fn lend_back(&mut self, pressure: bool) -> bool {
        let free = self.free_segments();
        let plenty = free > 2 * GROW_BELOW + self.owned_segments() / 8;
        if !(plenty || (pressure && free > GROW_BELOW)) {
            return false;
        }
        let Some(s) = (self.n_base as usize..self.segs.len())
            .rev()
            .find(|&s| self.segs[s] == SegState::Free)
        else {
            return false;
        };
        self.set_seg(s as u32, SegState::Lent);
        for b in self.slot_buffers(s as u32) {
            self.unref(b);
        }
        tracing::debug!(segment = s, "log gave a slot back to the buffers");
        true
    }

    pub(super) fn is_live(&self, r: &RecMeta) -> bool {
        match r.kind {
            Kind::Append => r.seq >= self.trunc_seq,
            // A put in the log is live while it holds its buffers: `value_gone` ends both
            // (no index lookup). Records already popped for retirement are never asked.
            Kind::Put => r.held,
            Kind::Delete | Kind::Clear | Kind::Seal => false,
        }
    }

    /// Space reclamation, bounded work per call: rotate the oldest segment — re-append its
    /// live records at the head (same payload extents, no copy) and retire it (freed after the
    /// next two barriers). Call once per batch, before `commit`. Returns whether it rotated.
    ///
    /// The cleaner is Sprite LFS's, restricted to age order (recovery needs segments to retire
    /// oldest first, so the oldest is the only candidate) with a cost-benefit rule for *when*:
    /// - an oldest segment with nothing live is retired as soon as segments run low (or the
    ///   pool is short of buffers, or the log holds borrowed slots: their buffers go back
    ///   early): free of charge;
    /// - one at least three quarters dead is rotated when segments run low. Below that,
    ///   waiting is cheaper — deletes that walk the keys in write order empty the oldest
    ///   segments completely, and rotating one early would only move its remaining keys to the
    ///   head, where their tombstones then land beside them;
    /// - when the pool is short of buffers, any dead record is worth it (its buffers return);
    /// - to *advance*: when segments run low and two segments' worth of dead records
    ///   (tombstones, mostly) sit further on, one rotation at a time while the head has a
    ///   quarter segment left, so that they reach the tail before deletes are blocked;
    /// - when the log is *blocked* — fewer free segments than deletes need, the head nearly
    ///   full, and no retired segment on its way back — the oldest is rotated whatever it
    ///   holds, as long as some record anywhere in the log is dead: the log has to move for
    ///   the dead records further on, tombstones included, to reach the tail and be dropped.
    ///
    /// Rotation never fails part-way: it runs only when the live records fit (in the head's
    /// remainder, or in one free segment, which holds every live record of a segment since
    /// they fitted in the segment they come from). Free segments are kept back in tiers
    /// (`open_segment`): puts need three, deletes two, rotation one.
    pub fn maintain(&mut self, pressure: bool) -> Result<bool, StoreError> {
        self.check_writable()?;
        self.lend_back(pressure);
        if self.order.len() < 2 {
            return Ok(false);
        }
        let free = self.free_segments();
        let low = self.segments_low();
        // While the log holds borrowed slots, an oldest segment with nothing live goes at
        // once (it costs one invalidation): dead segments give their slots back to the
        // buffers instead of waiting for the pool to run short.
        let borrowed = self.owned_segments() > self.n_base as usize;
        let short = low || pressure || free < 2;
        if !(short || borrowed) {
            return Ok(false);
        }
        let s = self.order[0];
        let (live, dead) = self.oldest_use(s);
        let cap = self.seg_capacity();
        let head_room = self.head_room();
        if free == 0 && live > head_room {
            return Ok(false); // would not fit: wait for a retired segment to come back
        }
        // Blocked: deletes are about to be refused, and no retired segment is on its way back
        // (one is, two barriers after its rotation: waiting for it beats rotating a mostly
        // live segment into the last free one).
        let returning = !self.retire.is_empty() || self.invalidating.is_some();
        let blocked = free < 2 && head_room < cap / 4 && !returning;
        // Advancing: segments run low and two segments' worth of dead records (tombstones,
        // mostly: one costs nearly what the put it deletes did) sit further on. Rotate, one
        // rotation in flight at a time, so that they reach the tail before deletes are
        // blocked; the head keeps a quarter segment for the deletes of the two batches until
        // the rotated segment is back.
        let advance = low && !returning && self.dead_log_bytes >= 2 * cap && head_room >= cap / 4;
        let rotate = if live == 0 {
            low || pressure || blocked || (borrowed && dead > 0)
        } else if !short {
            false // only the free rotation above runs when segments are plentiful
        } else if dead == 0 {
            (blocked || advance) && self.dead_log_bytes > 0
        } else {
            pressure || blocked || advance || (low && dead * 4 >= cap * 3)
        };
        if rotate {
            self.compact_oldest()?;
        }
        Ok(rotate)
    }

    /// Live and dead log bytes of the oldest segment `s`: from its counts, unless WAL
    /// appends in it may have been truncated (then counted record by record).
    fn oldest_use(&self, s: u32) -> (u64, u64) {
        let u = self.seg_use[s as usize];
        if !u.appends || self.trunc_seq <= self.base_seq() {
            return (u.bytes - u.dead, u.dead);
        }
        let (mut live, mut dead) = (0u64, 0u64);
        for r in self.records.iter().take_while(|r| r.seg == s) {
            if self.is_live(r) {
                live += r.log_len();
            } else {
                dead += r.log_len();
            }
        }
        (live, dead)
    }

    pub(super) fn compact_oldest(&mut self) -> Result<(), StoreError> {
        let s = self.order.pop_front().expect("at least two segments");
        let mut old = self.spare_recs.pop().unwrap_or_default();
        while self.records.front().is_some_and(|r| r.seg == s) {
            let r = self.records.pop_front().expect("front");
            if r.kind != Kind::Append && !self.is_live(&r) {
                self.dead_log_bytes -= r.log_len();
            }
            old.push(r);
        }
        for r in &old {
            if !self.is_live(r) {
                continue;
            }
            self.live_bytes -= r.payload_len as u64; // re-added by write_record
            let extents = match self.relocate(r) {
                Some(moved) => moved,
                None => r.extents.clone(),
            };
            if r.kind == Kind::Put {
                self.buf_dead(&r.extents); // the new record counts its own
            }
            self.write_record(
                r.kind,
                r.key.clone(),
                extents,
                r.payload_len,
                r.payload_crc,
                true,
            )?;
        }
        self.set_seg(s, SegState::Retiring);
        // Invalidated only after the next barrier has made the re-appended records durable.
        self.retire.push_back(Retiree { seg: s, recs: old });
        self.compactions += 1;
        Ok(())
    }

    /// Whether the store wants one more spare buffer for relocated values
    /// ([`Store::grant_spare`]): version 2 pools, while it holds fewer than `SPARES` (32).
    pub fn spare_wanted(&self) -> bool {
        self.header.log_may_grow()
            && self.poisoned.is_none()
            && self.spares.len() + (self.target.is_some() as usize) < SPARES
    }

    /// Take a whole free buffer (one reference) as a spare: the cleaner packs values it moves
    /// out of mostly dead buffers into spares. Spares are the store's until filled; a spare
    /// never filled is free again after a restart (no record names it).
    pub fn grant_spare(&mut self, e: Extent) {
        self.spares.push_back(e.buf().0);
        self.hold_own(e);
    }

    /// The cleaner is moving live record `r` forward: if it is a small value all of whose
    /// buffers are more than half dead, copy its bytes into the spare being filled and return
    /// the new extent (the record moved forward names it). Its old buffers lose one more
    /// live value and come free once every record naming them has retired — the usual path:
    /// the old record stays valid on media until its segment's invalidation is durable, so a
    /// crash before the copy and its record are durable recovers the old ones. `None`: leave
    /// it where it is (no spare, not worth it, or a version 1 pool, whose buffers the store
    /// may not write).
    fn relocate(&mut self, r: &RecMeta) -> Option<Extents> {
        let bs = self.header.geometry.buf_size;
        let small = r.kind == Kind::Put && r.payload_len > 0 && r.payload_len <= bs / 2;
        if !small || !self.header.log_may_grow() {
            return None;
        }
        let target = self.target.map(|t| t.0);
        let sparse = r.extents.iter().all(|&(b, _, _)| {
            Some(b) != target && self.bufs.get(b).is_some_and(|x| x.live * 2 < bs)
        });
        if !sparse {
            return None;
        }
        if self
            .target
            .is_none_or(|(_, used)| used + r.payload_len > bs)
        {
            let next = self.spares.pop_front()?;
            self.close_target();
            self.target = Some((next, 0));
        }
        let (t, used) = self.target.expect("opened above");
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.clear();
        for &(b, o, l) in r.extents.iter() {
            self.media.with_bytes(self.buf_off(b, o), l as usize, |x| {
                bytes.extend_from_slice(x)
            });
        }
        let off = self.buf_off(t, used);
        self.media.write(off, &bytes);
        self.media.flush(off, bytes.len() as u64);
        self.scratch = bytes;
        self.target = Some((t, used + r.payload_len));
        self.relocations += 1;
        Some(smallvec::smallvec![(t, used, r.payload_len)])
    }

    /// Stop filling the current spare: drop the store's own reference on it (the records that
    /// name it keep theirs).
    fn close_target(&mut self) {
        if let Some((t, _)) = self.target.take() {
            self.unref(t);
        }
    }

    /// Delete every key (Redis FLUSHALL) with one clear record, atomically: a crash leaves
    /// all of them or none. Returns how many (0: nothing logged).
    pub fn clear(&mut self) -> Result<usize, StoreError> {
        let n = self.index.len();
        if n == 0 {
            self.depend_on_absence();
            return Ok(0);
        }
        self.add(Kind::Clear, None, ValueExtents::new())?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Landing;
    use pst_pool::{Geometry, PersistMode, SimPm};
    use rand::{Rng, SeedableRng};

    /// The dead-bytes counters the cleaner decides by match a scan of the log, through
    /// overwrites, deletes, clears, rotations, retirements and a reopen (recovery rebuilds it).
    #[test]
    fn dead_log_bytes_match_a_scan() {
        /// Liveness from the index itself (what `is_live` answers from `held`).
        fn live_by_index(st: &Store<SimPm>, r: &RecMeta) -> bool {
            match r.kind {
                Kind::Append => r.seq >= st.trunc_seq,
                Kind::Put => r.key.as_ref().and_then(|k| st.index.get(k)) == Some(&r.seq),
                Kind::Delete | Kind::Clear | Kind::Seal => false,
            }
        }
        fn scan(st: &Store<SimPm>) -> u64 {
            st.records
                .iter()
                .filter(|r| r.kind != Kind::Append && !st.is_live(r))
                .map(RecMeta::log_len)
                .sum()
        }
        let h = Header::layout(Geometry {
            buf_size: 512,
            buf_count: 2048,
            log_len: 64 << 10,
        })
        .unwrap();
        let media = SimPm::new(h, PersistMode::Fsync);
        let log = h.log_off..h.log_off + h.geometry.log_len;
        let (mut st, _) = Store::open(media.clone(), log.clone()).unwrap();
        let mut land = Landing::new(media.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for i in 0..20_000u32 {
            let key = format!("k{}", rng.gen_range(0..300u32));
            let r = if rng.gen_ratio(1, 500) {
                st.clear().map(|_| ())
            } else if rng.gen_bool(0.3) {
                st.delete(key.as_bytes()).map(|_| ())
            } else {
                let ext = land.land(&[b'v'; 40], true).unwrap();
                st.put(key.as_bytes(), ext).map(|_| ())
            };
            assert!(matches!(r, Ok(()) | Err(StoreError::LogFull)), "{r:?}");
            if i % 7 == 0 {
                st.maintain(land.free_count() < 64).unwrap();
                st.commit().unwrap();
                land.release(st.take_released());
                while st.spare_wanted() && land.free_count() > 64 {
                    let mut e = land.take_run(1).unwrap();
                    st.grant_spare(e.pop().unwrap());
                }
            }
            for r in &st.records {
                assert_eq!(
                    st.is_live(r),
                    live_by_index(&st, r),
                    "seq {} after op {i}",
                    r.seq
                );
            }
            assert_eq!(st.dead_log_bytes, scan(&st), "after op {i}");
            // So do the per-segment counts the cleaner decides by.
            for &seg in &st.order {
                let (mut bytes, mut dead) = (0, 0);
                for r in st.records.iter().filter(|r| r.seg == seg) {
                    bytes += r.log_len();
                    if r.kind != Kind::Append && !st.is_live(r) {
                        dead += r.log_len();
                    }
                }
                let u = st.seg_use[seg as usize];
                assert_eq!(
                    (u.bytes, u.dead),
                    (bytes, dead),
                    "segment {seg} after op {i}"
                );
            }
            // Per-buffer live bytes (what relocation decides by) match a scan too.
            let mut live: HashMap<u32, u32> = HashMap::new();
            for r in st
                .records
                .iter()
                .filter(|r| r.kind == Kind::Put && st.is_live(r))
            {
                for &(b, _, l) in r.extents.iter() {
                    *live.entry(b).or_default() += l;
                }
            }
            for (b, r) in st.bufs.iter() {
                assert_eq!(
                    r.live,
                    live.get(&b).copied().unwrap_or(0),
                    "buffer {b} after op {i}"
                );
            }
        }
        assert!(st.compactions > 10, "{}", st.compactions);
        assert!(st.relocations > 10, "{}", st.relocations);
        st.commit().unwrap();
        drop(st);
        let (st, _) = Store::open(media, log).unwrap();
        assert_eq!(st.dead_log_bytes, scan(&st), "after the reopen");
    }
}
