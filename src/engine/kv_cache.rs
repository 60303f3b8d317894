//! The paged latent KV cache on the host: per layer, `num_pages` pages of `page_size` rows of
//! `kv_lora + rope` f32 values ([c_kv | k_pe], 576 per token per layer for V3). A sequence sees
//! its pages through a block table; [`PagedSeq`] is that view as a
//! [`LatentStore`](crate::model::cache::LatentStore) for the CPU forward pass.

use std::borrow::Cow;

use crate::engine::block_manager::PageId;
use crate::model::cache::LatentStore;

#[derive(Debug)]
pub struct HostLatentPool {
    page_size: usize,
    width: usize,
    layers: Vec<Vec<f32>>,
}

impl HostLatentPool {
    pub fn new(num_layers: usize, width: usize, num_pages: usize, page_size: usize) -> HostLatentPool {
        HostLatentPool { page_size, width, layers: vec![vec![0f32; num_pages * page_size * width]; num_layers] }
    }

    /// Bytes the pool needs per page (all layers).
    pub fn bytes_per_page(num_layers: usize, width: usize, page_size: usize) -> usize {
        num_layers * width * page_size * std::mem::size_of::<f32>()
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn num_pages(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len() / (self.page_size * self.width))
    }

    /// A sequence whose first `start` positions are cached in the pages of `table`, which must
    /// cover every position the step will append.
    pub fn seq<'a>(&'a mut self, table: &'a [PageId], start: usize) -> PagedSeq<'a> {
        let layers = self.layers.len();
        PagedSeq { pool: self, table, start, written: vec![0; layers] }
    }

    /// The rows of positions `0..len` of layer `layer`, contiguous.
    pub fn gather(&self, layer: usize, table: &[PageId], len: usize) -> Vec<f32> {
        let (ps, w) = (self.page_size, self.width);
        let mut out = Vec::with_capacity(len * w);
        let data = &self.layers[layer];
        let mut left = len;
        for &page in table {
            if left == 0 {
                break;
            }
            let n = left.min(ps);
            let base = page as usize * ps * w;
            out.extend_from_slice(&data[base..base + n * w]);
            left -= n;
        }
        debug_assert_eq!(left, 0, "block table shorter than the sequence");
        out
    }
}

/// One sequence's view of the pool during one step.
pub struct PagedSeq<'a> {
    pool: &'a mut HostLatentPool,
    table: &'a [PageId],
    start: usize,
    written: Vec<usize>,
}

impl LatentStore for PagedSeq<'_> {
    fn cached_len(&self) -> usize {
        self.start
    }

    fn append(&mut self, layer: usize, rows: &[f32]) {
        let (ps, w) = (self.pool.page_size, self.pool.width);
        let data = &mut self.pool.layers[layer];
        for (i, row) in rows.chunks_exact(w).enumerate() {
            let pos = self.start + self.written[layer] + i;
            let page = self.table[pos / ps] as usize;
            let off = (page * ps + pos % ps) * w;
            data[off..off + w].copy_from_slice(row);
        }
        self.written[layer] += rows.len() / w;
    }

    fn rows(&self, layer: usize) -> Cow<'_, [f32]> {
        Cow::Owned(self.pool.gather(layer, self.table, self.start + self.written[layer]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cache::LatentCache;

    #[test]
    fn paged_view_matches_contiguous_cache() {
        let (layers, width, ps) = (2, 3, 4);
        let mut pool = HostLatentPool::new(layers, width, 8, ps);
        let table: Vec<PageId> = vec![5, 1, 6];
        let mut reference = LatentCache::new(layers, 2, 1);
        let mut start = 0;
        for step in [5usize, 1, 3, 1] {
            let mut view = pool.seq(&table, start);
            for l in 0..layers {
                let rows: Vec<f32> = (0..step * width).map(|i| (start * 100 + l * 10_000 + i) as f32).collect();
                LatentStore::append(&mut view, l, &rows);
                LatentStore::append(&mut reference, l, &rows);
                assert_eq!(view.rows(l).as_ref(), reference.rows(l).as_ref());
            }
            start += step;
        }
        assert_eq!(pool.num_pages(), 8);
    }
}
