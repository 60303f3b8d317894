//! dsv3: a kernel-centric library that serves DeepSeek-V3-family models.
//!
//! Layout (see `DESIGN.md`-style notes in `docs/`):
//! - [`convert`]: checkpoint conversion (FP8 → BF16, → block / channel INT8) with verification;
//! - [`model`]: config parsing, checkpoint loading, weights, and the CPU reference forward pass;
//! - [`ops`]: one module per op family, each with its CPU reference (the numerical oracle);
//! - [`tensor`]: the host tensor the CPU backend computes on;
//! - [`host_alloc`]: host allocator settings for the GPU serving loop;
//! - [`error`]: the crate's typed errors.

pub mod backend;
pub mod convert;
pub mod dist;
pub mod engine;
pub mod error;
pub mod host_alloc;
pub mod model;
pub mod ops;
#[cfg(feature = "server")]
pub mod server;
pub mod tensor;
pub mod tokenizer;

pub use error::{Error, Result};
pub use tensor::Tensor;
