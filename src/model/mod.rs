//! The model: config, checkpoint loading, weights and the CPU reference forward pass.

pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod cpu;
pub mod dp;
pub mod embedded;
pub mod generate;
pub mod shard;
pub mod gpu;
pub mod quant_method;
pub mod weights;
