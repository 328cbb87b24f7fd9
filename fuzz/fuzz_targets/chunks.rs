//! Shared by the framing targets: cut a byte stream into pieces the way the network might.

/// `data` as one piece (`seed` 0) or as pieces of 1..=`max` bytes chosen by `seed`.
pub fn chunks(data: &[u8], seed: u8, max: usize) -> impl Iterator<Item = &[u8]> {
    let mut rng = seed as u32 | 0x9e37_0000;
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= data.len() {
            return None;
        }
        let n = if seed == 0 {
            data.len()
        } else {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            1 + (rng as usize % max)
        };
        let end = (at + n).min(data.len());
        let piece = &data[at..end];
        at = end;
        Some(piece)
    })
}
