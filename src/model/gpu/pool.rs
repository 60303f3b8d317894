//! The paged latent cache on the device: a pool of pages per layer, and the single-sequence cache
//! of the [`crate::model::generate::CausalLm`] path.

use super::{GpuModel, KvCacheDtype, PAGE_SIZE};
use crate::backend::mla::{self, MlaCacheDtype};
use crate::backend::{dispatch, DType as DevDType, DeviceTensor};
use crate::error::{Error, Result};
use crate::ops::random::mix64;

/// A paged latent pool: per layer [num_pages, page_size, kv_lora + rope] on the device, f32 or
/// bf16, or [num_pages, 64, 656] u8 of fp8 rows ([`super::GpuOptions::kv_cache`]).
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
    /// A page pool of `num_pages` pages of `page_size` positions per layer, poisoned (NaN; the
    /// fp8 rows' bytes 0xff are NaN codes and NaN scales) so that a read of a row never written
    /// shows. The fp8 cache's rows are written through 64-position pages only
    /// (`mla_cache_write`): for it, another page size is an `InvalidArgument` error.
    pub fn new_page_pool(&self, num_pages: usize, page_size: usize) -> Result<PagePool> {
        if num_pages == 0 || page_size == 0 {
            return Err(Error::InvalidArgument(format!("page pool of {num_pages} pages of {page_size} positions")));
        }
        let kv = self.opts.kv_cache;
        if kv == KvCacheDtype::Fp8E4m3 && page_size != mla::PAGE {
            return Err(Error::InvalidArgument(format!(
                "--kv-cache-dtype fp8_e4m3 needs pages of {} positions (--page-size {}), not {page_size}",
                mla::PAGE,
                mla::PAGE
            )));
        }
        let s = self.s();
        let row = kv.row_len(self.latent_width());
        let layers = (0..self.cfg.num_hidden_layers)
            .map(|_| DeviceTensor::poisoned(s, kv.tensor_dtype(), &[num_pages, page_size, row]))
            .collect::<Result<Vec<_>>>()?;
        Ok(PagePool { layers, page_size, num_pages })
    }

    /// Fills every page of `pool` with random latent values (uniform in [-1, 1)): a cache that
    /// holds "some context" for decode benchmarks without prefilling it. The fp8 cache gets
    /// uniform rows quantized on write (valid scales), in chunks of positions.
    pub fn fill_pool_random(&self, pool: &PagePool, seed: u64) -> Result<()> {
        let s = self.s();
        let layer_seed = |i: usize| seed ^ (i as u64).wrapping_mul(0x9e37_79b9);
        if self.opts.kv_cache != KvCacheDtype::Fp8E4m3 {
            for (i, layer) in pool.layers.iter().enumerate() {
                dispatch::fill_uniform(s, layer, layer_seed(i), -1.0, 1.0)?;
            }
            return Ok(());
        }
        // One sequence owning every page in order: position p is row p % 64 of page p / 64.
        const CHUNK: usize = 32 * 1024;
        let positions = pool.num_pages * pool.page_size;
        let pages = i32::try_from(pool.num_pages).map_err(|_| Error::InvalidArgument(format!("pool of {} pages", pool.num_pages)))?;
        let table = DeviceTensor::from_slice(s, &[1, pool.num_pages], &(0..pages).collect::<Vec<i32>>())?;
        let width = self.latent_width();
        let chunks = (0..positions)
            .step_by(CHUNK)
            .map(|start| {
                let n = CHUNK.min(positions - start);
                let pos: Vec<i32> = (start..start + n).map(|p| p as i32).collect();
                Ok((n, DeviceTensor::from_slice(s, &[n], &vec![0i32; n])?, DeviceTensor::from_slice(s, &[n], &pos)?))
            })
            .collect::<Result<Vec<_>>>()?;
        for (i, layer) in pool.layers.iter().enumerate() {
            for (c, (n, seq, pos)) in chunks.iter().enumerate() {
                // Stream-ordered: the allocator hands the block to the next chunk after this
                // chunk's kernels in the stream's order.
                let kv = DeviceTensor::empty(s, DevDType::F32, &[*n, width])?;
                dispatch::fill_uniform(s, &kv, layer_seed(i) ^ mix64(c as u64 + 1), -1.0, 1.0)?;
                mla::mla_cache_write(s, MlaCacheDtype::Fp8E4m3, layer, &kv, &table, seq, pos)?;
            }
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
