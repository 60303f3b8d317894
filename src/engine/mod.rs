//! The serving engine: continuous batching over a paged latent KV cache with prefix caching,
//! preemption by recompute, and per-request sampling. One module per concern:
//!
//! - [`request`]: what clients submit ([`GenerateRequest`], [`SamplingParams`]) and receive
//!   ([`EngineEvent`]);
//! - [`config`]: the scheduler's launch settings and how the KV pool is sized;
//! - [`model`]: the [`StepModel`] trait a backend implements (the CPU one: [`CpuStepModel`]);
//! - [`gpu`]: the GPU one ([`GpuStepModel`]): batched forwards over a device page pool;
//! - [`kv_cache`]: the host paged latent pool and a sequence's view of it;
//! - [`block_manager`]: page allocation and reference counts;
//! - [`radix`]: the prefix cache;
//! - [`rank_pages`]: one attention rank's allocator and prefix cache (one per rank under DP
//!   attention), [`placement`]: which rank a request goes to;
//! - [`scheduler`]: admission, chunked prefill, preemption;
//! - [`sampling`]: the CPU sampler; [`detok`]: incremental text and stop strings;
//! - [`core`]: the engine loop body; [`handle`]: the engine on its own thread;
//! - [`metrics`]: counters and histograms for `/metrics`;
//! - [`multinode`]: node 0's steps replayed on the other nodes (`--nnodes`).

pub mod block_manager;
pub mod config;
pub mod core;
pub mod detok;
pub mod gpu;
pub mod handle;
pub mod kv_cache;
pub mod metrics;
pub mod model;
pub mod multinode;
pub mod placement;
pub mod radix;
pub mod rank_pages;
pub mod request;
pub mod sampling;
pub mod scheduler;
pub mod sequence;
#[cfg(any(feature = "cuda", feature = "hip"))]
pub mod tp;

pub use config::{EngineConfig, KvCacheSize};
pub use gpu::GpuStepModel;
#[cfg(any(feature = "cuda", feature = "hip"))]
pub use tp::TpStepModel;
pub use core::{Engine, EngineInfo, StepStats, SubmitError};
pub use handle::{EngineHandle, RequestStream};
pub use model::{CpuStepModel, ModelSpec, SeqStep, StepModel, StepOutput};
pub use request::{EngineEvent, FinishReason, GenerateRequest, SamplingParams, TokenOutput, Usage};
