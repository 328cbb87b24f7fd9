//! The receive side: lending buffers to the kernel, turning completions into RX slots.

use super::*;

impl Core {
    /// Start of a sync: recycle RX buffers the application did not keep, and clear the RX ring.
    pub fn begin_sync(&mut self) {
        for (slot, kept) in self.rx.iter().zip(&self.kept) {
            if slot.kind == SlotKind::Data && !kept {
                self.alloc
                    .release(slot.buf)
                    .expect("an RX slot holds a reference");
            }
        }
        self.rx.clear();
        self.kept.clear();
    }

    /// How many buffers [`Core::refill`] keeps lent after the kernel filled `consumed` since
    /// the last refill.
    fn refill_target(&self, consumed: usize) -> usize {
        (2 * consumed + 256)
            .min(self.bids.entries())
            .min((self.alloc.capacity() / 4).max(64))
    }

    /// What [`Core::refill`] lends when nothing was consumed lately (its target at rest).
    pub(crate) fn refill_floor(&self) -> usize {
        self.refill_target(0)
    }

    /// Lend free buffers to the kernel — up to twice what it filled since the last refill (at
    /// least 256), never more than the ring holds or beyond the reserve; `post(bid, buf)`
    /// writes each ring entry. Then re-arm receives that starved. Returns the
    /// number posted.
    pub fn refill(&mut self, mut post: impl FnMut(u16, BufIdx)) -> usize {
        // Post each batch in ascending buffer order: buffers freed together (a message's, in a
        // run) then sit next to each other in the ring, a bundle receive fills a run adjacent
        // in memory, and the driver sends it as one iovec. The free list stays LIFO, so the
        // buffers posted are the most recently used (cache-warm) ones.
        let mut batch = std::mem::take(&mut self.scratch);
        batch.clear();
        // Lend only about what the kernel used lately (twice the last interval's buffers, at
        // least 256): the ring then cycles through few buffers, which stay cache-warm, instead
        // of every entry the ring has. Never more than a quarter of the buffers (or 64): a lent buffer
        // comes back only when the kernel fills it, so after a burst (one client flooding) the
        // ring would otherwise keep most of a small pool from the store until traffic returns
        // (writes refused for want of room in an empty pool).
        let target = self.refill_target(self.consumed);
        self.consumed = 0;
        while self.alloc.free_count() > self.cfg.reserve && self.bids.lent() + batch.len() < target
        {
            // From the top: receive buffers come back soon (`pst_pool::alloc`).
            let Some(buf) = self.alloc.alloc_high() else {
                break;
            };
            batch.push(buf);
        }
        batch.sort_unstable();
        let n = batch.len();
        for &buf in &batch {
            let bid = self.bids.lend(buf).expect("checked that an id is free");
            post(bid, buf);
        }
        batch.clear();
        self.scratch = batch;
        if self.bids.lent() > 0 && !self.starved.is_empty() {
            for id in std::mem::take(&mut self.starved) {
                self.arm_recv(id);
            }
        }
        n
    }

    /// Feed one completion.
    ///
    /// A receive may be a *bundle*: its bytes fill consecutive ring entries starting at its
    /// `buffer`, every buffer full but the last. It becomes one slot per buffer.
    ///
    /// # Safety
    /// The completion must be one the kernel produced for an op this core issued (or, with
    /// simulated fds, one no driver will act on): an accept's result is a new socket the core
    /// takes ownership of and will have the driver close, so a forged one would make the
    /// driver close an fd someone else owns.
    #[allow(unsafe_code)] // declares the caller's promise; the core itself does no I/O
    pub unsafe fn complete(&mut self, completion: Completion) {
        let (user_data, result, buffer, more) = match completion {
            Completion::ZcNotif { user_data, copied } => return self.on_notif(user_data, copied),
            Completion::Op {
                user_data,
                result,
                buffer,
                more,
            } => (user_data, result, buffer, more),
        };
        // Provided buffers must be accounted for whatever else is wrong with the completion.
        let mut bufs = std::mem::take(&mut self.scratch);
        bufs.clear();
        if let Some(bid) = buffer {
            let n = match result {
                Ok(n) if n > 0 => n.div_ceil(self.cfg.buf_size) as usize,
                _ => 1,
            };
            if !self.bids.take_run(bid, n, &mut bufs) {
                self.stats.bad_cqes += 1;
                tracing::error!(bid, ?result, "completion names buffers that are not lent");
            }
        }
        let ud = UserData::decode(user_data);
        match ud {
            Some(ud) if ud.kind == OpKind::Recv => {
                let id = ConnId {
                    idx: ud.idx,
                    gen: ud.gen,
                };
                self.on_recv(id, result, more, &bufs);
                bufs.clear();
            }
            Some(ud) if ud.kind == OpKind::Accept => self.on_accept(ud.idx, result, more),
            Some(ud) if ud.kind == OpKind::Send => {
                let id = ConnId {
                    idx: ud.idx,
                    gen: ud.gen,
                };
                self.on_send(id, result, more.then_some(user_data))
            }
            Some(_) => {}
            None => self.stats.bad_cqes += 1,
        }
        // Buffers on anything but a receive carry no data for anyone.
        self.release_lent(&bufs);
        bufs.clear();
        self.scratch = bufs;
    }

    pub(super) fn on_accept(&mut self, idx: u32, result: Result<u32, Errno>, more: bool) {
        match result {
            Ok(fd) => {
                let fd = fd as i32;
                if self
                    .listeners
                    .get(idx as usize)
                    .is_some_and(|l| l.fd.is_some())
                {
                    // The kernel created this socket for this accept: ours to own.
                    let id = self.adopt_conn(fd);
                    self.stats.accepted += 1;
                    self.push_slot(id, SlotKind::Accepted);
                } else {
                    // Accepted after the listener was closed: close it right away.
                    let ud = UserData {
                        kind: OpKind::Close,
                        gen: 0,
                        idx: u32::MAX,
                    }
                    .encode();
                    self.ops.push_back(Op::Close {
                        fd,
                        ud,
                        reset: false,
                    });
                }
            }
            Err(Errno::INVAL) => {
                // The socket is no longer listening: shut down, by this port or by another one
                // sharing it (a server stopping). It will not listen again, so accepting ends
                // here; `close_listeners` still hands the fd back to be closed.
                tracing::debug!(listener = idx, "listener shut down");
                return;
            }
            Err(e) => {
                if self
                    .listeners
                    .get(idx as usize)
                    .is_some_and(|l| l.fd.is_some())
                {
                    tracing::warn!(errno = e.0, "accept failed");
                }
            }
        }
        if !more && (idx as usize) < self.listeners.len() {
            self.arm_accept(idx);
        }
    }

    pub(super) fn release_lent(&mut self, bufs: &[BufIdx]) {
        for &b in bufs {
            self.alloc
                .release(b)
                .expect("lent buffer holds a reference");
        }
    }

    pub(super) fn on_recv(
        &mut self,
        id: ConnId,
        result: Result<u32, Errno>,
        more: bool,
        bufs: &[BufIdx],
    ) {
        let Some(c) = self.conn_mut(id) else {
            self.stats.stale += 1;
            self.release_lent(bufs);
            return;
        };
        if !more && c.rx == Rx::Armed {
            c.rx = Rx::Idle;
        }
        let lingering = c.discards_rx();
        let id = ConnId {
            idx: id.idx,
            gen: self.conns[id.idx as usize].gen,
        };
        if result == Err(Errno::CANCELED) && !more {
            // Cancelled: by a close (the connection is closing, and the completion usually
            // stale: nothing to do), or by `pause_rx`. Re-arm if receiving goes on — resumed
            // meanwhile, or a lingering close that drains its input; `arm_recv` does nothing
            // while paused or closing.
            self.release_lent(bufs);
            self.arm_recv(id);
            return;
        }
        if lingering {
            self.release_lent(bufs);
            let c = self.conn_mut(id).expect("looked up above");
            c.lingered += result.unwrap_or(0) as u64;
            if c.lingered > LINGER_MAX {
                c.rx = Rx::Done;
                self.close(id);
            } else if matches!(result, Ok(n) if n > 0) && !more {
                self.arm_recv(id);
            } else if result == Err(Errno::NOBUFS) {
                self.starved.push(id);
            } else if !more && !matches!(result, Ok(n) if n > 0) {
                // End of stream or an error: the peer is gone.
                c.rx = Rx::Done;
                self.close(id);
            }
            return;
        }
        match result {
            Ok(n) if n > 0 && !bufs.is_empty() => {
                self.stats.rx_slots += bufs.len() as u64;
                self.consumed += bufs.len();
                self.stats.rx_completions += 1;
                self.stats.rx_bytes += n as u64;
                let size = self.cfg.buf_size;
                let mut left = n;
                for &b in bufs {
                    let len = left.min(size);
                    left -= len;
                    let pos = self.rx.len() as u32;
                    self.rx.push(Slot {
                        conn: id,
                        buf: b,
                        off: 0,
                        len,
                        kind: SlotKind::Data,
                        pos,
                    });
                    self.kept.push(false);
                }
                if !more {
                    self.arm_recv(id);
                }
            }
            result => {
                // A buffer with a non-positive result carries no data.
                self.release_lent(bufs);
                if result == Err(Errno::NOBUFS) {
                    self.stats.enobufs += 1;
                    self.starved.push(id);
                } else if result == Err(Errno::CANCELED) {
                    // Still armed (`more`; its end is handled above): nothing ended.
                } else if more {
                    // Still armed: nothing ended.
                } else {
                    let c = self.conn_mut(id).expect("looked up above");
                    c.rx = Rx::Done;
                    let kind = match result {
                        Ok(0) => SlotKind::End,
                        // Data without a buffer: nothing to deliver.
                        Ok(_) => SlotKind::Error(0),
                        Err(e) => SlotKind::Error(e.0),
                    };
                    if !c.closing() {
                        self.push_slot(id, kind);
                    }
                }
            }
        }
    }

    pub(super) fn push_slot(&mut self, conn: ConnId, kind: SlotKind) {
        let pos = self.rx.len() as u32;
        self.rx.push(Slot {
            conn,
            buf: BufIdx(0),
            off: 0,
            len: 0,
            kind,
            pos,
        });
        self.kept.push(false);
    }

    /// The RX ring filled by the last sync.
    pub fn rx(&self) -> &[Slot] {
        &self.rx
    }

    /// True when `slot` is a data slot of the current RX ring (its buffer is the app's until
    /// the next sync).
    pub fn is_current(&self, slot: &Slot) -> bool {
        slot.kind == SlotKind::Data && self.rx.get(slot.pos as usize) == Some(slot)
    }

    /// Keep a data slot's buffer: it will not be recycled, and the returned extent owns it.
    /// `None` if the slot is not a data slot of the current RX ring or was already kept.
    pub fn keep(&mut self, slot: &Slot) -> Option<Extent> {
        let p = slot.pos as usize;
        if slot.kind != SlotKind::Data || self.rx.get(p) != Some(slot) || self.kept[p] {
            return None;
        }
        self.kept[p] = true;
        Some(Extent::owned(slot.buf, slot.off, slot.len))
    }
}
