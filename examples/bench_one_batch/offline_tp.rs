//! Offline mode over several GPUs (`--offline --tp N`, optionally `--enable-ep-moe` and
//! `--enable-dp-attention`): the random DeepSeek-V3 slice split over GPUs 0..N of this machine,
//! every rank drawing its shard of the same weights as the single-GPU model of that seed
//! (`TpModel::random`).
//!
//! - `--check-tp1`: before anything else, one prompt through the split model and through the
//!   whole model on GPU 0 alone; prints the largest logit difference (over the largest logit) and
//!   how many rows pick the same greedy token.
//! - Decode points (batch × context): wall clock per step after warm-up, eager and (tensor-
//!   replayed CUDA graphs (under DP attention a graph per rank of its own rows) with the logits to
//!   the host and with the device argmax, and the tokens per second of the group. Under
//!   DP attention sequence i lives on rank i mod N (its pages in that rank's pool).
//! - Prefill lengths: one eager forward each, with its FLOPs.

use std::sync::Arc;
use std::time::Instant;

use dsv3::backend::Device;
use dsv3::dist::{open_group, GroupConfig};
use dsv3::model::gpu::{deepseek_v3_slice, BatchSeq, GpuModel, GpuOptions, KvCacheDtype, LogitRows, PagePool, Readout, TpModel, PAGE_SIZE};
use dsv3::model::shard::{AttnSplit, MoeSplit};
use dsv3::ops::sampling::argmax;
use dsv3::tensor::rel_error;
use serde_json::{json, Value};

use crate::offline::{copy_bandwidth, json_lines, prefill_flops, random_ids, report_balance, OfflineArgs};

/// How the model is split.
pub struct Split {
    pub tp: usize,
    pub ep: bool,
    pub dp_attention: bool,
    pub check_tp1: bool,
}

pub fn run(a: &OfflineArgs, split: &Split) -> Result<(), String> {
    let e = |x: dsv3::Error| x.to_string();
    let kv = KvCacheDtype::parse(&a.kv_cache_dtype).map_err(|_| format!("--kv-cache-dtype {}: bf16, fp8_e4m3 or f32", a.kv_cache_dtype))?;
    let opts = GpuOptions { kv_cache: kv, ..GpuOptions::fast() };
    let cfg = deepseek_v3_slice(a.num_layers, a.dense_layers).map_err(e)?;
    let ar = Arc::new(open_group(&GroupConfig::single_node(split.tp, 0)).map_err(e)?);
    let moe = if split.ep { MoeSplit::Expert } else { MoeSplit::Tensor };
    let attn = if split.dp_attention { AttnSplit::Data } else { AttnSplit::Heads };
    let t0 = Instant::now();
    let mut model = TpModel::random(&cfg, ar, moe, attn, opts, a.seed).map_err(e)?;
    eprintln!("model ready in {:.1?}: {} layers on {} ({moe:?} MoE split)", t0.elapsed(), cfg.num_hidden_layers, model.describe());
    let mut emit = json_lines(a.output_file.as_deref())?;
    if split.check_tp1 {
        emit(check_against_one_gpu(&model, opts, a.seed)?)?;
    }
    report_balance(&model.balance_routing(4096, 6, a.seed).map_err(e)?);
    let copy_gbps = copy_bandwidth(model.shards()[0].stream()).map_err(e)?;
    eprintln!("device-to-device copy (GPU 0): {copy_gbps:.0} GB/s (read + write)");
    emit(json!({"kind": "ceiling", "copy_gbps": copy_gbps, "layers": cfg.num_hidden_layers, "kv_cache": kv.to_string(), "tp": split.tp, "ep": split.ep, "dp_attention": split.dp_attention}))?;
    println!("| GPUs | split | batch | context | eager ms | graph ms | graph + device argmax ms | tokens/s (best) |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    let name = format!("tp{}{}{}", split.tp, if split.ep { " ep" } else { "" }, if split.dp_attention { " dp-attn" } else { "" });
    for &c in &a.contexts {
        for &b in &a.batch_sizes {
            match decode_point(&model, a, b, c) {
                Ok(t) => {
                    let best = [t.eager, t.graph, t.greedy].into_iter().flatten().fold(f64::INFINITY, f64::min);
                    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
                    println!("| {} | {name} | {b} | {c} | {} | {} | {} | {:.0} |", split.tp, f(t.eager), f(t.graph), f(t.greedy), b as f64 / (best * 1e-3));
                    emit(json!({"kind": "decode", "split": name, "batch": b, "context": c, "eager_ms": t.eager, "graph_ms": t.graph, "greedy_graph_ms": t.greedy, "layers": cfg.num_hidden_layers}))?;
                }
                Err(x) => eprintln!("batch {b} context {c}: {x}"),
            }
        }
    }
    println!();
    println!("| GPUs | split | prefill tokens | ms | TFLOPS (group) | tokens/s |");
    println!("|---:|---|---:|---:|---:|---:|");
    for &l in &a.prefill_lens {
        match prefill_ms(&model, a, l) {
            Ok(ms) => {
                let flops = prefill_flops(&cfg, l);
                println!("| {} | {name} | {l} | {ms:.1} | {:.0} | {:.0} |", split.tp, flops / (ms * 1e-3) / 1e12, l as f64 / (ms * 1e-3));
                emit(json!({"kind": "prefill", "split": name, "tokens": l, "ms": ms, "flops": flops}))?;
            }
            Err(x) => eprintln!("prefill {l}: {x}"),
        }
    }
    Ok(())
}

/// Sequences' pages under the split: every rank's pool has `pages` pages; sequence i's table and
/// its rank (always 0..N under TP, where the tables address every pool alike).
struct Placement {
    pages: usize,
    tables: Vec<Vec<u32>>,
    ranks: Vec<usize>,
}

fn place(model: &TpModel, b: usize, per_seq: usize) -> Placement {
    let world = model.shards().len();
    if model.attn_split() == AttnSplit::Heads {
        let tables = (0..b).map(|i| ((i * per_seq) as u32..((i + 1) * per_seq) as u32).collect()).collect();
        return Placement { pages: b * per_seq + 1, tables, ranks: vec![0; b] };
    }
    // DP attention: sequence i on rank i mod world, the (i / world)-th sequence of that rank.
    let tables = (0..b).map(|i| i / world).map(|j| ((j * per_seq) as u32..((j + 1) * per_seq) as u32).collect()).collect();
    Placement { pages: b.div_ceil(world) * per_seq + 1, tables, ranks: (0..b).map(|i| i % world).collect() }
}

fn step(model: &TpModel, pools: &mut [PagePool], seqs: &[BatchSeq<'_>], p: &Placement) -> dsv3::Result<Vec<Vec<f32>>> {
    match model.attn_split() {
        AttnSplit::Heads => model.forward_batch(pools, seqs),
        AttnSplit::Data => model.forward_batch_dp(pools, seqs, &p.ranks),
    }
}

/// Decode step times of `b` sequences at `context`.
fn decode_point(model: &TpModel, a: &OfflineArgs, b: usize, context: usize) -> Result<DecodeTimes, String> {
    let e = |x: dsv3::Error| x.to_string();
    let cfg = model.config();
    let per_seq = (context + a.steps + 8).div_ceil(PAGE_SIZE);
    let p = place(model, b, per_seq);
    let need = p.pages * PAGE_SIZE * model.shards()[0].cache_row_bytes() * cfg.num_hidden_layers;
    let (free, _) = model.mem_info().map_err(e)?;
    if need + (4usize << 30) > free {
        return Err(format!("skipped: the cache needs {:.1} GiB per GPU, {:.1} GiB free", need as f64 / 1073741824.0, free as f64 / 1073741824.0));
    }
    let mut pools = model.new_page_pools(p.pages, PAGE_SIZE).map_err(e)?;
    // The same contents on every rank: under TP the latent cache is replicated.
    for (m, pool) in model.shards().iter().zip(&pools) {
        m.fill_pool_random(pool, a.seed ^ 0x5eed).map_err(e)?;
    }
    let ids = random_ids(a.seed ^ (b as u64), b, cfg.vocab_size);
    let seqs = |s: usize| -> Vec<BatchSeq<'_>> {
        (0..b).map(|i| BatchSeq { tokens: std::slice::from_ref(&ids[i]), start: context + s, block_table: &p.tables[i], logits: LogitRows::Last }).collect()
    };
    let time = |f: &mut dyn FnMut(usize) -> dsv3::Result<()>| -> dsv3::Result<f64> {
        for w in 0..2 {
            f(w)?;
        }
        let t = Instant::now();
        for s in 0..a.steps {
            f(s)?;
        }
        Ok(t.elapsed().as_secs_f64() * 1e3 / a.steps as f64)
    };
    let eager = if a.eager { Some(time(&mut |s| step(model, &mut pools, &seqs(s), &p).map(drop)).map_err(e)?) } else { None };
    // Graph replays, with the logits to the host and with the device argmax (token ids only:
    // greedy sampling on the device). Under DP attention a graph holds `b / N` rows per rank.
    let graph = if a.graphs {
        let dp = model.attn_split() == AttnSplit::Data;
        let rows = if dp { b.div_ceil(model.shards().len()) } else { b };
        let g = model.capture_decode_graph(&mut pools, rows, (p.pages - 1) as u32).map_err(e)?;
        let mut replay = |readout: Readout| {
            time(&mut |s| match dp {
                true => model.decode_graph_dp_as(&g, &mut pools, &seqs(s), &p.ranks, readout).map(drop),
                false => model.decode_graph_as(&g, &mut pools, &seqs(s), readout).map(drop),
            })
            .map_err(e)
        };
        Some((replay(Readout::Logits)?, replay(Readout::Argmax)?))
    } else {
        None
    };
    Ok(DecodeTimes { eager, graph: graph.map(|g| g.0), greedy: graph.map(|g| g.1) })
}

/// Per decode step (ms): eager, replayed graph with the logits to the host, and with the
/// device argmax.
struct DecodeTimes {
    eager: Option<f64>,
    graph: Option<f64>,
    greedy: Option<f64>,
}

fn prefill_ms(model: &TpModel, a: &OfflineArgs, l: usize) -> Result<f64, String> {
    let e = |x: dsv3::Error| x.to_string();
    let pages = l.div_ceil(PAGE_SIZE);
    let mut pools = model.new_page_pools(pages, PAGE_SIZE).map_err(e)?;
    let p = Placement { pages, tables: vec![(0..pages as u32).collect()], ranks: vec![0] };
    let ids = random_ids(a.seed ^ l as u64, l, model.config().vocab_size);
    let seq = [BatchSeq { tokens: &ids, start: 0, block_table: &p.tables[0], logits: LogitRows::Last }];
    step(model, &mut pools, &seq, &p).map_err(e)?; // warm-up: kernel loading, allocator
    let t = Instant::now();
    step(model, &mut pools, &seq, &p).map_err(e)?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// The split model's prompt logits against the whole model's on GPU 0 (same seed, router biases
/// still zero on both), judged as `tests/gpu_tp.rs` judges them: the fast kernels quantize
/// activations (e4m3 per 128 values), so two runs of the same model differ by that noise; the
/// split model must be no further from the exact answer (the reference options on one GPU) than
/// 1.5 × the one-GPU fast model is.
fn check_against_one_gpu(model: &TpModel, opts: GpuOptions, seed: u64) -> Result<Value, String> {
    let e = |x: dsv3::Error| x.to_string();
    let cfg = model.config().clone();
    let ids = random_ids(seed ^ 0xc4ec, 64, cfg.vocab_size);
    let pages = ids.len().div_ceil(PAGE_SIZE);
    let table: Vec<u32> = (0..pages as u32).collect();
    let seq = [BatchSeq { tokens: &ids, start: 0, block_table: &table, logits: LogitRows::All }];
    let p = Placement { pages, tables: vec![table.clone()], ranks: vec![0] };
    let mut pools = model.new_page_pools(pages, PAGE_SIZE).map_err(e)?;
    let split = step(model, &mut pools, &seq, &p).map_err(e)?.remove(0);
    drop(pools);
    let whole_with = |o: GpuOptions| -> Result<Vec<f32>, String> {
        let one = GpuModel::random(cfg.clone(), Device::Cuda(0), o, seed).map_err(e)?;
        let mut pool = one.new_page_pool(pages, PAGE_SIZE).map_err(e)?;
        Ok(one.forward_batch(&mut pool, &seq).map_err(e)?.remove(0))
    };
    let (whole, exact) = (whole_with(opts)?, whole_with(GpuOptions::reference())?);
    let (effect, to_exact, to_whole) = (rel_error(&whole, &exact), rel_error(&split, &exact), rel_error(&split, &whole));
    let vocab = cfg.vocab_size;
    let rows = whole.len() / vocab;
    let same = (0..rows).filter(|&r| argmax(&whole[r * vocab..(r + 1) * vocab]) == argmax(&split[r * vocab..(r + 1) * vocab])).count();
    let within = to_exact <= 1.5 * effect.max(1e-4);
    println!(
        "check vs one GPU ({} prompt tokens): split vs exact {to_exact:.3e}, one GPU fast vs exact {effect:.3e} ({}within 1.5x); split vs one GPU fast {to_whole:.3e}; greedy token equal on {same}/{rows} rows (random weights: small margins); non-finite: {}",
        ids.len(),
        if within { "" } else { "NOT " },
        split.iter().filter(|x| !x.is_finite()).count()
    );
    Ok(json!({"kind": "check_tp1", "split_vs_exact": to_exact, "one_gpu_fast_vs_exact": effect, "split_vs_one_gpu_fast": to_whole, "within_1_5x": within, "greedy_equal_rows": same, "rows": rows}))
}
