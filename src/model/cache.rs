//! The latent KV cache of one sequence on the CPU: per layer, one row of `kv_lora + rope` values
//! per position, [c_kv (normalized) | k_pe (rotated)] — 576 values per token per layer for V3.

use std::borrow::Cow;

/// Where the CPU forward pass keeps a sequence's latent rows: a contiguous [`LatentCache`] here,
/// or a view over the engine's paged cache.
pub trait LatentStore {
    /// Number of positions cached before the current step.
    fn cached_len(&self) -> usize;
    /// Appends the rows of the positions being computed to layer `layer`.
    fn append(&mut self, layer: usize, rows: &[f32]);
    /// Every row of layer `layer` (cached and appended), contiguous, [positions, width].
    fn rows(&self, layer: usize) -> Cow<'_, [f32]>;
}

#[derive(Clone, Debug)]
pub struct LatentCache {
    width: usize,
    layers: Vec<Vec<f32>>,
}

impl LatentCache {
    pub fn new(num_layers: usize, kv_lora: usize, rope: usize) -> Self {
        LatentCache { width: kv_lora + rope, layers: vec![Vec::new(); num_layers] }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len() / self.width)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn layer(&self, i: usize) -> &[f32] {
        &self.layers[i]
    }

    /// Appends rows for new positions to layer `i`.
    pub fn append(&mut self, i: usize, rows: &[f32]) {
        debug_assert_eq!(rows.len() % self.width, 0);
        self.layers[i].extend_from_slice(rows);
    }

    /// Drops every position from `len` on (the engine's rollback / preemption).
    pub fn truncate(&mut self, len: usize) {
        for l in &mut self.layers {
            l.truncate(len * self.width);
        }
    }
}

impl LatentStore for LatentCache {
    fn cached_len(&self) -> usize {
        self.len()
    }

    fn append(&mut self, layer: usize, rows: &[f32]) {
        LatentCache::append(self, layer, rows)
    }

    fn rows(&self, layer: usize) -> Cow<'_, [f32]> {
        Cow::Borrowed(self.layer(layer))
    }
}
