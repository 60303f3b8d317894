//! Continuous batching: each step takes one decode token from every running request and fills the
//! rest of the step's token budget (`chunked_prefill_size`) with prefill chunks, first of requests
//! already running, then of newly admitted ones. Pages are allocated as sequences grow; when the
//! pool is full the least important running request (the most recently admitted) is preempted:
//! its pages are freed (their whole pages first offered to the prefix cache) and it goes back to
//! the front of the waiting queue with every token it generated, to be recomputed later.

use std::collections::VecDeque;

use crate::engine::block_manager::{BlockAllocator, PageId};
use crate::engine::radix::RadixCache;
use crate::engine::sequence::Sequence;

/// One sequence's share of a step: `running[index]` computes `n_tokens` tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    pub index: usize,
    pub n_tokens: usize,
    /// Whether this chunk reaches the end of the sequence's tokens (a token is sampled after it).
    pub samples: bool,
}

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub page_size: usize,
    pub max_running: usize,
    pub step_token_budget: usize,
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    pub alloc: BlockAllocator,
    pub radix: Option<RadixCache>,
    pub waiting: VecDeque<Sequence>,
    /// In admission order: earlier is more important.
    pub running: Vec<Sequence>,
    /// Preemptions since the start.
    pub preemptions: u64,
    /// Prompt tokens looked up in the prefix cache, and found, since the start.
    pub prefix_query_tokens: u64,
    pub prefix_hit_tokens: u64,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig, num_pages: usize, prefix_caching: bool) -> Scheduler {
        let radix = prefix_caching.then(|| RadixCache::new(cfg.page_size));
        Scheduler {
            cfg,
            alloc: BlockAllocator::new(num_pages),
            radix,
            waiting: VecDeque::new(),
            running: Vec::new(),
            preemptions: 0,
            prefix_query_tokens: 0,
            prefix_hit_tokens: 0,
        }
    }

    pub fn page_size(&self) -> usize {
        self.cfg.page_size
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    fn pages_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.cfg.page_size)
    }

    /// `n` pages, evicting unreferenced prefix-cache pages when the free list is short.
    fn alloc_pages(&mut self, n: usize) -> Option<Vec<PageId>> {
        if n > self.alloc.num_free() {
            if let Some(radix) = &mut self.radix {
                radix.evict(n - self.alloc.num_free(), &mut self.alloc);
            }
        }
        self.alloc.alloc(n)
    }

    /// Pages that could be had now (free, or held only by the prefix cache).
    pub fn available_pages(&self) -> usize {
        self.alloc.num_free() + self.radix.as_ref().map_or(0, |r| r.evictable(&self.alloc))
    }

    /// Pages held by the prefix cache alone.
    pub fn cached_only_pages(&self) -> usize {
        self.radix.as_ref().map_or(0, |r| r.evictable(&self.alloc))
    }

    /// Records the sequence's whole cached pages in the prefix cache.
    pub fn cache_prefix(&mut self, seq: &mut Sequence) {
        cache_prefix(self.radix.as_mut(), &mut self.alloc, self.cfg.page_size, seq);
    }

    /// [`cache_prefix`](Self::cache_prefix) for `running[index]`.
    pub fn cache_prefix_running(&mut self, index: usize) {
        cache_prefix(self.radix.as_mut(), &mut self.alloc, self.cfg.page_size, &mut self.running[index]);
    }

    /// Frees a sequence's pages (offering its whole pages to the prefix cache first).
    pub fn free_sequence(&mut self, seq: &mut Sequence) {
        self.cache_prefix(seq);
        let table = std::mem::take(&mut seq.block_table);
        self.alloc.release_all(&table);
        seq.cached_len = 0;
        seq.radix_pages = 0;
    }

    fn preempt(&mut self, index: usize) {
        let mut seq = self.running.remove(index);
        self.free_sequence(&mut seq);
        seq.usage.preemptions += 1;
        self.preemptions += 1;
        tracing::debug!("preempted request {} ({} tokens to recompute)", seq.id, seq.tokens.len());
        self.waiting.push_front(seq);
    }

    /// Plans one step. Indices in the plan refer to `running` after the call.
    pub fn schedule(&mut self) -> Vec<Planned> {
        let mut budget = self.cfg.step_token_budget;
        let mut plan = Vec::new();
        let mut preempted = false;
        // Running sequences, most important first: decodes, and prefill chunks of those admitted
        // earlier whose prompt did not fit one step.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let (cached, n) = {
                let s = &self.running[i];
                (s.cached_len, s.pending().min(budget))
            };
            let need = self.pages_for(cached + n).saturating_sub(self.running[i].block_table.len());
            let mut ok = true;
            // Preempt from the least important end until the pages fit (or this one went).
            #[allow(clippy::while_immutable_condition)] // the body breaks or preempts
            while need > 0 {
                if let Some(pages) = self.alloc_pages(need) {
                    self.running[i].block_table.extend(pages);
                    break;
                }
                let victim = self.running.len() - 1;
                preempted = true;
                self.preempt(victim);
                if victim == i {
                    ok = false;
                    break;
                }
            }
            if !ok {
                break;
            }
            let s = &self.running[i];
            plan.push(Planned { index: i, n_tokens: n, samples: s.cached_len + n == s.tokens.len() });
            budget -= n;
            i += 1;
        }
        // Admissions, first come first served, while nothing had to be preempted this step.
        while !preempted && budget > 0 && self.running.len() < self.cfg.max_running {
            let Some(mut seq) = self.waiting.pop_front() else { break };
            // Reuse cached whole pages of the prefix; at least one token is computed.
            let lookup = seq.tokens.len() - 1;
            let matched = match &mut self.radix {
                Some(radix) => radix.match_prefix(&seq.tokens[..lookup], &mut self.alloc),
                None => Vec::new(),
            };
            let hit = matched.len() * self.cfg.page_size;
            let n = (seq.tokens.len() - hit).min(budget);
            let need = self.pages_for(hit + n) - matched.len();
            // Keep a page of headroom per running sequence for its next decode steps.
            let reserve = self.running.len();
            // The free list first: counting reclaimable prefix pages walks the tree.
            let fits = self.running.is_empty()
                || need + reserve <= self.alloc.num_free()
                || need + reserve <= self.available_pages();
            let pages = if fits { self.alloc_pages(need) } else { None };
            let Some(pages) = pages else {
                self.alloc.release_all(&matched);
                self.waiting.push_front(seq);
                break;
            };
            if self.radix.is_some() {
                self.prefix_query_tokens += seq.prompt_len as u64;
                self.prefix_hit_tokens += hit.min(seq.prompt_len) as u64;
            }
            if !seq.admitted_before {
                seq.usage.cached_tokens = hit.min(seq.prompt_len);
                seq.admitted_before = true;
            }
            seq.block_table = matched;
            seq.block_table.extend(pages);
            seq.cached_len = hit;
            seq.radix_pages = hit / self.cfg.page_size;
            let samples = hit + n == seq.tokens.len();
            self.running.push(seq);
            plan.push(Planned { index: self.running.len() - 1, n_tokens: n, samples });
            budget -= n;
        }
        plan
    }
}

fn cache_prefix(radix: Option<&mut RadixCache>, alloc: &mut BlockAllocator, ps: usize, seq: &mut Sequence) {
    let Some(radix) = radix else { return };
    let full = seq.cached_len / ps;
    if full > seq.radix_pages {
        radix.insert(&seq.tokens[..full * ps], &seq.block_table[..full], alloc);
        seq.radix_pages = full;
    }
}
