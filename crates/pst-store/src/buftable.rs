//! The store's per-buffer bookkeeping ([`BufRef`]: references, live bytes, allocator
//! handles), indexed by buffer number in pages allocated on demand.
//!
//! Every record appended looks up each of its buffers here, and every value overwritten or
//! retired does again. Buffers are numbered densely and handed out mostly in runs, so a paged
//! array keeps neighbouring buffers on neighbouring cache lines, where a hash map scattered
//! them (a cache miss per record; `track` was ~5% of a `wal` server's samples). A page is
//! freed when its last buffer is (up to 8 emptied pages are kept for reuse), so memory follows
//! the buffers held: a page of 128 entries (about 6 KiB) per 128-buffer range with at least one
//! held, plus a 24-byte index entry per range, made at open (24 MiB for a 1 TiB pool of 2 KiB
//! buffers). A pool whose every buffer is held costs about 48 bytes per buffer, less than the
//! map's ~60 per entry.

use crate::BufRef;

/// Buffers per page (a page is `PAGE * size_of::<BufRef>()` bytes, about 6 KiB).
const PAGE: usize = 128;

/// Emptied pages kept for reuse: buffers cycling through a page boundary would otherwise
/// allocate and free a page again and again.
const SPARE_PAGES: usize = 8;

/// A map from buffer number to [`BufRef`], holding the buffers with at least one reference.
#[derive(Debug, Default)]
pub(crate) struct BufTable {
    pages: Vec<Option<Page>>,
    len: usize,
    /// Emptied pages (every entry default), at most [`SPARE_PAGES`].
    spare: Vec<Page>,
}

#[derive(Debug)]
struct Page {
    /// Entries with `refs > 0` in this page.
    held: usize,
    refs: Box<[BufRef]>,
}

fn split(b: u32) -> (usize, usize) {
    (b as usize / PAGE, b as usize % PAGE)
}

impl BufTable {
    /// A table for buffers `0..count` (the page index sized up front: 24 bytes per page).
    pub(crate) fn with_buffers(count: u32) -> BufTable {
        let mut pages = Vec::new();
        pages.resize_with((count as usize).div_ceil(PAGE), || None);
        BufTable {
            pages,
            ..BufTable::default()
        }
    }

    /// Buffers held (with at least one reference).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether buffer `b` is held.
    pub(crate) fn contains(&self, b: u32) -> bool {
        self.get(b).is_some()
    }

    /// Buffer `b`'s entry, if held.
    pub(crate) fn get(&self, b: u32) -> Option<&BufRef> {
        let (p, i) = split(b);
        let r = &self.pages.get(p)?.as_ref()?.refs[i];
        (r.refs > 0).then_some(r)
    }

    /// Buffer `b`'s entry, if held.
    pub(crate) fn get_mut(&mut self, b: u32) -> Option<&mut BufRef> {
        let (p, i) = split(b);
        let r = &mut self.pages.get_mut(p)?.as_mut()?.refs[i];
        (r.refs > 0).then_some(r)
    }

    /// One more reference on buffer `b` (held from now on); its entry.
    pub(crate) fn add_ref(&mut self, b: u32) -> &mut BufRef {
        let (p, i) = split(b);
        if self.pages.len() <= p {
            self.pages.resize_with(p + 1, || None);
        }
        let spare = &mut self.spare;
        let page = self.pages[p].get_or_insert_with(|| {
            spare.pop().unwrap_or_else(|| Page {
                held: 0,
                refs: (0..PAGE).map(|_| BufRef::default()).collect(),
            })
        });
        let r = &mut page.refs[i];
        if r.refs == 0 {
            page.held += 1;
            self.len += 1;
        }
        r.refs += 1;
        r
    }

    /// Drop buffer `b`'s entry (whatever its references), returning it when it was held.
    pub(crate) fn remove(&mut self, b: u32) -> Option<BufRef> {
        let (p, i) = split(b);
        let slot = self.pages.get_mut(p)?;
        let page = slot.as_mut()?;
        if page.refs[i].refs == 0 {
            return None;
        }
        let r = std::mem::take(&mut page.refs[i]);
        page.held -= 1;
        self.len -= 1;
        if page.held == 0 {
            // Entries leave only through here, reset: an emptied page is all defaults (what
            // a recycled page must be, and no allocator handle is dropped with it).
            debug_assert!(page
                .refs
                .iter()
                .all(|r| r.refs == 0 && r.live == 0 && r.handles.is_empty()));
            if let Some(page) = slot.take().filter(|_| self.spare.len() < SPARE_PAGES) {
                self.spare.push(page);
            }
        }
        Some(r)
    }

    /// The held buffers and their entries, in buffer order.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut BufRef)> {
        self.pages
            .iter_mut()
            .enumerate()
            .filter_map(|(p, page)| page.as_mut().map(|page| (p, page)))
            .flat_map(|(p, page)| {
                page.refs
                    .iter_mut()
                    .enumerate()
                    .filter(|(_, r)| r.refs > 0)
                    .map(move |(i, r)| ((p * PAGE + i) as u32, r))
            })
    }

    /// The held buffers and their entries, in buffer order.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &BufRef)> {
        self.pages
            .iter()
            .enumerate()
            .filter_map(|(p, page)| page.as_ref().map(|page| (p, page)))
            .flat_map(|(p, page)| {
                page.refs
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.refs > 0)
                    .map(move |(i, r)| ((p * PAGE + i) as u32, r))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use proptest::prelude::*;

    #[test]
    fn references_come_and_go() {
        let mut t = BufTable::default();
        assert!(!t.contains(7) && t.get(70_000).is_none());
        t.add_ref(7).live = 5;
        t.add_ref(7);
        t.add_ref(70_000);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(7).map(|r| (r.refs, r.live)), Some((2, 5)));
        assert!(t.get(8).is_none() && t.get_mut(8).is_none());
        let r = t.remove(7).expect("held");
        assert_eq!((r.refs, r.live), (2, 5));
        assert!(t.remove(7).is_none() && !t.contains(7));
        assert_eq!(t.len(), 1);
        t.remove(70_000);
        assert_eq!(t.len(), 0);
        assert!(t.pages.iter().all(Option::is_none), "empty pages are freed");
    }

    proptest! {
        /// Against a hash map, over random adds, live-byte updates and removals.
        #[test]
        fn behaves_as_a_map(ops in proptest::collection::vec((0u8..3, 0u32..3000, 1u32..100), 0..400)) {
            let mut t = BufTable::default();
            let mut m: HashMap<u32, (u32, u32)> = HashMap::new();
            for (op, b, x) in ops {
                match op {
                    0 => {
                        t.add_ref(b).live += x;
                        let e = m.entry(b).or_default();
                        e.0 += 1;
                        e.1 += x;
                    }
                    1 => {
                        if let Some(r) = t.get_mut(b) {
                            r.live = r.live.saturating_sub(x);
                        }
                        if let Some(e) = m.get_mut(&b) {
                            e.1 = e.1.saturating_sub(x);
                        }
                    }
                    _ => {
                        prop_assert_eq!(t.remove(b).map(|r| (r.refs, r.live)), m.remove(&b));
                    }
                }
                prop_assert_eq!(t.len(), m.len());
            }
            let mut want: Vec<(u32, (u32, u32))> = m.into_iter().collect();
            want.sort();
            let got: Vec<(u32, (u32, u32))> = t.iter().map(|(b, r)| (b, (r.refs, r.live))).collect();
            prop_assert_eq!(got, want);
        }
    }
}
