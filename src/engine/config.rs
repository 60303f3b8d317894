//! Engine settings (the scheduler's part of SGLang's launch flags) and how the KV pool is sized.

use crate::model::gpu::GpuOptions;
use crate::engine::model::ModelSpec;
use crate::error::{Error, Result};

/// How large the paged latent pool is.
#[derive(Clone, Debug, PartialEq)]
pub enum KvCacheSize {
    /// Room for this many token positions (`--max-total-tokens`).
    Tokens(usize),
    /// This many bytes (`--cpu-kv-cache-mb` on the CPU).
    Bytes(usize),
    /// `mem_fraction` of the memory left after the weights are loaded (the host's `MemAvailable`
    /// on the CPU, free device memory on a GPU: [`ModelSpec::memory_bytes`]), but never more than
    /// what `max_running_requests` requests of the full context length can use
    /// (`--mem-fraction-static`).
    MemFraction(f32),
}

#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// Positions per page of the latent cache (`--page-size`, default 64).
    pub page_size: usize,
    /// Requests decoding at once, at most (`--max-running-requests`).
    pub max_running_requests: usize,
    /// Tokens one step computes at most, decode tokens included; longer prompts are prefilled in
    /// chunks (`--chunked-prefill-size`; `None` = no limit).
    pub chunked_prefill_size: Option<usize>,
    pub kv_cache: KvCacheSize,
    /// Longest prompt + output (`--context-length`; default: the model's `max_position_embeddings`).
    pub context_length: Option<usize>,
    /// Requests waiting for admission beyond which new ones are refused with 503.
    pub max_queued_requests: usize,
    /// Share cached prefixes across requests (off with `--disable-radix-cache`).
    pub enable_prefix_caching: bool,
    /// Seed of the random streams of requests that bring none (`--random-seed`).
    pub random_seed: u64,
    /// Largest decode batch a GPU step model replays as a captured graph (`--cuda-graph-max-bs`;
    /// 0: none). Read by the code that builds the step model; the CPU ignores it.
    pub cuda_graph_max_bs: usize,
    /// How a GPU step model computes (`--kv-cache-dtype`: bf16 with the fast kernels, or f32 for
    /// the reference path). The CPU ignores it.
    pub gpu_options: GpuOptions,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            page_size: 64,
            max_running_requests: 128,
            chunked_prefill_size: Some(8192),
            kv_cache: KvCacheSize::MemFraction(0.5),
            context_length: None,
            max_queued_requests: 4096,
            enable_prefix_caching: true,
            random_seed: 0,
            cuda_graph_max_bs: 0,
            gpu_options: GpuOptions::reference(),
        }
    }
}

/// The sizes the engine runs with, once the model is known.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedConfig {
    pub page_size: usize,
    pub num_pages: usize,
    pub context_length: usize,
    pub max_running_requests: usize,
    pub step_token_budget: usize,
    pub max_queued_requests: usize,
    pub enable_prefix_caching: bool,
    pub random_seed: u64,
    pub kv_bytes: usize,
}

impl ResolvedConfig {
    /// Token positions the pool holds.
    pub fn max_total_tokens(&self) -> usize {
        self.num_pages * self.page_size
    }
}

impl EngineConfig {
    pub fn resolve(&self, spec: &ModelSpec) -> Result<ResolvedConfig> {
        if self.page_size == 0 {
            return Err(Error::InvalidArgument("--page-size must be at least 1".into()));
        }
        if self.max_running_requests == 0 {
            return Err(Error::InvalidArgument("--max-running-requests must be at least 1".into()));
        }
        let mut context_length = match self.context_length {
            Some(c) if c > spec.max_positions => {
                return Err(Error::InvalidArgument(format!(
                    "--context-length {c} exceeds the model's max_position_embeddings {}",
                    spec.max_positions
                )))
            }
            Some(0) => return Err(Error::InvalidArgument("--context-length must be at least 1".into())),
            Some(c) => c,
            None => spec.max_positions,
        };
        let page_bytes = spec.bytes_per_page(self.page_size).max(1);
        let num_pages = match &self.kv_cache {
            KvCacheSize::Tokens(t) => t.div_ceil(self.page_size),
            KvCacheSize::Bytes(b) => b / page_bytes,
            KvCacheSize::MemFraction(f) => {
                if !(*f > 0.0 && *f <= 1.0) {
                    return Err(Error::InvalidArgument(format!("--mem-fraction-static must be in (0, 1], got {f}")));
                }
                let avail = spec.memory_bytes.or_else(available_memory_bytes).unwrap_or(4 << 30);
                let budget_pages = (avail as f64 * *f as f64) as usize / page_bytes;
                let useful = (self.max_running_requests * context_length).div_ceil(self.page_size);
                budget_pages.min(useful)
            }
        };
        if num_pages == 0 {
            return Err(Error::InvalidArgument(format!(
                "the KV cache budget holds no page of {} positions ({page_bytes} bytes each)",
                self.page_size
            )));
        }
        let capacity = num_pages * self.page_size;
        if capacity < context_length {
            tracing::warn!(
                "the KV cache holds {capacity} positions, less than the context length {context_length}: \
                 serving prompts + outputs of at most {capacity} tokens"
            );
            context_length = capacity;
        }
        let step_token_budget = match self.chunked_prefill_size {
            Some(0) => return Err(Error::InvalidArgument("--chunked-prefill-size must be at least 1 (or -1 for no chunking)".into())),
            Some(c) => c,
            None => usize::MAX,
        };
        Ok(ResolvedConfig {
            page_size: self.page_size,
            num_pages,
            context_length,
            max_running_requests: self.max_running_requests,
            step_token_budget,
            max_queued_requests: self.max_queued_requests,
            enable_prefix_caching: self.enable_prefix_caching,
            random_seed: self.random_seed,
            kv_bytes: num_pages * page_bytes,
        })
    }
}

/// `MemAvailable` from /proc/meminfo, in bytes (Linux); `None` elsewhere.
pub fn available_memory_bytes() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
