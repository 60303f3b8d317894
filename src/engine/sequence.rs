//! A request inside the engine: its tokens (prompt then output), its block table, how much of it
//! is cached, its sampler and text state, and where its events go.

use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::engine::block_manager::PageId;
use crate::engine::detok::{IncrementalDecoder, StopMatcher};
use crate::engine::request::{EngineEvent, RequestId, Usage};
use crate::engine::sampling::Sampler;

pub struct Sequence {
    pub id: RequestId,
    /// Prompt then generated tokens. The last one is not cached yet while decoding.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Generated tokens allowed, resolved against the context length.
    pub max_new_tokens: usize,
    /// The attention rank whose pool holds its pages (always 0 without DP attention); chosen at
    /// each admission, so a preempted request may come back on another rank.
    pub rank: usize,
    /// Pages of its rank's pool.
    pub block_table: Vec<PageId>,
    /// Positions whose latent rows are in the cache.
    pub cached_len: usize,
    /// Whole pages already recorded in the prefix cache.
    pub radix_pages: usize,
    pub sampler: Sampler,
    pub decoder: Option<IncrementalDecoder>,
    pub stop: StopMatcher,
    pub tx: UnboundedSender<EngineEvent>,
    pub arrival: Instant,
    pub last_token_at: Option<Instant>,
    pub usage: Usage,
    /// Whether it was admitted before (the prefix-cache hit counted for `usage.cached_tokens`).
    pub admitted_before: bool,
}

impl Sequence {
    pub fn output_len(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens the model still has to compute before the next one can be sampled.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.cached_len
    }

    /// Whether its client is gone (the receiving end of its stream was dropped).
    pub fn is_cancelled(&self) -> bool {
        self.tx.is_closed()
    }
}
