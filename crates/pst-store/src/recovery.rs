//! Recovery: scan the segments in epoch order, replay records up to the first that fails a
//! check, tell a torn tail from damage to acknowledged records, rebuild index and references.

use super::*;

impl<M: Media> Store<M> {
    pub(super) fn open_inner(
        media: M,
        log: Range<u64>,
        mode: Recovery,
    ) -> Result<(Store<M>, RecoveryReport), StoreError> {
        let header = media.header();
        let len = log.end.saturating_sub(log.start);
        let seg_size = format::segment_size(len);
        let n = len / seg_size;
        if n < 3 {
            return Err(StoreError::Layout(format!(
                "{len} bytes give {n} segments; at least 3 are needed"
            )));
        }
        // Version 2: the data region's buffers, in slots of one segment each, may be borrowed.
        let bs = header.geometry.buf_size as u64;
        let slot_bufs = match header.log_may_grow() && seg_size >= bs && seg_size % bs == 0 {
            true => (seg_size / bs) as u32,
            false => 0,
        };
        let slots = header
            .geometry
            .buf_count
            .checked_div(slot_bufs)
            .unwrap_or(0);
        let mut st = Store {
            media,
            header,
            log: log.start..log.start + n * seg_size,
            seg_size,
            segs: (0..n)
                .map(|_| SegState::Free)
                .chain((0..slots).map(|_| SegState::Lent))
                .collect(),
            n_base: n as u32,
            slot_bufs,
            seg_counts: (n as usize, slots as usize),
            order: VecDeque::new(),
            head_pos: 0,
            next_seq: 1,
            next_epoch: 1,
            head_epoch: 0,
            records: VecDeque::new(),
            index: Index::default(),
            trunc_seq: 0,
            retire: VecDeque::new(),
            invalidating: None,
            bufs: buftable::BufTable::with_buffers(header.geometry.buf_count),
            dying: VecDeque::new(),
            released: Vec::new(),
            spare_recs: Vec::new(),
            seg_use: vec![SegUse::default(); n as usize + slots as usize],
            pending: 0,
            durable_seq: 0,
            in_flight: None,
            dependency: Cell::new(0),
            last_removal: 0,
            poisoned: None,
            scratch: Vec::new(),
            live_bytes: 0,
            dead_log_bytes: 0,
            compactions: 0,
            commits: 0,
            group: None,
            spares: VecDeque::new(),
            target: None,
            relocations: 0,
            sealed: false,
        };
        let report = st.recover(mode)?;
        Ok((st, report))
    }

    pub(super) fn recover(&mut self, mode: Recovery) -> Result<RecoveryReport, StoreError> {
        let mut report = RecoveryReport::default();
        let mut found: Vec<(u64, u32, SegHeader)> = Vec::new();
        let mut hb = [0u8; SEG_HEADER];
        let salt = self.salt();
        for s in 0..self.segs.len() as u32 {
            self.media.read(self.seg_off(s), &mut hb);
            if let Some(h) = SegHeader::decode(&hb, self.seg_size, salt) {
                found.push((h.epoch, s, h));
            }
        }
        found.sort_by_key(|f| f.0);
        let (count, size) = (
            self.header.geometry.buf_count,
            self.header.geometry.buf_size,
        );
        let mut seg_bytes = vec![0u8; self.seg_size as usize];
        // New segments must get an epoch no record anywhere in the log carries, or stale
        // records of an earlier life could pass for new ones. Headers alone do not tell: a
        // segment without a valid header (free, or its header damaged) may hold records of any
        // epoch (found by fuzzing: with every header lost, epochs restarted at 1 and stale
        // records with matching sequence numbers came back after the next write). So every
        // decodable record counts; the scan checks the magic first and costs one read of the
        // log region (and of the data region's slots, in a version 2 pool).
        let mut max_epoch = found.last().map_or(0, |f| f.0);
        for s in 0..self.segs.len() as u32 {
            self.media.read(self.seg_off(s), &mut seg_bytes);
            let mut pos = SEG_HEADER;
            while pos + REC_HEADER <= seg_bytes.len() {
                if seg_bytes[pos..pos + 4] == format::REC_MAGIC.to_le_bytes() {
                    if let Ok(r) = Record::decode_salted(&seg_bytes[pos..], count, size, salt) {
                        max_epoch = max_epoch.max(r.epoch as u64);
                    }
                }
                pos += 8;
            }
        }
        self.next_epoch = max_epoch + 1;
        let mut expected: Option<u64> = None;
        let mut chain: Vec<u32> = Vec::new();
        let mut stopped = false;
        // An atomic group being read: where it starts (chain index, offset, seq, epoch) and
        // its records, applied only when the record that ends it is reached.
        let mut group_start: Option<(usize, usize, u64, u64)> = None;
        let mut group_recs = 0u64;
        // Every record read, in order; those of a group the log ends inside are cut below.
        let mut scanned: Vec<Scanned> = Vec::new();
        for (i, &(epoch, s, h)) in found.iter().enumerate() {
            // A gap can only follow a torn batch that opened a new segment: stop there.
            if stopped || expected.is_some_and(|e| e != h.first_seq) {
                break;
            }
            let mut next = h.first_seq;
            chain.push(s);
            self.media.read(self.seg_off(s), &mut seg_bytes);
            let mut pos = SEG_HEADER;
            // Why this segment's data ended, when not at a clean end.
            let mut end_reason = None;
            // A record of this segment's life whose payload fails its checksum: always a stop.
            let mut torn_payload = false;
            while pos + REC_HEADER <= seg_bytes.len() {
                let rec = match Record::decode_salted(&seg_bytes[pos..], count, size, salt) {
                    Ok(r) if r.epoch == epoch as u32 && r.seq == next => r,
                    // A record of an earlier life of this segment: this life's data ends here.
                    Ok(r) if r.epoch != epoch as u32 => break,
                    Ok(r) => {
                        end_reason = Some(LogEnd::OutOfOrder {
                            segment: s,
                            seq: r.seq,
                            epoch: r.epoch,
                            expected: next,
                        });
                        break;
                    }
                    Err(format::RecordError::NoRecord) => break,
                    Err(e) => {
                        end_reason = Some(LogEnd::BadRecord {
                            segment: s,
                            offset: pos,
                            error: e,
                        });
                        break;
                    }
                };
                // A put's payload is checked after the scan, and only while its value is live
                // (`bad_live`): a superseded value's buffer may hold new data by now.
                if rec.kind == Kind::Append && self.payload_crc(&rec.extents) != rec.payload_crc {
                    end_reason = Some(LogEnd::PayloadChecksum {
                        segment: s,
                        offset: pos,
                        seq: rec.seq,
                    });
                    torn_payload = true;
                    break;
                }
                let len = format::record_len(rec.key.len(), rec.extents.len());
                if rec.grouped {
                    group_start.get_or_insert((chain.len() - 1, pos, rec.seq, epoch));
                    group_recs += 1;
                } else {
                    group_recs = 0;
                    group_start = None;
                }
                scanned.push(Scanned {
                    rec,
                    seg: s,
                    chain_idx: chain.len() - 1,
                    pos,
                    epoch,
                });
                next += 1;
                pos += len;
            }
            // A segment that filled up ends in whatever an earlier life left there (records of
            // another epoch, fragments): that is a clean end when the next segment carries on
            // from `next`. Anything else ends the log here: a torn tail, or corruption if a
            // later record says `next` had already been committed (and possibly acknowledged).
            let continues = found.get(i + 1).is_some_and(|f| f.2.first_seq == next);
            if let Some(why) = end_reason.filter(|_| torn_payload || !continues) {
                let later = found[i + 1..]
                    .iter()
                    .map(|f| (f.0, f.1))
                    .collect::<Vec<_>>();
                if let Some(ev) = self.committed_evidence(next, epoch, &seg_bytes, pos + 8, &later)
                {
                    report.corrupt = Some(Damage {
                        end: why.clone(),
                        evidence: ev,
                    });
                }
                report.torn = Some(why);
                stopped = true;
            }
            self.head_pos = pos as u64;
            self.head_epoch = epoch;
            expected = Some(next);
        }
        // The log ends inside an atomic group: cut it back to the group's start (its records
        // are zeroed below like a torn tail, segments it alone opened are invalidated).
        if let Some((ci, gpos, gseq, gepoch)) = group_start {
            report.dropped_group = group_recs;
            scanned.truncate(scanned.len() - group_recs as usize);
            tracing::warn!(
                records = group_recs,
                seq = gseq,
                "the log ends inside an atomic group (EXEC); the whole group is dropped"
            );
            chain.truncate(ci + 1);
            self.head_pos = gpos as u64;
            self.head_epoch = gepoch;
            expected = Some(gseq);
        }
        // A live value whose payload fails its checksum ends the log before its record. While
        // that is a torn tail, the cut may make older puts live again (their successors were
        // cut too); those were superseded only by uncommitted records, so their buffers were
        // never released and they pass — but the loop checks. Damage to committed data stops
        // the loop: puts it makes live again may name buffers reused since their successors
        // committed, and those values are lost (salvage deletes them below).
        let ended = value_ends(&scanned);
        let mut intact: Vec<Option<bool>> = vec![None; scanned.len()];
        let mut keep = scanned.len();
        let mut lost: Vec<usize> = Vec::new();
        while let Some(i) =
            (0..keep).find(|&i| self.bad_live(&scanned, i, keep, &ended, &mut intact))
        {
            let cut = &scanned[i];
            let why = LogEnd::PayloadChecksum {
                segment: cut.seg,
                offset: cut.pos,
                seq: cut.rec.seq,
            };
            // Committed if a record written later says so — anywhere after it on media, or
            // what already proved the scan's own end committed (that end lies further on).
            let evidence = self
                .cut_evidence(cut, &found, &mut seg_bytes)
                .or(report.corrupt.as_ref().map(|c| c.evidence));
            keep = i;
            while keep > 0 && scanned[keep - 1].rec.grouped {
                keep -= 1;
            }
            report.torn = Some(why.clone());
            if let Some(evidence) = evidence {
                report.corrupt = Some(Damage { end: why, evidence });
                lost = (0..keep)
                    .filter(|&j| self.bad_live(&scanned, j, keep, &ended, &mut intact))
                    .collect();
                break;
            }
        }
        if keep < scanned.len() {
            let cut = &scanned[keep];
            chain.truncate(cut.chain_idx + 1);
            self.head_pos = cut.pos as u64;
            self.head_epoch = cut.epoch;
            expected = Some(cut.rec.seq);
            scanned.truncate(keep);
        }
        // Keys whose values salvage cannot give back (see above).
        let lost_keys: Vec<Vec<u8>> = lost.iter().map(|&j| scanned[j].rec.key.clone()).collect();
        self.sealed = scanned.last().is_some_and(|x| x.rec.kind == Kind::Seal);
        report.sealed = self.sealed;
        for x in scanned {
            self.replay(x.rec, x.seg);
            report.records += 1;
        }
        // Everything replayed is durable once recovery's barrier below has run: the buffers of
        // values that went are free.
        self.release_dying(u64::MAX);
        self.next_seq = expected.unwrap_or(1);
        self.durable_seq = self.next_seq;
        report.last_seq = self.next_seq - 1;
        for &s in &chain {
            self.set_seg(s, SegState::Active);
            self.order.push_back(s);
            // A borrowed slot's buffers: one reference, the segment's own.
            for b in self.slot_buffers(s) {
                self.bufs.add_ref(b);
            }
        }
        // Buffers referenced by replayed records: one allocator reference each, as a handle.
        let bs = self.header.geometry.buf_size;
        for (b, r) in self.bufs.iter_mut() {
            // SAFETY: recovery rebuilds the references its records hold; the port allocators
            // are created with these counted as live (`holds`), so each handle stands for
            // exactly one reference that nothing else claims.
            #[allow(unsafe_code)]
            r.handles
                .push(unsafe { Extent::from_raw(BufIdx(b), 0, bs) });
        }
        report.live_keys = self.index.len() as u64;
        report.segments = (self.owned_segments(), chain.len());
        if mode != Recovery::Inspect {
            if let Some(c) = &report.corrupt {
                // Never drop acknowledged data silently: refuse, unless the operator asked to
                // salvage (start from the last intact record, losing what follows it).
                if mode == Recovery::Salvage {
                    tracing::warn!(%c, lost_values = lost_keys.len(), "log damaged: salvaging from the last intact record; later records are dropped");
                } else {
                    return Err(StoreError::Corrupt(c.clone()));
                }
            }
            // Make the recovered end the durable end: zero the head's tail (a torn record there
            // must never come back) and invalidate valid segments outside the chain.
            if let Some(&h) = self.order.back() {
                let from = self.seg_off(h) + self.head_pos;
                let to = self.seg_off(h) + self.seg_size;
                let zeros = vec![0u8; (to - from) as usize];
                self.media.write(from, &zeros);
                self.media.flush(from, to - from);
            }
            for &(_, s, _) in &found {
                if !chain.contains(&s) {
                    self.invalidate_header(s);
                }
            }
            // Salvage: values the damage made live again whose bytes are gone (their buffers
            // were reused after a successor past the damage committed) are deleted, durably
            // with the barrier below, rather than served or checked again at every start.
            // Their tombstones nearly always have room: each lost key's successor record lay
            // past the cut and is gone with it, a tombstone is no longer than a put or delete
            // it stands in for, and a successor that opened a segment did so with three free
            // (`open_segment`), free again now that the chain ends at the cut. The exception is
            // one `Clear` (FLUSHALL) succeeding many keys in a log already near full: then
            // recovery stops here with `LogFull`, refusing rather than serving lost bytes.
            for key in &lost_keys {
                self.delete(key)?;
            }
            report.lost_values = lost_keys.len() as u64;
            report.live_keys = self.index.len() as u64;
            self.media.barrier().map_err(StoreError::Poisoned)?;
        }
        tracing::debug!(records = report.records, keys = report.live_keys, last_seq = report.last_seq, torn = ?report.torn, "store recovered");
        Ok(report)
    }

    /// Look for a record written after sequence `seq` was committed: in the rest of the current
    /// segment (any 8-byte aligned offset from `from`), then in the later segments.
    pub(super) fn committed_evidence(
        &self,
        seq: u64,
        epoch: u64,
        seg_bytes: &[u8],
        from: usize,
        later: &[(u64, u32)],
    ) -> Option<(u64, u64, Option<u32>)> {
        let (count, size) = (
            self.header.geometry.buf_count,
            self.header.geometry.buf_size,
        );
        let salt = self.salt();
        let mut pos = from.next_multiple_of(8);
        while pos + REC_HEADER <= seg_bytes.len() {
            if let Ok(r) = Record::decode_salted(&seg_bytes[pos..], count, size, salt) {
                if r.epoch == epoch as u32 && r.durable_before > seq {
                    return Some((r.seq, r.durable_before, None));
                }
            }
            pos += 8;
        }
        let mut buf = vec![0u8; self.seg_size as usize];
        for &(ep, s) in later {
            self.media.read(self.seg_off(s), &mut buf);
            let mut pos = SEG_HEADER;
            while let Ok(r) = Record::decode_salted(&buf[pos.min(buf.len())..], count, size, salt) {
                if r.epoch != ep as u32 {
                    break;
                }
                if r.durable_before > seq {
                    return Some((r.seq, r.durable_before, Some(s)));
                }
                pos += format::record_len(r.key.len(), r.extents.len());
            }
        }
        None
    }

    /// Whether `scanned[i]` is a put still live when the log is cut at `keep` whose payload
    /// fails its checksum (payloads checked once each, remembered in `intact`).
    fn bad_live(
        &self,
        scanned: &[Scanned],
        i: usize,
        keep: usize,
        ended: &[usize],
        intact: &mut [Option<bool>],
    ) -> bool {
        let x = &scanned[i];
        x.rec.kind == Kind::Put
            && ended[i] >= keep
            && !*intact[i]
                .get_or_insert_with(|| self.payload_crc(&x.rec.extents) == x.rec.payload_crc)
    }

    /// A record on media, after `cut`, saying `cut` was committed: in the rest of its segment
    /// (any aligned offset) or in the segments found after it, as for any other end of the log.
    fn cut_evidence(
        &self,
        cut: &Scanned,
        found: &[(u64, u32, SegHeader)],
        seg_bytes: &mut [u8],
    ) -> Option<(u64, u64, Option<u32>)> {
        self.media.read(self.seg_off(cut.seg), seg_bytes);
        let i = found.iter().position(|f| f.1 == cut.seg)?;
        let later: Vec<(u64, u32)> = found[i + 1..].iter().map(|f| (f.0, f.1)).collect();
        self.committed_evidence(cut.rec.seq, cut.epoch, seg_bytes, cut.pos + 8, &later)
    }

    pub(super) fn replay(&mut self, rec: Record, seg: u32) {
        let key: Option<Arc<[u8]>> =
            matches!(rec.kind, Kind::Put | Kind::Delete).then(|| Arc::from(rec.key.as_slice()));
        let meta = RecMeta {
            seq: rec.seq,
            seg,
            kind: rec.kind,
            key,
            extents: Extents::from_vec(rec.extents),
            payload_len: rec.payload_len,
            payload_crc: rec.payload_crc,
            held: true,
        };
        self.track(meta);
    }

    /// Add a record to the in-memory log: one store reference per extent on its buffer (and,
    /// for a put, which is live when applied, its bytes in the buffer's live bytes), the index
    /// updated, the record appended (replay and new appends alike).
    pub(super) fn track(&mut self, meta: RecMeta) {
        let put = meta.kind == Kind::Put;
        let u = &mut self.seg_use[meta.seg as usize];
        u.bytes += meta.log_len();
        u.appends |= meta.kind == Kind::Append;
        for &(b, _, l) in meta.extents.iter() {
            let r = self.bufs.add_ref(b);
            if put {
                r.live += l;
            }
        }
        self.index_apply(&meta);
        self.records.push_back(meta);
    }
}

/// A record recovery read, where it lies, before it is replayed.
struct Scanned {
    rec: Record,
    seg: u32,
    /// Its segment's position in the chain.
    chain_idx: usize,
    /// Byte offset in the segment.
    pos: usize,
    /// Its segment's epoch.
    epoch: u64,
}

/// For each scanned record, the index of the record that ended its value (a put overwritten,
/// deleted or cleared later in `scanned`; `usize::MAX`: none, or not a put).
fn value_ends(scanned: &[Scanned]) -> Vec<usize> {
    let mut ended = vec![usize::MAX; scanned.len()];
    let mut last: HashMap<&[u8], usize, ahash::RandomState> =
        HashMap::with_capacity_and_hasher(scanned.len().min(1 << 20), ahash::RandomState::new());
    for (i, x) in scanned.iter().enumerate() {
        match x.rec.kind {
            Kind::Put => {
                if let Some(p) = last.insert(&x.rec.key, i) {
                    ended[p] = i;
                }
            }
            Kind::Delete => {
                if let Some(p) = last.remove(x.rec.key.as_slice()) {
                    ended[p] = i;
                }
            }
            Kind::Clear => {
                for (_, p) in last.drain() {
                    ended[p] = i;
                }
            }
            Kind::Append | Kind::Seal => {}
        }
    }
    ended
}
