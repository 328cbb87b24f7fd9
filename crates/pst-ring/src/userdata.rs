//! The 64-bit `user_data` carried by every submission and its completion.
//!
//! Layout: bits 56..64 the [`OpKind`], bits 32..56 the connection generation (24 bits), bits
//! 0..32 the connection (or listener) index. The generation lets the core drop completions that
//! belong to a connection slot which has since been closed and reused.

/// What a submission was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    /// Multishot accept on a listener.
    Accept = 1,
    /// Multishot recv on a connection.
    Recv = 2,
    /// A send/sendmsg of queued TX chunks.
    Send = 3,
    /// Shutdown + close of a connection's socket.
    Close = 4,
}

/// Encoded `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserData {
    /// Operation kind.
    pub kind: OpKind,
    /// Connection generation (24 bits are kept).
    pub gen: u32,
    /// Connection or listener index.
    pub idx: u32,
}

/// Generation bits kept in `user_data`.
pub const GEN_MASK: u32 = (1 << 24) - 1;

impl UserData {
    /// Pack into a `u64`.
    pub fn encode(self) -> u64 {
        (self.kind as u64) << 56 | ((self.gen & GEN_MASK) as u64) << 32 | self.idx as u64
    }

    /// Unpack; `None` for a value no [`UserData::encode`] produced.
    pub fn decode(v: u64) -> Option<UserData> {
        let kind = match (v >> 56) as u8 {
            1 => OpKind::Accept,
            2 => OpKind::Recv,
            3 => OpKind::Send,
            4 => OpKind::Close,
            _ => return None,
        };
        Some(UserData {
            kind,
            gen: (v >> 32) as u32 & GEN_MASK,
            idx: v as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_garbage() {
        for kind in [OpKind::Accept, OpKind::Recv, OpKind::Send, OpKind::Close] {
            let u = UserData {
                kind,
                gen: 0xab_cdef,
                idx: u32::MAX,
            };
            assert_eq!(UserData::decode(u.encode()), Some(u));
        }
        let u = UserData {
            kind: OpKind::Recv,
            gen: 0x1ff_ffff,
            idx: 7,
        };
        assert_eq!(UserData::decode(u.encode()).unwrap().gen, 0xff_ffff);
        assert_eq!(UserData::decode(0), None);
        assert_eq!(UserData::decode(9 << 56), None);
    }
}
