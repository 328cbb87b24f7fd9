//! The send side: per-connection TX queues, send and zero-copy notification completions,
//! and the close sequence that waits for them.

use super::*;

impl Core {
    /// A zero-copy send's notification: the kernel is done with its buffers.
    pub(super) fn on_notif(&mut self, user_data: u64, copied: bool) {
        let group = match self.zc_held.get_mut(&user_data) {
            Some(q) => {
                let g = q.pop_front();
                if q.is_empty() {
                    self.zc_held.remove(&user_data);
                }
                g
            }
            None => None,
        };
        let Some(group) = group else {
            self.stats.bad_cqes += 1;
            tracing::error!(user_data, "zero-copy notification for no pending send");
            return;
        };
        self.stats.zc_notifs += 1;
        self.stats.zc_copied += copied as u64;
        for e in group {
            self.release(e);
        }
    }

    /// A send's result. `notif`: the user data under which a zero-copy notification will
    /// follow (the result had `more`); the sent extents are held until it arrives.
    pub(super) fn on_send(&mut self, id: ConnId, result: Result<u32, Errno>, notif: Option<u64>) {
        let mut released = std::mem::take(&mut self.sent);
        let Some(c) = self.conn_mut(id) else {
            self.stats.stale += 1;
            self.sent = released;
            return;
        };
        let was_behind = c.tx == Tx::InFlight { behind: true };
        // A result for no send in flight (a forged completion) leaves a failed side failed.
        c.tx = if result.is_err() || c.tx == Tx::Failed {
            Tx::Failed
        } else {
            Tx::Idle
        };
        if let Ok(mut n) = result {
            c.sent_total += n as u64;
            while n > 0 {
                let Some(head) = c.txq.front() else { break };
                let left = head.len() - c.tx_sent;
                if n >= left {
                    n -= left;
                    c.tx_sent = 0;
                    released.push(c.txq.pop_front().expect("front exists"));
                } else {
                    c.tx_sent += n;
                    n = 0;
                }
            }
        } else {
            c.tx_sent = 0;
            released.extend(c.txq.drain(..));
        }
        let notify = match result {
            Err(e) if c.rx != Rx::Done && !c.closing() => Some(e),
            _ => None,
        };
        self.backlog -= was_behind as usize;
        self.stats.tx_bytes += result.unwrap_or(0) as u64;
        match notif {
            Some(ud) => {
                self.stats.zc_sends += 1;
                // The kernel may still read these (and, after a short send, the sent part of
                // the head extent, which stays queued and referenced anyway).
                self.zc_held.entry(ud).or_default().push_back(released);
            }
            None => {
                for e in released.drain(..) {
                    self.release(e);
                }
                self.sent = released;
            }
        }
        if let Some(e) = notify {
            // The recv side will usually report the same failure; mark it so only one slot goes up.
            let c = self.conn_mut(id).expect("looked up above");
            c.rx = Rx::Done;
            self.push_slot(id, SlotKind::Error(e.0));
        }
        self.kick_tx(id);
    }

    /// Queue a send if the connection has data and none in flight; finish a requested close.
    pub(super) fn kick_tx(&mut self, id: ConnId) {
        let max_iov = self.cfg.max_iov;
        let Some(c) = self.conn_mut(id) else { return };
        if let Tx::InFlight { .. } = c.tx {
            return;
        }
        if !c.txq.is_empty() && c.tx != Tx::Failed {
            // The send covers at most `max_iov` chunks (`tx_chunks`); the rest waits behind it.
            let behind = c.txq.len() > max_iov;
            c.tx = Tx::InFlight { behind };
            let fd = c.fd;
            self.backlog += behind as usize;
            let ud = UserData {
                kind: OpKind::Send,
                gen: id.gen,
                idx: id.idx,
            }
            .encode();
            self.ops.push_back(Op::Send { conn: id, fd, ud });
        } else if c.closing() {
            self.finish_close(id);
        } else if c.life == (Life::Lingering { fin_sent: false }) {
            c.life = Life::Lingering { fin_sent: true };
            let fd = c.fd;
            let ud = UserData {
                kind: OpKind::Close,
                gen: id.gen,
                idx: id.idx,
            }
            .encode();
            self.ops.push_back(Op::ShutdownWrite { fd, ud });
        }
    }

    pub(super) fn finish_close(&mut self, id: ConnId) {
        let e = &mut self.conns[id.idx as usize];
        let c = e.conn.take().expect("closing an open connection");
        if c.tx == (Tx::InFlight { behind: true }) {
            self.backlog -= 1;
        }
        e.gen = (e.gen + 1) & GEN_MASK;
        self.free_conns.push(id.idx);
        self.open_conns -= 1;
        for x in c.txq {
            self.release(x);
        }
        let ud = UserData {
            kind: OpKind::Close,
            gen: id.gen,
            idx: id.idx,
        }
        .encode();
        self.ops.push_back(Op::Close {
            fd: c.fd,
            ud,
            reset: c.reset,
        });
    }

    /// Queue `ext` for sending on `conn`, after everything queued before it.
    pub fn send(&mut self, conn: ConnId, ext: Extent) -> Result<(), SendError> {
        let ok = matches!(self.conn(conn), Some(c) if !c.closing() && c.tx != Tx::Failed);
        if !ok {
            self.release(ext);
            return Err(SendError::Closed);
        }
        if ext.is_empty() {
            self.release(ext);
            return Ok(());
        }
        let c = self.conn_mut(conn).expect("checked");
        c.txq.push_back(ext);
        if c.tx == (Tx::InFlight { behind: false }) {
            c.tx = Tx::InFlight { behind: true };
            self.backlog += 1;
        }
        self.kick_tx(conn);
        Ok(())
    }

    /// Extents queued on `conn` and not yet fully sent: each holds (a reference on) a buffer.
    pub fn tx_pieces(&self, conn: ConnId) -> usize {
        self.conn(conn).map_or(0, |c| c.txq.len())
    }

    /// Bytes sent on `conn` since it opened (a peer that does not read makes no progress).
    pub fn tx_sent_total(&self, conn: ConnId) -> u64 {
        self.conn(conn).map_or(0, |c| c.sent_total)
    }

    /// Bytes queued but not yet sent on `conn`.
    pub fn tx_queued(&self, conn: ConnId) -> usize {
        let Some(c) = self.conn(conn) else {
            return 0;
        };
        c.txq.iter().map(|e| e.len() as usize).sum::<usize>() - c.tx_sent as usize
    }

    /// The chunks `(buf, off, len)` the in-flight send of `conn` covers (at most `max_iov`).
    pub fn tx_chunks(&self, conn: ConnId, out: &mut Vec<(BufIdx, u32, u32)>) {
        out.clear();
        let Some(c) = self.conn(conn) else {
            return;
        };
        for (i, e) in c.txq.iter().take(self.cfg.max_iov).enumerate() {
            let skip = if i == 0 { c.tx_sent } else { 0 };
            out.push((e.buf(), e.off() + skip, e.len() - skip));
        }
    }

    /// Connections with data queued behind their in-flight send: their send completion is
    /// needed promptly, so a sync should not wait for extra completions past it.
    pub fn tx_backlog(&self) -> usize {
        self.backlog
    }

    /// Zero-copy sends whose notification has not arrived yet (their buffers are still held).
    pub fn zc_pending(&self) -> usize {
        self.zc_held.values().map(VecDeque::len).sum()
    }

    /// Operations waiting to be submitted.
    pub fn pending_ops(&self) -> usize {
        self.ops.len()
    }

    /// Next operation to submit.
    pub fn pop_op(&mut self) -> Option<Op> {
        self.ops.pop_front()
    }
}
