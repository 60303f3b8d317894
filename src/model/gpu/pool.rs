//! The paged latent cache on the device: a pool of pages per layer, and the single-sequence cache
//! of the [`crate::model::generate::CausalLm`] path.

use super::{GpuModel, PAGE_SIZE};
use crate::backend::DeviceTensor;
use crate::error::{Error, Result};

/// A paged latent pool: per layer [num_pages, page_size, kv_lora + rope] on the device, f32 or
/// bf16 ([`super::GpuOptions::kv_cache`]).
/// Sequences address it through block tables of page ids.
pub struct PagePool {
    pub(super) layers: Vec<DeviceTensor>,
    pub(super) page_size: usize,
    pub(super) num_pages: usize,
}

impl PagePool {
    pub fn page_size(&self) -> usize {
        self.page_size
    }
    pub fn num_pages(&self) -> usize {
        self.num_pages
    }
    /// Device bytes the pool holds.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.bytes()).sum()
    }
}

/// The paged latent cache of one sequence: a pool of its own and the block table over it.
pub struct GpuCache {
    pub(super) pool: PagePool,
    pub(super) table: Vec<u32>,
    pub(super) len: usize,
}

impl GpuCache {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl GpuModel {
    /// A page pool of `num_pages` pages of `page_size` positions per layer, poisoned (NaN) so that
    /// a read of a row never written shows.
    pub fn new_page_pool(&self, num_pages: usize, page_size: usize) -> Result<PagePool> {
        if num_pages == 0 || page_size == 0 {
            return Err(Error::InvalidArgument(format!("page pool of {num_pages} pages of {page_size} positions")));
        }
        let s = self.s();
        let width = self.latent_width();
        let layers = (0..self.cfg.num_hidden_layers)
            .map(|_| DeviceTensor::poisoned(s, self.opts.kv_cache, &[num_pages, page_size, width]))
            .collect::<Result<Vec<_>>>()?;
        Ok(PagePool { layers, page_size, num_pages })
    }

    /// Fills every page of `pool` with random latent values (uniform in [-1, 1)): a cache that
    /// holds "some context" for decode benchmarks without prefilling it.
    pub fn fill_pool_random(&self, pool: &PagePool, seed: u64) -> Result<()> {
        for (i, layer) in pool.layers.iter().enumerate() {
            crate::backend::dispatch::fill_uniform(self.s(), layer, seed ^ (i as u64).wrapping_mul(0x9e37_79b9), -1.0, 1.0)?;
        }
        Ok(())
    }

    pub fn new_gpu_cache(&self) -> Result<GpuCache> {
        let pages = self.max_positions / PAGE_SIZE;
        let pool = self.new_page_pool(pages, PAGE_SIZE)?;
        // One sequence owning every page, in a shuffled order so that paging is exercised.
        let table: Vec<u32> = (0..pages as u32).rev().collect();
        Ok(GpuCache { pool, table, len: 0 })
    }
}
