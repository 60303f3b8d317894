//! Tensor and expert parallelism over two GPUs of one process ([`TpModel`]) against the
//! single-GPU model ([`GpuModel`], TP=1) on every fixture: batched prefill + decode logits,
//! greedy tokens, decode CUDA graphs, the serving engine over the group (`TpStepModel`), and two
//! "nodes" as two processes (`--nnodes 2`, one GPU each, rendezvous over loopback, NCCL). All on
//! the reference options (f32 cache and activations); `tests/gpu_tp_fast.rs` runs the fast ones
//! and the device argmax over the group.
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
use common::tp::{check_run, check_step, dp_group, group, has_experts, last_rows, need_two_gpus, run_single, tp1_greedy, Batch, Group, PAGE, PAGES};
use common::{check_greedy, engine_greedy_tokens, fixtures, prompt, reference};
use dsv3::dist::{open_group, GroupConfig};
use dsv3::model::checkpoint::{Checkpoint, DType};
use dsv3::model::generate::greedy_generate;
use dsv3::model::gpu::{GpuModel, GpuOptions, PagePool, TpModel};
use dsv3::model::shard::{AttnSplit, MoeSplit};
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

/// Prefill then `steps` decode steps of three sequences, TP=1 and the TP group fed the same tokens.
fn prefill_and_decode(dir: &Path, single: &GpuModel, tp: &TpModel, what: &str, steps: usize) {
    let b = Batch::new(single.config().vocab_size, single.max_positions());
    run_batch(dir, single, &Group::Tp(tp), &b, what, steps);
}

/// Prefill then `steps` decode steps of `b`'s three sequences, TP=1 and `group` (fed TP=1's tokens).
fn run_batch(dir: &Path, single: &GpuModel, group: &Group<'_>, b: &Batch, what: &str, steps: usize) {
    let tol = tolerance(dir);
    let want = run_single(single, b, steps, None);
    let got = group.run(b, steps, &want, what);
    let worst = check_run(what, &want, &got, single.config().vocab_size, &vec![tol; steps + 1]);
    println!("{what}: logits rel error vs TP=1 {worst:.2e} (tolerance {tol:e})");
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
        if !has_experts(single.config()) {
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
        let splits: &[MoeSplit] = if has_experts(&c) { &[MoeSplit::Tensor, MoeSplit::Expert] } else { &[MoeSplit::Tensor] };
        for &moe in splits {
            let dp = TpModel::load_with(&dir, group(), moe, AttnSplit::Data, GpuOptions::reference()).unwrap_or_else(|e| panic!("{}: DP attention ({moe:?}): {e}", dir.display()));
            for (i, m) in dp.shards().iter().enumerate() {
                assert_eq!(m.shard_plan().heads, 0..c.num_attention_heads, "{}: rank {i} holds every head", dir.display());
            }
            let b = Batch::new(c.vocab_size, single.max_positions());
            // The plain TP entry points refuse a DP model (they would need each sequence's rank).
            let mut pools = dp.new_page_pools(PAGES, PAGE).unwrap();
            assert!(dp.forward_batch(&mut pools, &b.prefill()).is_err(), "{}: forward_batch without ranks", dir.display());
            assert!(dp.capture_decode_graph(&mut pools, 4, (PAGES - 1) as u32).is_err(), "{}: DP decode graphs", dir.display());
            drop(pools);
            let g = dp_group(&dp, &b);
            run_batch(&dir, &single, &g, &b, &format!("{} DP attention 2 ({moe:?} MoE)", dir.display()), 5);
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
        let tol = tolerance(&dir);
        let mut p1 = single.new_page_pool(PAGES, PAGE).unwrap();
        let mut p2: Vec<PagePool> = tp.new_page_pools(PAGES, PAGE).unwrap();
        let b = Batch::new(vocab, single.max_positions());
        let a = single.forward_batch(&mut p1, &b.prefill()).unwrap();
        tp.forward_batch(&mut p2, &b.prefill()).unwrap();
        // Batch of 3 in a graph of 4: one padding row on the last (unused) page.
        let graph = tp.capture_decode_graph(&mut p2, 4, (PAGES - 1) as u32).unwrap_or_else(|e| panic!("{}: capture: {e}", dir.display()));
        let mut next = last_rows(&a, vocab);
        for step in 0..4 {
            let want = single.forward_batch(&mut p1, &b.decode(step, &next)).unwrap();
            let eager = tp.forward_batch(&mut p2, &b.decode(step, &next)).unwrap();
            // The same step again from the graph: it rewrites the same latent rows.
            let replay = tp.forward_decode_graph(&graph, &mut p2, &b.decode(step, &next)).unwrap_or_else(|e| panic!("{}: replay {step}: {e}", dir.display()));
            let e = rel_error(&replay.concat(), &eager.concat());
            assert!(e <= 1e-6, "{}: step {step}: graph vs eager TP=2 rel error {e:.3e}", dir.display());
            check_step(&format!("{} graph step {step}", dir.display()), &want, &replay, vocab, tol);
            next = last_rows(&want, vocab);
        }
        println!("{}: TP=2 decode graphs match eager TP=2 and TP=1", dir.display());
    }
}

/// The serving engine over the TP group (`TpStepModel`, what `serve --tp 2` runs), with decode
/// graphs, small pages and chunked prefill: concurrent greedy requests give TP=1's tokens up to
/// TP=1's first near-tie.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn tp2_engine_serves_the_tokens_of_tp1() {
    use dsv3::engine::TpStepModel;
    need_two_gpus();
    for dir in fixtures() {
        let single = gpu_model(&dir);
        let vocab = single.config().vocab_size;
        let tol = tolerance(&dir);
        let max_new = 16;
        let prompts: Vec<Vec<u32>> = (0..6).map(|i| prompt(40 + i, 3 + (i as usize * 13) % 45, vocab)).collect();
        let want: Vec<Vec<(u32, bool)>> = prompts.iter().map(|p| tp1_greedy(&single, p, max_new, tol)).collect();
        drop(single);
        for moe in [MoeSplit::Tensor, MoeSplit::Expert] {
            let model = TpStepModel::new(tp_model(&dir, moe)).with_cuda_graphs(8);
            for (i, ids) in engine_greedy_tokens(Box::new(model), &prompts, max_new, 16, false).iter().enumerate() {
                let clear = want[i].iter().take_while(|(_, c)| *c).count();
                let tp1: Vec<u32> = want[i].iter().map(|(t, _)| *t).collect();
                // Token j is chosen at step j: equal while TP=1's margins are clear.
                let n = clear;
                assert_eq!(ids[..n], tp1[..n], "{}: {moe:?}: request {i}: engine over TP=2 vs TP=1", dir.display());
            }
            println!("{}: {moe:?}: the TP=2 engine gives TP=1's tokens", dir.display());
        }
    }
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
