//! `DUMP` and `RESTORE` payloads in Redis's own format, so values move between `pst kv` and
//! Redis in both directions (`redis-cli --pipe`, migration scripts, `RESTORE` in tests).
//!
//! **Format** (Redis 7.0's `DUMP`): one RDB object — a type byte, then the value — followed
//! by the RDB version (u16, little-endian; 10 for Redis 7.0) and a CRC-64/Jones of everything
//! before it (u64, little-endian). Lengths use RDB's length encoding (6-bit, 14-bit, 32-bit
//! or 64-bit big-endian forms); a string is a length and its bytes, or one of the special
//! encodings (8/16/32-bit integers, LZF-compressed).
//!
//! `pst kv` writes strings as type 0, hashes as type 4 and sets as type 2, strings always raw
//! (every Redis since 2.x reads these). It reads those, integer-encoded and LZF-compressed
//! strings, and the compact forms Redis 7.0 writes for small values: hash listpacks (16),
//! hash ziplists (13) and integer sets (11). Other types (lists, sorted sets, streams,
//! modules) are refused as "Bad data format". Pure code: no I/O.

/// The RDB version pst writes (Redis 7.0's), and the newest it reads.
pub const RDB_VERSION: u16 = 10;

const TYPE_STRING: u8 = 0;
const TYPE_SET: u8 = 2;
const TYPE_HASH: u8 = 4;
const TYPE_SET_INTSET: u8 = 11;
const TYPE_HASH_ZIPLIST: u8 = 13;
const TYPE_HASH_LISTPACK: u8 = 16;

/// A hash's field, value pairs.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A value as `DUMP` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A string.
    String(Vec<u8>),
    /// A hash: field, value pairs.
    Hash(Pairs),
    /// A set: its members.
    Set(Vec<Vec<u8>>),
}

/// Why a payload was refused (the texts are Redis's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpError {
    /// Too short, a newer RDB version, or a checksum mismatch.
    VersionOrChecksum,
    /// The object cannot be decoded, or is of a type pst does not have.
    BadFormat,
}

impl DumpError {
    /// The error reply.
    pub fn reply(self) -> &'static str {
        match self {
            DumpError::VersionOrChecksum => "ERR DUMP payload version or checksum are wrong",
            DumpError::BadFormat => "Bad data format",
        }
    }
}

fn crc64(b: &[u8]) -> u64 {
    crc::Crc::<u64>::new(&crc::CRC_64_REDIS).checksum(b)
}

fn put_len(out: &mut Vec<u8>, n: u64) {
    if n < 1 << 6 {
        out.push(n as u8);
    } else if n < 1 << 14 {
        out.extend_from_slice(&[0x40 | (n >> 8) as u8, n as u8]);
    } else if n <= u32::MAX as u64 {
        out.push(0x80);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(0x81);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_len(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// The `DUMP` payload of `v`.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    match v {
        Value::String(s) => {
            out.push(TYPE_STRING);
            put_str(&mut out, s);
        }
        Value::Hash(pairs) => {
            out.push(TYPE_HASH);
            put_len(&mut out, pairs.len() as u64);
            for (f, v) in pairs {
                put_str(&mut out, f);
                put_str(&mut out, v);
            }
        }
        Value::Set(members) => {
            out.push(TYPE_SET);
            put_len(&mut out, members.len() as u64);
            for m in members {
                put_str(&mut out, m);
            }
        }
    }
    out.extend_from_slice(&RDB_VERSION.to_le_bytes());
    let crc = crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A reader over an RDB object.
struct Rd<'a> {
    b: &'a [u8],
    at: usize,
}

/// A decoded length, or a special string encoding.
enum Len {
    Plain(u64),
    Special(u8),
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DumpError> {
        let end = self.at.checked_add(n).ok_or(DumpError::BadFormat)?;
        let s = self.b.get(self.at..end).ok_or(DumpError::BadFormat)?;
        self.at = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, DumpError> {
        Ok(self.take(1)?[0])
    }

    fn len_or_special(&mut self) -> Result<Len, DumpError> {
        let b = self.byte()?;
        Ok(match b >> 6 {
            0 => Len::Plain((b & 0x3f) as u64),
            1 => Len::Plain(((b & 0x3f) as u64) << 8 | self.byte()? as u64),
            2 if b == 0x80 => {
                Len::Plain(u32::from_be_bytes(self.take(4)?.try_into().unwrap_or_default()) as u64)
            }
            2 if b == 0x81 => Len::Plain(u64::from_be_bytes(
                self.take(8)?.try_into().unwrap_or_default(),
            )),
            3 => Len::Special(b & 0x3f),
            _ => return Err(DumpError::BadFormat),
        })
    }

    fn len(&mut self) -> Result<u64, DumpError> {
        match self.len_or_special()? {
            Len::Plain(n) => Ok(n),
            Len::Special(_) => Err(DumpError::BadFormat),
        }
    }

    fn string(&mut self) -> Result<Vec<u8>, DumpError> {
        match self.len_or_special()? {
            Len::Plain(n) => Ok(self
                .take(usize::try_from(n).map_err(|_| DumpError::BadFormat)?)?
                .to_vec()),
            Len::Special(0) => Ok((self.byte()? as i8).to_string().into_bytes()),
            Len::Special(1) => Ok(i16::from_le_bytes([self.byte()?, self.byte()?])
                .to_string()
                .into_bytes()),
            Len::Special(2) => Ok(
                i32::from_le_bytes(self.take(4)?.try_into().unwrap_or_default())
                    .to_string()
                    .into_bytes(),
            ),
            Len::Special(3) => {
                let clen = usize::try_from(self.len()?).map_err(|_| DumpError::BadFormat)?;
                let len = usize::try_from(self.len()?).map_err(|_| DumpError::BadFormat)?;
                let c = self.take(clen)?;
                let v = lzf::decompress(c, len).map_err(|_| DumpError::BadFormat)?;
                (v.len() == len).then_some(v).ok_or(DumpError::BadFormat)
            }
            Len::Special(_) => Err(DumpError::BadFormat),
        }
    }

    /// A count of items, each at least `min` bytes: bounded by what is left, so a forged
    /// count cannot make us reserve memory the payload does not hold.
    fn count(&mut self, min: usize) -> Result<usize, DumpError> {
        let n = usize::try_from(self.len()?).map_err(|_| DumpError::BadFormat)?;
        if n.saturating_mul(min) > self.b.len() - self.at {
            return Err(DumpError::BadFormat);
        }
        Ok(n)
    }
}

/// A little-endian two's-complement integer of 1 to 8 bytes.
fn le_signed(bytes: &[u8]) -> i64 {
    let mut v = [0u8; 8];
    v[..bytes.len()].copy_from_slice(bytes);
    let shift = 64 - 8 * bytes.len() as u32;
    (i64::from_le_bytes(v) << shift) >> shift
}

/// The entries of a listpack (Redis 7's compact encoding), as strings.
fn listpack(b: &[u8]) -> Result<Vec<Vec<u8>>, DumpError> {
    let bad = DumpError::BadFormat;
    let total = u32::from_le_bytes(b.get(..4).ok_or(bad)?.try_into().map_err(|_| bad)?) as usize;
    if total != b.len() || total < 7 || b[total - 1] != 0xff {
        return Err(bad);
    }
    let mut out = Vec::new();
    let mut at = 6;
    while b[at] != 0xff {
        let e = b[at];
        let get = |from: usize, n: usize| b.get(from..from + n).ok_or(bad);
        let (value, size): (Vec<u8>, usize) = if e & 0x80 == 0 {
            ((e & 0x7f).to_string().into_bytes(), 1)
        } else if e & 0xc0 == 0x80 {
            let n = (e & 0x3f) as usize;
            (get(at + 1, n)?.to_vec(), 1 + n)
        } else if e & 0xe0 == 0xc0 {
            let v = (((e & 0x1f) as i64) << 8 | *b.get(at + 1).ok_or(bad)? as i64) << 51 >> 51;
            (v.to_string().into_bytes(), 2)
        } else if e & 0xf0 == 0xe0 {
            let n = ((e & 0x0f) as usize) << 8 | *b.get(at + 1).ok_or(bad)? as usize;
            (get(at + 2, n)?.to_vec(), 2 + n)
        } else {
            match e {
                0xf0 => {
                    let n =
                        u32::from_le_bytes(get(at + 1, 4)?.try_into().map_err(|_| bad)?) as usize;
                    (get(at + 5, n)?.to_vec(), 5 + n)
                }
                0xf1 => (le_signed(get(at + 1, 2)?).to_string().into_bytes(), 3),
                0xf2 => (le_signed(get(at + 1, 3)?).to_string().into_bytes(), 4),
                0xf3 => (le_signed(get(at + 1, 4)?).to_string().into_bytes(), 5),
                0xf4 => (le_signed(get(at + 1, 8)?).to_string().into_bytes(), 9),
                _ => return Err(bad),
            }
        };
        // The back-length after each entry: 1 to 5 bytes for the entry's size.
        let back = match size {
            0..=127 => 1,
            128..=16382 => 2,
            16383..=2097150 => 3,
            2097151..=268435454 => 4,
            _ => 5,
        };
        at += size + back;
        if at >= total {
            return Err(bad);
        }
        out.push(value);
    }
    Ok(out)
}

/// The members of an intset.
fn intset(b: &[u8]) -> Result<Vec<Vec<u8>>, DumpError> {
    let bad = DumpError::BadFormat;
    let word = |i: usize| -> Result<u32, DumpError> {
        Ok(u32::from_le_bytes(
            b.get(i..i + 4).ok_or(bad)?.try_into().map_err(|_| bad)?,
        ))
    };
    let (enc, n) = (word(0)? as usize, word(4)? as usize);
    if !matches!(enc, 2 | 4 | 8) || b.len() != 8 + enc * n {
        return Err(bad);
    }
    Ok(b[8..]
        .chunks(enc)
        .map(|c| {
            let mut v = [0u8; 8];
            v[..enc].copy_from_slice(c);
            let shift = 64 - 8 * enc as u32;
            ((i64::from_le_bytes(v) << shift) >> shift)
                .to_string()
                .into_bytes()
        })
        .collect())
}

/// The entries of a ziplist (Redis before 7's compact encoding), as strings.
fn ziplist(b: &[u8]) -> Result<Vec<Vec<u8>>, DumpError> {
    let bad = DumpError::BadFormat;
    if b.len() < 11 || *b.last().ok_or(bad)? != 0xff {
        return Err(bad);
    }
    let mut out = Vec::new();
    let mut at = 10;
    while b[at] != 0xff {
        at += if b[at] == 0xfe { 5 } else { 1 };
        let e = *b.get(at).ok_or(bad)?;
        let get = |from: usize, n: usize| b.get(from..from + n).ok_or(bad);
        let (value, size): (Vec<u8>, usize) = match e >> 6 {
            0 => {
                let n = (e & 0x3f) as usize;
                (get(at + 1, n)?.to_vec(), 1 + n)
            }
            1 => {
                let n = ((e & 0x3f) as usize) << 8 | *b.get(at + 1).ok_or(bad)? as usize;
                (get(at + 2, n)?.to_vec(), 2 + n)
            }
            2 => {
                let n = u32::from_be_bytes(get(at + 1, 4)?.try_into().map_err(|_| bad)?) as usize;
                (get(at + 5, n)?.to_vec(), 5 + n)
            }
            _ => match e {
                0xc0 => (le_signed(get(at + 1, 2)?).to_string().into_bytes(), 3),
                0xd0 => (le_signed(get(at + 1, 4)?).to_string().into_bytes(), 5),
                0xe0 => (le_signed(get(at + 1, 8)?).to_string().into_bytes(), 9),
                0xf0 => (le_signed(get(at + 1, 3)?).to_string().into_bytes(), 4),
                0xfe => (le_signed(get(at + 1, 1)?).to_string().into_bytes(), 2),
                0xf1..=0xfd => (((e & 0x0f) as i64 - 1).to_string().into_bytes(), 1),
                _ => return Err(bad),
            },
        };
        at += size;
        if at >= b.len() {
            return Err(bad);
        }
        out.push(value);
    }
    Ok(out)
}

fn pairs(items: Vec<Vec<u8>>) -> Result<Pairs, DumpError> {
    if !items.len().is_multiple_of(2) {
        return Err(DumpError::BadFormat);
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(f), Some(v)) = (it.next(), it.next()) {
        out.push((f, v));
    }
    Ok(out)
}

/// Check and decode a `DUMP` payload.
pub fn decode(p: &[u8]) -> Result<Value, DumpError> {
    if p.len() < 10 {
        return Err(DumpError::VersionOrChecksum);
    }
    let (body, crc) = p.split_at(p.len() - 8);
    let version = u16::from_le_bytes([body[body.len() - 2], body[body.len() - 1]]);
    if version > RDB_VERSION
        || crc64(body) != u64::from_le_bytes(crc.try_into().unwrap_or_default())
    {
        return Err(DumpError::VersionOrChecksum);
    }
    let obj = &body[..body.len() - 2];
    let mut r = Rd { b: obj, at: 0 };
    let v = match r.byte()? {
        TYPE_STRING => Value::String(r.string()?),
        TYPE_SET => {
            let n = r.count(1)?;
            Value::Set((0..n).map(|_| r.string()).collect::<Result<_, _>>()?)
        }
        TYPE_HASH => {
            let n = r.count(2)?;
            Value::Hash(
                (0..n)
                    .map(|_| Ok((r.string()?, r.string()?)))
                    .collect::<Result<_, DumpError>>()?,
            )
        }
        TYPE_SET_INTSET => Value::Set(intset(&r.string()?)?),
        TYPE_HASH_LISTPACK => Value::Hash(pairs(listpack(&r.string()?)?)?),
        TYPE_HASH_ZIPLIST => Value::Hash(pairs(ziplist(&r.string()?)?)?),
        _ => return Err(DumpError::BadFormat),
    };
    if r.at != obj.len() {
        return Err(DumpError::BadFormat);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_damage() {
        let big = vec![b'x'; 70_000];
        for v in [
            Value::String(b"hello".to_vec()),
            Value::String(big.clone()),
            Value::String(Vec::new()),
            Value::Hash(vec![(b"f".to_vec(), big), (b"g".to_vec(), Vec::new())]),
            Value::Set(vec![b"a".to_vec(), b"1".to_vec()]),
        ] {
            let p = encode(&v);
            assert_eq!(decode(&p), Ok(v.clone()));
            let mut bad = p.clone();
            bad[1] ^= 1;
            assert_eq!(decode(&bad), Err(DumpError::VersionOrChecksum));
            assert_eq!(decode(&p[..5]), Err(DumpError::VersionOrChecksum));
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Payloads redis-server 7.0.15's `DUMP` gave for `SET k 12345`, `SET z <"a" × 100>`,
    /// `HSET h a 1 b hello`, `SADD s 1 2 3` and `SADD s2 x y`: its integer, LZF, listpack
    /// and intset encodings read back.
    #[test]
    fn reads_what_redis_7_dumps() {
        let s = |v: &str| v.as_bytes().to_vec();
        assert_eq!(
            decode(&hex("00c139300a009d94ea2793fc08b9")),
            Ok(Value::String(s("12345")))
        );
        assert_eq!(
            decode(&hex("00c3094064016161e057000161610a00e8a3b507b06df271")),
            Ok(Value::String(s(&"a".repeat(100))))
        );
        assert_eq!(
            decode(&hex(
                "101616000000040081610201018162028568656c6c6f06ff0a00e8c5fe99ee07955d"
            )),
            Ok(Value::Hash(vec![(s("a"), s("1")), (s("b"), s("hello"))]))
        );
        assert_eq!(
            decode(&hex("0b0e02000000030000000100020003000a00a5025ce26d6e4d1b")),
            Ok(Value::Set(vec![s("1"), s("2"), s("3")]))
        );
        assert_eq!(
            decode(&hex("0202017901780a000cdf6b3db330bcf0")),
            Ok(Value::Set(vec![s("y"), s("x")]))
        );
    }

    #[test]
    fn compact_encodings_decode() {
        // A listpack of "a", 1, "hello", -300 (13-bit int), 70000 (24-bit int).
        let mut lp = vec![0u8; 6];
        for e in [
            &b"\x81a"[..],
            b"\x01",
            b"\x85hello",
            &[0xde, 0xd4][..],
            &[0xf2, 0x70, 0x11, 0x01][..],
        ] {
            lp.extend_from_slice(e);
            lp.push(e.len() as u8);
        }
        lp.push(0xff);
        let total = lp.len() as u32;
        lp[..4].copy_from_slice(&total.to_le_bytes());
        lp[4..6].copy_from_slice(&5u16.to_le_bytes());
        assert_eq!(
            listpack(&lp).unwrap(),
            vec![
                b"a".to_vec(),
                b"1".to_vec(),
                b"hello".to_vec(),
                b"-300".to_vec(),
                b"70000".to_vec()
            ]
        );
        // An intset of 16-bit members.
        let mut is = vec![2, 0, 0, 0, 3, 0, 0, 0];
        for v in [-1i16, 2, 300] {
            is.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(
            intset(&is).unwrap(),
            vec![b"-1".to_vec(), b"2".to_vec(), b"300".to_vec()]
        );
        assert!(listpack(&lp[..lp.len() - 1]).is_err());
        assert!(intset(&is[..is.len() - 1]).is_err());
    }
}
