//! The engine proper, single-threaded and synchronous: requests in, one batched model step at a
//! time, events out. [`crate::engine::handle::EngineHandle`] runs it on its own thread; tests can
//! drive it step by step.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::engine::config::{EngineConfig, ResolvedConfig};
use crate::engine::detok::{Detokenize, IncrementalDecoder, StopMatcher};
use crate::engine::metrics::EngineMetrics;
use crate::engine::model::{ModelSpec, SeqStep, StepModel};
use crate::engine::request::{EngineEvent, FinishReason, GenerateRequest, RequestId, SampledLogprobs, TokenOutput, Usage};
use crate::engine::sampling::Sampler;
use crate::engine::scheduler::{Scheduler, SchedulerConfig};
use crate::engine::sequence::Sequence;
use crate::error::{Error, Result};

/// Why a request was refused before it reached the queue.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// A parameter is out of range or malformed (HTTP 400).
    #[error("{message}")]
    InvalidParam { param: &'static str, message: String },
    /// The prompt (plus `max_tokens`) does not fit the context (HTTP 400).
    #[error("{0}")]
    ContextLength(String),
    /// Too many requests waiting (HTTP 503).
    #[error("the engine is overloaded: {0} requests are waiting; retry later")]
    Overloaded(usize),
    /// The server is draining for shutdown (HTTP 503).
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The engine thread is gone (HTTP 503).
    #[error("the engine stopped: {0}")]
    EngineGone(String),
}

/// Static facts about a running engine.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineInfo {
    pub context_length: usize,
    pub vocab_size: usize,
    pub page_size: usize,
    /// Pages of every attention rank's pool (`dp_ranks` pools of `num_pages / dp_ranks` pages).
    pub num_pages: usize,
    /// Positions of every pool: a sequence lives in one, so the context is at most one pool's.
    pub max_total_tokens: usize,
    pub max_running_requests: usize,
    pub step_token_budget: usize,
    pub max_queued_requests: usize,
    pub prefix_caching: bool,
    /// Bytes of every attention rank's pool (one GPU's pool without DP attention).
    pub kv_bytes: usize,
    /// Attention ranks with a pool, an allocator and a prefix cache each (DP attention; else 1).
    pub dp_ranks: usize,
    pub device: String,
    pub cuda_graph_max_bs: usize,
    pub eos_token_ids: Vec<u32>,
}

impl EngineInfo {
    /// Checks a request against the model and the context; returns the number of tokens it may
    /// generate.
    pub fn check(&self, req: &GenerateRequest) -> std::result::Result<usize, SubmitError> {
        if req.prompt.is_empty() {
            return Err(SubmitError::InvalidParam { param: "prompt", message: "the prompt is empty".into() });
        }
        if let Some(&t) = req.prompt.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(SubmitError::InvalidParam {
                param: "prompt",
                message: format!("token id {t} is out of the vocabulary (size {})", self.vocab_size),
            });
        }
        req.params
            .validate()
            .map_err(|e| SubmitError::InvalidParam { param: e.param, message: e.message })?;
        let (p, ctx) = (req.prompt.len(), self.context_length);
        if p >= ctx {
            return Err(SubmitError::ContextLength(format!(
                "This model's maximum context length is {ctx} tokens. However, the prompt has {p} tokens, \
                 which leaves no room for a generated token. Please shorten the prompt."
            )));
        }
        match req.params.max_tokens {
            Some(m) if p + m > ctx => Err(SubmitError::ContextLength(format!(
                "This model's maximum context length is {ctx} tokens. However, you requested {} tokens \
                 ({p} in the prompt, {m} for the completion). Please reduce the prompt or max_tokens.",
                p + m
            ))),
            Some(m) => Ok(m),
            None => Ok(ctx - p),
        }
    }
}

pub struct Engine {
    model: Box<dyn StepModel>,
    spec: ModelSpec,
    cfg: ResolvedConfig,
    info: EngineInfo,
    sched: Scheduler,
    detok: Option<Arc<dyn Detokenize>>,
    metrics: Arc<EngineMetrics>,
    /// When the KV-use gauges were last computed.
    gauges_at: Instant,
}

/// Least time between two computations of the KV-use gauges while the engine is busy.
const GAUGE_PERIOD: std::time::Duration = std::time::Duration::from_millis(50);

/// What one step did (for tests and logs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepStats {
    pub sequences: usize,
    pub tokens: usize,
    pub sampled: usize,
    pub finished: usize,
}

impl Engine {
    pub fn new(mut model: Box<dyn StepModel>, cfg: &EngineConfig, detok: Option<Arc<dyn Detokenize>>) -> Result<Engine> {
        let spec = model.spec();
        let rc = cfg.resolve(&spec)?;
        let ranks = model.dp_ranks();
        if ranks == 0 {
            return Err(Error::InvalidArgument(format!("{}: a model with no attention rank", model.device())));
        }
        // Under DP attention every rank's pool has `num_pages` pages (sized for one GPU).
        model.allocate_cache(rc.num_pages, rc.page_size)?;
        let info = EngineInfo {
            context_length: rc.context_length,
            vocab_size: spec.vocab_size,
            page_size: rc.page_size,
            num_pages: rc.num_pages * ranks,
            max_total_tokens: rc.max_total_tokens() * ranks,
            max_running_requests: rc.max_running_requests,
            step_token_budget: rc.step_token_budget,
            max_queued_requests: rc.max_queued_requests,
            prefix_caching: rc.enable_prefix_caching,
            kv_bytes: rc.kv_bytes * ranks,
            dp_ranks: ranks,
            device: model.device(),
            cuda_graph_max_bs: model.cuda_graph_max_bs(),
            eos_token_ids: spec.eos_token_ids.clone(),
        };
        let sched = Scheduler::new(
            SchedulerConfig {
                page_size: rc.page_size,
                max_running: rc.max_running_requests,
                step_token_budget: rc.step_token_budget,
                ranks,
            },
            rc.num_pages,
            rc.enable_prefix_caching,
        );
        let metrics = Arc::new(EngineMetrics::with_dp_ranks(ranks));
        metrics.kv_pages_total.store(rc.num_pages * ranks, Relaxed);
        metrics.page_size.store(rc.page_size, Relaxed);
        Ok(Engine { model, spec, cfg: rc, info, sched, detok, metrics, gauges_at: Instant::now() })
    }

    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    pub fn metrics(&self) -> Arc<EngineMetrics> {
        self.metrics.clone()
    }

    pub fn has_work(&self) -> bool {
        !self.sched.is_idle()
    }

    pub fn num_running(&self) -> usize {
        self.sched.running.len()
    }

    pub fn num_waiting(&self) -> usize {
        self.sched.waiting.len()
    }

    /// Pages held by requests on every rank (not counting those only the prefix cache holds).
    pub fn pages_in_use(&self) -> usize {
        self.sched.num_used() - self.sched.cached_only_pages()
    }

    pub fn free_pages(&self) -> usize {
        self.sched.num_free()
    }

    pub fn preemptions(&self) -> u64 {
        self.sched.preemptions
    }

    /// Queues a request; its events go to `tx`.
    pub fn add_request(
        &mut self,
        id: RequestId,
        req: GenerateRequest,
        tx: UnboundedSender<EngineEvent>,
    ) -> std::result::Result<(), SubmitError> {
        let max_new = self.info.check(&req)?;
        let seed = splitmix(self.cfg.random_seed ^ id.wrapping_mul(0x9e3779b97f4a7c15));
        let decoder = self
            .detok
            .as_deref()
            .map(|d| IncrementalDecoder::new(&req.prompt, req.params.skip_special_tokens, d));
        let stop = StopMatcher::new(&req.params.stop);
        let sampler = Sampler::new(req.params, &req.prompt, seed);
        self.metrics.prompt_tokens.fetch_add(req.prompt.len() as u64, Relaxed);
        let seq = Sequence {
            id,
            prompt_len: req.prompt.len(),
            tokens: req.prompt,
            max_new_tokens: max_new,
            rank: 0,
            block_table: Vec::new(),
            cached_len: 0,
            radix_pages: 0,
            sampler,
            decoder,
            stop,
            tx,
            arrival: Instant::now(),
            last_token_at: None,
            usage: Usage::default(),
            admitted_before: false,
        };
        self.sched.waiting.push_back(seq);
        self.update_gauges();
        Ok(())
    }

    /// Cancels a request wherever it is; it gets a final `Abort` event if still listening.
    pub fn abort(&mut self, id: RequestId) {
        if let Some(i) = self.sched.waiting.iter().position(|s| s.id == id) {
            if let Some(mut s) = self.sched.waiting.remove(i) {
                self.end(&mut s, FinishReason::Abort, String::new());
            }
        } else if let Some(i) = self.sched.running.iter().position(|s| s.id == id) {
            let mut s = self.sched.running.remove(i);
            self.sched.free_sequence(&mut s);
            self.end(&mut s, FinishReason::Abort, String::new());
        }
        self.update_gauges();
    }

    /// Cancels every request (shutdown without draining).
    pub fn abort_all(&mut self) {
        let ids: Vec<RequestId> =
            self.sched.running.iter().map(|s| s.id).chain(self.sched.waiting.iter().map(|s| s.id)).collect();
        for id in ids {
            self.abort(id);
        }
    }

    /// Drops requests whose clients are gone, freeing their cache.
    fn reap_cancelled(&mut self) {
        let gone: Vec<RequestId> = self
            .sched
            .running
            .iter()
            .chain(self.sched.waiting.iter())
            .filter(|s| s.is_cancelled())
            .map(|s| s.id)
            .collect();
        for id in gone {
            tracing::debug!("request {id}: client gone, cancelling");
            self.abort(id);
        }
    }

    /// Runs one step: schedule, one model call, sample, emit.
    pub fn step(&mut self) -> StepStats {
        let t0 = Instant::now();
        self.reap_cancelled();
        let plan = self.sched.schedule();
        let mut stats = StepStats { sequences: plan.len(), ..Default::default() };
        if plan.is_empty() {
            self.update_gauges();
            return stats;
        }
        let batch: Vec<SeqStep<'_>> = plan
            .iter()
            .map(|p| {
                let s = &self.sched.running[p.index];
                SeqStep {
                    tokens: &s.tokens[s.cached_len..s.cached_len + p.n_tokens],
                    start: s.cached_len,
                    block_table: &s.block_table,
                    want_logits: p.samples,
                    rank: s.rank,
                    greedy: s.sampler.takes_argmax(),
                }
            })
            .collect();
        stats.tokens = plan.iter().map(|p| p.n_tokens).sum();
        let tm0 = Instant::now();
        let model = &mut self.model;
        let result = catch_unwind(AssertUnwindSafe(|| model.step(&batch)));
        let model_time = tm0.elapsed();
        drop(batch);
        let result = match result {
            Ok(Ok(r)) if r.len() == plan.len() => Ok(r),
            Ok(Ok(r)) => Err(format!("the model returned {} results for {} sequences", r.len(), plan.len())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(panic) => Err(panic_message(&panic)),
        };
        let outputs = match result {
            Ok(l) => l,
            Err(msg) => {
                tracing::error!("model step failed: {msg}");
                self.fail_planned(&plan, &msg);
                return stats;
            }
        };
        let now = Instant::now();
        let mut finished: Vec<(usize, Outcome)> = Vec::new();
        for (p, out) in plan.iter().zip(outputs) {
            let mut seq_done = None;
            {
                let s = &mut self.sched.running[p.index];
                s.cached_len += p.n_tokens;
                if p.samples {
                    match out.and_then(|o| s.sampler.pick(&o, self.spec.vocab_size)) {
                        Some(picked) => {
                            stats.sampled += 1;
                            seq_done = emit_token(s, picked, &self.info, self.detok.as_deref(), &self.metrics, now);
                        }
                        None => seq_done = Some(Outcome::Fail("the model returned no logits (or token) for this request".to_string())),
                    }
                }
            }
            self.sched.cache_prefix_running(p.index);
            if let Some(outcome) = seq_done {
                finished.push((p.index, outcome));
            }
        }
        stats.finished = finished.len();
        finished.sort_by_key(|f| std::cmp::Reverse(f.0));
        for (i, outcome) in finished {
            let mut s = self.sched.running.remove(i);
            self.sched.free_sequence(&mut s);
            match outcome {
                Outcome::Finish(reason, text) => self.end(&mut s, reason, text),
                Outcome::Fail(msg) => {
                    let _ = s.tx.send(EngineEvent::Failed(msg));
                    self.metrics.requests_failed.fetch_add(1, Relaxed);
                }
            }
        }
        self.metrics.steps.fetch_add(1, Relaxed);
        self.metrics.record_step_tokens(now, stats.sampled);
        self.update_gauges();
        self.metrics.observe_host(t0.elapsed().saturating_sub(model_time));
        stats
    }

    /// Steps until no request is left (tests, draining).
    pub fn run_to_completion(&mut self) {
        while self.has_work() {
            self.step();
        }
    }

    fn fail_planned(&mut self, plan: &[crate::engine::scheduler::Planned], msg: &str) {
        let mut idx: Vec<usize> = plan.iter().map(|p| p.index).collect();
        idx.sort_unstable_by(|a, b| b.cmp(a));
        for i in idx {
            let mut s = self.sched.running.remove(i);
            self.sched.free_sequence(&mut s);
            let _ = s.tx.send(EngineEvent::Failed(format!("model step failed: {msg}")));
            self.metrics.requests_failed.fetch_add(1, Relaxed);
        }
        self.update_gauges();
    }

    /// Sends the final event of a sequence (its pages are already freed).
    fn end(&mut self, s: &mut Sequence, reason: FinishReason, text: String) {
        s.usage.prompt_tokens = s.prompt_len;
        s.usage.completion_tokens = s.output_len();
        if reason == FinishReason::Abort {
            self.metrics.requests_aborted.fetch_add(1, Relaxed);
        } else {
            self.metrics.requests_finished.fetch_add(1, Relaxed);
            self.metrics.observe_e2e(s.arrival.elapsed());
        }
        let _ = s.tx.send(EngineEvent::Finished { reason, text, usage: s.usage.clone() });
    }

    fn update_gauges(&mut self) {
        let m = &self.metrics;
        m.num_running.store(self.sched.running.len(), Relaxed);
        m.num_waiting.store(self.sched.waiting.len(), Relaxed);
        // Splitting used pages into request-held and cache-only walks the prefix tree: at most
        // every GAUGE_PERIOD while busy, always when idle (so an idle engine reports exactly).
        let now = Instant::now();
        if !self.has_work() || now.duration_since(self.gauges_at) >= GAUGE_PERIOD {
            self.gauges_at = now;
            let (mut used, mut cached) = (0, 0);
            for (r, (pages, g)) in self.sched.ranks.iter().zip(&m.ranks).enumerate() {
                let c = pages.cached_only_pages();
                let u = pages.alloc.num_used() - c;
                g.pages_cached.store(c, Relaxed);
                g.pages_used.store(u, Relaxed);
                g.running.store(self.sched.running_on(r), Relaxed);
                (used, cached) = (used + u, cached + c);
            }
            m.kv_pages_cached.store(cached, Relaxed);
            m.kv_pages_used.store(used, Relaxed);
        }
        m.preemptions.store(self.sched.preemptions, Relaxed);
        for (pages, g) in self.sched.ranks.iter().zip(&m.ranks) {
            g.preemptions.store(pages.preemptions, Relaxed);
        }
        m.prefix_query_tokens.store(self.sched.prefix_query_tokens, Relaxed);
        m.prefix_hit_tokens.store(self.sched.prefix_hit_tokens, Relaxed);
    }
}

/// How a request ends after a step.
enum Outcome {
    /// Done (or its client is gone: `Abort`), with the text held back until now.
    Finish(FinishReason, String),
    /// The model failed it.
    Fail(String),
}

/// Appends the token picked for `s`, updates its text, and sends the token event. Returns the
/// outcome when the request is done.
fn emit_token(
    s: &mut Sequence,
    (token, logprobs): (u32, Option<SampledLogprobs>),
    info: &EngineInfo,
    detok: Option<&dyn Detokenize>,
    metrics: &EngineMetrics,
    now: Instant,
) -> Option<Outcome> {
    s.tokens.push(token);
    metrics.generation_tokens.fetch_add(1, Relaxed);
    match s.last_token_at {
        None => metrics.observe_ttft(now.duration_since(s.arrival)),
        Some(t) => metrics.observe_itl(now.duration_since(t)),
    }
    s.last_token_at = Some(now);
    let params = s.sampler.params();
    let is_eos = !params.ignore_eos && info.eos_token_ids.contains(&token);
    let is_stop_id = params.stop_token_ids.contains(&token);
    let mut reason = if is_eos || is_stop_id {
        Some(FinishReason::StopToken(token))
    } else if s.output_len() >= s.max_new_tokens || s.tokens.len() >= info.context_length {
        Some(FinishReason::Length)
    } else {
        None
    };
    // Text: a stop token's own text is left out.
    let mut text = String::new();
    if let (Some(dec), Some(d)) = (s.decoder.as_mut(), detok) {
        let delta = dec.push(token, d).unwrap_or_default();
        if !(is_eos || is_stop_id) {
            let (out, matched) = s.stop.push(&delta);
            text = out;
            if let Some(m) = matched {
                reason = Some(FinishReason::StopString(m));
            }
        }
    }
    let ok = s.tx.send(EngineEvent::Token(TokenOutput { token_id: token, text, logprobs })).is_ok();
    if !ok {
        return Some(Outcome::Finish(FinishReason::Abort, String::new()));
    }
    let reason = reason?;
    // Release what was held back, unless a stop string cut it.
    let mut tail = String::new();
    if !matches!(reason, FinishReason::StopString(_)) {
        if let (Some(dec), Some(d)) = (s.decoder.as_mut(), detok) {
            let rest = if is_eos || is_stop_id { String::new() } else { dec.flush(d).unwrap_or_default() };
            let (out, matched) = s.stop.push(&rest);
            tail = out;
            match matched {
                Some(m) => return Some(Outcome::Finish(FinishReason::StopString(m), tail)),
                None => tail.push_str(&s.stop.finish()),
            }
        }
    }
    Some(Outcome::Finish(reason, tail))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        format!("panic: {s}")
    } else if let Some(s) = p.downcast_ref::<String>() {
        format!("panic: {s}")
    } else {
        "panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::sync::mpsc::unbounded_channel;

    use super::*;
    use crate::engine::config::KvCacheSize;
    use crate::engine::model::StepOutput;
    use crate::engine::request::SamplingParams;

    /// Per step, per sequence: (start, n_tokens, want_logits).
    type Log = Arc<Mutex<Vec<Vec<(usize, usize, bool)>>>>;

    /// Records each step's sequences; always predicts token 7: as the logits' argmax, or as the
    /// token itself for greedy sequences (what a GPU step model with device argmax returns),
    /// whose flags it records in `greedy`.
    struct Recorder {
        steps: Log,
        greedy: Arc<Mutex<Vec<bool>>>,
    }

    impl StepModel for Recorder {
        fn spec(&self) -> ModelSpec {
            ModelSpec { num_layers: 1, latent_width: 4, position_bytes: 16, vocab_size: 16, max_positions: 512, eos_token_ids: vec![1], memory_bytes: None }
        }
        fn allocate_cache(&mut self, _: usize, _: usize) -> Result<()> {
            Ok(())
        }
        fn step(&mut self, batch: &[SeqStep<'_>]) -> Result<Vec<Option<StepOutput>>> {
            let mut rec = Vec::new();
            let mut out = Vec::new();
            for s in batch {
                assert!(s.block_table.len() * 4 >= s.start + s.tokens.len(), "block table too short");
                rec.push((s.start, s.tokens.len(), s.want_logits));
                let mut l = vec![0f32; 16];
                l[7] = 1.0;
                if s.want_logits {
                    self.greedy.lock().unwrap_or_else(|e| e.into_inner()).push(s.greedy);
                }
                out.push(s.want_logits.then_some(if s.greedy { StepOutput::Token(7) } else { StepOutput::Logits(l) }));
            }
            self.steps.lock().unwrap_or_else(|e| e.into_inner()).push(rec);
            Ok(out)
        }
        fn device(&self) -> String {
            "mock".into()
        }
    }

    fn engine(cfg: EngineConfig) -> (Engine, Log) {
        let (e, steps, _) = engine_and_greedy_flags(cfg);
        (e, steps)
    }

    fn engine_and_greedy_flags(cfg: EngineConfig) -> (Engine, Log, Arc<Mutex<Vec<bool>>>) {
        let steps = Arc::new(Mutex::new(Vec::new()));
        let greedy = Arc::new(Mutex::new(Vec::new()));
        let model = Recorder { steps: steps.clone(), greedy: greedy.clone() };
        let e = Engine::new(Box::new(model), &cfg, None).unwrap_or_else(|e| panic!("{e}"));
        (e, steps, greedy)
    }

    /// A greedy request and one that wants log-probabilities in the same steps: only the greedy
    /// one is flagged for a device argmax (and gets its token that way); the other samples from
    /// its logits row and reports log-probabilities.
    #[test]
    fn greedy_and_logprob_requests_share_steps() {
        let (mut e, _, greedy) = engine_and_greedy_flags(cfg(64, 8, 1024));
        let mut rxs = Vec::new();
        let plain = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(3) };
        let with_logprobs = SamplingParams { logprobs: true, top_logprobs: 2, ..plain.clone() };
        for (id, params) in [(1, plain), (2, with_logprobs)] {
            let (tx, rx) = unbounded_channel();
            e.add_request(id, GenerateRequest { prompt: vec![0, 2, 3], params }, tx).unwrap_or(());
            rxs.push(rx);
        }
        e.run_to_completion();
        assert_eq!(*greedy.lock().unwrap_or_else(|e| e.into_inner()), [true, false].repeat(3));
        for (i, rx) in rxs.iter_mut().enumerate() {
            let mut n = 0;
            while let Ok(ev) = rx.try_recv() {
                match ev {
                    EngineEvent::Token(t) => {
                        assert_eq!((t.token_id, t.logprobs.is_some()), (7, i == 1), "request {i}");
                        n += 1;
                    }
                    EngineEvent::Failed(m) => panic!("{m}"),
                    EngineEvent::Finished { .. } => {}
                }
            }
            assert_eq!(n, 3, "request {i}");
        }
    }

    fn cfg(chunk: usize, max_running: usize, tokens: usize) -> EngineConfig {
        EngineConfig {
            page_size: 4,
            max_running_requests: max_running,
            chunked_prefill_size: Some(chunk),
            kv_cache: KvCacheSize::Tokens(tokens),
            ..Default::default()
        }
    }

    #[test]
    fn decodes_and_prefill_chunks_share_a_step() {
        let (mut e, steps) = engine(cfg(8, 8, 1024));
        let (tx, _rx1) = unbounded_channel();
        e.add_request(1, GenerateRequest { prompt: vec![0; 5], params: SamplingParams::greedy(10) }, tx).unwrap_or(());
        e.step(); // prefill of request 1 (5 tokens)
        let (tx, _rx2) = unbounded_channel();
        // A different first page: no prefix-cache hit.
        e.add_request(2, GenerateRequest { prompt: vec![3; 20], params: SamplingParams::greedy(10) }, tx).unwrap_or(());
        e.step(); // decode of 1 + first 7-token chunk of 2
        e.step(); // decode of 1 + next 7-token chunk of 2
        e.step(); // decode of 1 + last 6 tokens of 2 (samples)
        e.step(); // two decodes
        let s = steps.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(s[0], vec![(0, 5, true)]);
        assert_eq!(s[1], vec![(5, 1, true), (0, 7, false)]);
        assert_eq!(s[2], vec![(6, 1, true), (7, 7, false)]);
        assert_eq!(s[3], vec![(7, 1, true), (14, 6, true)]);
        assert_eq!(s[4], vec![(8, 1, true), (20, 1, true)]);
        // Every step stays within the budget of 8 tokens.
        assert!(s.iter().all(|st| st.iter().map(|x| x.1).sum::<usize>() <= 8));
    }

    #[test]
    fn max_running_requests_caps_the_batch() {
        let (mut e, steps) = engine(cfg(64, 2, 1024));
        let mut rxs = Vec::new();
        for id in 0..5 {
            let (tx, rx) = unbounded_channel();
            e.add_request(id, GenerateRequest { prompt: vec![0; 3], params: SamplingParams::greedy(4) }, tx).unwrap_or(());
            rxs.push(rx);
        }
        e.run_to_completion();
        let s = steps.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert!(s.iter().all(|st| st.len() <= 2));
        assert_eq!(e.metrics().requests_finished.load(Relaxed), 5);
        assert_eq!(e.pages_in_use(), 0);
    }

    #[test]
    fn preempted_request_resumes_with_its_tokens() {
        // 4 pages of 4 positions: two requests of 3 + 9 positions cannot both hold 3 pages.
        // Without prefix caching the preempted request recomputes everything it had.
        let (mut e, steps) = engine(EngineConfig { enable_prefix_caching: false, ..cfg(64, 8, 16) });
        let mut rxs = Vec::new();
        for id in 0..2 {
            let (tx, rx) = unbounded_channel();
            let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(9) };
            e.add_request(id, GenerateRequest { prompt: vec![0, 2, 3], params }, tx).unwrap_or(());
            rxs.push(rx);
        }
        e.run_to_completion();
        assert!(e.preemptions() > 0);
        for rx in &mut rxs {
            let mut n = 0;
            let mut finished = false;
            while let Ok(ev) = rx.try_recv() {
                match ev {
                    EngineEvent::Token(t) => {
                        assert_eq!(t.token_id, 7);
                        n += 1;
                    }
                    EngineEvent::Finished { reason, usage, .. } => {
                        assert_eq!(reason, FinishReason::Length);
                        assert_eq!(usage.completion_tokens, 9);
                        finished = true;
                    }
                    EngineEvent::Failed(m) => panic!("{m}"),
                }
            }
            assert!(finished);
            assert_eq!(n, 9);
        }
        // The recompute after preemption covered prompt + generated tokens in one chunk.
        let s = steps.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert!(s.iter().flatten().any(|&(start, n, _)| n > 3 && start + n > 3), "{s:?}");
    }
}
