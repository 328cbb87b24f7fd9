//! Writing: records appended into the open segment, group commit, and the references records
//! hold on their buffers.

use super::*;

impl<M: Media> Store<M> {
    pub(super) fn check_writable(&self) -> Result<(), StoreError> {
        match &self.poisoned {
            Some(e) => Err(StoreError::Poisoned(e.clone())),
            None => Ok(()),
        }
    }

    pub(super) fn free_segments(&self) -> usize {
        self.seg_counts.0
    }

    /// Change segment `s`'s state, keeping the free and lent counts (the cleaner and the
    /// growth policy read them every batch; a large pool has many slots to count).
    pub(super) fn set_seg(&mut self, s: u32, to: SegState) {
        let from = std::mem::replace(&mut self.segs[s as usize], to);
        for (state, delta) in [(from, -1isize), (to, 1)] {
            match state {
                SegState::Free => self.seg_counts.0 = self.seg_counts.0.wrapping_add_signed(delta),
                SegState::Lent => self.seg_counts.1 = self.seg_counts.1.wrapping_add_signed(delta),
                _ => {}
            }
        }
    }

    /// Open a fresh head segment. Normal appends leave one free segment for compaction.
    /// Open a fresh segment for records of `kind`. Free segments are kept back in tiers, so
    /// that a log full of live data can still be emptied: new data (puts, appends) needs three
    /// free segments, deletes two, compaction one.
    pub(super) fn open_segment(
        &mut self,
        for_compaction: bool,
        kind: Kind,
    ) -> Result<(), StoreError> {
        let need = match (for_compaction, kind) {
            (true, _) => 1,
            (false, Kind::Delete | Kind::Clear) => 2,
            // A seal takes a new segment only when new data could: a full log keeps the
            // segments its deletes and cleaner need after the restart.
            (false, _) => 3,
        };
        if self.free_segments() < need {
            return Err(StoreError::LogFull);
        }
        let s = self
            .segs
            .iter()
            .position(|s| *s == SegState::Free)
            .expect("counted") as u32;
        let h = SegHeader {
            size: self.seg_size as u32,
            epoch: self.next_epoch,
            first_seq: self.next_seq,
        };
        let off = self.seg_off(s);
        self.media.write(off, &h.encode(self.salt()));
        self.media.flush(off, SEG_HEADER as u64);
        self.set_seg(s, SegState::Active);
        self.seg_use[s as usize] = SegUse::default();
        self.order.push_back(s);
        self.head_epoch = self.next_epoch;
        self.next_epoch += 1;
        self.head_pos = SEG_HEADER as u64;
        Ok(())
    }

    pub(super) fn write_record(
        &mut self,
        kind: Kind,
        key: Option<Arc<[u8]>>,
        extents: Extents,
        payload_len: u32,
        payload_crc: u32,
        for_compaction: bool,
    ) -> Result<u64, StoreError> {
        let klen = key.as_ref().map(|k| k.len()).unwrap_or(0);
        if klen > format::MAX_KEY {
            return Err(StoreError::TooLarge("key longer than 4096 bytes"));
        }
        if extents.len() > format::MAX_EXTENTS {
            return Err(StoreError::TooLarge("more than 65535 extents"));
        }
        let len = format::record_len(klen, extents.len()) as u64;
        if len + SEG_HEADER as u64 > self.seg_size {
            return Err(StoreError::TooLarge("record larger than a log segment"));
        }
        if self.order.is_empty() || self.head_pos + len > self.seg_size {
            self.open_segment(for_compaction, kind)?;
        }
        let seq = self.next_seq;
        let mut buf = std::mem::take(&mut self.scratch);
        format::RecordFields {
            seq,
            epoch: self.head_epoch as u32,
            kind,
            key: key.as_deref().unwrap_or_default(),
            extents: &extents,
            payload_len,
            payload_crc,
            durable_before: self.durable_seq,
            grouped: self.group.is_some() && !for_compaction,
            salt: self.salt(),
        }
        .encode(&mut buf);
        let head = *self.order.back().expect("a head segment exists");
        let off = self.seg_off(head) + self.head_pos;
        self.media.write(off, &buf);
        self.media.flush(off, len);
        self.scratch = buf;
        if let Some(last) = self.group.as_mut().filter(|_| !for_compaction) {
            *last = Some((off, len));
        }
        self.head_pos += len;
        self.next_seq += 1;
        self.pending += 1;
        self.sealed = kind == Kind::Seal;
        if matches!(kind, Kind::Delete | Kind::Clear) {
            self.last_removal = seq;
        }
        self.depend_on(seq + 1);
        let meta = RecMeta {
            seq,
            seg: head,
            kind,
            key,
            extents,
            payload_len,
            payload_crc,
            held: true,
        };
        self.track(meta);
        Ok(seq)
    }

    /// Append a record naming `payload` (each extent is one buffer reference the store takes
    /// over; on error they are released). Flushes the payload's cache lines now (Pmem); it is
    /// durable after the next [`Store::commit`]. Returns the sequence number (the ticket).
    pub fn append(&mut self, payload: impl Into<ValueExtents>) -> Result<u64, StoreError> {
        self.add(Kind::Append, None, payload.into())
    }

    /// Put `key` → `value` (extents as in [`Store::append`]).
    pub fn put(&mut self, key: &[u8], value: impl Into<ValueExtents>) -> Result<u64, StoreError> {
        let key = self.key_arc(key);
        self.add(Kind::Put, Some(key), value.into())
    }

    /// The key as the index holds it (shared, no allocation) when present, else a new one.
    fn key_arc(&self, key: &[u8]) -> Arc<[u8]> {
        match self.index.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => Arc::from(key),
        }
    }

    /// Delete `key`; `Ok(None)` when it was absent (nothing logged).
    pub fn delete(&mut self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        if !self.index.contains_key(key) {
            self.depend_on_absence();
            return Ok(None);
        }
        let key = self.key_arc(key);
        self.add(Kind::Delete, Some(key), ValueExtents::new())
            .map(Some)
    }

    pub(super) fn add(
        &mut self,
        kind: Kind,
        key: Option<Arc<[u8]>>,
        payload: ValueExtents,
    ) -> Result<u64, StoreError> {
        if let Err(e) = self.check_writable() {
            self.released.extend(payload);
            return Err(e);
        }
        let extents: Extents = payload
            .iter()
            .map(|e| (e.buf().0, e.off(), e.len()))
            .collect();
        let len: u64 = extents.iter().map(|e| e.2 as u64).sum();
        let Ok(len) = u32::try_from(len) else {
            self.released.extend(payload);
            return Err(StoreError::TooLarge("payload over 4 GiB"));
        };
        let crc = self.payload_crc(&extents);
        for &(b, o, l) in extents.iter() {
            self.media.flush(self.buf_off(b, o), l as u64);
        }
        match self.write_record(kind, key, extents, len, crc, false) {
            Ok(seq) => {
                for e in payload {
                    let b = e.buf().0;
                    self.bufs
                        .get_mut(b)
                        .expect("write_record counted it")
                        .handles
                        .push(e);
                }
                Ok(seq)
            }
            Err(e) => {
                self.released.extend(payload);
                Err(e)
            }
        }
    }

    /// Start an atomic group (a Redis `EXEC`): the records written until [`Store::end_group`]
    /// are recovered all together or not at all ([`format::FLAG_GROUP`]). Groups do not nest.
    pub fn begin_group(&mut self) {
        debug_assert!(self.group.is_none(), "groups do not nest");
        self.group = Some(None);
    }

    /// True while an atomic group is open.
    pub fn in_group(&self) -> bool {
        self.group.is_some()
    }

    /// End the atomic group: its last record is marked as the group's end (its flag cleared,
    /// its checksum recomputed and flushed; durable with the next commit).
    pub fn end_group(&mut self) {
        let Some(last) = self.group.take() else {
            return;
        };
        let Some((off, len)) = last else {
            return; // nothing was written
        };
        let mut b = vec![0u8; len as usize];
        self.media.read(off, &mut b);
        if format::Record::seal_group(&mut b, self.salt()) {
            self.media.write(off, &b);
            self.media.flush(off, len);
        } else {
            // The group could not be ended: it would not recover, so nothing written since
            // may be acknowledged. Poison: the next commit fails and no reply leaves.
            tracing::error!(off, "group end record unreadable; store poisoned");
            self.poisoned = Some(PersistError::Poisoned);
        }
    }

    /// Seal the log for a clean shutdown: commit what is pending, then append a seal record
    /// ([`format::Kind::Seal`]) and commit it, so recovery can tell damage to the last records
    /// (refused as corruption) from a torn tail. Call when nothing more will be written (a
    /// later write is fine, but the seal then protects only what precedes it). Returns whether
    /// a seal was written: not when the log already ends in one with nothing written since,
    /// inside an atomic group, nor when the log has no room for it (a full log is not an error here: the seal is a
    /// safeguard, and its absence only leaves the last records to the torn-tail rule).
    pub fn seal(&mut self) -> Result<bool, StoreError> {
        self.commit()?;
        if self.sealed || self.in_group() {
            return Ok(false);
        }
        match self.add(Kind::Seal, None, ValueExtents::new()) {
            Ok(_) => {}
            Err(StoreError::LogFull) => return Ok(false),
            Err(e) => return Err(e),
        }
        self.commit()?;
        Ok(true)
    }

    /// Group commit, inline: [`Store::begin_commit`], the media's barrier, then
    /// [`Store::finish_commit`]. One persist barrier makes every record appended so far
    /// durable; compacted segments are retired one per barrier (see the crate docs for the
    /// ordering). Returns the durable sequence bound: every seq below it is durable. Fails
    /// with [`StoreError::CommitInFlight`] while a begun commit is not finished.
    pub fn commit(&mut self) -> Result<u64, StoreError> {
        if self.begin_commit()?.is_none() {
            return Ok(self.durable_seq);
        }
        let barrier = self.media.barrier();
        self.finish_commit(barrier)
    }

    /// Begin a group commit whose barrier the caller runs (inline, or elsewhere: an io_uring
    /// `FSYNC` of the pool file in flight while the next batch is received and appended).
    /// Returns `Ok(None)` when there is nothing to commit; else the sequence bound the barrier
    /// will make durable — every record appended before this call, by anyone — and the caller
    /// must start the barrier *after* this call and report its outcome with
    /// [`Store::finish_commit`]. Appends may go on meanwhile; they belong to the next commit.
    ///
    /// One commit at a time: a second `begin_commit` before the finish fails with
    /// [`StoreError::CommitInFlight`]. Segment retirement needs it (one segment invalidated per
    /// barrier, strictly in order, so valid segments on media always form one chain), and an
    /// `fdatasync` started while another is running on the same file mostly waits for it.
    pub fn begin_commit(&mut self) -> Result<Option<u64>, StoreError> {
        if self.in_flight.is_some() {
            return Err(StoreError::CommitInFlight);
        }
        // A group still open here was abandoned (its writer panicked mid-EXEC): end it, or
        // every later record would carry the group flag and be dropped by recovery.
        if self.group.is_some() {
            tracing::warn!("commit with an atomic group open: ending it");
            self.end_group();
        }
        self.check_writable()?;
        if !self.needs_commit() {
            return Ok(None);
        }
        self.pending = 0;
        self.in_flight = Some(InFlight {
            upto: self.next_seq,
            invalidated: self.invalidating.take(),
            retire_ready: self.retire.len(),
        });
        Ok(Some(self.next_seq))
    }

    /// The bound of the commit begun and not finished, if any.
    pub fn commit_in_flight(&self) -> Option<u64> {
        self.in_flight.as_ref().map(|c| c.upto)
    }

    /// Finish the commit begun with [`Store::begin_commit`], given its barrier's outcome.
    /// On success every record below its bound is durable ([`Store::durable_seq`] advances),
    /// the segment it invalidated is freed and its buffers released, and the next segment in
    /// line is invalidated (durable at the next barrier). On failure the store is poisoned:
    /// nothing appended since the last good commit may be acknowledged, and every later write
    /// and commit fails. Returns the durable bound.
    pub fn finish_commit(&mut self, barrier: Result<(), PersistError>) -> Result<u64, StoreError> {
        let Some(c) = self.in_flight.take() else {
            return Ok(self.durable_seq);
        };
        if let Err(e) = barrier {
            tracing::error!(error = %e, "persist barrier failed; store poisoned");
            self.poisoned = Some(e.clone());
            return Err(StoreError::Poisoned(e));
        }
        self.commits += 1;
        self.durable_seq = self.durable_seq.max(c.upto);
        self.release_dying(self.durable_seq);
        // The invalidation written before this barrier is durable: release its buffers.
        if let Some(mut r) = c.invalidated {
            for rec in &r.recs {
                self.drop_refs(rec);
            }
            self.set_seg(r.seg, SegState::Free);
            // Its record list serves a later retirement (no allocation per segment).
            r.recs.clear();
            if self.spare_recs.len() < 8 && r.recs.capacity() <= 1 << 16 {
                self.spare_recs.push(r.recs);
            }
        }
        // Next in line: zero its header (durable at the next barrier). Anything it depends on
        // (a compacted segment's re-appended live records) was written before the barrier
        // above began — only segments queued before then qualify.
        if c.retire_ready > 0 {
            if let Some(r) = self.retire.pop_front() {
                self.invalidate_header(r.seg);
                self.invalidating = Some(r);
            }
        }
        Ok(self.durable_seq)
    }

    /// One past the newest record that anything read or written since the last call depends
    /// on, and reset (0: nothing). A reply built from those reads and writes acknowledges
    /// nothing a crash could take back once [`Store::durable_seq`] reaches this bound: writes
    /// count their own record; a read of a key counts the record it found, or, when the key
    /// is absent, the newest delete; reads of the whole index (`keys`, `len`, `read_from`)
    /// count every record. [`Store::stats`] is monitoring and counts nothing.
    pub fn take_dependency(&self) -> u64 {
        self.dependency.replace(0)
    }

    /// Make what was read since the last [`Store::take_dependency`] depend on every record
    /// written so far: for a caller that answered from state it derives from the records
    /// (an in-memory table of hash fields or deadlines) rather than through the store's reads.
    pub fn depend_on_all(&self) {
        self.depend_on(self.next_seq);
    }

    pub(super) fn depend_on(&self, bound: u64) {
        if bound > self.dependency.get() {
            self.dependency.set(bound);
        }
    }

    /// A read found `key` absent: that depends on the newest delete.
    pub(super) fn depend_on_absence(&self) {
        if self.last_removal > 0 {
            self.depend_on(self.last_removal + 1);
        }
    }

    /// True after a failed barrier: nothing will be made durable any more.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    pub(super) fn invalidate_header(&mut self, s: u32) {
        let off = self.seg_off(s);
        self.media.write(off, &[0u8; SEG_HEADER]);
        self.media.flush(off, SEG_HEADER as u64);
    }

    /// Drop the references record `r` still holds (none when its value went: `dying` has them).
    pub(super) fn drop_refs(&mut self, r: &RecMeta) {
        if !r.held {
            return;
        }
        for &(b, _, _) in r.extents.iter() {
            self.unref(b);
        }
    }

    /// Drop one store reference on buffer `b` (a record's, or the store's own on a borrowed
    /// slot or a spare); at the last, its allocator handles go to [`Store::take_released`].
    pub(super) fn unref(&mut self, b: u32) {
        let e = self.bufs.get_mut(b).expect("the store holds a reference");
        if e.refs == 1 {
            let e = self.bufs.remove(b).expect("present");
            self.released.extend(e.handles);
        } else {
            e.refs -= 1;
        }
    }

    /// Hold the buffer of `e` (a whole free buffer the caller lent: a slot's, a spare) with the
    /// store's own reference.
    pub(super) fn hold_own(&mut self, e: Extent) {
        let b = e.buf().0;
        debug_assert!(!self.bufs.contains(b), "a lent buffer must be a free one");
        self.bufs.add_ref(b).handles.push(e);
    }

    /// True when a commit would do anything (appends pending, or segments to retire). While a
    /// commit is in flight, this says whether another one is needed after it.
    pub fn needs_commit(&self) -> bool {
        self.pending > 0 || self.invalidating.is_some() || !self.retire.is_empty()
    }

    /// Every sequence number below this is durable.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// Extents whose buffers the store no longer needs: give them back to the allocator.
    pub fn take_released(&mut self) -> Vec<Extent> {
        std::mem::take(&mut self.released)
    }

    /// Like [`Store::take_released`], keeping the vector's memory for the next ones. Exhaust
    /// it: extents left in a dropped `Drain` are lost (their buffers stay allocated until a
    /// restart).
    pub fn drain_released(&mut self) -> std::vec::Drain<'_, Extent> {
        self.released.drain(..)
    }
}
