//! One attention rank's KV-cache bookkeeping: its page allocator and its prefix cache. Without DP
//! attention the engine has one. Under DP attention (`--enable-dp-attention`) it has one per rank,
//! because a page's latent rows exist only in the pool of the rank that wrote them: a sequence
//! takes its pages from its own rank and reuses prefixes cached on that rank only (as SGLang, which
//! runs a scheduler with its own KV cache per DP rank).

use crate::engine::block_manager::{BlockAllocator, PageId};
use crate::engine::radix::RadixCache;
use crate::engine::sequence::Sequence;

#[derive(Debug)]
pub struct RankPages {
    page_size: usize,
    pub alloc: BlockAllocator,
    pub radix: Option<RadixCache>,
    /// Sequences preempted on this rank since the start.
    pub preemptions: u64,
}

impl RankPages {
    pub fn new(num_pages: usize, page_size: usize, prefix_caching: bool) -> RankPages {
        let radix = prefix_caching.then(|| RadixCache::new(page_size));
        RankPages { page_size, alloc: BlockAllocator::new(num_pages), radix, preemptions: 0 }
    }

    /// `n` pages, evicting unreferenced prefix-cache pages when the free list is short.
    pub fn alloc_pages(&mut self, n: usize) -> Option<Vec<PageId>> {
        if n > self.alloc.num_free() {
            if let Some(radix) = &mut self.radix {
                radix.evict(n - self.alloc.num_free(), &mut self.alloc);
            }
        }
        self.alloc.alloc(n)
    }

    /// Pages that could be had now (free, or held only by the prefix cache).
    pub fn available_pages(&self) -> usize {
        self.alloc.num_free() + self.cached_only_pages()
    }

    /// Pages held by the prefix cache alone (walks the tree).
    pub fn cached_only_pages(&self) -> usize {
        self.radix.as_ref().map_or(0, |r| r.evictable(&self.alloc))
    }

    /// Cached whole pages of the longest prefix of `tokens`, without taking them.
    pub fn peek_prefix(&self, tokens: &[u32]) -> usize {
        self.radix.as_ref().map_or(0, |r| r.peek_prefix(tokens))
    }

    /// The cached pages of the longest whole-page prefix of `tokens`, retained for the caller.
    pub fn match_prefix(&mut self, tokens: &[u32]) -> Vec<PageId> {
        match &mut self.radix {
            Some(radix) => radix.match_prefix(tokens, &mut self.alloc),
            None => Vec::new(),
        }
    }

    /// Records the sequence's whole cached pages in the prefix cache.
    pub fn cache_prefix(&mut self, seq: &mut Sequence) {
        let Some(radix) = &mut self.radix else { return };
        let ps = self.page_size;
        let full = seq.cached_len / ps;
        if full > seq.radix_pages {
            radix.insert(&seq.tokens[..full * ps], &seq.block_table[..full], &mut self.alloc);
            seq.radix_pages = full;
        }
    }

    /// Frees a sequence's pages (offering its whole pages to the prefix cache first).
    pub fn free(&mut self, seq: &mut Sequence) {
        self.cache_prefix(seq);
        let table = std::mem::take(&mut seq.block_table);
        self.alloc.release_all(&table);
        seq.cached_len = 0;
        seq.radix_pages = 0;
    }
}
