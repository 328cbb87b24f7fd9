//! The echo service: raw TCP, every byte sent back. On the port the received bytes are sent
//! back from the pool buffers they landed in (zero copy); on epoll they are read and written.

use std::ops::Range;

use crate::protocol::{Io, Piece, Protocol};
use crate::store::PoolStore;

/// Echo: each chunk of the stream is one request, answered with itself.
#[derive(Debug, Default)]
pub struct EchoService {
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Protocol for EchoService {
    /// The stream position up to which bytes have been echoed.
    type Conn = u64;

    fn conn(&self) -> u64 {
        0
    }

    fn needed_from(&self, echoed: &u64) -> u64 {
        *echoed
    }

    fn on_chunk(
        &self,
        echoed: &mut u64,
        chunk: Range<u64>,
        io: &mut dyn Io,
        _store: Option<&mut PoolStore>,
        reply: &mut Vec<Piece>,
    ) -> bool {
        io.count_request();
        *echoed = chunk.end;
        reply.push(Piece::Input(chunk));
        true
    }

    fn busy_reply(&self) -> &'static [u8] {
        b""
    }

    fn metrics(&self) -> &std::sync::Arc<crate::metrics::Metrics> {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testing::ScriptIo;

    #[test]
    fn each_chunk_is_echoed_as_itself() {
        let svc = EchoService::default();
        let mut c = svc.conn();
        let mut io = ScriptIo::new(b"hello world");
        let mut out = Vec::new();
        assert!(svc.on_chunk(&mut c, 0..5, &mut io, None, &mut out));
        assert!(svc.on_chunk(&mut c, 5..11, &mut io, None, &mut out));
        assert_eq!(io.render(&out), b"hello world");
        assert_eq!(svc.needed_from(&c), 11, "nothing is kept once echoed");
        assert_eq!(io.requests, 2);
    }
}
