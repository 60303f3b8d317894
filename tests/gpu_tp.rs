//! Tensor and expert parallelism over two GPUs of one process ([`TpModel`]) against the
//! single-GPU model ([`GpuModel`], TP=1) on every fixture: batched prefill + decode logits,
//! greedy tokens, decode CUDA graphs, the serving engine over the group (`TpStepModel`, with and
//! without DP attention, and DP attention served over HTTP), and two "nodes" as two processes
//! (`--nnodes 2`, one GPU each, rendezvous over loopback, NCCL).
//!
//! GPU tests: ignored in the CPU suite; run on a 2-GPU machine with `--include-ignored
//! --test-threads 1`. With fewer than two CUDA devices every test panics (fails), never passes.
//!
//! Tolerances (relative Frobenius error of the logits vs TP=1): TP changes only the order of f32
//! sums (o_proj / down_proj split over K, partials added by the all-reduce in rank order), ~1 ulp
//! per sum, ~1e-6 after a few layers: 1e-5 where the GEMMs read f32 (f32, f16, int8 and AWQ
//! checkpoints: dequantized at load). bf16 weights: 1e-4, since a bf16 GEMM path may round its
//! f32 input to bf16 and a 1-ulp difference can flip that rounding (2^-9 relative per flipped
//! element). FP8: 3e-2, the FP8 tolerance of DESIGN.md: activations are re-quantized to e4m3 per
//! 128-channel group (a tiny difference can move a value across a rounding boundary), and the
//! fixture's slices that split a 128×128 scale block are held dequantized in f32.
//!
//! DP attention (`--enable-dp-attention`, `AttnSplit::Data`) is held to the same tolerances: its
//! attention runs every head on one GPU for a subset of the sequences (TP=1's computation per
//! token), and its FFN is the TP / EP FFN (the same split f32 sums); the gather around it adds
//! zeros, which is exact. So DP's error is at most TP's.

mod common;

use common::gpu::{gpu_model, run_two_nodes};
use common::tp::{check_step, group, last_rows, need_two_gpus, own_tables, PAGE, PAGES};
use common::{check_greedy, dp, fixtures, prompt, reference, run_greedy};
use dsv3::dist::{open_group, GroupConfig};
use dsv3::model::checkpoint::{Checkpoint, DType};
use dsv3::model::generate::greedy_generate;
use dsv3::model::gpu::{BatchSeq, GpuModel, GpuOptions, LogitRows, PagePool, TpModel};
use dsv3::model::shard::{AttnSplit, MoeSplit};
use dsv3::ops::sampling::{argmax, top2_margin};
use dsv3::tensor::rel_error;
use std::path::Path;
use std::sync::Arc;

fn tp_model(dir: &Path, moe: MoeSplit) -> TpModel {
    TpModel::load(dir, group(), moe).unwrap_or_else(|e| panic!("{}: TP=2 ({moe:?}): {e}", dir.display()))
}

/// See the header: by the format of the attention weights.
fn tolerance(dir: &Path) -> f64 {
    let ckpt = Checkpoint::open(dir).unwrap();
    match ckpt.info("model.layers.0.self_attn.kv_a_proj_with_mqa.weight").map(|i| i.dtype) {
        Some(DType::F8E4M3) => 3e-2,
        Some(DType::BF16) => 1e-4,
        _ => 1e-5,
    }
}

/// Three sequences on their own pages (reversed, so paging is exercised), one longer than a page.
struct Batch {
    prompts: Vec<Vec<u32>>,
    tables: Vec<Vec<u32>>,
    lens: Vec<usize>,
}

impl Batch {
    fn new(vocab: usize, max_positions: usize) -> Batch {
        let long = 70.min(max_positions - 8);
        let prompts = vec![prompt(1, 11, vocab), prompt(2, 5, vocab), prompt(3, long, vocab)];
        let per = PAGES / 4;
        let tables = (0..3).map(|i| ((i * per) as u32..((i + 1) * per) as u32).rev().collect()).collect();
        Batch { prompts, tables, lens: vec![0; 3] }
    }
    fn prefill(&self) -> Vec<BatchSeq<'_>> {
        let logits = [LogitRows::All, LogitRows::Last, LogitRows::All];
        (0..3).map(|i| BatchSeq { tokens: &self.prompts[i], start: 0, block_table: &self.tables[i], logits: logits[i] }).collect()
    }
    fn decode<'a>(&'a self, next: &'a [[u32; 1]]) -> Vec<BatchSeq<'a>> {
        (0..3).map(|i| BatchSeq { tokens: &next[i], start: self.lens[i], block_table: &self.tables[i], logits: LogitRows::Last }).collect()
    }
}

/// How the group model runs a step of the batch.
enum Group<'a> {
    /// Tensor parallel: every rank, the batch's block tables into every pool alike.
    Tp(&'a TpModel),
    /// DP attention: sequence i lives on rank `ranks[i]`, its block table `tables[i]` addresses
    /// that rank's pool.
    Dp { model: &'a TpModel, ranks: Vec<usize>, tables: Vec<Vec<u32>> },
}

impl Group<'_> {
    fn model(&self) -> &TpModel {
        match self {
            Group::Tp(m) | Group::Dp { model: m, .. } => m,
        }
    }

    fn step(&self, pools: &mut [PagePool], seqs: &[BatchSeq<'_>]) -> dsv3::Result<Vec<Vec<f32>>> {
        match self {
            Group::Tp(m) => m.forward_batch(pools, seqs),
            Group::Dp { model, ranks, tables } => model.forward_batch_dp(pools, &on_own_pages(seqs, tables), ranks),
        }
    }
}

/// DP attention: `seqs` with sequence i on the pages `tables[i]` of its own rank's pool.
fn on_own_pages<'a>(seqs: &[BatchSeq<'a>], tables: &'a [Vec<u32>]) -> Vec<BatchSeq<'a>> {
    seqs.iter().zip(tables).map(|(q, t)| BatchSeq { block_table: t, ..*q }).collect()
}

/// DP attention over `dp`'s two ranks for the three sequences of [`Batch`] (11, 5 and 70 tokens):
/// on ranks 0, 1, 1 (both ranks get sequences, one gets two), each rank's sequences on pages
/// counted from 0 of its own pool, so sequences of different ranks use the same page ids: a
/// write to, or a read from, another rank's pool would show (the pools start poisoned with NaN).
fn dp_group(dp: &TpModel) -> Group<'_> {
    let world = dp.communicator().world_size();
    assert_eq!(world, 2, "a group of two GPUs");
    let ranks = vec![0, 1, 1];
    let tables = own_tables(&ranks, world);
    Group::Dp { model: dp, ranks, tables }
}

/// Prefill then `steps` decode steps of three sequences, TP=1 and the TP group fed the same tokens.
fn prefill_and_decode(dir: &Path, single: &GpuModel, tp: &TpModel, what: &str, steps: usize) {
    let b = Batch::new(single.config().vocab_size, single.max_positions());
    run_batch(dir, single, &Group::Tp(tp), b, what, steps);
}

/// Prefill then `steps` decode steps of `b`'s three sequences, TP=1 and `group`.
fn run_batch(dir: &Path, single: &GpuModel, group: &Group<'_>, mut b: Batch, what: &str, steps: usize) {
    let vocab = single.config().vocab_size;
    let tol = tolerance(dir);
    let mut p1 = single.new_page_pool(PAGES, PAGE).unwrap();
    let mut p2 = group.model().new_page_pools(PAGES, PAGE).unwrap();
    let a = single.forward_batch(&mut p1, &b.prefill()).unwrap();
    let t = group.step(&mut p2, &b.prefill()).unwrap_or_else(|e| panic!("{what}: prefill: {e}"));
    check_step(&format!("{what} prefill"), &a, &t, vocab, tol);
    b.lens = b.prompts.iter().map(|p| p.len()).collect();
    let mut next = last_rows(&a, vocab);
    let mut worst = rel_error(&t.concat(), &a.concat());
    for step in 0..steps {
        let a = single.forward_batch(&mut p1, &b.decode(&next)).unwrap();
        let t = group.step(&mut p2, &b.decode(&next)).unwrap_or_else(|e| panic!("{what}: decode {step}: {e}"));
        check_step(&format!("{what} decode {step}"), &a, &t, vocab, tol);
        worst = worst.max(rel_error(&t.concat(), &a.concat()));
        next = last_rows(&a, vocab);
        b.lens.iter_mut().for_each(|l| *l += 1);
    }
    println!("{what}: worst logits rel error vs TP=1 {worst:.2e} (tolerance {tol:e})");
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn tp2_logits_match_tp1_on_every_fixture() {
    need_two_gpus();
    for dir in fixtures() {
        let single = gpu_model(&dir);
        let tp = tp_model(&dir, MoeSplit::Tensor);
        prefill_and_decode(&dir, &single, &tp, &format!("{} TP=2", dir.display()), 5);
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn ep2_logits_match_tp1_on_the_moe_fixtures() {
    need_two_gpus();
    for dir in fixtures() {
        let single = gpu_model(&dir);
        let c = single.config();
        if !(0..c.num_hidden_layers).any(|i| c.is_moe_layer(i)) || c.n_routed_experts < 2 {
            continue;
        }
        let tp = tp_model(&dir, MoeSplit::Expert);
        prefill_and_decode(&dir, &single, &tp, &format!("{} EP=2", dir.display()), 5);
    }
}

/// DP attention over 2 GPUs (TP MoE, and EP on the MoE fixtures) vs TP=1: every rank holds every
/// head; the batch's sequences are split over the ranks, each in its rank's pool alone.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn dp_attention2_logits_match_tp1_on_every_fixture() {
    need_two_gpus();
    for dir in fixtures() {
        let single = gpu_model(&dir);
        let c = single.config().clone();
        let moe_fixture = (0..c.num_hidden_layers).any(|i| c.is_moe_layer(i)) && c.n_routed_experts >= 2;
        let splits: &[MoeSplit] = if moe_fixture { &[MoeSplit::Tensor, MoeSplit::Expert] } else { &[MoeSplit::Tensor] };
        for &moe in splits {
            let dp = TpModel::load_with(&dir, group(), moe, AttnSplit::Data, GpuOptions::reference()).unwrap_or_else(|e| panic!("{}: DP attention ({moe:?}): {e}", dir.display()));
            for (i, m) in dp.shards().iter().enumerate() {
                assert_eq!(m.shard_plan().heads, 0..c.num_attention_heads, "{}: rank {i} holds every head", dir.display());
            }
            let b = Batch::new(c.vocab_size, single.max_positions());
            // The plain TP entry point refuses a DP model (it would need each sequence's rank).
            let mut pools = dp.new_page_pools(PAGES, PAGE).unwrap();
            assert!(dp.forward_batch(&mut pools, &b.prefill()).is_err(), "{}: forward_batch without ranks", dir.display());
            drop(pools);
            let g = dp_group(&dp);
            run_batch(&dir, &single, &g, b, &format!("{} DP attention 2 ({moe:?} MoE)", dir.display()), 5);
        }
    }
}

/// `generate --enable-dp-attention --tp 2`: greedy generation through the `CausalLm` path (one
/// sequence, attended on rank 0; rank 1 joins only the FFN) equals TP=1, and transformers
/// wherever its margin is clear; TP and EP MoE.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn dp_attention2_greedy_tokens_match_tp1() {
    need_two_gpus();
    for dir in fixtures() {
        let r = reference(&dir);
        let single = greedy_generate(&gpu_model(&dir), &r.prompt, r.output.len(), false).unwrap().output_token_ids;
        for moe in [MoeSplit::Tensor, MoeSplit::Expert] {
            let dp = TpModel::load_with(&dir, group(), moe, AttnSplit::Data, GpuOptions::reference()).unwrap_or_else(|e| panic!("{}: DP attention ({moe:?}): {e}", dir.display()));
            let gen = greedy_generate(&dp, &r.prompt, r.output.len(), false).unwrap_or_else(|e| panic!("{}: DP {moe:?}: {e}", dir.display()));
            let compared = check_greedy(&dir, &gen.output_token_ids, &r);
            assert_eq!(gen.output_token_ids[..compared], single[..compared], "{}: DP attention {moe:?} vs TP=1", dir.display());
            println!("{}: DP attention {moe:?}: {compared}/{} greedy tokens agree with TP=1 and transformers", dir.display(), r.output.len());
        }
    }
}

/// Greedy generation through the `CausalLm` path (what `generate --tp 2` runs): the same tokens
/// as TP=1, and as transformers wherever its margin is clear.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn tp2_and_ep2_greedy_tokens_match_tp1() {
    need_two_gpus();
    for dir in fixtures() {
        let r = reference(&dir);
        let single = greedy_generate(&gpu_model(&dir), &r.prompt, r.output.len(), false).unwrap().output_token_ids;
        for moe in [MoeSplit::Tensor, MoeSplit::Expert] {
            let tp = tp_model(&dir, moe);
            let gen = greedy_generate(&tp, &r.prompt, r.output.len(), false).unwrap_or_else(|e| panic!("{}: {moe:?}: {e}", dir.display()));
            let compared = check_greedy(&dir, &gen.output_token_ids, &r);
            assert_eq!(gen.output_token_ids[..compared], single[..compared], "{}: {moe:?} vs TP=1", dir.display());
            println!("{}: {moe:?} TP=2: {compared}/{} greedy tokens agree with TP=1 and transformers", dir.display(), r.output.len());
        }
    }
}

/// Decode steps replayed from graphs captured on both GPUs (`Communicator::capture`, the
/// all-reduce inside) against eager TP=2 and TP=1, over several replays with fresh inputs.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn tp2_decode_graphs_match_eager() {
    need_two_gpus();
    for dir in fixtures() {
        let single = gpu_model(&dir);
        let tp = tp_model(&dir, MoeSplit::Tensor);
        let vocab = single.config().vocab_size;
        let mut p1 = single.new_page_pool(PAGES, PAGE).unwrap();
        let mut p2: Vec<PagePool> = tp.new_page_pools(PAGES, PAGE).unwrap();
        let mut b = Batch::new(vocab, single.max_positions());
        let a = single.forward_batch(&mut p1, &b.prefill()).unwrap();
        tp.forward_batch(&mut p2, &b.prefill()).unwrap();
        b.lens = b.prompts.iter().map(|p| p.len()).collect();
        // Batch of 3 in a graph of 4: one padding row on the last (unused) page.
        let graph = tp.capture_decode_graph(&mut p2, 4, (PAGES - 1) as u32).unwrap_or_else(|e| panic!("{}: capture: {e}", dir.display()));
        check_graph_steps(&dir, &single, &mut p1, &mut b, &a, |seqs| Ok((tp.forward_batch(&mut p2, seqs)?, tp.forward_decode_graph(&graph, &mut p2, seqs)?)));
        println!("{}: TP=2 decode graphs match eager TP=2 and TP=1", dir.display());
    }
}

/// Four decode steps of `b` after its prefill (`a`: TP=1's prefill logits), each run by TP=1 and
/// by `run`: the group's eager step, then its graph replay of the same inputs (which rewrites the
/// same latent rows). The replay equals eager to 1e-6 and TP=1 at the fixture's tolerance.
/// Returns the next tokens.
fn check_graph_steps(
    dir: &Path,
    single: &GpuModel,
    p1: &mut PagePool,
    b: &mut Batch,
    a: &[Vec<f32>],
    mut run: impl FnMut(&[BatchSeq<'_>]) -> dsv3::Result<(Vec<Vec<f32>>, Vec<Vec<f32>>)>,
) -> Vec<[u32; 1]> {
    let (vocab, tol) = (single.config().vocab_size, tolerance(dir));
    let mut next = last_rows(a, vocab);
    for step in 0..4 {
        let want = single.forward_batch(p1, &b.decode(&next)).unwrap();
        let (eager, replay) = run(&b.decode(&next)).unwrap_or_else(|e| panic!("{}: step {step}: {e}", dir.display()));
        let e = rel_error(&replay.concat(), &eager.concat());
        assert!(e <= 1e-6, "{}: step {step}: graph vs eager rel error {e:.3e}", dir.display());
        check_step(&format!("{} graph step {step}", dir.display()), &want, &replay, vocab, tol);
        next = last_rows(&want, vocab);
        b.lens.iter_mut().for_each(|l| *l += 1);
    }
    next
}

/// DP attention's decode graphs (per-rank batch 2: rank 0 decodes one sequence and a padding
/// row, rank 1 two sequences; then a step in which rank 0 has none) against eager DP attention
/// (≤ 1e-6) and TP=1, over several replays with fresh inputs.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn dp_attention2_decode_graphs_match_eager() {
    need_two_gpus();
    for dir in fixtures() {
        let single = gpu_model(&dir);
        let dp = TpModel::load_with(&dir, group(), MoeSplit::Tensor, AttnSplit::Data, GpuOptions::reference()).unwrap_or_else(|e| panic!("{}: DP attention: {e}", dir.display()));
        let vocab = single.config().vocab_size;
        let mut p1 = single.new_page_pool(PAGES, PAGE).unwrap();
        let mut p2 = dp.new_page_pools(PAGES, PAGE).unwrap();
        let mut b = Batch::new(vocab, single.max_positions());
        let Group::Dp { ranks, tables, .. } = dp_group(&dp) else { unreachable!("dp_group gives a DP group") };
        assert_eq!(ranks, vec![0, 1, 1]);
        let a = single.forward_batch(&mut p1, &b.prefill()).unwrap();
        dp.forward_batch_dp(&mut p2, &on_own_pages(&b.prefill(), &tables), &ranks).unwrap();
        b.lens = b.prompts.iter().map(|p| p.len()).collect();
        let graph = dp.capture_decode_graph(&mut p2, 2, (PAGES - 1) as u32).unwrap_or_else(|e| panic!("{}: capture: {e}", dir.display()));
        let first = last_rows(&a, vocab);
        assert!(dp.forward_decode_graph(&graph, &mut p2, &on_own_pages(&b.decode(&first), &tables)).is_err(), "{}: a DP graph replayed without ranks", dir.display());
        let next = check_graph_steps(&dir, &single, &mut p1, &mut b, &a, |seqs| {
            let own = on_own_pages(seqs, &tables);
            Ok((dp.forward_batch_dp(&mut p2, &own, &ranks)?, dp.forward_decode_graph_dp(&graph, &mut p2, &own, &ranks)?))
        });
        // Rank 0 without a sequence: its graph rows are all padding.
        let seqs = on_own_pages(&b.decode(&next), &tables);
        let eager = dp.forward_batch_dp(&mut p2, &seqs[1..], &ranks[1..]).unwrap();
        let replay = dp.forward_decode_graph_dp(&graph, &mut p2, &seqs[1..], &ranks[1..]).unwrap_or_else(|e| panic!("{}: replay with rank 0 idle: {e}", dir.display()));
        let e = rel_error(&replay.concat(), &eager.concat());
        assert!(e <= 1e-6, "{}: rank 0 idle: DP graph vs eager DP rel error {e:.3e}", dir.display());
        println!("{}: DP attention decode graphs match eager DP attention and TP=1", dir.display());
    }
}

/// Per request (prompt, tokens): the greedy tokens of TP=1 (single-sequence path, one request
/// at a time) and, per step, whether its margin is clear at `tol` (as in `check_step`).
fn tp1_greedy(m: &GpuModel, reqs: &[(Vec<u32>, usize)], tol: f64) -> Vec<Vec<(u32, bool)>> {
    reqs.iter().map(|(p, n)| tp1_greedy_one(m, p, *n, tol)).collect()
}

fn tp1_greedy_one(m: &GpuModel, p: &[u32], n: usize, tol: f64) -> Vec<(u32, bool)> {
    let vocab = m.config().vocab_size;
    let mut cache = m.new_gpu_cache().unwrap();
    let mut row = m.forward_gpu(p, &mut cache).unwrap().row(p.len() - 1).to_vec();
    let mut out = Vec::new();
    loop {
        let rms = (row.iter().map(|x| (x * x) as f64).sum::<f64>() / vocab as f64).sqrt();
        let tok = argmax(&row) as u32;
        out.push((tok, (top2_margin(&row) as f64) > 10.0 * tol * rms));
        if out.len() == n {
            return out;
        }
        row = m.forward_gpu(&[tok], &mut cache).unwrap().row(0).to_vec();
    }
}

/// Asserts that an engine's greedy tokens equal TP=1's (`want`, from [`tp1_greedy`]) up to TP=1's
/// first near-tie, request by request (token j is chosen at step j); returns the tokens compared.
#[track_caller]
fn check_engine_tokens(what: &str, got: &[Vec<u32>], want: &[Vec<(u32, bool)>]) -> usize {
    assert_eq!(got.len(), want.len(), "{what}: requests");
    let mut compared = 0;
    for (i, (ids, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(ids.len(), w.len(), "{what}: request {i}: tokens");
        let clear = w.iter().take_while(|(_, c)| *c).count();
        let tp1: Vec<u32> = w.iter().map(|(t, _)| *t).collect();
        assert_eq!(ids[..clear], tp1[..clear], "{what}: request {i} vs TP=1");
        compared += clear;
    }
    compared
}

/// The engine over the group with decode graphs up to batch 8 (per rank under DP attention):
/// `attn` heads (TP) or data (DP attention: a pool, an allocator and a prefix cache per GPU).
fn group_engine(dir: &Path, moe: MoeSplit, attn: AttnSplit, cfg: &dsv3::engine::EngineConfig) -> dsv3::engine::Engine {
    use dsv3::engine::{Engine, TpStepModel};
    let model = TpModel::load_with(dir, group(), moe, attn, GpuOptions::reference()).unwrap_or_else(|e| panic!("{}: {moe:?} {attn:?}: {e}", dir.display()));
    Engine::new(Box::new(TpStepModel::new(model).with_cuda_graphs(8)), cfg, None).unwrap_or_else(|e| panic!("{}: engine: {e}", dir.display()))
}

fn ids(out: Vec<(Vec<u32>, dsv3::engine::Usage)>) -> Vec<Vec<u32>> {
    out.into_iter().map(|(ids, _)| ids).collect()
}

/// The serving engine over the TP group (`TpStepModel`, what `serve --tp 2` runs), with decode
/// graphs, small pages and chunked prefill: concurrent greedy requests give TP=1's tokens up to
/// TP=1's first near-tie.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn tp2_engine_serves_the_tokens_of_tp1() {
    use dsv3::engine::{EngineConfig, KvCacheSize};
    need_two_gpus();
    for dir in fixtures() {
        let single = gpu_model(&dir);
        let vocab = single.config().vocab_size;
        let tol = tolerance(&dir);
        let max_new = 16;
        let reqs: Vec<(Vec<u32>, usize)> = (0..6).map(|i| (prompt(40 + i, 3 + (i as usize * 13) % 45, vocab), max_new)).collect();
        let want = tp1_greedy(&single, &reqs, tol);
        drop(single);
        for moe in [MoeSplit::Tensor, MoeSplit::Expert] {
            let cfg = EngineConfig { page_size: 16, chunked_prefill_size: Some(40), kv_cache: KvCacheSize::Tokens(4096), ..Default::default() };
            let mut engine = group_engine(&dir, moe, AttnSplit::Heads, &cfg);
            let got = ids(run_greedy(&mut engine, &reqs));
            check_engine_tokens(&format!("{}: {moe:?}: engine over TP=2", dir.display()), &got, &want);
            println!("{}: {moe:?}: the TP=2 engine gives TP=1's tokens", dir.display());
        }
    }
}

/// `serve --tp 2 --enable-dp-attention`: the engine with DP attention over the two GPUs (a pool,
/// an allocator and a prefix cache per GPU; TP and EP MoE; decode graphs up to 8 per rank) gives
/// the greedy tokens of the engine without it (`serve --tp 2`), both held to TP=1's up to its
/// first near-tie:
/// - six concurrent requests of different lengths and output lengths, spread over both ranks;
/// - then six more that continue them (prompt + output + one token): their prefixes are cached
///   on the ranks that served them, and the pools are NaN-poisoned, so a hit looked up on, or
///   read from, the wrong rank would show;
/// - DP only: the preemption scenario of `tests/common/dp.rs` (8 pages per GPU: rank 0 runs out
///   and preempts its own latest request while rank 1 goes on; every request completes).
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn dp_attention2_engine_serves_the_tokens_of_tp2() {
    use dsv3::engine::{EngineConfig, KvCacheSize};
    need_two_gpus();
    for dir in fixtures() {
        let single = gpu_model(&dir);
        let vocab = single.config().vocab_size;
        let tol = tolerance(&dir);
        let wave1: Vec<(Vec<u32>, usize)> = (0..6).map(|i| (prompt(60 + i, 3 + (i as usize * 17) % 50, vocab), 12 + 4 * i as usize)).collect();
        let want1 = tp1_greedy(&single, &wave1, tol);
        let scenario = dp::requests(vocab);
        let want_scenario = tp1_greedy(&single, &scenario, tol);
        for moe in [MoeSplit::Tensor, MoeSplit::Expert] {
            for attn in [AttnSplit::Heads, AttnSplit::Data] {
                let what = format!("{} {moe:?} MoE, {attn:?} attention", dir.display());
                let cfg = EngineConfig { page_size: 16, chunked_prefill_size: Some(48), kv_cache: KvCacheSize::Tokens(4096), ..Default::default() };
                let mut engine = group_engine(&dir, moe, attn, &cfg);
                let ranks = if attn == AttnSplit::Data { 2 } else { 1 };
                assert_eq!(engine.info().dp_ranks, ranks, "{what}");
                let got1 = ids(run_greedy(&mut engine, &wave1));
                let mut compared = check_engine_tokens(&format!("{what}: wave 1"), &got1, &want1);
                let wave2: Vec<(Vec<u32>, usize)> = wave1.iter().zip(&got1).map(|((p, _), out)| ([p.as_slice(), out, &[2]].concat(), 8)).collect();
                let want2 = tp1_greedy(&single, &wave2, tol);
                let hits = engine.metrics().prefix_hit_tokens.load(std::sync::atomic::Ordering::Relaxed);
                let got2 = ids(run_greedy(&mut engine, &wave2));
                let reused = engine.metrics().prefix_hit_tokens.load(std::sync::atomic::Ordering::Relaxed) - hits;
                assert!(reused > 0, "{what}: wave 2 reuses none of wave 1's cached pages");
                compared += check_engine_tokens(&format!("{what}: wave 2"), &got2, &want2);
                drop(engine);
                if attn == AttnSplit::Data {
                    let mut engine = group_engine(&dir, moe, attn, &dp::config());
                    let got = dp::run(&mut engine, vocab);
                    compared += check_engine_tokens(&format!("{what}: preemption on rank 0"), &got, &want_scenario);
                }
                assert!(compared > 0, "{what}: no greedy token of TP=1 had a clear margin: nothing compared");
                println!("{what}: {compared} greedy tokens equal TP=1's ({reused} prompt tokens from the prefix cache in wave 2)");
            }
        }
    }
}

/// What `serve --tp 2 --enable-dp-attention` runs (`build_state_for` over the DP engine, as
/// `examples/serve` builds it; eager steps), over HTTP: concurrent `/generate` requests give TP=1's greedy
/// tokens, `/get_model_info` reports `dp_size` 2, and `/metrics` has the per-rank gauges with
/// both ranks' pages back to 0 once the requests are done.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn dp_attention2_server_answers_over_http() {
    use dsv3::engine::{EngineConfig, KvCacheSize, TpStepModel};
    use dsv3::server::client::{get_json, get_text, post_json};
    use dsv3::server::{build_state_for, serve, ServerConfig};
    use serde_json::json;
    need_two_gpus();
    let dir = common::fixtures_root().join("tiny-real-mla");
    let single = gpu_model(&dir);
    let (vocab, tol) = (single.config().vocab_size, tolerance(&dir));
    let reqs: Vec<(Vec<u32>, usize)> = (0..6).map(|i| (prompt(90 + i, 5 + (i as usize * 11) % 40, vocab), 10 + 3 * i as usize)).collect();
    let want = tp1_greedy(&single, &reqs, tol);
    let model = TpModel::load_with(&dir, group(), MoeSplit::Tensor, AttnSplit::Data, GpuOptions::reference()).unwrap_or_else(|e| panic!("DP attention: {e}"));
    let bos = model.config().bos_token_id;
    let cfg = EngineConfig { page_size: 16, kv_cache: KvCacheSize::Tokens(2048), ..Default::default() };
    let server_cfg = ServerConfig { served_model_name: "dp".into(), ..Default::default() };
    let state = build_state_for(Box::new(TpStepModel::new(model)), bos, &dir, &cfg, server_cfg, None).unwrap_or_else(|e| panic!("server state: {e}"));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let st = state.clone();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let engine = st.engine.clone();
            serve(listener, st, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
            tokio::task::spawn_blocking(move || engine.shutdown(true)).await.unwrap();
        });
    });
    let got: Vec<Vec<u32>> = std::thread::scope(|sc| {
        let calls: Vec<_> = reqs
            .iter()
            .map(|(p, n)| {
                let body = json!({"input_ids": p, "sampling_params": {"max_new_tokens": n, "temperature": 0, "ignore_eos": true}});
                sc.spawn(move || post_json(addr, "/generate", &body))
            })
            .collect();
        calls
            .into_iter()
            .map(|c| {
                let v = c.join().unwrap().unwrap_or_else(|e| panic!("/generate: {e}"));
                v["output_ids"].as_array().unwrap_or_else(|| panic!("no output_ids in {v}")).iter().map(|t| t.as_u64().unwrap() as u32).collect()
            })
            .collect()
    });
    let compared = check_engine_tokens("DP attention over HTTP", &got, &want);
    assert!(compared > 0, "no greedy token of TP=1 had a clear margin: nothing compared");
    let info = get_json(addr, "/get_model_info").unwrap();
    assert_eq!(info["dp_size"], 2, "{info}");
    // Per rank: no page held by a request once the engine is idle (the gauges are exact then; poll,
    // as the last response may arrive before the engine's idle update), and cached pages on both
    // ranks (the requests were spread over them).
    let gauge = |text: &str, name: &str, r: usize| -> f64 {
        let key = format!("dsv3:{name}{{model_name=\"dp\",dp_rank=\"{r}\"}} ");
        let line = text.lines().find_map(|l| l.strip_prefix(key.as_str())).unwrap_or_else(|| panic!("no {key:?} in\n{text}"));
        line.parse().unwrap_or_else(|e| panic!("{key}{line}: {e}"))
    };
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = get_text(addr, "/metrics").unwrap();
        if (0..2).all(|r| gauge(&metrics, "dp_rank_kv_cache_pages_used", r) == 0.0) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for r in 0..2 {
        assert_eq!(gauge(&metrics, "dp_rank_kv_cache_pages_used", r), 0.0, "rank {r}:\n{metrics}");
        assert!(gauge(&metrics, "dp_rank_kv_cache_pages_cached", r) > 0.0, "rank {r} served no request:\n{metrics}");
    }
    let _ = stop.send(());
    server.join().unwrap();
    println!("DP attention over HTTP: {compared} greedy tokens equal TP=1's");
}

const CHILD_RANK: &str = "DSV3_TP_CHILD_RANK";
const CHILD_ADDR: &str = "DSV3_TP_CHILD_ADDR";

/// Two "nodes" as two processes over loopback, one GPU each (`--nnodes 2 --tp 2`): the
/// rendezvous, NCCL across the processes and the logits assembled across nodes; each node's
/// greedy tokens equal TP=1's on its GPU, and the two nodes agree.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn two_nodes_generate_the_tokens_of_tp1() {
    need_two_gpus();
    let (ok, texts, report) = run_two_nodes("two_nodes_child", CHILD_RANK, CHILD_ADDR, "TWO-NODE TP CHILD OK");
    assert!(ok, "two-node TP failed:\n{report}");
    let tokens: Vec<Vec<&str>> = texts.iter().map(|t| t.lines().filter(|l| l.starts_with("TOKENS ")).collect()).collect();
    assert!(!tokens[0].is_empty() && tokens[0] == tokens[1], "the nodes generated different tokens:\n{report}");
}

/// The body of one node of `two_nodes_generate_the_tokens_of_tp1` (does nothing unless started by it).
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn two_nodes_child() {
    let Ok(rank) = std::env::var(CHILD_RANK) else { return };
    let rank: usize = rank.parse().unwrap();
    let cfg = GroupConfig {
        tp: 2,
        base_gpu_id: 0,
        nnodes: 2,
        node_rank: rank,
        dist_init_addr: Some(std::env::var(CHILD_ADDR).unwrap()),
        timeout: std::time::Duration::from_secs(120),
    };
    let ar = Arc::new(open_group(&cfg).unwrap_or_else(|e| panic!("node {rank}: {e}")));
    for dir in fixtures() {
        let r = reference(&dir);
        let tp = TpModel::load(&dir, ar.clone(), MoeSplit::Tensor).unwrap_or_else(|e| panic!("node {rank}: {}: {e}", dir.display()));
        let gen = greedy_generate(&tp, &r.prompt, r.output.len(), false).unwrap_or_else(|e| panic!("node {rank}: {}: {e}", dir.display()));
        drop(tp);
        let single = greedy_generate(&GpuModel::load(&dir, dsv3::backend::Device::Cuda(0)).unwrap(), &r.prompt, r.output.len(), false).unwrap();
        let compared = check_greedy(&dir, &gen.output_token_ids, &r);
        assert_eq!(gen.output_token_ids[..compared], single.output_token_ids[..compared], "node {rank}: {}", dir.display());
        println!("TOKENS {}: {:?}", dir.file_name().unwrap().to_string_lossy(), gen.output_token_ids);
    }
    println!("TWO-NODE TP CHILD OK (node {rank})");
}

/// The real-dimension DeepSeek-V3 slice (1 dense + 1 MoE layer, random FP8 weights made on the
/// device, fast options) split over 2 GPUs as TP, EP and DP attention against the same model on
/// one GPU: each rank draws its shard of the same weights (`TpModel::random`). FP8 activation
/// quantization puts noise of a few percent on every GEMM of a random model (and can flip a
/// near-tied expert choice), drawn differently on each rank's partial sums, so the split model
/// is held to the exact answer (the same weights with f32 activations, reference options): no
/// further from it than 1.5 × the one-GPU fast model is, and the same greedy tokens as the
/// one-GPU fast model where its margins are clear.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn random_v3_slice_split_over_two_gpus_matches_one_gpu() {
    use common::tp::check_same_greedy;
    use dsv3::backend::Device;
    use dsv3::model::gpu::deepseek_v3_slice;
    need_two_gpus();
    let cfg = deepseek_v3_slice(2, 1).unwrap();
    let opts = GpuOptions::fast();
    let seed = 7;
    let vocab = cfg.vocab_size;
    let ids: Vec<u32> = (0..64u64).map(|i| (dsv3::ops::random::mix64(i ^ 0xabc) % vocab as u64) as u32).collect();
    let table: Vec<u32> = (0..2).collect();
    let seq = [BatchSeq { tokens: &ids, start: 0, block_table: &table, logits: LogitRows::All }];
    let one_gpu = |o: GpuOptions| {
        let m = GpuModel::random(cfg.clone(), Device::Cuda(0), o, seed).unwrap();
        let mut pool = m.new_page_pool(2, PAGE).unwrap();
        m.forward_batch(&mut pool, &seq).unwrap()
    };
    let (fast, exact) = (one_gpu(opts), one_gpu(GpuOptions::reference()));
    let effect = rel_error(&fast.concat(), &exact.concat());
    for (moe, attn) in [(MoeSplit::Tensor, AttnSplit::Heads), (MoeSplit::Expert, AttnSplit::Heads), (MoeSplit::Tensor, AttnSplit::Data)] {
        let what = format!("DeepSeek-V3 slice, {moe:?} MoE, {attn:?} attention over 2 GPUs");
        let tp = TpModel::random(&cfg, group(), moe, attn, opts, seed).unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut pools = tp.new_page_pools(2, PAGE).unwrap();
        let split = match attn {
            AttnSplit::Heads => tp.forward_batch(&mut pools, &seq),
            AttnSplit::Data => tp.forward_batch_dp(&mut pools, &seq, &[1]),
        }
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        let (to_exact, to_fast) = (rel_error(&split.concat(), &exact.concat()), rel_error(&split.concat(), &fast.concat()));
        println!("{what}: vs exact {to_exact:.3e} (one GPU fast: {effect:.3e}), vs one GPU fast {to_fast:.3e}");
        assert!(to_exact <= 1.5 * effect.max(1e-4), "{what}: {to_exact:.3e} from the exact answer, over 1.5 × the one-GPU model's {effect:.3e}");
        check_same_greedy(&what, &fast, &split, vocab, effect);
    }
}

const SERVE_RANK: &str = "DSV3_SERVE_CHILD_RANK";
const SERVE_ADDR: &str = "DSV3_SERVE_CHILD_ADDR";

/// Multi-node serving as two processes over loopback, one GPU each (`serve --tp 2 --nnodes 2`):
/// node 0's engine steps the group through `LeaderStepModel`, node 1 replays its steps
/// (`multinode::follow`); node 0's greedy tokens for concurrent requests equal TP=1's.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn two_nodes_serve_the_tokens_of_tp1() {
    need_two_gpus();
    let (ok, _, report) = run_two_nodes("two_nodes_serve_child", SERVE_RANK, SERVE_ADDR, "TWO-NODE SERVE CHILD OK");
    assert!(ok, "two-node serving failed:\n{report}");
}

/// The body of one node of `two_nodes_serve_the_tokens_of_tp1` (does nothing unless started by it).
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn two_nodes_serve_child() {
    use dsv3::engine::multinode::{accept_followers, connect_to_leader, follow, listen, step_channel_addr, LeaderStepModel};
    use dsv3::engine::{Engine, EngineConfig, EngineEvent, GenerateRequest, KvCacheSize, SamplingParams, TpStepModel};
    let Ok(rank) = std::env::var(SERVE_RANK) else { return };
    let rank: usize = rank.parse().unwrap();
    let addr = std::env::var(SERVE_ADDR).unwrap();
    let timeout = std::time::Duration::from_secs(120);
    let channel = step_channel_addr(&addr).unwrap();
    let listener = (rank == 0).then(|| listen(channel).unwrap());
    let cfg = GroupConfig { tp: 2, base_gpu_id: 0, nnodes: 2, node_rank: rank, dist_init_addr: Some(addr), timeout };
    let ar = Arc::new(open_group(&cfg).unwrap_or_else(|e| panic!("node {rank}: {e}")));
    for dir in fixtures() {
        let tp = TpModel::load(&dir, ar.clone(), MoeSplit::Tensor).unwrap_or_else(|e| panic!("node {rank}: {}: {e}", dir.display()));
        let vocab = tp.config().vocab_size;
        let mut step = TpStepModel::new(tp).with_cuda_graphs(8);
        let Some(listener) = &listener else {
            let steps = follow(&mut step, connect_to_leader(channel, rank, timeout).unwrap()).unwrap_or_else(|e| panic!("node 1: {}: {e}", dir.display()));
            println!("node 1: {}: followed {steps} steps", dir.display());
            continue;
        };
        let followers = accept_followers(listener, 2, timeout).unwrap();
        let ecfg = EngineConfig { page_size: 16, chunked_prefill_size: Some(40), kv_cache: KvCacheSize::Tokens(4096), ..Default::default() };
        let mut engine = Engine::new(Box::new(LeaderStepModel::new(Box::new(step), followers)), &ecfg, None).unwrap();
        let max_new = 12;
        let prompts: Vec<Vec<u32>> = (0..4).map(|i| prompt(60 + i, 3 + (i as usize * 17) % 45, vocab)).collect();
        let mut rxs = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            engine.add_request(i as u64, GenerateRequest { prompt: p.clone(), params: SamplingParams { ignore_eos: true, ..SamplingParams::greedy(max_new) } }, tx).unwrap();
            rxs.push(rx);
        }
        let mut steps = 0;
        while engine.has_work() {
            engine.step();
            steps += 1;
            assert!(steps < 10_000, "the engine does not make progress");
        }
        drop(engine); // stops node 1
        let single = gpu_model(&dir);
        let tol = tolerance(&dir);
        for (i, rx) in rxs.iter_mut().enumerate() {
            let mut ids = Vec::new();
            while let Ok(ev) = rx.try_recv() {
                match ev {
                    EngineEvent::Token(t) => ids.push(t.token_id),
                    EngineEvent::Failed(m) => panic!("node 0: {}: request {i} failed: {m}", dir.display()),
                    _ => {}
                }
            }
            assert_eq!(ids.len(), max_new, "{}: request {i}", dir.display());
            let want = tp1_greedy_one(&single, &prompts[i], max_new, tol);
            let clear = want.iter().take_while(|(_, c)| *c).count();
            let tp1: Vec<u32> = want.iter().map(|(t, _)| *t).collect();
            assert_eq!(ids[..clear], tp1[..clear], "{}: request {i}: two-node engine vs TP=1", dir.display());
        }
        println!("node 0: {}: {steps} steps over two nodes give TP=1's tokens", dir.display());
    }
    println!("TWO-NODE SERVE CHILD OK (node {rank})");
}
