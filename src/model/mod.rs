//! The model: config, checkpoint loading, weights and the CPU reference forward pass.

pub mod checkpoint;
pub mod config;
