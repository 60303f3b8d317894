//! Continuous batching: each step takes one decode token from every running request and fills the
//! rest of the step's token budget (`chunked_prefill_size`) with prefill chunks, first of requests
//! already running, then of newly admitted ones. Pages are allocated as sequences grow; when the
//! pool is full the least important running request (the most recently admitted) is preempted:
//! its pages are freed (their whole pages first offered to the prefix cache) and it goes back to
//! the front of the waiting queue with every token it generated, to be recomputed later.
//!
//! Under DP attention the pages live in one pool per attention rank ([`RankPages`]: an allocator
//! and a prefix cache each). A request is placed on a rank at admission ([`placement`]), takes
//! pages from that rank only, and a rank that runs out preempts its own least important sequence;
//! the other ranks go on. One step still plans every rank's sequences together (one budget, one
//! forward). Without DP attention there is one rank, and all of this is the plain scheduler.
//!
//! [`placement`]: crate::engine::placement

use std::collections::VecDeque;

use crate::engine::placement::{place, RankLoad};
use crate::engine::rank_pages::RankPages;
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
    /// Attention ranks, each with a pool of its own (1 without DP attention).
    pub ranks: usize,
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    /// Per attention rank: its pages and prefix cache.
    pub ranks: Vec<RankPages>,
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
    /// A scheduler over `cfg.ranks` pools of `num_pages` pages each.
    pub fn new(cfg: SchedulerConfig, num_pages: usize, prefix_caching: bool) -> Scheduler {
        let ranks = (0..cfg.ranks.max(1)).map(|_| RankPages::new(num_pages, cfg.page_size, prefix_caching)).collect();
        Scheduler {
            cfg,
            ranks,
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

    /// Sequences running on `rank`.
    pub fn running_on(&self, rank: usize) -> usize {
        self.running.iter().filter(|s| s.rank == rank).count()
    }

    /// Pages in use on every rank (by requests or the prefix cache).
    pub fn num_used(&self) -> usize {
        self.ranks.iter().map(|r| r.alloc.num_used()).sum()
    }

    /// Free pages on every rank.
    pub fn num_free(&self) -> usize {
        self.ranks.iter().map(|r| r.alloc.num_free()).sum()
    }

    /// Pages held by the prefix caches alone.
    pub fn cached_only_pages(&self) -> usize {
        self.ranks.iter().map(|r| r.cached_only_pages()).sum()
    }

    /// Records the whole cached pages of `running[index]` in its rank's prefix cache.
    pub fn cache_prefix_running(&mut self, index: usize) {
        let s = &mut self.running[index];
        self.ranks[s.rank].cache_prefix(s);
    }

    /// Frees a sequence's pages (offering its whole pages to its rank's prefix cache first).
    pub fn free_sequence(&mut self, seq: &mut Sequence) {
        self.ranks[seq.rank].free(seq);
    }

    fn preempt(&mut self, index: usize) {
        let mut seq = self.running.remove(index);
        self.free_sequence(&mut seq);
        seq.usage.preemptions += 1;
        self.preemptions += 1;
        self.ranks[seq.rank].preemptions += 1;
        tracing::debug!("preempted request {} on rank {} ({} tokens to recompute)", seq.id, seq.rank, seq.tokens.len());
        self.waiting.push_front(seq);
    }

    /// Plans one step. Indices in the plan refer to `running` after the call.
    pub fn schedule(&mut self) -> Vec<Planned> {
        let mut budget = self.cfg.step_token_budget;
        let mut plan = Vec::new();
        // Ranks that had to preempt this step: they admit nothing more in it.
        let mut preempted = vec![false; self.ranks.len()];
        // Running sequences, most important first: decodes, and prefill chunks of those admitted
        // earlier whose prompt did not fit one step.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let (cached, n) = {
                let s = &self.running[i];
                (s.cached_len, s.pending().min(budget))
            };
            let need = self.pages_for(cached + n).saturating_sub(self.running[i].block_table.len());
            if !self.grow(i, need, &mut preempted) {
                // `running[i]` itself went; the next sequence (of another rank) is at `i` now.
                continue;
            }
            let s = &self.running[i];
            plan.push(Planned { index: i, n_tokens: n, samples: s.cached_len + n == s.tokens.len() });
            budget -= n;
            i += 1;
        }
        self.admit(&mut plan, budget, &preempted);
        plan
    }

    /// Gives `running[i]` `need` more pages of its rank, preempting that rank's sequences from the
    /// least important end until they fit. False when `running[i]` itself had to go.
    fn grow(&mut self, i: usize, need: usize, preempted: &mut [bool]) -> bool {
        if need == 0 {
            return true;
        }
        let rank = self.running[i].rank;
        loop {
            if let Some(pages) = self.ranks[rank].alloc_pages(need) {
                self.running[i].block_table.extend(pages);
                return true;
            }
            // `running[i]` is on `rank`, so the victim is `i` or a later sequence.
            let victim = self.running.iter().rposition(|s| s.rank == rank).unwrap_or(i);
            preempted[rank] = true;
            self.preempt(victim);
            if victim == i {
                return false;
            }
        }
    }

    /// What [`place`] needs to know of each rank for a request of `tokens` (`None`: the rank
    /// admits nothing this step).
    fn rank_loads(&self, tokens: &[u32], budget: usize, closed: &[bool]) -> Vec<Option<RankLoad>> {
        let lookup = &tokens[..tokens.len() - 1];
        (0..self.ranks.len())
            .map(|r| {
                if closed[r] {
                    return None;
                }
                let hit_pages = self.ranks[r].peek_prefix(lookup);
                let hit = hit_pages * self.cfg.page_size;
                let n = (tokens.len() - hit).min(budget);
                Some(RankLoad {
                    running: self.running_on(r),
                    free_pages: self.ranks[r].alloc.num_free(),
                    hit_pages,
                    need_pages: self.pages_for(hit + n) - hit_pages,
                })
            })
            .collect()
    }

    /// Admits waiting sequences, first come first served, to ranks that did not preempt this step.
    fn admit(&mut self, plan: &mut Vec<Planned>, mut budget: usize, closed: &[bool]) {
        while budget > 0 && self.running.len() < self.cfg.max_running && closed.iter().any(|c| !c) {
            let Some(mut seq) = self.waiting.pop_front() else { break };
            let Some(rank) = place(&self.rank_loads(&seq.tokens, budget, closed)) else {
                self.waiting.push_front(seq);
                break;
            };
            // Reuse cached whole pages of the prefix; at least one token is computed.
            let lookup = seq.tokens.len() - 1;
            let matched = self.ranks[rank].match_prefix(&seq.tokens[..lookup]);
            let hit = matched.len() * self.cfg.page_size;
            let n = (seq.tokens.len() - hit).min(budget);
            let need = self.pages_for(hit + n) - matched.len();
            // Keep a page of headroom per running sequence of the rank for its next decode steps.
            let reserve = self.running_on(rank);
            let pages = &mut self.ranks[rank];
            // The free list first: counting reclaimable prefix pages walks the tree.
            let fits = reserve == 0 || need + reserve <= pages.alloc.num_free() || need + reserve <= pages.available_pages();
            let new_pages = if fits { pages.alloc_pages(need) } else { None };
            let Some(new_pages) = new_pages else {
                pages.alloc.release_all(&matched);
                self.waiting.push_front(seq);
                break;
            };
            if pages.radix.is_some() {
                self.prefix_query_tokens += seq.prompt_len as u64;
                self.prefix_hit_tokens += hit.min(seq.prompt_len) as u64;
            }
            if !seq.admitted_before {
                seq.usage.cached_tokens = hit.min(seq.prompt_len);
                seq.admitted_before = true;
            }
            seq.rank = rank;
            seq.block_table = matched;
            seq.block_table.extend(new_pages);
            seq.cached_len = hit;
            seq.radix_pages = hit / self.cfg.page_size;
            let samples = hit + n == seq.tokens.len();
            self.running.push(seq);
            plan.push(Planned { index: self.running.len() - 1, n_tokens: n, samples });
            budget -= n;
        }
    }
}
