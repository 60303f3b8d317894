//! Reading the fixtures in tests/fixtures and their transformers references; helpers of the
//! engine tests; with the `cuda` feature, the GPU tests' helpers in [`gpu`].
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use dsv3::engine::{Engine, EngineConfig, EngineEvent, FinishReason, GenerateRequest, KvCacheSize, SamplingParams, StepModel, Usage};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

pub mod dp;
pub mod files;
pub mod fp8_aligned;
#[cfg(feature = "cuda")]
pub mod gpu;
#[cfg(feature = "cuda")]
pub mod tp;

pub struct Reference {
    pub prompt: Vec<u32>,
    pub output: Vec<u32>,
    pub margins: Vec<f32>,
    pub logits: Vec<f32>,
    pub logits_shape: Vec<usize>,
}

/// tests/fixtures of the checkout: `$CARGO_MANIFEST_DIR` at run time (set by `cargo test` and by
/// the GPU runner, whose checkout lives elsewhere than the build's), else the build's.
pub fn fixtures_root() -> PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    root.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR"))).join("tests/fixtures")
}

/// Every fixture directory with a `reference.json`.
pub fn fixtures() -> Vec<PathBuf> {
    let root = fixtures_root();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/fixtures exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.json").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 3, "expected at least three fixtures with references in {}", root.display());
    dirs
}

/// A float32 tensor of `reference.safetensors` with its shape.
pub fn reference_tensor(dir: &Path, name: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let values = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (values, t.shape().to_vec())
}

pub fn reference(dir: &Path) -> Reference {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        json[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
    };
    let margins = json["step_margins"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let (logits, logits_shape) = reference_tensor(dir, "logits");
    Reference { prompt: ids("prompt_token_ids"), output: ids("output_token_ids"), margins, logits, logits_shape }
}

/// Number of leading greedy tokens that agree, over the steps whose reference margin is clear
/// (past a near-tie two correct implementations may diverge). Panics on a clear disagreement.
pub fn check_greedy(dir: &Path, ours: &[u32], r: &Reference) -> usize {
    let mut compared = 0;
    for (i, (&a, &b)) in ours.iter().zip(&r.output).enumerate() {
        if r.margins[i] <= 1e-3 {
            break;
        }
        assert_eq!(a, b, "{}: greedy token {i} differs", dir.display());
        compared += 1;
    }
    assert!(compared > 0, "{}: no greedy token had a clear margin", dir.display());
    compared
}

/// Deterministic pseudo-random prompts (ids 2..vocab, BOS first).
pub fn prompt(seed: u64, len: usize, vocab: usize) -> Vec<u32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut p = vec![0u32];
    for _ in 1..len {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        p.push(2 + ((x >> 33) % (vocab as u64 - 2)) as u32);
    }
    p
}

/// Reads a finished request's events: (token ids, text, finish reason, usage).
pub fn collect(rx: &mut UnboundedReceiver<EngineEvent>) -> (Vec<u32>, String, FinishReason, Usage) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    loop {
        match rx.try_recv() {
            Ok(EngineEvent::Token(t)) => {
                ids.push(t.token_id);
                text.push_str(&t.text);
            }
            Ok(EngineEvent::Finished { reason, text: tail, usage }) => {
                text.push_str(&tail);
                return (ids, text, reason, usage);
            }
            Ok(EngineEvent::Failed(m)) => panic!("request failed: {m}"),
            Err(e) => panic!("request did not finish: {e:?}"),
        }
    }
}

/// Submits greedy requests (prompt, max tokens; EOS ignored) to `engine` together and steps it
/// until it is idle; each request's tokens and usage.
pub fn run_greedy(engine: &mut Engine, reqs: &[(Vec<u32>, usize)]) -> Vec<(Vec<u32>, Usage)> {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1 << 32);
    let mut rxs: Vec<_> = reqs
        .iter()
        .map(|(p, max)| {
            let (tx, rx) = unbounded_channel();
            let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(*max) };
            let id = NEXT_ID.fetch_add(1, Relaxed);
            engine.add_request(id, GenerateRequest { prompt: p.clone(), params }, tx).unwrap_or_else(|e| panic!("request {id}: {e}"));
            rx
        })
        .collect();
    let pages = engine.info().num_pages;
    step_to_completion(engine, pages);
    rxs.iter_mut()
        .map(|rx| {
            let (ids, _, _, usage) = collect(rx);
            (ids, usage)
        })
        .collect()
}

/// Steps `engine` until it has no work, asserting that it makes progress and never holds more
/// than `max_pages` pages; returns the number of steps.
pub fn step_to_completion(engine: &mut Engine, max_pages: usize) -> usize {
    let mut steps = 0;
    while engine.has_work() {
        engine.step();
        steps += 1;
        assert!(steps < 10_000, "the engine does not make progress");
        assert!(engine.pages_in_use() <= max_pages);
    }
    steps
}

/// Greedy token ids (`ignore_eos`, `max_new` each) of `prompts` through an engine over `model`:
/// pages of `page_size`, prefill chunks of 40, graphs as `model` has them. With `mixed`, the first
/// request also asks for logprobs (2 alternatives), and gets them on every token.
pub fn engine_greedy_tokens(model: Box<dyn StepModel>, prompts: &[Vec<u32>], max_new: usize, page_size: usize, mixed: bool) -> Vec<Vec<u32>> {
    let cfg = EngineConfig { page_size, chunked_prefill_size: Some(40), kv_cache: KvCacheSize::Tokens(4096), ..Default::default() };
    let mut engine = Engine::new(model, &cfg, None).unwrap();
    let mut rxs = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let logprobs = mixed && i == 0;
        let params = SamplingParams { ignore_eos: true, logprobs, top_logprobs: if logprobs { 2 } else { 0 }, ..SamplingParams::greedy(max_new) };
        engine.add_request(i as u64, GenerateRequest { prompt: p.clone(), params }, tx).unwrap();
        rxs.push(rx);
    }
    step_to_completion(&mut engine, usize::MAX);
    rxs.iter_mut()
        .enumerate()
        .map(|(i, rx)| {
            let mut ids = Vec::new();
            loop {
                match rx.try_recv() {
                    Ok(EngineEvent::Token(t)) => {
                        assert_eq!(t.logprobs.as_ref().map(|l| l.top.len()), (mixed && i == 0).then_some(2), "request {i}: logprobs");
                        ids.push(t.token_id);
                    }
                    Ok(EngineEvent::Finished { usage, .. }) => {
                        assert_eq!((usage.completion_tokens, ids.len()), (max_new, max_new), "request {i}");
                        return ids;
                    }
                    Ok(EngineEvent::Failed(m)) => panic!("request {i} failed: {m}"),
                    Err(e) => panic!("request {i} did not finish: {e:?}"),
                }
            }
        })
        .collect()
}

/// One step of `sm` over `seqs` (tokens, cached length, block table, greedy), every sequence
/// wanting its last row: what the step returns for each.
pub fn step_of(sm: &mut dyn StepModel, seqs: &[(&[u32], usize, &[u32], bool)]) -> Vec<Option<dsv3::engine::StepOutput>> {
    let batch: Vec<dsv3::engine::SeqStep<'_>> =
        seqs.iter().map(|&(tokens, start, block_table, greedy)| dsv3::engine::SeqStep { tokens, start, block_table, want_logits: true, greedy, rank: 0 }).collect();
    sm.step(&batch).unwrap()
}
