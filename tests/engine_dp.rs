//! The engine under DP attention on the CPU, with a fake step model that keeps one page pool per
//! rank: request placement (balanced, prefix-aware), per-rank preemption and prefix reuse on the
//! right rank.
//!
//! The fake stores each computed token at its position in its rank's pool (through the block
//! table) and predicts the next token from the context it reads back from that pool alone. A
//! sequence whose table addresses pages of another rank, pages never written on its rank, or pages
//! overwritten by another sequence reads a different context and predicts a different token, so
//! the outputs equal [`reference`] only if every block table addresses its own rank's pages.

mod common;

use std::sync::{Arc, Mutex};

use common::{collect, dp, prompt};
use dsv3::engine::{Engine, EngineConfig, GenerateRequest, KvCacheSize, ModelSpec, SamplingParams, SeqStep, StepModel, StepOutput};
use dsv3::error::{Error, Result};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

const VOCAB: usize = 512;

/// The fake's prediction for a context: a hash of its tokens, never 0 or 1 (BOS, EOS).
fn next_token(context: &[u32]) -> u32 {
    let h = context.iter().fold(0xcbf29ce484222325u64, |h, &t| (h ^ t as u64).wrapping_mul(0x100000001b3));
    2 + (h % (VOCAB as u64 - 2)) as u32
}

/// Greedy generation of the fake, one request alone.
fn reference(prompt: &[u32], n: usize) -> Vec<u32> {
    let mut ctx = prompt.to_vec();
    for _ in 0..n {
        ctx.push(next_token(&ctx));
    }
    ctx[prompt.len()..].to_vec()
}

/// One sequence of one step, as the fake saw it.
#[derive(Clone, Debug)]
struct Seen {
    rank: usize,
    start: usize,
    tokens: Vec<u32>,
}

type Log = Arc<Mutex<Vec<Vec<Seen>>>>;

struct FakeDp {
    ranks: usize,
    page_size: usize,
    /// Per rank: the token at each slot of its pool (`None`: never written).
    pools: Vec<Vec<Option<u32>>>,
    log: Log,
}

impl FakeDp {
    fn seq_step(&mut self, s: &SeqStep<'_>) -> Result<Option<Vec<f32>>> {
        let ps = self.page_size;
        let pool = self.pools.get_mut(s.rank).ok_or_else(|| Error::InvalidArgument(format!("rank {} of {}", s.rank, self.ranks)))?;
        let end = s.start + s.tokens.len();
        let cap = pool.len();
        let slot = |pos: usize| -> Result<usize> {
            let page = *s.block_table.get(pos / ps).ok_or_else(|| Error::InvalidArgument(format!("no page for position {pos}")))? as usize;
            let slot = page * ps + pos % ps;
            if slot >= cap {
                return Err(Error::InvalidArgument(format!("page {page} is outside rank {}'s pool", s.rank)));
            }
            Ok(slot)
        };
        let mut context = Vec::with_capacity(end);
        for pos in 0..s.start {
            let t = pool[slot(pos)?].ok_or_else(|| Error::InvalidArgument(format!("rank {}: position {pos} was never written there", s.rank)))?;
            context.push(t);
        }
        for (i, &t) in s.tokens.iter().enumerate() {
            let at = slot(s.start + i)?;
            pool[at] = Some(t);
            context.push(t);
        }
        Ok(s.want_logits.then(|| {
            let mut l = vec![0f32; VOCAB];
            l[next_token(&context) as usize] = 1.0;
            l
        }))
    }
}

impl StepModel for FakeDp {
    fn spec(&self) -> ModelSpec {
        ModelSpec { num_layers: 1, latent_width: 4, position_bytes: 16, vocab_size: VOCAB, max_positions: 4096, eos_token_ids: vec![1], memory_bytes: None }
    }
    fn allocate_cache(&mut self, num_pages: usize, page_size: usize) -> Result<()> {
        self.page_size = page_size;
        self.pools = vec![vec![None; num_pages * page_size]; self.ranks];
        Ok(())
    }
    fn step(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Option<StepOutput>>> {
        let seen = batch.iter().map(|s| Seen { rank: s.rank, start: s.start, tokens: s.tokens.to_vec() }).collect();
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(seen);
        batch.iter().map(|s| Ok(self.seq_step(s)?.map(StepOutput::Logits))).collect()
    }
    fn dp_ranks(&self) -> usize {
        self.ranks
    }
    fn device(&self) -> String {
        format!("fake dp {}", self.ranks)
    }
}

fn engine(ranks: usize, cfg: &EngineConfig) -> (Engine, Log) {
    let log = Log::default();
    let model = FakeDp { ranks, page_size: 0, pools: Vec::new(), log: log.clone() };
    (Engine::new(Box::new(model), cfg, None).unwrap_or_else(|e| panic!("{e}")), log)
}

fn config(page: usize, tokens_per_rank: usize, chunk: Option<usize>) -> EngineConfig {
    EngineConfig { page_size: page, kv_cache: KvCacheSize::Tokens(tokens_per_rank), chunked_prefill_size: chunk, ..Default::default() }
}

fn submit(e: &mut Engine, id: u64, p: &[u32], n: usize) -> UnboundedReceiver<dsv3::engine::EngineEvent> {
    let (tx, rx) = unbounded_channel();
    let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(n) };
    e.add_request(id, GenerateRequest { prompt: p.to_vec(), params }, tx).unwrap_or_else(|e| panic!("request {id}: {e}"));
    rx
}

fn seen(log: &Log) -> Vec<Vec<Seen>> {
    log.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The first chunk the model saw of a request: the step record whose tokens start with `first`
/// at position `start`.
fn first_chunk(log: &Log, start: usize, first: &[u32]) -> Seen {
    seen(log).into_iter().flatten().find(|s| s.start == start && s.tokens.starts_with(first)).unwrap_or_else(|| panic!("no chunk at {start} starting {first:?}"))
}

#[test]
fn concurrent_requests_are_balanced_over_the_ranks_and_read_only_their_own_pages() {
    let (mut e, log) = engine(2, &config(4, 256, None));
    assert_eq!((e.info().dp_ranks, e.info().num_pages, e.info().max_total_tokens), (2, 128, 512));
    assert_eq!(e.info().context_length, 256, "a sequence lives in one rank's pool");
    let prompts: Vec<Vec<u32>> = (0..8).map(|i| prompt(i, 3 + (i as usize * 7) % 30, VOCAB)).collect();
    let mut rxs: Vec<_> = prompts.iter().enumerate().map(|(i, p)| submit(&mut e, i as u64, p, 20)).collect();
    e.step();
    // All eight admitted in the first step, four per rank (the least-loaded rank each time).
    let first = seen(&log).remove(0);
    assert_eq!(first.len(), 8);
    assert_eq!((0..2).map(|r| first.iter().filter(|s| s.rank == r).count()).collect::<Vec<_>>(), vec![4, 4]);
    e.run_to_completion();
    for (i, (p, rx)) in prompts.iter().zip(&mut rxs).enumerate() {
        assert_eq!(collect(rx).0, reference(p, 20), "request {i}");
    }
    // Every step ran both ranks' sequences together.
    assert!(seen(&log).iter().all(|step| (0..2).all(|r| step.iter().any(|s| s.rank == r))));
    assert_eq!((e.pages_in_use(), e.preemptions()), (0, 0));
}

#[test]
fn a_full_rank_preempts_its_own_latest_request_and_the_other_rank_goes_on() {
    let (mut e, log) = engine(2, &dp::config());
    let out = dp::run(&mut e, VOCAB);
    let reqs = dp::requests(VOCAB);
    for (i, (p, n)) in reqs.iter().enumerate() {
        assert_eq!(out[i], reference(p, *n), "request {i}");
    }
    // C was recomputed on rank 1, from its first token, once D had finished there.
    let c = &reqs[dp::PREEMPTED].0;
    let recompute = seen(&log).into_iter().flatten().filter(|s| s.start == 0 && s.tokens.len() > c.len() && s.tokens.starts_with(c)).collect::<Vec<_>>();
    assert_eq!(recompute.iter().map(|s| s.rank).collect::<Vec<_>>(), vec![1], "{recompute:?}");
}

#[test]
fn a_cached_prefix_draws_its_request_to_the_rank_that_holds_it_within_the_balance_bound() {
    let (mut e, log) = engine(2, &config(4, 256, None));
    let shared = prompt(100, 8, VOCAB); // two whole pages
    let with = |tail: &[u32]| [shared.as_slice(), tail].concat();
    // L1 → rank 0, L2 (longer prompt) → rank 1; then S (the shared prefix) → rank 0, which has
    // more free pages; S finishes and leaves its two pages in rank 0's prefix cache.
    let (l1, l2, s) = (prompt(1, 5, VOCAB), prompt(2, 40, VOCAB), with(&[7]));
    let mut rxs = vec![submit(&mut e, 1, &l1, 60), submit(&mut e, 2, &l2, 60)];
    e.step();
    rxs.push(submit(&mut e, 3, &s, 2));
    while e.num_running() > 2 || e.num_waiting() > 0 {
        e.step();
    }
    assert_eq!(first_chunk(&log, 0, &s).rank, 0);
    // L3 (no prefix) → rank 0 again (more free pages): rank 0 runs 2, rank 1 runs 1.
    let l3 = prompt(3, 5, VOCAB);
    rxs.push(submit(&mut e, 4, &l3, 60));
    e.step();
    assert_eq!(first_chunk(&log, 0, &l3).rank, 0);
    // Q shares the prefix: rank 0 runs one more than rank 1, within the bound, so Q goes there
    // and starts after the two cached pages.
    let q = with(&[9, 9, 9]);
    rxs.push(submit(&mut e, 5, &q, 4));
    e.step();
    assert_eq!(first_chunk(&log, 8, &q[8..]).rank, 0);
    // Q2 shares it too, but rank 0 now runs two more than rank 1: Q2 goes to rank 1, all computed.
    let q2 = with(&[5]);
    rxs.push(submit(&mut e, 6, &q2, 4));
    e.step();
    assert_eq!(first_chunk(&log, 0, &q2).rank, 1);
    e.run_to_completion();
    let want = [(&l1, 60), (&l2, 60), (&s, 2), (&l3, 60), (&q, 4), (&q2, 4)];
    for (i, (rx, (p, n))) in rxs.iter_mut().zip(want).enumerate() {
        let (ids, _, _, usage) = collect(rx);
        assert_eq!(ids, reference(p, n), "request {i}");
        assert_eq!(usage.cached_tokens, if i == 4 { 8 } else { 0 }, "request {i}: prefix-cache hit");
    }
}

#[test]
fn one_rank_is_the_plain_engine() {
    // The same fake with one rank: everything on rank 0, preemption as before.
    let (mut e, log) = engine(1, &config(4, 64, Some(16)));
    let prompts: Vec<Vec<u32>> = (0..5).map(|i| prompt(i, 3 + i as usize * 9, VOCAB)).collect();
    let mut rxs: Vec<_> = prompts.iter().enumerate().map(|(i, p)| submit(&mut e, i as u64, p, 24)).collect();
    e.run_to_completion();
    for (i, (p, rx)) in prompts.iter().zip(&mut rxs).enumerate() {
        assert_eq!(collect(rx).0, reference(p, 24), "request {i}");
    }
    assert!(e.preemptions() > 0, "a 16-page pool preempts");
    assert!(seen(&log).iter().flatten().all(|s| s.rank == 0));
    assert!(!e.metrics().render_prometheus("m").contains("dp_rank"));
}
