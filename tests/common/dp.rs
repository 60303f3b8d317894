//! The DP-attention preemption scenario, shared by tests/engine_dp.rs (a fake model on the CPU,
//! which also checks every block table against its rank's pool) and tests/gpu_tp.rs (the engine
//! over two GPUs). The scheduling depends only on the lengths and the pool, so both see the same
//! placements and preemptions.
//!
//! Two ranks of 8 pages of 16 positions. Four greedy requests (prompt length, max tokens) are
//! admitted in the first step: A → rank 0, B → rank 1 (the idler rank), C → rank 0 (more free
//! pages), D → rank 1 (fewer running). A and C need 7 pages each on rank 0, so rank 0 runs out
//! while D, the most recently admitted request of all, still runs on rank 1: rank 0 must preempt
//! its own latest request, C, not D, and rank 1 goes on. C waits (never dropped) and comes back
//! on a rank with room.

use std::sync::atomic::Ordering::Relaxed;

use dsv3::engine::{Engine, EngineConfig, KvCacheSize};

use super::{prompt, run_greedy};

pub const PAGE: usize = 16;
pub const PAGES_PER_RANK: usize = 8;
/// (prompt length, max tokens) of A, B, C, D.
pub const REQUESTS: [(usize, usize); 4] = [(3, 100), (40, 4), (3, 100), (3, 80)];
/// C, the request rank 0 preempts.
pub const PREEMPTED: usize = 2;

pub fn config() -> EngineConfig {
    EngineConfig {
        page_size: PAGE,
        kv_cache: KvCacheSize::Tokens(PAGE * PAGES_PER_RANK),
        chunked_prefill_size: Some(64),
        ..Default::default()
    }
}

/// The scenario's requests (prompt, max tokens) over a vocabulary of `vocab`.
pub fn requests(vocab: usize) -> Vec<(Vec<u32>, usize)> {
    REQUESTS.iter().enumerate().map(|(i, &(len, max))| (prompt(70 + i as u64, len, vocab), max)).collect()
}

/// Runs the scenario on a two-rank engine built with [`config`]; asserts that only rank 0
/// preempted, only C, and that every request completed; returns each request's tokens.
pub fn run(engine: &mut Engine, vocab: usize) -> Vec<Vec<u32>> {
    assert_eq!(engine.info().dp_ranks, 2, "the scenario needs two attention ranks");
    let reqs = requests(vocab);
    let out = run_greedy(engine, &reqs);
    for (i, ((ids, usage), (_, max))) in out.iter().zip(&reqs).enumerate() {
        assert_eq!(ids.len(), *max, "request {i}: every token, preempted or not");
        let want = usize::from(i == PREEMPTED);
        assert_eq!(usage.preemptions.min(1), want, "request {i}: preemptions {}", usage.preemptions);
    }
    let per_rank: Vec<u64> = engine.metrics().ranks.iter().map(|r| r.preemptions.load(Relaxed)).collect();
    assert!(per_rank[0] >= 1 && per_rank[1] == 0, "preemptions per rank {per_rank:?}: rank 0 runs out, rank 1 never");
    assert_eq!(engine.pages_in_use(), 0);
    out.into_iter().map(|(ids, _)| ids).collect()
}
