//! The engine on the embedded tiny model: continuous batching, chunked prefill, preemption and
//! prefix caching give exactly the tokens of one-request-at-a-time greedy generation; sampling
//! parameters behave; cancelled requests free their cache.
//!
//! Exactness: the CPU forward computes every row independently of the others in its step, so a
//! prompt computed in chunks or recomputed after preemption gives bit-identical latent rows and
//! logits — as long as the MLA formulation is the same. `AttentionPath::Auto` switches to the
//! absorbed form for one-token steps, so tests that re-chunk (preemption, prefix hits, small
//! chunks) pin `AttentionPath::Naive` for the engine and the reference alike.

mod common;

use std::sync::Arc;

use common::{collect, step_to_completion};
use dsv3::engine::detok::Detokenize;
use dsv3::engine::{
    CpuStepModel, Engine, EngineConfig, EngineEvent, EngineHandle, FinishReason, GenerateRequest, KvCacheSize,
    SamplingParams, SubmitError,
};
use dsv3::model::cpu::{AttentionPath, CpuModel, CpuOptions};
use dsv3::model::embedded;
use dsv3::model::generate::greedy_generate;
use dsv3::tokenizer::TextTokenizer;
use tokio::sync::mpsc::unbounded_channel;

fn model(path: AttentionPath) -> CpuModel {
    let dir = embedded::materialize().expect("embedded model");
    CpuModel::load(&dir, CpuOptions { attention: path, ..Default::default() }).expect("load embedded model")
}

fn tokenizer() -> Arc<dyn Detokenize> {
    let dir = embedded::materialize().expect("embedded model");
    let tok = TextTokenizer::load(&dir, Some(0)).expect("tokenizer").expect("tokenizer.json");
    Arc::new(tok)
}

/// Deterministic pseudo-random prompts (ids 2..512, BOS first).
fn prompt(seed: u64, len: usize) -> Vec<u32> {
    common::prompt(seed, len, 512)
}

fn config(tokens: usize, page: usize, chunk: Option<usize>) -> EngineConfig {
    EngineConfig {
        page_size: page,
        kv_cache: KvCacheSize::Tokens(tokens),
        chunked_prefill_size: chunk,
        ..Default::default()
    }
}

fn reference(m: &CpuModel, p: &[u32], n: usize) -> Vec<u32> {
    greedy_generate(m, p, n, true).expect("greedy_generate").output_token_ids
}

#[test]
fn concurrent_requests_match_sequential_greedy() {
    let reference_model = model(AttentionPath::Auto);
    let handle = EngineHandle::start(
        Box::new(CpuStepModel::new(model(AttentionPath::Auto))),
        &config(8192, 64, Some(8192)),
        Some(tokenizer()),
    )
    .expect("engine");
    let prompts: Vec<Vec<u32>> = (0..12).map(|i| prompt(i, 3 + (i as usize * 7) % 40)).collect();
    let max_new = 20;
    // Submit everything first so the requests share steps.
    let mut streams: Vec<_> = prompts
        .iter()
        .map(|p| handle.submit(GenerateRequest { prompt: p.clone(), params: SamplingParams::greedy(max_new) }).expect("submit"))
        .collect();
    for (p, s) in prompts.iter().zip(&mut streams) {
        let mut ids = Vec::new();
        let usage = loop {
            match s.blocking_recv().expect("event") {
                EngineEvent::Token(t) => ids.push(t.token_id),
                EngineEvent::Finished { usage, .. } => break usage,
                EngineEvent::Failed(m) => panic!("{m}"),
            }
        };
        assert_eq!(ids, reference(&reference_model, p, max_new), "prompt {p:?}");
        assert_eq!(usage.prompt_tokens, p.len());
        assert_eq!(usage.completion_tokens, ids.len());
    }
    let m = handle.metrics();
    assert!(m.steps.load(std::sync::atomic::Ordering::Relaxed) < (12 * max_new) as u64, "requests were not batched");
    handle.shutdown(true);
}

#[test]
fn tiny_cache_preempts_and_still_matches() {
    let reference_model = model(AttentionPath::Naive);
    // 12 pages of 8 positions; six requests of up to 64 positions each: they cannot all fit.
    let mut engine =
        Engine::new(Box::new(CpuStepModel::new(model(AttentionPath::Naive))), &config(96, 8, Some(24)), None).expect("engine");
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| prompt(100 + i, 10 + 5 * i as usize)).collect();
    let max_new = 24;
    let mut rxs = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let (tx, rx) = unbounded_channel();
        let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(max_new) };
        engine.add_request(i as u64, GenerateRequest { prompt: p.clone(), params }, tx).expect("add");
        rxs.push(rx);
    }
    step_to_completion(&mut engine, 12);
    assert!(engine.preemptions() > 0, "a 12-page cache should have forced preemption");
    for (p, rx) in prompts.iter().zip(&mut rxs) {
        let (ids, _, reason, usage) = collect(rx);
        let want = greedy_generate(&reference_model, p, max_new, false).expect("reference").output_token_ids;
        assert_eq!(ids, want, "prompt of {} tokens", p.len());
        assert_eq!(reason, FinishReason::Length);
        assert_eq!(usage.completion_tokens, max_new);
    }
    assert_eq!(engine.pages_in_use(), 0);
}

#[test]
fn prefix_cache_hits_and_matches() {
    let reference_model = model(AttentionPath::Naive);
    let mut engine =
        Engine::new(Box::new(CpuStepModel::new(model(AttentionPath::Naive))), &config(4096, 4, Some(4096)), None).expect("engine");
    let shared = prompt(7, 30);
    let prompts: Vec<Vec<u32>> = (0..4)
        .map(|i| {
            let mut p = shared.clone();
            p.extend(prompt(200 + i, 6).into_iter().skip(1));
            p
        })
        .collect();
    let mut usages = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let (tx, mut rx) = unbounded_channel();
        engine.add_request(i as u64, GenerateRequest { prompt: p.clone(), params: SamplingParams::greedy(12) }, tx).expect("add");
        engine.run_to_completion();
        let (ids, _, _, usage) = collect(&mut rx);
        assert_eq!(ids, reference(&reference_model, p, 12), "request {i}");
        usages.push(usage);
    }
    assert_eq!(usages[0].cached_tokens, 0);
    for u in &usages[1..] {
        // 30 shared tokens = 7 whole pages of 4.
        assert_eq!(u.cached_tokens, 28, "{u:?}");
    }
    let m = engine.metrics();
    assert!(m.prefix_hit_rate() > 0.5, "hit rate {}", m.prefix_hit_rate());
    assert!(m.render_prometheus("x").contains("dsv3:cache_hit_rate"));
}

#[test]
fn small_chunks_match_whole_prefill() {
    let reference_model = model(AttentionPath::Naive);
    let mut engine =
        Engine::new(Box::new(CpuStepModel::new(model(AttentionPath::Naive))), &config(4096, 16, Some(7)), None).expect("engine");
    let p = prompt(42, 50);
    let (tx, mut rx) = unbounded_channel();
    engine.add_request(1, GenerateRequest { prompt: p.clone(), params: SamplingParams::greedy(10) }, tx).expect("add");
    engine.run_to_completion();
    assert_eq!(collect(&mut rx).0, reference(&reference_model, &p, 10));
}

#[test]
fn seeded_sampling_reproduces_across_batches() {
    let mut engine =
        Engine::new(Box::new(CpuStepModel::new(model(AttentionPath::Auto))), &config(8192, 64, None), None).expect("engine");
    let p = prompt(5, 12);
    let params = SamplingParams { temperature: 0.9, top_p: 0.95, seed: Some(1234), max_tokens: Some(16), ..Default::default() };
    // Alone.
    let (tx, mut rx) = unbounded_channel();
    engine.add_request(1, GenerateRequest { prompt: p.clone(), params: params.clone() }, tx).expect("add");
    engine.run_to_completion();
    let alone = collect(&mut rx).0;
    // In a batch with other sampled requests.
    let mut others = Vec::new();
    for i in 0..3 {
        let (tx, rx) = unbounded_channel();
        let q = SamplingParams { temperature: 1.0, max_tokens: Some(16), ..Default::default() };
        engine.add_request(10 + i, GenerateRequest { prompt: prompt(50 + i, 9), params: q }, tx).expect("add");
        others.push(rx);
    }
    let (tx, mut rx) = unbounded_channel();
    engine.add_request(2, GenerateRequest { prompt: p.clone(), params: params.clone() }, tx).expect("add");
    engine.run_to_completion();
    assert_eq!(collect(&mut rx).0, alone);
    // Another seed gives another sequence.
    let (tx, mut rx) = unbounded_channel();
    let other = SamplingParams { seed: Some(99), ..params.clone() };
    engine.add_request(3, GenerateRequest { prompt: p.clone(), params: other }, tx).expect("add");
    engine.run_to_completion();
    assert_ne!(collect(&mut rx).0, alone);
    // top_k = 1 at temperature 1 is greedy.
    let greedy = reference(&model(AttentionPath::Auto), &p, 16);
    let (tx, mut rx) = unbounded_channel();
    let topk1 = SamplingParams { temperature: 1.0, top_k: 1, max_tokens: Some(16), ..Default::default() };
    engine.add_request(4, GenerateRequest { prompt: p, params: topk1 }, tx).expect("add");
    engine.run_to_completion();
    assert_eq!(collect(&mut rx).0, greedy);
}

#[test]
fn stops_penalties_and_logprobs() {
    let mut engine =
        Engine::new(Box::new(CpuStepModel::new(model(AttentionPath::Auto))), &config(8192, 64, None), Some(tokenizer()))
            .expect("engine");
    let p = prompt(11, 10);
    let mut run = |id: u64, params: SamplingParams| {
        let (tx, mut rx) = unbounded_channel();
        engine.add_request(id, GenerateRequest { prompt: p.clone(), params }, tx).expect("add");
        engine.run_to_completion();
        collect(&mut rx)
    };
    let base = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(40) };
    let (ids, text, reason, _) = run(1, base.clone());
    assert_eq!(reason, FinishReason::Length);
    assert_eq!(ids.len(), 40);
    assert!(text.chars().count() > 6, "greedy text too short to test stop strings: {text:?}");

    // A stop string from the middle of the greedy text cuts the text right before it.
    let chars: Vec<char> = text.chars().collect();
    let start = chars.len() / 2;
    let stop: String = chars[start..start + 2].iter().collect();
    let cut = text.find(&stop).expect("stop string is in the text");
    let (_, t2, r2, _) = run(2, SamplingParams { stop: vec![stop.clone()], ..base.clone() });
    assert_eq!(r2, FinishReason::StopString(stop.clone()));
    assert_eq!(t2, text[..cut]);

    // A stop token id ends the output at its first occurrence (kept in the ids).
    let stop_id = ids[5];
    let first = ids.iter().position(|&t| t == stop_id).unwrap_or(5);
    let (ids3, _, r3, _) = run(3, SamplingParams { stop_token_ids: vec![stop_id], ..base.clone() });
    assert_eq!(r3, FinishReason::StopToken(stop_id));
    assert_eq!(ids3, ids[..=first].to_vec());

    // Penalties: a strong presence penalty never repeats a token within 40 (the greedy run does).
    let repeats = |v: &[u32]| v.len() - v.iter().collect::<std::collections::HashSet<_>>().len();
    let (ids4, _, _, _) = run(4, SamplingParams { presence_penalty: 2.0, frequency_penalty: 2.0, ..base.clone() });
    assert!(repeats(&ids4) < repeats(&ids) || repeats(&ids) == 0, "{ids4:?} vs {ids:?}");

    // max_tokens.
    let (ids5, _, r5, u5) = run(5, SamplingParams { max_tokens: Some(3), ..base.clone() });
    assert_eq!((ids5.len(), r5, u5.completion_tokens), (3, FinishReason::Length, 3));
}

#[test]
fn logprobs_of_greedy_tokens_are_the_top_ones() {
    let mut engine =
        Engine::new(Box::new(CpuStepModel::new(model(AttentionPath::Auto))), &config(8192, 64, None), None).expect("engine");
    let (tx, mut rx) = unbounded_channel();
    let params = SamplingParams { logprobs: true, top_logprobs: 3, ..SamplingParams::greedy(5) };
    engine.add_request(1, GenerateRequest { prompt: prompt(3, 8), params }, tx).expect("add");
    engine.run_to_completion();
    let mut n = 0;
    while let Ok(EngineEvent::Token(t)) = rx.try_recv() {
        let lp = t.logprobs.expect("logprobs");
        assert_eq!(lp.top.len(), 3);
        assert_eq!(lp.top[0].token_id, t.token_id);
        assert!((lp.top[0].logprob - lp.logprob).abs() < 1e-6);
        assert!(lp.logprob <= 0.0 && lp.top[1].logprob <= lp.top[0].logprob);
        n += 1;
    }
    assert_eq!(n, 5);
}

#[test]
fn cancelled_requests_free_their_cache() {
    let mut engine =
        Engine::new(Box::new(CpuStepModel::new(model(AttentionPath::Auto))), &config(2048, 16, None), None).expect("engine");
    let (tx, rx) = unbounded_channel();
    let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(100) };
    engine.add_request(1, GenerateRequest { prompt: prompt(9, 40), params }, tx).expect("add");
    engine.step();
    engine.step();
    assert!(engine.pages_in_use() >= 3);
    drop(rx);
    engine.step();
    assert!(!engine.has_work());
    assert_eq!(engine.pages_in_use(), 0);
    assert_eq!(engine.metrics().requests_aborted.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn bad_requests_are_refused() {
    let engine = Engine::new(Box::new(CpuStepModel::new(model(AttentionPath::Auto))), &config(2048, 16, None), None)
        .expect("engine");
    let info = engine.info();
    let ctx = info.context_length;
    let req = |prompt: Vec<u32>, params: SamplingParams| GenerateRequest { prompt, params };
    assert!(matches!(info.check(&req(vec![], SamplingParams::default())), Err(SubmitError::InvalidParam { .. })));
    assert!(matches!(info.check(&req(vec![0; ctx], SamplingParams::default())), Err(SubmitError::ContextLength(_))));
    assert!(matches!(
        info.check(&req(vec![0; 10], SamplingParams::greedy(ctx))),
        Err(SubmitError::ContextLength(_))
    ));
    assert!(matches!(
        info.check(&req(vec![100_000], SamplingParams::default())),
        Err(SubmitError::InvalidParam { param: "prompt", .. })
    ));
    let bad_t = SamplingParams { temperature: -1.0, ..Default::default() };
    assert!(matches!(info.check(&req(vec![0, 5], bad_t)), Err(SubmitError::InvalidParam { param: "temperature", .. })));
    assert_eq!(info.check(&req(vec![0, 5], SamplingParams::default())), Ok(ctx - 2));
}
