//! The serving engine on the GPU ([`GpuStepModel`], batched forwards over a device page pool) on
//! every fixture: batched logits equal per-sequence logits, concurrent requests give the greedy
//! tokens of the references (transformers' and the CPU model's, over the steps whose margin is
//! clear), a page pool too small for the load preempts and still completes every request, and
//! decode steps replayed from captured CUDA graphs give the eager steps' logits and tokens.
//!
//! GPU tests: ignored in the CPU suite, run on the GPU machine with `--include-ignored`; without
//! a CUDA device they fail loudly.

mod common;

use std::path::Path;

use common::gpu::gpu_model;
use common::{check_greedy, collect, engine_greedy_tokens, fixtures, prompt, reference, step_of, step_to_completion};
use dsv3::backend::Device;
use dsv3::engine::{
    Engine, EngineConfig, EngineEvent, EngineHandle, FinishReason, GenerateRequest, GpuStepModel, KvCacheSize,
    SamplingParams, SeqStep, StepModel, StepOutput, Usage,
};
use dsv3::model::cpu::{CpuModel, CpuOptions};
use dsv3::model::generate::{greedy_generate, CausalLm};
use dsv3::model::gpu::{BatchSeq, GpuModel, GpuOptions, LogitRows};
use dsv3::tensor::rel_error;
use tokio::sync::mpsc::unbounded_channel;

/// Greedy tokens of the CPU reference with each step's margin (top-1 minus top-2 logit).
fn cpu_greedy(cpu: &CpuModel, p: &[u32], n: usize) -> (Vec<u32>, Vec<f32>) {
    let mut cache = cpu.new_cache().unwrap();
    let mut logits = cpu.forward(p, &mut cache).unwrap();
    let mut row = logits.row(p.len() - 1).to_vec();
    let (mut ids, mut margins) = (Vec::new(), Vec::new());
    loop {
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        ids.push(idx[0] as u32);
        margins.push(row[idx[0]] - row[idx[1]]);
        if ids.len() == n {
            return (ids, margins);
        }
        logits = cpu.forward(&[idx[0] as u32], &mut cache).unwrap();
        row = logits.row(0).to_vec();
    }
}

/// Greedy token ids and each step's top-1 minus top-2 margin.
type Greedy = (Vec<u32>, Vec<f32>);

/// [`cpu_greedy`] with each margin divided by the standard deviation of its logits row (a scale
/// that paths with a few percent of logits error, like the fp8 cache, can be held to).
fn cpu_greedy_rel_margins(cpu: &CpuModel, p: &[u32], n: usize) -> Greedy {
    let mut cache = cpu.new_cache().unwrap();
    let mut row = cpu.forward(p, &mut cache).unwrap().row(p.len() - 1).to_vec();
    let (mut ids, mut margins) = (Vec::new(), Vec::new());
    loop {
        let mean = row.iter().sum::<f32>() / row.len() as f32;
        let std = (row.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / row.len() as f32).sqrt();
        let mut idx: Vec<usize> = (0..row.len()).collect();
        idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        ids.push(idx[0] as u32);
        margins.push((row[idx[0]] - row[idx[1]]) / std.max(f32::MIN_POSITIVE));
        if ids.len() == n {
            return (ids, margins);
        }
        row = cpu.forward(&[idx[0] as u32], &mut cache).unwrap().row(0).to_vec();
    }
}

/// Asserts `ours` equals the CPU greedy tokens up to the first step whose margin is at most
/// `tie`; returns how many agreed.
fn check_against_cpu_margin(what: &str, ours: &[u32], cpu: &Greedy, tie: f32) -> usize {
    let mut n = 0;
    for (i, (&a, &b)) in ours.iter().zip(&cpu.0).enumerate() {
        if cpu.1[i] <= tie {
            break;
        }
        assert_eq!(a, b, "{what}: greedy token {i} differs from the CPU reference ({ours:?} vs {:?})", cpu.0);
        n += 1;
    }
    n
}

/// Asserts `ours` equals the CPU greedy tokens up to the first near-tie; returns how many agreed.
fn check_against_cpu(what: &str, ours: &[u32], cpu: &(Vec<u32>, Vec<f32>)) -> usize {
    let mut n = 0;
    for (i, (&a, &b)) in ours.iter().zip(&cpu.0).enumerate() {
        if cpu.1[i] <= 1e-3 {
            break;
        }
        assert_eq!(a, b, "{what}: greedy token {i} differs from the CPU reference ({ours:?} vs {:?})", cpu.0);
        n += 1;
    }
    n
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams { ignore_eos: true, ..SamplingParams::greedy(n) }
}

/// The logits rows of a step whose every sequence wanted logits and none took the device argmax.
#[track_caller]
fn logits_of(out: Vec<Option<StepOutput>>) -> Vec<Vec<f32>> {
    out.into_iter()
        .map(|o| match o {
            Some(StepOutput::Logits(l)) => l,
            other => panic!("expected a logits row, got {other:?}"),
        })
        .collect()
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn batched_logits_equal_per_sequence_logits() {
    for dir in fixtures() {
        let gpu = gpu_model(&dir);
        let vocab = gpu.config().vocab_size;
        let r = reference(&dir);
        // Four sequences: the reference prompt and three random ones, each with one more token.
        let seqs: Vec<Vec<u32>> = vec![
            [r.prompt.clone(), vec![r.output[0]]].concat(),
            prompt(1, 37, vocab),
            prompt(2, 5, vocab),
            prompt(3, 21, vocab),
        ];
        // Per sequence, alone, every row: the single-sequence path.
        let alone: Vec<Vec<f32>> = seqs
            .iter()
            .map(|s| gpu.forward(s, &mut gpu.new_cache().unwrap()).unwrap().into_data())
            .collect();
        // One pool of 16-position pages shared by all, pages interleaved across sequences.
        let ps = 16;
        let mut pool = gpu.new_page_pool(64, ps).unwrap();
        let tables: Vec<Vec<u32>> = (0..seqs.len() as u32).map(|i| (0..8).map(|k| 63 - (k * 4 + i)).collect()).collect();
        // Step 1: sequence 0's prompt (all rows), the first half of 1 (no rows), all of 2 but its
        // last token (last row), 3 whole (all rows).
        let cut = [seqs[0].len() - 1, seqs[1].len() / 2, seqs[2].len() - 1, seqs[3].len()];
        let wants1 = [LogitRows::All, LogitRows::None, LogitRows::Last, LogitRows::All];
        let step1: Vec<BatchSeq> = (0..4)
            .map(|i| BatchSeq { tokens: &seqs[i][..cut[i]], start: 0, block_table: &tables[i], logits: wants1[i] })
            .collect();
        let out1 = gpu.forward_batch(&mut pool, &step1).unwrap();
        // Step 2: decode of 0 and 2, the rest of 1 (all rows); 3 sits out.
        let step2: Vec<BatchSeq> = (0..3)
            .map(|i| BatchSeq { tokens: &seqs[i][cut[i]..], start: cut[i], block_table: &tables[i], logits: LogitRows::All })
            .collect();
        let out2 = gpu.forward_batch(&mut pool, &step2).unwrap();
        let rows = |i: usize, from: usize, to: usize| &alone[i][from * vocab..to * vocab];
        let checks: Vec<(&str, &[f32], &[f32])> = vec![
            ("seq 0 prefill", &out1[0], rows(0, 0, cut[0])),
            ("seq 1 inner chunk", &out1[1], &[]),
            ("seq 2 prefill last row", &out1[2], rows(2, cut[2] - 1, cut[2])),
            ("seq 3 prefill", &out1[3], rows(3, 0, cut[3])),
            ("seq 0 decode", &out2[0], rows(0, cut[0], seqs[0].len())),
            ("seq 1 second chunk", &out2[1], rows(1, cut[1], seqs[1].len())),
            ("seq 2 decode", &out2[2], rows(2, cut[2], seqs[2].len())),
        ];
        for (what, got, want) in checks {
            assert_eq!(got.len(), want.len(), "{}: {what}: {} values, expected {}", dir.display(), got.len(), want.len());
            if want.is_empty() {
                continue;
            }
            assert!(got.iter().all(|x| x.is_finite()), "{}: {what}: non-finite logits", dir.display());
            let err = rel_error(got, want);
            println!("{}: {what}: batched vs alone rel error {err:.2e}", dir.display());
            assert!(err <= 1e-5, "{}: {what}: batched logits differ from per-sequence logits by {err:.3e}", dir.display());
        }
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn gpu_engine_concurrent_requests_match_the_references() {
    for dir in fixtures() {
        concurrent_requests(&dir, 0);
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn gpu_engine_with_cuda_graphs_matches_the_references() {
    for dir in fixtures() {
        let eager = concurrent_requests(&dir, 0);
        let graphs = concurrent_requests(&dir, 8);
        assert_eq!(eager, graphs, "{}: tokens with CUDA graphs differ from eager steps", dir.display());
    }
}

/// Ten concurrent greedy requests on the GPU engine (decode steps replayed from graphs up to
/// `graph_max_bs`); checks them against the references and returns every request's tokens.
fn concurrent_requests(dir: &Path, graph_max_bs: usize) -> Vec<Vec<u32>> {
    let dir = dir.to_path_buf();
    let mut all_ids = Vec::new();
    {
        let r = reference(&dir);
        let cpu = CpuModel::load(&dir, CpuOptions::default()).unwrap();
        let gpu = gpu_model(&dir);
        let vocab = gpu.config().vocab_size;
        let n_ref = r.output.len();
        let max_new = 24;
        let prompts: Vec<Vec<u32>> = (0..8).map(|i| prompt(10 + i, 3 + (i as usize * 11) % 50, vocab)).collect();
        // The GPU's own single-sequence greedy path (same kernels, one sequence per forward).
        let alone: Vec<Vec<u32>> =
            prompts.iter().map(|p| greedy_generate(&gpu, p, max_new, false).unwrap().output_token_ids).collect();
        let cpu_ref: Vec<(Vec<u32>, Vec<f32>)> = prompts.iter().map(|p| cpu_greedy(&cpu, p, max_new)).collect();
        drop(gpu);
        // Small pages and prefill chunks: steps mix decodes with chunks of several prompts.
        let cfg = EngineConfig {
            page_size: 16,
            chunked_prefill_size: Some(40),
            kv_cache: KvCacheSize::Tokens(4096),
            ..Default::default()
        };
        let model = GpuStepModel::load(&dir, Device::Cuda(0)).unwrap().with_cuda_graphs(graph_max_bs);
        let mut engine = Engine::new(Box::new(model), &cfg, None).unwrap();
        assert!(engine.info().device.starts_with("cuda"), "{}", engine.info().device);
        assert_eq!(engine.info().cuda_graph_max_bs, graph_max_bs);
        let mut rxs = Vec::new();
        // The reference prompt twice (the second hits the prefix cache where a page is whole).
        for id in 0..2u64 {
            let (tx, rx) = unbounded_channel();
            engine.add_request(id, GenerateRequest { prompt: r.prompt.clone(), params: greedy(n_ref) }, tx).unwrap();
            rxs.push(rx);
        }
        for (i, p) in prompts.iter().enumerate() {
            let (tx, rx) = unbounded_channel();
            engine.add_request(100 + i as u64, GenerateRequest { prompt: p.clone(), params: greedy(max_new) }, tx).unwrap();
            rxs.push(rx);
        }
        let mut steps = 0;
        let mut widest = 0;
        while engine.has_work() {
            let st = engine.step();
            widest = widest.max(st.sequences);
            steps += 1;
            assert!(steps < 10_000, "the engine does not make progress");
        }
        assert!(widest >= 4, "{}: requests were not batched (widest step {widest})", dir.display());
        for rx in &mut rxs[..2] {
            let (ids, _, reason, Usage { completion_tokens: n, .. }) = collect(rx);
            assert_eq!((reason, n), (FinishReason::Length, n_ref));
            let agreed = check_greedy(&dir, &ids, &r);
            println!("{}: reference prompt: {agreed}/{n_ref} tokens agree with transformers", dir.display());
            all_ids.push(ids);
        }
        for (i, rx) in rxs[2..].iter_mut().enumerate() {
            let (ids, _, reason, Usage { completion_tokens: n, .. }) = collect(rx);
            assert_eq!((reason, n), (FinishReason::Length, max_new));
            let what = format!("{}: prompt {i} ({} tokens)", dir.display(), prompts[i].len());
            let agreed = check_against_cpu(&what, &ids, &cpu_ref[i]);
            // The batched engine and the single-sequence GPU path run the same kernels row by
            // row: the same tokens up to the CPU's first near-tie at least.
            let same = ids.iter().zip(&alone[i]).take_while(|(a, b)| a == b).count();
            assert!(same >= agreed, "{what}: engine {ids:?} vs single-sequence GPU {:?}", alone[i]);
            println!("{what}: {agreed}/{max_new} agree with the CPU, {same}/{max_new} with the GPU alone");
            all_ids.push(ids);
        }
        assert_eq!(engine.pages_in_use(), 0);
    }
    all_ids
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn decode_graphs_give_the_eager_logits() {
    for dir in fixtures() {
        let gpu = gpu_model(&dir);
        let vocab = gpu.config().vocab_size;
        let ps = 16;
        // Pool A for eager steps, pool B (one more page: the graphs' padding page) for graphs.
        let mut pool_a = gpu.new_page_pool(64, ps).unwrap();
        let mut pool_b = gpu.new_page_pool(65, ps).unwrap();
        let prompts: Vec<Vec<u32>> = (0..8).map(|i| prompt(300 + i, 3 + 5 * i as usize, vocab)).collect();
        let tables: Vec<Vec<u32>> = (0..8u32).map(|i| (0..8).map(|k| 63 - (k * 8 + i)).collect()).collect();
        let prefill: Vec<BatchSeq> = (0..8)
            .map(|i| BatchSeq { tokens: &prompts[i], start: 0, block_table: &tables[i], logits: LogitRows::Last })
            .collect();
        let la = gpu.forward_batch(&mut pool_a, &prefill).unwrap();
        let lb = gpu.forward_batch(&mut pool_b, &prefill).unwrap();
        for (a, b) in la.iter().zip(&lb) {
            assert!(rel_error(a, b) <= 1e-6, "{}: the same prefill in two pools differs", dir.display());
        }
        let argmax = |l: &[f32]| (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap() as u32;
        let mut next: Vec<u32> = la.iter().map(|l| argmax(l)).collect();
        let mut len: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        // Batches of 1, 3 (graph of 4, one padding row) and 8 sequences, three decode steps each.
        for b in [1usize, 3, 8] {
            let bs = GpuStepModel::graph_batch_size(b);
            let graph = gpu.capture_decode_graph(&mut pool_b, bs, 64).unwrap();
            assert_eq!(graph.batch_size(), bs);
            for step in 0..3 {
                let toks: Vec<[u32; 1]> = (0..b).map(|i| [next[i]]).collect();
                let seqs: Vec<BatchSeq> = (0..b)
                    .map(|i| BatchSeq { tokens: &toks[i], start: len[i], block_table: &tables[i], logits: LogitRows::Last })
                    .collect();
                let eager = gpu.forward_batch(&mut pool_a, &seqs).unwrap();
                let replay = gpu.forward_decode_graph(&graph, &mut pool_b, &seqs).unwrap();
                for i in 0..b {
                    assert_eq!(replay[i].len(), vocab);
                    let err = rel_error(&replay[i], &eager[i]);
                    assert!(err <= 1e-6, "{}: batch {b} step {step} sequence {i}: graph vs eager rel error {err:.3e}", dir.display());
                    next[i] = argmax(&eager[i]);
                    len[i] += 1;
                }
            }
            println!("{}: decode graph of batch size {bs} (for {b}) replays the eager logits", dir.display());
        }
        // Through the step model: batches of 5 decodes replay the graph of 8.
        let mut sm = GpuStepModel::new(gpu_model(&dir)).with_cuda_graphs(8);
        sm.allocate_cache(64, ps).unwrap();
        let mut steps: Vec<SeqStep> = (0..5)
            .map(|i| SeqStep { tokens: &prompts[i], start: 0, block_table: &tables[i], want_logits: true, rank: 0, greedy: false })
            .collect();
        let first = logits_of(sm.step(&steps).unwrap());
        assert!(sm.captured_graphs().is_empty(), "prefill steps run eagerly");
        let toks: Vec<[u32; 1]> = first.iter().map(|l| [argmax(l)]).collect();
        for (i, s) in steps.iter_mut().enumerate() {
            *s = SeqStep { tokens: &toks[i], start: prompts[i].len(), block_table: &tables[i], want_logits: true, rank: 0, greedy: false };
        }
        let out = logits_of(sm.step(&steps).unwrap());
        assert_eq!(sm.captured_graphs(), vec![8]);
        assert!(out.iter().all(|l| l.len() == vocab && l.iter().all(|x| x.is_finite())));
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn tiny_gpu_page_pool_preempts_and_completes_every_request() {
    for dir in fixtures() {
        let cpu = CpuModel::load(&dir, CpuOptions::default()).unwrap();
        let vocab = cpu.config().vocab_size;
        // 12 pages of 8 positions; six requests of up to 59 positions each: they cannot all fit.
        let cfg = EngineConfig {
            page_size: 8,
            chunked_prefill_size: Some(24),
            kv_cache: KvCacheSize::Tokens(96),
            ..Default::default()
        };
        let mut engine = Engine::new(Box::new(GpuStepModel::load(&dir, Device::Cuda(0)).unwrap()), &cfg, None).unwrap();
        let prompts: Vec<Vec<u32>> = (0..6).map(|i| prompt(100 + i, 10 + 5 * i as usize, vocab)).collect();
        let max_new = 24;
        let mut rxs = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let (tx, rx) = unbounded_channel();
            engine.add_request(i as u64, GenerateRequest { prompt: p.clone(), params: greedy(max_new) }, tx).unwrap();
            rxs.push(rx);
        }
        let steps = step_to_completion(&mut engine, 12);
        assert!(engine.preemptions() > 0, "{}: a 12-page pool should have forced preemption", dir.display());
        for (i, (p, rx)) in prompts.iter().zip(&mut rxs).enumerate() {
            let (ids, _, reason, Usage { completion_tokens: n, .. }) = collect(rx);
            assert_eq!((reason, n, ids.len()), (FinishReason::Length, max_new, max_new), "{}: request {i}", dir.display());
            let what = format!("{}: preempted run, prompt {i}", dir.display());
            let agreed = check_against_cpu(&what, &ids, &cpu_greedy(&cpu, p, max_new));
            println!("{what}: {agreed}/{max_new} agree with the CPU");
        }
        println!("{}: {} preemptions in {steps} steps", dir.display(), engine.preemptions());
        assert_eq!(engine.pages_in_use(), 0);
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn engine_thread_serves_from_the_gpu_and_sizes_the_pool_from_device_memory() {
    let dir = fixtures().into_iter().find(|d| d.ends_with("tiny-real-mla")).unwrap_or_else(|| fixtures()[0].clone());
    let model = GpuStepModel::load(&dir, Device::Cuda(0)).unwrap();
    let free = model.spec().memory_bytes.expect("cuMemGetInfo after the weights");
    assert!(free > 1 << 30, "free device memory {free}");
    let cfg = EngineConfig {
        kv_cache: KvCacheSize::MemFraction(0.05),
        max_running_requests: 16,
        ..Default::default()
    };
    let handle = EngineHandle::start(Box::new(model), &cfg, None).unwrap();
    let info = handle.info().clone();
    println!("{}: {info:?}", dir.display());
    assert!(info.kv_bytes as f64 <= 0.05 * free as f64 + 1.0);
    let vocab = info.vocab_size;
    let mut streams: Vec<_> = (0..16)
        .map(|i| handle.submit(GenerateRequest { prompt: prompt(200 + i, 4 + i as usize * 3, vocab), params: greedy(16) }).unwrap())
        .collect();
    for s in &mut streams {
        let mut n = 0;
        loop {
            match s.blocking_recv().expect("event") {
                EngineEvent::Token(_) => n += 1,
                EngineEvent::Finished { usage, .. } => {
                    assert_eq!(usage.completion_tokens, 16);
                    break;
                }
                EngineEvent::Failed(m) => panic!("{m}"),
            }
        }
        assert_eq!(n, 16);
    }
    let steps = handle.metrics().steps.load(std::sync::atomic::Ordering::Relaxed);
    assert!(steps < 16 * 16, "requests were not batched ({steps} steps)");
    handle.shutdown(true);
}

/// The engine over the fp8 e4m3 latent cache (`--kv-cache-dtype fp8_e4m3`: fast options, 656-byte
/// rows quantized on write) on the fixture whose latent is 512 + 64 wide (tiny-real-mla): the pool
/// is sized at 656 bytes per position and layer, other page sizes are refused, and concurrent
/// greedy requests — prefill chunks mixed with decodes (paged attention over fp8 rows), then
/// decode-only steps replayed from CUDA graphs (the fp8 split-KV decode kernel) — all complete
/// with the CPU reference's tokens (its FP8 activations emulated) up to the first step whose
/// top-2 margin is within 0.35 standard deviations of the logits row (the fp8 cache
/// moves the logits by a few percent), and with the tokens the fp8 model gives one sequence at a
/// time at least that far.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn gpu_engine_serves_requests_over_the_fp8_cache() {
    let dir = fixtures().into_iter().find(|d| d.ends_with("tiny-real-mla")).expect("the tiny-real-mla fixture (512 + 64 latent)");
    let opts = GpuOptions::fast_fp8_cache();
    let cpu = CpuModel::load(&dir, CpuOptions { emulate_fp8_activations: true, ..Default::default() }).unwrap();
    let vocab = cpu.config().vocab_size;
    let layers = cpu.config().num_hidden_layers;
    let max_new = 20;
    // Of 24 candidate prompts of 5 .. 120 tokens (several cross a page of 64), the 6 whose first
    // CPU token is the clearest: the token comparison below then never stops at step 0.
    let mut cands: Vec<(Vec<u32>, Greedy)> = (0..24u64)
        .map(|i| prompt(700 + i, 5 + (23 * i as usize) % 116, vocab))
        .map(|p| {
            let r = cpu_greedy_rel_margins(&cpu, &p, max_new);
            (p, r)
        })
        .collect();
    cands.sort_by(|a, b| b.1 .1[0].total_cmp(&a.1 .1[0]));
    cands.truncate(6);
    let (prompts, cpu_ref): (Vec<Vec<u32>>, Vec<Greedy>) = cands.into_iter().unzip();
    let gpu = GpuModel::load_with(&dir, Device::Cuda(0), opts).unwrap();
    let alone: Vec<Vec<u32>> = prompts.iter().map(|p| greedy_generate(&gpu, p, max_new, false).unwrap().output_token_ids).collect();
    drop(gpu);

    // Pages of 16 are refused (the fp8 rows are written through pages of 64).
    let small = EngineConfig { page_size: 16, kv_cache: KvCacheSize::Tokens(1024), ..Default::default() };
    let e = Engine::new(Box::new(GpuStepModel::load_with(&dir, Device::Cuda(0), opts).unwrap()), &small, None).err().expect("pages of 16 refused").to_string();
    assert!(e.contains("--page-size 64"), "{e}");

    let model = GpuStepModel::load_with(&dir, Device::Cuda(0), opts).unwrap().with_cuda_graphs(8);
    let spec = model.spec();
    assert_eq!(spec.position_bytes, 656, "fp8 rows: 656 bytes per position and layer");
    assert_eq!(spec.bytes_per_page(64), layers * 64 * 656);
    let pages = 20;
    let cfg = EngineConfig { page_size: 64, chunked_prefill_size: Some(48), kv_cache: KvCacheSize::Tokens(pages * 64), ..Default::default() };
    let mut engine = Engine::new(Box::new(model), &cfg, None).unwrap();
    let info = engine.info().clone();
    assert_eq!((info.num_pages, info.kv_bytes), (pages, pages * layers * 64 * 656), "{info:?}");
    let mut rxs = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let (tx, rx) = unbounded_channel();
        engine.add_request(i as u64, GenerateRequest { prompt: p.clone(), params: greedy(max_new) }, tx).unwrap();
        rxs.push(rx);
    }
    let (mut steps, mut widest) = (0, 0);
    while engine.has_work() {
        let st = engine.step();
        widest = widest.max(st.sequences);
        steps += 1;
        assert!(steps < 10_000, "the engine does not make progress");
    }
    assert!(widest >= 3, "requests were not batched (widest step {widest})");
    // Margins within 0.35 standard deviations of the row count as ties: the fp8 cache moves the
    // logits by a few percent of their RMS (see tests/gpu_model.rs), so the two leaders'
    // difference moves by about a tenth of that or less.
    const TIE: f32 = 0.35;
    let mut compared = 0;
    for (i, rx) in rxs.iter_mut().enumerate() {
        let (ids, _, reason, Usage { completion_tokens: n, .. }) = collect(rx);
        assert_eq!((reason, n, ids.len()), (FinishReason::Length, max_new, max_new), "request {i}");
        let what = format!("fp8 cache engine, prompt {i} ({} tokens)", prompts[i].len());
        let agreed = check_against_cpu_margin(&what, &ids, &cpu_ref[i], TIE);
        let same = ids.iter().zip(&alone[i]).take_while(|(a, b)| a == b).count();
        assert!(same >= agreed, "{what}: engine {ids:?} vs single-sequence fp8 GPU {:?}", alone[i]);
        println!("{what}: {agreed}/{max_new} agree with the CPU (clear margins), {same}/{max_new} with the fp8 model alone");
        compared += agreed;
    }
    assert!(compared > 0, "no token had a clear margin: the comparison with the CPU was vacuous");
    assert_eq!(engine.pages_in_use(), 0);
    println!("fp8 cache engine: {steps} steps, widest {widest}, {compared} tokens checked against the CPU");
}

/// Host argmax, as the engine's greedy sampler takes it.
fn host_argmax(row: &[f32]) -> u32 {
    dsv3::ops::sampling::argmax(row) as u32
}

/// The step model returns tokens exactly when every sampling sequence of a step is greedy, and
/// they are the host's argmax of the logits the host path returns for the same step; a step with
/// one non-greedy sequence (or an inner prefill chunk beside greedy ones) is handled too.
/// Reference options (deterministic kernels: the two step models compute the same rows), every
/// fixture; eager prefill, decodes through graphs (batch 3 → graph of 4), and an eager decode
/// batch larger than the graphs.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn step_model_returns_device_argmax_tokens_for_greedy_steps() {
    for dir in fixtures() {
        let load = |device_argmax: bool| {
            let mut m = GpuStepModel::load(&dir, Device::Cuda(0)).unwrap().with_cuda_graphs(4).with_device_argmax(device_argmax);
            m.allocate_cache(16, 64).unwrap();
            m
        };
        let (mut dev, mut host) = (load(true), load(false));
        let vocab = dev.model().config().vocab_size;
        let prompts: Vec<Vec<u32>> = (0..5).map(|i| prompt(500 + i, 4 + 11 * i as usize, vocab)).collect();
        let tables: Vec<Vec<u32>> = (0..5u32).map(|i| vec![2 * i, 2 * i + 1]).collect();
        let mut len: Vec<usize> = vec![0; 5];
        let mut next: Vec<[u32; 1]> = Vec::new();
        // Prefill of the first three (all greedy), then decodes: greedy (graph), one not greedy
        // (graph, logits for all), all five greedy (eager: more than the graphs hold), and the
        // last two's prefill as one step with three greedy decodes.
        let first: Vec<(&[u32], usize, &[u32], bool)> = (0..3).map(|i| (&prompts[i][..], 0, &tables[i][..], true)).collect();
        let check = |what: &str, d: &[Option<StepOutput>], h: &[Option<StepOutput>], all_greedy: bool| -> Vec<[u32; 1]> {
            d.iter()
                .zip(h)
                .enumerate()
                .map(|(i, (d, h))| {
                    let Some(StepOutput::Logits(row)) = h else { panic!("{}: {what}: host path returned {h:?}", dir.display()) };
                    let want = if all_greedy { StepOutput::Token(host_argmax(row)) } else { StepOutput::Logits(row.clone()) };
                    assert_eq!(d.as_ref(), Some(&want), "{}: {what}: sequence {i}", dir.display());
                    [host_argmax(row)]
                })
                .collect()
        };
        next.extend(check("prefill", &step_of(&mut dev, &first), &step_of(&mut host, &first), true));
        for i in 0..3 {
            len[i] = prompts[i].len();
        }
        for (step, greedy) in [[true, true, true], [true, false, true]].into_iter().enumerate() {
            let seqs: Vec<(&[u32], usize, &[u32], bool)> = (0..3).map(|i| (&next[i][..], len[i], &tables[i][..], greedy[i])).collect();
            let out = check(&format!("graph decode {step}"), &step_of(&mut dev, &seqs), &step_of(&mut host, &seqs), greedy.iter().all(|&g| g));
            next = out;
            len.iter_mut().take(3).for_each(|l| *l += 1);
        }
        assert_eq!(dev.captured_graphs(), vec![4], "{}: the decodes replayed the graph of 4", dir.display());
        let mixed: Vec<(&[u32], usize, &[u32], bool)> =
            (0..3).map(|i| (&next[i][..], len[i], &tables[i][..], true)).chain((3..5).map(|i| (&prompts[i][..], 0, &tables[i][..], true))).collect();
        let out = check("decodes + prefills", &step_of(&mut dev, &mixed), &step_of(&mut host, &mixed), true);
        for i in 0..5 {
            len[i] = if i < 3 { len[i] + 1 } else { prompts[i].len() };
        }
        let five: Vec<(&[u32], usize, &[u32], bool)> = (0..5).map(|i| (&out[i][..], len[i], &tables[i][..], true)).collect();
        check("eager decode of 5", &step_of(&mut dev, &five), &step_of(&mut host, &five), true);
        println!("{}: device argmax tokens = host argmax of the host path's logits", dir.display());
    }
}

/// The engine with greedy steps read out on the device gives the tokens of the host path
/// (`with_device_argmax(false)`, what `DSV3_HOST_SAMPLING=1` selects): on the reference options
/// exactly, every fixture, eager and with decode graphs, also with a logprobs request in the
/// batch (its steps fall back to the logits; the greedy requests keep their tokens and it gets
/// its logprobs). On the fast options (bf16 cache, and the fp8 cache where the latent is
/// 512 + 64; pages of 64, graphs) both paths give the single-sequence fast model's tokens while
/// its top-2 margin is clear of 10 × 2 × the fast options' own effect on the logits (fast vs
/// reference; the fast kernels are not deterministic run to run, see tests/gpu_tp_fast.rs).
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn engine_device_argmax_gives_the_host_paths_tokens() {
    let max_new = 16;
    let mut compared = 0;
    for dir in fixtures() {
        let vocab = gpu_model(&dir).config().vocab_size;
        let prompts: Vec<Vec<u32>> = (0..6).map(|i| prompt(600 + i, 3 + (i as usize * 17) % 60, vocab)).collect();
        let reference = |graphs: usize, device_argmax: bool| GpuStepModel::load(&dir, Device::Cuda(0)).unwrap().with_cuda_graphs(graphs).with_device_argmax(device_argmax);
        for graphs in [0, 8] {
            let host = engine_greedy_tokens(Box::new(reference(graphs, false)), &prompts, max_new, 16, false);
            let device = engine_greedy_tokens(Box::new(reference(graphs, true)), &prompts, max_new, 16, false);
            assert_eq!(device, host, "{}: graphs up to {graphs}: device argmax vs host sampling", dir.display());
            let mixed = engine_greedy_tokens(Box::new(reference(graphs, true)), &prompts, max_new, 16, true);
            assert_eq!(mixed, host, "{}: graphs up to {graphs}: with a logprobs request", dir.display());
        }
        let cfg = dsv3::model::config::ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let mut option_sets = vec![GpuOptions::fast()];
        if dsv3::model::gpu::KvCacheDtype::Fp8E4m3.check(&cfg).is_ok() {
            option_sets.push(GpuOptions::fast_fp8_cache());
        }
        for opts in option_sets {
            let single = GpuModel::load_with(&dir, Device::Cuda(0), opts).unwrap();
            let probe = &prompts[5];
            let fast = single.forward(probe, &mut single.new_cache().unwrap()).unwrap();
            let reference_model = gpu_model(&dir);
            let exact = reference_model.forward(probe, &mut reference_model.new_cache().unwrap()).unwrap();
            let tol = 1e-4f64.max(2.0 * rel_error(fast.data(), exact.data()));
            let want: Vec<Vec<(u32, bool)>> = prompts.iter().map(|p| common::tp::tp1_greedy(&single, p, max_new, tol)).collect();
            drop(single);
            for device_argmax in [false, true] {
                let model = GpuStepModel::load_with(&dir, Device::Cuda(0), opts).unwrap().with_cuda_graphs(8).with_device_argmax(device_argmax);
                let got = engine_greedy_tokens(Box::new(model), &prompts, max_new, 64, false);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let clear = w.iter().take_while(|(_, c)| *c).count();
                    let alone: Vec<u32> = w.iter().map(|(t, _)| *t).collect();
                    assert_eq!(g[..clear], alone[..clear], "{}: {} cache, device argmax {device_argmax}: request {i}", dir.display(), opts.kv_cache);
                    compared += clear;
                }
            }
        }
        println!("{}: the engine's device argmax gives the host path's tokens", dir.display());
    }
    assert!(compared > 0, "no fast-option token had a clear margin: that comparison was vacuous");
}
