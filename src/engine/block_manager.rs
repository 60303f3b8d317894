//! Page bookkeeping of the paged latent KV cache: which pages are free, and how many owners each
//! used page has (sequences' block tables and prefix-cache nodes). Device-agnostic: the storage
//! itself belongs to the model backend ([`crate::engine::model::StepModel`]).

/// Index of one page of `page_size` cached positions.
pub type PageId = u32;

#[derive(Debug)]
pub struct BlockAllocator {
    free: Vec<PageId>,
    refcount: Vec<u32>,
}

impl BlockAllocator {
    pub fn new(num_pages: usize) -> BlockAllocator {
        // Pop from the end: hand out low page ids first.
        let free = (0..num_pages as PageId).rev().collect();
        BlockAllocator { free, refcount: vec![0; num_pages] }
    }

    pub fn num_pages(&self) -> usize {
        self.refcount.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn num_used(&self) -> usize {
        self.num_pages() - self.num_free()
    }

    pub fn refcount(&self, page: PageId) -> u32 {
        self.refcount[page as usize]
    }

    /// `n` fresh pages with one owner each, or `None` (nothing taken) when fewer are free.
    pub fn alloc(&mut self, n: usize) -> Option<Vec<PageId>> {
        if n > self.free.len() {
            return None;
        }
        let pages = self.free.split_off(self.free.len() - n);
        for &p in &pages {
            debug_assert_eq!(self.refcount[p as usize], 0);
            self.refcount[p as usize] = 1;
        }
        Some(pages)
    }

    /// One more owner for `page`.
    pub fn retain(&mut self, page: PageId) {
        debug_assert!(self.refcount[page as usize] > 0, "retain of a free page");
        self.refcount[page as usize] += 1;
    }

    /// One owner less; the page is free again when none is left.
    pub fn release(&mut self, page: PageId) {
        let rc = &mut self.refcount[page as usize];
        debug_assert!(*rc > 0, "release of a free page");
        *rc = rc.saturating_sub(1);
        if *rc == 0 {
            self.free.push(page);
        }
    }

    pub fn release_all(&mut self, pages: &[PageId]) {
        for &p in pages {
            self.release(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_release_roundtrip() {
        let mut a = BlockAllocator::new(4);
        let p = a.alloc(3).unwrap_or_default();
        assert_eq!(p.len(), 3);
        assert!(a.alloc(2).is_none());
        assert_eq!(a.num_free(), 1);
        a.retain(p[0]);
        a.release_all(&p);
        assert_eq!(a.num_free(), 3);
        assert_eq!(a.refcount(p[0]), 1);
        a.release(p[0]);
        assert_eq!(a.num_free(), 4);
    }
}
