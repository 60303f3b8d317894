//! DeepSeek-V3 forward pass on a GPU stream (CUDA or HIP), assembled from the generated kernels
//! in their first, simple form (`backend::dispatch`). Activations are f32; weights stay in their
//! checkpoint format where a kernel reads it (bf16, or float8 e4m3fn with 128×128 block scales),
//! f16 and f32 weights are used as f32. The latent KV cache is paged: per layer
//! [pages, page_size, kv_lora + rope] f32 ([`PagePool`]).
//!
//! One forward ([`GpuModel::forward_batch`]) runs a batch of sequences: the new tokens of every
//! sequence concatenated, each token tagged with its sequence and position, each sequence with
//! its block table into a page pool that the caller owns (the serving engine's, or a
//! [`GpuCache`]'s for the single-sequence [`CausalLm`] path, which is the batched path with one
//! sequence). Logits are computed only for the rows asked for.
//!
//! MLA runs in the absorbed form for prefill and decode alike: W_uk is folded into the query per
//! head, attention runs over the latent cache, W_uv is applied to the latent output. The
//! attention and GEMM launches sit in small methods ([`GpuModel::linear`], `absorb_q`,
//! `kv_write`, `mla_attend`, `unabsorb_o`) so that faster kernels can be plugged in one place.

use std::path::Path;

use crate::backend::dispatch::{self, PagedCache, RopeLayout, RouteParams, Strided};
use crate::backend::memory::RetainedBlocks;
use crate::backend::stream::StreamGraph;
use crate::backend::{open_stream, DType as DevDType, Device, DeviceTensor, Fp8E4m3fn, GpuStream};
use crate::error::{Error, Result};
use crate::model::checkpoint::{Checkpoint, DType};
use crate::model::config::ModelConfig;
use crate::model::generate::CausalLm;
use crate::ops::rope::YarnRope;
use crate::tensor::Tensor;

/// Positions per cache page.
pub const PAGE_SIZE: usize = 64;

/// A linear weight [N, K] as the GEMM kernels read it.
struct Linear {
    w: DeviceTensor,
    /// Block scales [ceil(N/128), ceil(K/128)] (or [E, ..] for stacked experts) of float8 weights.
    scale: Option<DeviceTensor>,
    n: usize,
}

struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

struct Moe {
    router: Linear,
    bias: DeviceTensor,
    /// Expert weights stacked along a leading expert dimension: [E, N, K].
    gate: Linear,
    up: Linear,
    down: Linear,
    shared: Option<Mlp>,
    params: RouteParams,
    n_experts: usize,
    inter: usize,
}

enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

enum QProj {
    LowRank { q_a: Linear, q_a_norm: DeviceTensor, q_b: Linear },
    Direct(Linear),
}

struct Layer {
    input_norm: DeviceTensor,
    post_attn_norm: DeviceTensor,
    q: QProj,
    kv_a: Linear,
    kv_a_norm: DeviceTensor,
    /// Per head W_ukᵀ [kv_lora, nope]: q_lat = q_nope · W_uk as a linear layer.
    w_uk_t: Vec<DeviceTensor>,
    /// Per head W_uv [v, kv_lora].
    w_uv: Vec<DeviceTensor>,
    o: Linear,
    ffn: Ffn,
}

pub struct GpuModel {
    cfg: ModelConfig,
    stream: Box<dyn GpuStream>,
    embed: DeviceTensor,
    layers: Vec<Layer>,
    norm: DeviceTensor,
    lm_head: Linear,
    cos: DeviceTensor,
    sin: DeviceTensor,
    /// Cache capacity of one sequence, in positions (a whole number of pages).
    max_positions: usize,
}

// SAFETY: every GpuStream implementation (CudaStream, HipStream) is Send + Sync (their raw
// handles are used behind mutexes or by the thread-safe driver, and each call binds the device's
// context first); the trait object just does not say so. The model moves to the engine thread.
unsafe impl Send for GpuModel {}

/// A paged latent pool: per layer [num_pages, page_size, kv_lora + rope] f32 on the device.
/// Sequences address it through block tables of page ids.
pub struct PagePool {
    layers: Vec<DeviceTensor>,
    page_size: usize,
    num_pages: usize,
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

/// Which logits rows of a sequence a batched forward returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// None (inner chunks of a chunked prefill).
    None,
    /// The last new token's (decode, last prefill chunk).
    Last,
    /// Every new token's (prompt logprobs, the single-sequence `forward`).
    All,
}

impl LogitRows {
    fn count(self, tokens: usize) -> usize {
        match self {
            LogitRows::None => 0,
            LogitRows::Last => 1,
            LogitRows::All => tokens,
        }
    }
}

/// One sequence of a batched forward.
#[derive(Clone, Copy, Debug)]
pub struct BatchSeq<'a> {
    /// New tokens, computed after the `start` cached positions.
    pub tokens: &'a [u32],
    /// Positions of this sequence already in the pool.
    pub start: usize,
    /// Pages of the pool holding positions `0..start + tokens.len()` (longer is fine).
    pub block_table: &'a [u32],
    pub logits: LogitRows,
}

/// The paged latent cache of one sequence: a pool of its own and the block table over it.
pub struct GpuCache {
    pool: PagePool,
    table: Vec<u32>,
    len: usize,
}

impl GpuCache {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn upload_f32(s: &dyn GpuStream, t: &Tensor) -> Result<DeviceTensor> {
    DeviceTensor::from_f32(s, t.shape(), t.data(), DevDType::F32)
}

/// Loads linear weights in the form the GEMM reads: one tensor, or several stacked along a
/// leading expert dimension. float8 weights keep their bits and block scales; bf16 keeps its
/// bits; anything else (int8 block / channel, AWQ) is dequantized to f32 by `Checkpoint::load_f32`.
fn load_linear(s: &dyn GpuStream, ckpt: &Checkpoint, names: &[String], n: usize, k: usize) -> Result<Linear> {
    let dtypes: Vec<DType> = names
        .iter()
        .map(|name| {
            // An AWQ layer has `{base}.qweight` instead of `{base}.weight`: it goes through
            // `load_f32` (dequantized) like int8 and the other non-bf16 / non-fp8 dtypes.
            let awq = || name.strip_suffix(".weight").filter(|b| ckpt.contains(&format!("{b}.qweight"))).map(|_| DType::I32);
            ckpt.info(name).map(|i| i.dtype).or_else(awq).ok_or_else(|| missing(name))
        })
        .collect::<Result<_>>()?;
    let stacked = |shape: &[usize]| -> Vec<usize> {
        if names.len() == 1 { shape.to_vec() } else { [&[names.len()][..], shape].concat() }
    };
    let fp8_128 = ckpt.fp8_block().is_none_or(|b| b == (128, 128));
    if dtypes.iter().all(|&d| d == DType::F8E4M3) && fp8_128 {
        let (mut bits, mut scales) = (Vec::new(), Vec::new());
        let scale_shape = [n.div_ceil(128), k.div_ceil(128)];
        for name in names {
            let raw = ckpt.raw(name)?;
            check_shape(name, &raw.shape, &[n, k])?;
            bits.extend(raw.bytes.iter().map(|&b| Fp8E4m3fn(b)));
            scales.extend(ckpt.load_f32(&format!("{name}_scale_inv"), &scale_shape)?.into_data());
        }
        return Ok(Linear {
            w: DeviceTensor::from_slice(s, &stacked(&[n, k]), &bits)?,
            scale: Some(DeviceTensor::from_slice(s, &stacked(&scale_shape), &scales)?),
            n,
        });
    }
    if dtypes.iter().all(|&d| d == DType::BF16) {
        let mut bits = Vec::new();
        for name in names {
            let raw = ckpt.raw(name)?;
            check_shape(name, &raw.shape, &[n, k])?;
            bits.extend(raw.bytes.chunks_exact(2).map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]]))));
        }
        return Ok(Linear { w: DeviceTensor::from_slice(s, &stacked(&[n, k]), &bits)?, scale: None, n });
    }
    let mut values = Vec::new();
    for name in names {
        values.extend(ckpt.load_f32(name, &[n, k])?.into_data());
    }
    Ok(Linear { w: DeviceTensor::from_f32(s, &stacked(&[n, k]), &values, DevDType::F32)?, scale: None, n })
}

fn missing(name: &str) -> Error {
    Error::CheckpointTensor { name: name.to_string(), msg: "not found in the checkpoint".into() }
}

fn check_shape(name: &str, found: &[usize], expected: &[usize]) -> Result<()> {
    if found != expected {
        return Err(Error::CheckpointTensor {
            name: name.to_string(),
            msg: format!("expected shape {expected:?}, found {found:?}"),
        });
    }
    Ok(())
}

impl GpuModel {
    /// Loads config.json and the checkpoint in `dir` onto `device` (`cuda:N` or `hip:N`).
    pub fn load(dir: &Path, device: Device) -> Result<GpuModel> {
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        ckpt.check_against(&cfg)?;
        let stream = open_stream(device)?;
        let s = stream.as_ref();
        let h = cfg.hidden_size;
        let embed_name = "model.embed_tokens.weight";
        let embed = match ckpt.info(embed_name).map(|i| i.dtype) {
            Some(DType::BF16) => load_linear(s, &ckpt, &[embed_name.to_string()], cfg.vocab_size, h)?.w,
            _ => upload_f32(s, &ckpt.load_f32(embed_name, &[cfg.vocab_size, h])?)?,
        };
        let layers = (0..cfg.num_hidden_layers).map(|i| load_layer(s, &ckpt, &cfg, i)).collect::<Result<Vec<_>>>()?;
        let norm = upload_f32(s, &ckpt.load_f32("model.norm.weight", &[h])?)?;
        let lm_name = if cfg.tie_word_embeddings && !ckpt.contains("lm_head.weight") { embed_name } else { "lm_head.weight" };
        let lm_head = load_linear(s, &ckpt, &[lm_name.to_string()], cfg.vocab_size, h)?;
        // cos/sin tables for every position the cache can hold.
        let max_positions = cfg.max_position_embeddings.min(32768).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let rope = YarnRope::new(&cfg);
        let half = cfg.qk_rope_head_dim / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(max_positions * half), Vec::with_capacity(max_positions * half));
        for pos in 0..max_positions {
            let (c, sn) = rope.cos_sin(pos);
            cos.extend(c);
            sin.extend(sn);
        }
        let cos = DeviceTensor::from_f32(s, &[max_positions, half], &cos, DevDType::F32)?;
        let sin = DeviceTensor::from_f32(s, &[max_positions, half], &sin, DevDType::F32)?;
        s.synchronize()?;
        Ok(GpuModel { cfg, embed, layers, norm, lm_head, cos, sin, max_positions, stream })
    }

    fn s(&self) -> &dyn GpuStream {
        self.stream.as_ref()
    }

    fn empty(&self, shape: &[usize]) -> Result<DeviceTensor> {
        DeviceTensor::empty(self.s(), DevDType::F32, shape)
    }

    fn linear(&self, x: &DeviceTensor, w: &Linear) -> Result<DeviceTensor> {
        let rows = x.numel() / x.shape().last().copied().unwrap_or(1);
        let y = self.empty(&[rows, w.n])?;
        dispatch::linear(self.s(), &y, x, &w.w, w.scale.as_ref())?;
        Ok(y)
    }

    fn mlp(&self, x: &DeviceTensor, m: &Mlp) -> Result<DeviceTensor> {
        let gate = self.linear(x, &m.gate)?;
        let up = self.linear(x, &m.up)?;
        let h = self.silu_mul(&gate, &up)?;
        self.linear(&h, &m.down)
    }

    /// silu(gate) ⊙ up for two [rows, I] tensors.
    fn silu_mul(&self, gate: &DeviceTensor, up: &DeviceTensor) -> Result<DeviceTensor> {
        let (rows, i) = (gate.shape()[0], gate.shape()[1]);
        let gate_up = self.empty(&[rows, 2 * i])?;
        dispatch::copy_2d(self.s(), Strided::at(&gate_up, 0, 2 * i), Strided::rows(gate), rows, i)?;
        dispatch::copy_2d(self.s(), Strided::at(&gate_up, i, 2 * i), Strided::rows(up), rows, i)?;
        let out = self.empty(&[rows, i])?;
        dispatch::silu_mul(self.s(), &out, &gate_up)?;
        Ok(out)
    }

    fn moe(&self, x: &DeviceTensor, m: &Moe) -> Result<DeviceTensor> {
        let s = self.s();
        let t = x.shape()[0];
        let k = m.params.top_k;
        let logits = self.linear(x, &m.router)?;
        let ids = DeviceTensor::empty(s, DevDType::I32, &[t, k])?;
        let weights = self.empty(&[t, k])?;
        dispatch::route_noaux_tc(s, &ids, &weights, &logits, &m.bias, m.params)?;
        let offsets = DeviceTensor::empty(s, DevDType::I32, &[m.n_experts + 1])?;
        let sorted_pairs = DeviceTensor::empty(s, DevDType::I32, &[t * k])?;
        let pair_to_row = DeviceTensor::empty(s, DevDType::I32, &[t * k])?;
        dispatch::moe_align(s, &offsets, &sorted_pairs, &pair_to_row, &ids, m.n_experts)?;
        let rows = self.empty(&[t * k, self.cfg.hidden_size])?;
        dispatch::moe_gather(s, &rows, x, &sorted_pairs, &offsets, k)?;
        let grouped = |a: &DeviceTensor, w: &Linear| -> Result<DeviceTensor> {
            let c = self.empty(&[t * k, w.n])?;
            dispatch::moe_gemm(s, &c, a, &w.w, w.scale.as_ref(), &offsets)?;
            Ok(c)
        };
        let gate = grouped(&rows, &m.gate)?;
        let up = grouped(&rows, &m.up)?;
        debug_assert_eq!(gate.shape()[1], m.inter);
        let h = self.silu_mul(&gate, &up)?;
        let y = grouped(&h, &m.down)?;
        let out = match &m.shared {
            Some(shared) => self.mlp(x, shared)?,
            None => {
                let z = self.empty(&[t, self.cfg.hidden_size])?;
                unsafe { s.memset_u8(z.raw(), 0, z.bytes())? };
                z
            }
        };
        dispatch::moe_combine(s, &out, &y, &weights, &pair_to_row, k, 1.0)?;
        Ok(out)
    }

    /// MLA for `x` [T, hidden] of the batch's tokens; writes their latent rows to the pool.
    fn attention(&self, layer: &Layer, li: usize, x: &DeviceTensor, pool: &PagePool, step: &StepTensors) -> Result<DeviceTensor> {
        let s = self.s();
        let c = &self.cfg;
        let (t, heads) = (x.shape()[0], c.num_attention_heads);
        let (nope, rope, lora) = (c.qk_nope_head_dim, c.qk_rope_head_dim, c.kv_lora_rank);
        let qk = nope + rope;
        let latent = lora + rope;
        let q = match &layer.q {
            QProj::LowRank { q_a, q_a_norm, q_b } => {
                let c_q = self.linear(x, q_a)?;
                let c_q_n = self.empty(c_q.shape())?;
                dispatch::rms_norm(s, &c_q_n, &c_q, q_a_norm, c.rms_norm_eps)?;
                self.linear(&c_q_n, q_b)?
            }
            QProj::Direct(w) => self.linear(x, w)?,
        };
        let kv = self.linear(x, &layer.kv_a)?;
        // RMSNorm of the c_kv part: copy it out, normalize, copy back.
        let c_kv = self.empty(&[t, lora])?;
        dispatch::copy_2d(s, Strided::rows(&c_kv), Strided::at(&kv, 0, latent), t, lora)?;
        let c_kv_n = self.empty(&[t, lora])?;
        dispatch::rms_norm(s, &c_kv_n, &c_kv, &layer.kv_a_norm, c.rms_norm_eps)?;
        dispatch::copy_2d(s, Strided::at(&kv, 0, latent), Strided::rows(&c_kv_n), t, lora)?;
        let pe = |heads, token_stride, head_stride, offset| RopeLayout { heads, token_stride, head_stride, offset, rope_dim: rope };
        dispatch::rope(s, &kv, &self.cos, &self.sin, &step.pos, pe(1, latent, latent, lora))?;
        dispatch::rope(s, &q, &self.cos, &self.sin, &step.pos, pe(heads, heads * qk, qk, nope))?;
        let paged = PagedCache { cache: &pool.layers[li], block_table: &step.block_table, seq_lens: &step.seq_lens };
        self.kv_write(&paged, &kv, step)?;
        let q_abs = self.absorb_q(layer, &q, t)?;
        let o_lat = self.mla_attend(&q_abs, &paged, step)?;
        let o_cat = self.unabsorb_o(layer, &o_lat, t)?;
        self.linear(&o_cat, &layer.o)
    }

    /// Appends the batch's latent rows `kv` [T, kv_lora + rope] to their sequences' pages.
    fn kv_write(&self, paged: &PagedCache, kv: &DeviceTensor, step: &StepTensors) -> Result<()> {
        dispatch::paged_kv_write(self.s(), paged, kv, &step.seq, &step.pos)
    }

    /// Absorbed query [T, H, kv_lora + rope]: q_nope · W_uk per head, then q_pe (already rotated).
    fn absorb_q(&self, layer: &Layer, q: &DeviceTensor, t: usize) -> Result<DeviceTensor> {
        let s = self.s();
        let c = &self.cfg;
        let (heads, nope, rope, lora) = (c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.kv_lora_rank);
        let (qk, latent) = (nope + rope, lora + rope);
        let q_abs = self.empty(&[t, heads, latent])?;
        let q_nope = self.empty(&[t, nope])?;
        let q_lat = self.empty(&[t, lora])?;
        for h in 0..heads {
            dispatch::copy_2d(s, Strided::rows(&q_nope), Strided::at(q, h * qk, heads * qk), t, nope)?;
            dispatch::linear(s, &q_lat, &q_nope, &layer.w_uk_t[h], None)?;
            dispatch::copy_2d(s, Strided::at(&q_abs, h * latent, heads * latent), Strided::rows(&q_lat), t, lora)?;
            dispatch::copy_2d(s, Strided::at(&q_abs, h * latent + lora, heads * latent), Strided::at(q, h * qk + nope, heads * qk), t, rope)?;
        }
        Ok(q_abs)
    }

    /// Latent attention output o_lat [T, H, kv_lora] over each token's sequence, causal.
    fn mla_attend(&self, q_abs: &DeviceTensor, paged: &PagedCache, step: &StepTensors) -> Result<DeviceTensor> {
        let c = &self.cfg;
        let (t, heads) = (q_abs.shape()[0], c.num_attention_heads);
        let o_lat = self.empty(&[t, heads, c.kv_lora_rank])?;
        dispatch::mla_paged_attention(self.s(), &o_lat, q_abs, paged, &step.seq, &step.pos, c.kv_lora_rank, c.softmax_scale())?;
        Ok(o_lat)
    }

    /// o = o_lat · W_uvᵀ per head, gathered into [T, H·v] for o_proj.
    fn unabsorb_o(&self, layer: &Layer, o_lat: &DeviceTensor, t: usize) -> Result<DeviceTensor> {
        let s = self.s();
        let c = &self.cfg;
        let (heads, v, lora) = (c.num_attention_heads, c.v_head_dim, c.kv_lora_rank);
        let o_cat = self.empty(&[t, heads * v])?;
        let o_lat_h = self.empty(&[t, lora])?;
        let o_h = self.empty(&[t, v])?;
        for h in 0..heads {
            dispatch::copy_2d(s, Strided::rows(&o_lat_h), Strided::at(o_lat, h * lora, heads * lora), t, lora)?;
            dispatch::linear(s, &o_h, &o_lat_h, &layer.w_uv[h], None)?;
            dispatch::copy_2d(s, Strided::at(&o_cat, h * v, heads * v), Strided::rows(&o_h), t, v)?;
        }
        Ok(o_cat)
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.s().device()
    }

    /// The stream the model runs on.
    pub fn stream(&self) -> &dyn GpuStream {
        self.s()
    }

    /// Longest sequence the model runs (its RoPE tables' length, a whole number of pages of 64).
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// (free, total) device memory in bytes, as the driver reports it.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.s().mem_info()
    }

    /// Values per cached position per layer (`kv_lora_rank + qk_rope_head_dim`).
    pub fn latent_width(&self) -> usize {
        self.cfg.kv_lora_rank + self.cfg.qk_rope_head_dim
    }

    /// A page pool of `num_pages` pages of `page_size` positions per layer, poisoned (NaN) so that
    /// a read of a row never written shows.
    pub fn new_page_pool(&self, num_pages: usize, page_size: usize) -> Result<PagePool> {
        if num_pages == 0 || page_size == 0 {
            return Err(Error::InvalidArgument(format!("page pool of {num_pages} pages of {page_size} positions")));
        }
        let s = self.s();
        let width = self.latent_width();
        let layers = (0..self.cfg.num_hidden_layers)
            .map(|_| DeviceTensor::poisoned(s, DevDType::F32, &[num_pages, page_size, width]))
            .collect::<Result<Vec<_>>>()?;
        Ok(PagePool { layers, page_size, num_pages })
    }

    pub fn new_gpu_cache(&self) -> Result<GpuCache> {
        let pages = self.max_positions / PAGE_SIZE;
        let pool = self.new_page_pool(pages, PAGE_SIZE)?;
        // One sequence owning every page, in a shuffled order so that paging is exercised.
        let table: Vec<u32> = (0..pages as u32).rev().collect();
        Ok(GpuCache { pool, table, len: 0 })
    }

    pub fn forward_gpu(&self, tokens: &[u32], cache: &mut GpuCache) -> Result<Tensor> {
        let seq = BatchSeq { tokens, start: cache.len, block_table: &cache.table, logits: LogitRows::All };
        let mut out = self.forward_batch(&mut cache.pool, &[seq])?;
        cache.len += tokens.len();
        let logits = out.pop().unwrap_or_default();
        Tensor::new(vec![tokens.len(), self.cfg.vocab_size], logits)
    }

    /// One forward over a batch of sequences sharing `pool`: appends every sequence's new latent
    /// rows to its pages and returns, per sequence, the logits rows it asked for (row-major
    /// [rows, vocab]; empty for [`LogitRows::None`]). One host synchronization: the logits copy.
    pub fn forward_batch(&self, pool: &mut PagePool, seqs: &[BatchSeq<'_>]) -> Result<Vec<Vec<f32>>> {
        let (packed, layout) = pack_step(self, pool, seqs, None)?;
        let step = StepTensors::alloc(self.s(), &layout)?;
        step.upload(self.s(), &packed)?;
        let logits = self.run(pool, &step)?;
        let counts: Vec<usize> = seqs.iter().map(|q| q.logits.count(q.tokens.len())).collect();
        match logits {
            None => Ok(vec![Vec::new(); seqs.len()]),
            Some(l) => Ok(split_rows(&l.to_f32(self.s())?, &counts, self.cfg.vocab_size)),
        }
    }

    /// The forward proper, from uploaded step tensors: queues every kernel and returns the logits
    /// [R, vocab] of the rows asked for (`None` when none is), without synchronizing (so that
    /// it can be captured in a graph).
    fn run(&self, pool: &PagePool, step: &StepTensors) -> Result<Option<DeviceTensor>> {
        let s = self.s();
        let c = &self.cfg;
        let t = step.tokens;
        let x = self.empty(&[t, c.hidden_size])?;
        dispatch::embedding(s, &x, &self.embed, &step.ids)?;
        let normed = self.empty(&[t, c.hidden_size])?;
        dispatch::rms_norm(s, &normed, &x, &self.layers[0].input_norm, c.rms_norm_eps)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let attn = self.attention(layer, i, &normed, pool, step)?;
            dispatch::add_rms_norm(s, &normed, &x, &attn, &layer.post_attn_norm, c.rms_norm_eps)?;
            let ffn = match &layer.ffn {
                Ffn::Dense(m) => self.mlp(&normed, m)?,
                Ffn::Moe(m) => self.moe(&normed, m)?,
            };
            let next_norm = self.layers.get(i + 1).map_or(&self.norm, |l| &l.input_norm);
            dispatch::add_rms_norm(s, &normed, &x, &ffn, next_norm, c.rms_norm_eps)?;
        }
        Ok(match (&step.logit_rows, step.rows) {
            (_, 0) => None,
            // Every row: no gather.
            (None, _) => Some(self.linear(&normed, &self.lm_head)?),
            (Some(idx), rows) => {
                // The embedding gather doubles as a row gather: out[r] = normed[idx[r]].
                let picked = self.empty(&[rows, c.hidden_size])?;
                dispatch::embedding(s, &picked, &normed, idx)?;
                Some(self.linear(&picked, &self.lm_head)?)
            }
        })
    }

    /// Captures the decode step of `bs` sequences (one token each, every logits row) as a graph
    /// over fixed input, output and pool addresses. `pad_page`: a page of `pool` that no
    /// sequence uses, written and read by the padding rows of batches smaller than `bs`.
    /// Runs the step once eagerly first (loads every kernel, warms the allocator), then captures.
    pub fn capture_decode_graph(&self, pool: &mut PagePool, bs: usize, pad_page: u32) -> Result<DecodeGraph> {
        let s = self.s();
        if bs == 0 || pad_page as usize >= pool.num_pages {
            return Err(Error::InvalidArgument(format!("decode graph of {bs} sequences, pad page {pad_page} of {}", pool.num_pages)));
        }
        let max_pages = self.max_positions.div_ceil(pool.page_size);
        let pad = [0u32];
        let pad_table = [pad_page];
        let seqs = vec![BatchSeq { tokens: &pad, start: 0, block_table: &pad_table, logits: LogitRows::Last }; bs];
        let (packed, layout) = pack_step(self, pool, &seqs, Some(max_pages))?;
        let inputs = StepTensors::alloc(s, &layout)?;
        inputs.upload(s, &packed)?;
        drop(self.run(pool, &inputs)?);
        s.synchronize()?;
        // The graph owns every block its temporaries use: none is handed out again while it lives.
        let alloc = s.allocator();
        alloc.begin_retain();
        if let Err(e) = s.begin_capture() {
            drop(alloc.end_retain());
            return Err(e);
        }
        let run = self.run(pool, &inputs);
        // End the capture whatever happened, so that the stream is usable again.
        let graph = s.end_capture();
        let memory = alloc.end_retain();
        let logits = run?.ok_or_else(|| Error::InvalidArgument("decode graph without logits".into()))?;
        let graph = graph?;
        Ok(DecodeGraph { graph, _memory: memory, bs, max_pages, pad_page, inputs, logits })
    }

    /// A decode step of `seqs` (at most `g.bs`, one token each) through a captured graph: uploads
    /// the inputs (padded with rows on the pad page), replays, copies back the real rows' logits.
    pub fn forward_decode_graph(&self, g: &DecodeGraph, pool: &mut PagePool, seqs: &[BatchSeq<'_>]) -> Result<Vec<Vec<f32>>> {
        if seqs.len() > g.bs || seqs.iter().any(|q| q.tokens.len() != 1) {
            return Err(Error::InvalidArgument(format!("decode graph of {} sequences for a batch of {}", g.bs, seqs.len())));
        }
        let pad = [0u32];
        let pad_table = [g.pad_page];
        let mut all: Vec<BatchSeq<'_>> = seqs.iter().map(|q| BatchSeq { logits: LogitRows::Last, ..*q }).collect();
        all.resize(g.bs, BatchSeq { tokens: &pad, start: 0, block_table: &pad_table, logits: LogitRows::Last });
        let (packed, layout) = pack_step(self, pool, &all, Some(g.max_pages))?;
        if layout != g.inputs.layout() {
            return Err(Error::InvalidArgument(format!("decode graph inputs {:?} for a step of {layout:?}", g.inputs.layout())));
        }
        g.inputs.upload(self.s(), &packed)?;
        g.graph.replay()?;
        let v = self.cfg.vocab_size;
        let host = g.logits.to_f32(self.s())?;
        let counts: Vec<usize> = seqs.iter().map(|q| q.logits.count(1)).collect();
        let mut out = Vec::with_capacity(seqs.len());
        for (i, n) in counts.into_iter().enumerate() {
            out.push(if n == 0 { Vec::new() } else { host[i * v..(i + 1) * v].to_vec() });
        }
        Ok(out)
    }
}

/// A captured decode step of `bs` sequences: its graph and the fixed-address buffers it reads
/// (inputs), writes (logits) and uses in between (its temporaries' blocks, which the stream's
/// allocator does not hand out again while the graph lives). The graph is declared first so
/// that it is dropped first.
pub struct DecodeGraph {
    graph: Box<dyn StreamGraph>,
    /// The blocks of the temporaries it captured (freed during capture, kept out of the cache).
    _memory: RetainedBlocks,
    bs: usize,
    max_pages: usize,
    pad_page: u32,
    inputs: StepTensors,
    logits: DeviceTensor,
}

impl DecodeGraph {
    /// The batch size it was captured for (smaller batches are padded).
    pub fn batch_size(&self) -> usize {
        self.bs
    }
}

fn split_rows(host: &[f32], counts: &[usize], v: usize) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(counts.len());
    let mut at = 0;
    for &n in counts {
        out.push(host[at * v..(at + n) * v].to_vec());
        at += n;
    }
    out
}

/// Sizes of a step's index tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StepLayout {
    tokens: usize,
    seqs: usize,
    max_pages: usize,
    /// Logits rows wanted.
    rows: usize,
    /// Whether those rows are gathered (not every token's).
    gather: bool,
}

/// Checks a batch against the pool and the model and packs its index data:
/// ids [T] | seq [T] | pos [T] | seq_lens [B] | block_table [B·max_pages] | rows [R] (when gathered).
/// `fixed_pages`: the block-table width (graphs); otherwise the widest sequence's page count.
fn pack_step(m: &GpuModel, pool: &PagePool, seqs: &[BatchSeq<'_>], fixed_pages: Option<usize>) -> Result<(Vec<u32>, StepLayout)> {
    let c = &m.cfg;
    if seqs.is_empty() {
        return Err(Error::InvalidArgument("forward needs at least one sequence".into()));
    }
    let ps = pool.page_size;
    let t: usize = seqs.iter().map(|q| q.tokens.len()).sum();
    let b = seqs.len();
    let mut max_pages = 1;
    for (i, q) in seqs.iter().enumerate() {
        let end = q.start + q.tokens.len();
        if q.tokens.is_empty() {
            return Err(Error::InvalidArgument(format!("sequence {i} of the batch has no token to compute")));
        }
        if let Some(&bad) = q.tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(Error::InvalidArgument(format!("token id {bad} is outside the vocabulary (size {})", c.vocab_size)));
        }
        if end > m.max_positions {
            return Err(Error::InvalidArgument(format!("sequence of {end} tokens exceeds the GPU model's {} positions", m.max_positions)));
        }
        let need = end.div_ceil(ps);
        if q.block_table.len() < need {
            return Err(Error::InvalidArgument(format!(
                "block table of {} pages cannot hold {end} positions (pages of {ps})",
                q.block_table.len()
            )));
        }
        if let Some(&p) = q.block_table[..need].iter().find(|&&p| p as usize >= pool.num_pages) {
            return Err(Error::InvalidArgument(format!("page {p} is outside the pool of {} pages", pool.num_pages)));
        }
        max_pages = max_pages.max(need);
    }
    if let Some(f) = fixed_pages {
        if max_pages > f {
            return Err(Error::InvalidArgument(format!("a sequence needs {max_pages} pages, more than the {f} of the step's block table")));
        }
        max_pages = f;
    }
    let counts = seqs.iter().map(|q| q.logits.count(q.tokens.len()));
    let rows: usize = counts.clone().sum();
    let all_rows = seqs.iter().zip(counts).all(|(q, n)| n == q.tokens.len());
    let gather = !all_rows && rows > 0;
    let mut packed: Vec<u32> = Vec::with_capacity(3 * t + b * (1 + max_pages) + rows);
    for q in seqs {
        packed.extend_from_slice(q.tokens);
    }
    for (i, q) in seqs.iter().enumerate() {
        packed.extend(std::iter::repeat_n(i as u32, q.tokens.len()));
    }
    for q in seqs {
        packed.extend((q.start..q.start + q.tokens.len()).map(|p| p as u32));
    }
    packed.extend(seqs.iter().map(|q| (q.start + q.tokens.len()) as u32));
    for q in seqs {
        let need = (q.start + q.tokens.len()).div_ceil(ps);
        packed.extend_from_slice(&q.block_table[..need]);
        packed.extend(std::iter::repeat_n(q.block_table[0], max_pages - need));
    }
    if gather {
        let mut at = 0u32;
        for q in seqs {
            let n = q.tokens.len() as u32;
            match q.logits {
                LogitRows::None => {}
                LogitRows::Last => packed.push(at + n - 1),
                LogitRows::All => packed.extend(at..at + n),
            }
            at += n;
        }
    }
    Ok((packed, StepLayout { tokens: t, seqs: b, max_pages, rows, gather }))
}

/// Per-step index tensors of a batch (see [`pack_step`]).
struct StepTensors {
    tokens: usize,
    rows: usize,
    /// [T] u32 token ids.
    ids: DeviceTensor,
    /// [T] i32: the sequence of each token.
    seq: DeviceTensor,
    /// [T] i32: the position of each token.
    pos: DeviceTensor,
    /// [B] i32: positions of each sequence after the step.
    seq_lens: DeviceTensor,
    /// [B, max_pages] i32.
    block_table: DeviceTensor,
    /// [R] u32 token rows whose logits are wanted; `None` when all are.
    logit_rows: Option<DeviceTensor>,
}

impl StepTensors {
    fn alloc(s: &dyn GpuStream, l: &StepLayout) -> Result<Self> {
        let e = |dtype: DevDType, shape: &[usize]| DeviceTensor::empty(s, dtype, shape);
        Ok(StepTensors {
            tokens: l.tokens,
            rows: l.rows,
            ids: e(DevDType::U32, &[l.tokens])?,
            seq: e(DevDType::I32, &[l.tokens])?,
            pos: e(DevDType::I32, &[l.tokens])?,
            seq_lens: e(DevDType::I32, &[l.seqs])?,
            block_table: e(DevDType::I32, &[l.seqs, l.max_pages])?,
            logit_rows: if l.gather { Some(e(DevDType::U32, &[l.rows])?) } else { None },
        })
    }

    fn layout(&self) -> StepLayout {
        let bt = self.block_table.shape();
        StepLayout { tokens: self.tokens, seqs: bt[0], max_pages: bt[1], rows: self.rows, gather: self.logit_rows.is_some() }
    }

    /// One host-to-device copy of `packed`, then device copies into each tensor (stream-ordered).
    fn upload(&self, s: &dyn GpuStream, packed: &[u32]) -> Result<()> {
        let parts = [Some(&self.ids), Some(&self.seq), Some(&self.pos), Some(&self.seq_lens), Some(&self.block_table), self.logit_rows.as_ref()];
        let total: usize = parts.iter().flatten().map(|t| t.numel()).sum();
        if total != packed.len() {
            return Err(Error::InvalidArgument(format!("step upload of {} values for tensors of {total}", packed.len())));
        }
        let all = DeviceTensor::from_slice(s, &[packed.len()], packed)?;
        let mut off = 0;
        for t in parts.into_iter().flatten() {
            let n = t.numel();
            if n > 0 {
                // SAFETY: both ranges lie inside live allocations (`all` holds `packed`).
                unsafe { s.copy_dtod(t.raw(), all.raw() + (off * 4) as u64, n * 4)? };
            }
            off += n;
        }
        Ok(())
    }
}

fn load_layer(s: &dyn GpuStream, ckpt: &Checkpoint, cfg: &ModelConfig, i: usize) -> Result<Layer> {
    let p = format!("model.layers.{i}");
    let h = cfg.hidden_size;
    let heads = cfg.num_attention_heads;
    let (nope, rope, v, lora) = (cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank);
    let lin = |name: &str, n: usize, k: usize| load_linear(s, ckpt, &[format!("{p}.{name}")], n, k);
    let vec = |name: &str, n: usize| -> Result<DeviceTensor> { upload_f32(s, &ckpt.load_f32(&format!("{p}.{name}"), &[n])?) };
    let q = match cfg.q_lora_rank {
        Some(r) => QProj::LowRank {
            q_a: lin("self_attn.q_a_proj.weight", r, h)?,
            q_a_norm: vec("self_attn.q_a_layernorm.weight", r)?,
            q_b: lin("self_attn.q_b_proj.weight", heads * (nope + rope), r)?,
        },
        None => QProj::Direct(lin("self_attn.q_proj.weight", heads * (nope + rope), h)?),
    };
    // W_uk and W_uv per head, from kv_b_proj [H·(nope + v), kv_lora] (dequantized on the host).
    let kv_b = ckpt.load_f32(&format!("{p}.self_attn.kv_b_proj.weight"), &[heads * (nope + v), lora])?;
    let (mut w_uk_t, mut w_uv) = (Vec::with_capacity(heads), Vec::with_capacity(heads));
    for hd in 0..heads {
        let base = hd * (nope + v) * lora;
        let uk = &kv_b.data()[base..base + nope * lora];
        let mut uk_t = vec![0f32; lora * nope];
        for r in 0..nope {
            for col in 0..lora {
                uk_t[col * nope + r] = uk[r * lora + col];
            }
        }
        w_uk_t.push(DeviceTensor::from_f32(s, &[lora, nope], &uk_t, DevDType::F32)?);
        let uv = &kv_b.data()[base + nope * lora..base + (nope + v) * lora];
        w_uv.push(DeviceTensor::from_f32(s, &[v, lora], uv, DevDType::F32)?);
    }
    let ffn = if cfg.is_moe_layer(i) {
        let e = cfg.n_routed_experts;
        let inter = cfg.moe_intermediate_size;
        let experts = |proj: &str| -> Vec<String> { (0..e).map(|x| format!("{p}.mlp.experts.{x}.{proj}.weight")).collect() };
        Ffn::Moe(Moe {
            router: load_linear_f32(s, ckpt, &format!("{p}.mlp.gate.weight"), e, h)?,
            bias: vec("mlp.gate.e_score_correction_bias", e)?,
            gate: load_linear(s, ckpt, &experts("gate_proj"), inter, h)?,
            up: load_linear(s, ckpt, &experts("up_proj"), inter, h)?,
            down: load_linear(s, ckpt, &experts("down_proj"), h, inter)?,
            shared: match cfg.n_shared_experts {
                0 => None,
                n => Some(load_mlp(s, ckpt, &format!("{p}.mlp.shared_experts"), h, n * inter)?),
            },
            params: RouteParams {
                n_group: cfg.n_group,
                topk_group: cfg.topk_group,
                top_k: cfg.num_experts_per_tok,
                scaling: cfg.routed_scaling_factor,
                renormalize: cfg.norm_topk_prob,
            },
            n_experts: e,
            inter,
        })
    } else {
        Ffn::Dense(load_mlp(s, ckpt, &format!("{p}.mlp"), h, cfg.intermediate_size)?)
    };
    Ok(Layer {
        input_norm: vec("input_layernorm.weight", h)?,
        post_attn_norm: vec("post_attention_layernorm.weight", h)?,
        q,
        kv_a: lin("self_attn.kv_a_proj_with_mqa.weight", lora + rope, h)?,
        kv_a_norm: vec("self_attn.kv_a_layernorm.weight", lora)?,
        w_uk_t,
        w_uv,
        o: lin("self_attn.o_proj.weight", h, heads * v)?,
        ffn,
    })
}

/// The router stays in f32: its logits decide discrete expert choices.
fn load_linear_f32(s: &dyn GpuStream, ckpt: &Checkpoint, name: &str, n: usize, k: usize) -> Result<Linear> {
    let w = ckpt.load_f32(name, &[n, k])?;
    Ok(Linear { w: upload_f32(s, &w)?, scale: None, n })
}

fn load_mlp(s: &dyn GpuStream, ckpt: &Checkpoint, prefix: &str, h: usize, inter: usize) -> Result<Mlp> {
    let one = |proj: &str| vec![format!("{prefix}.{proj}.weight")];
    Ok(Mlp {
        gate: load_linear(s, ckpt, &one("gate_proj"), inter, h)?,
        up: load_linear(s, ckpt, &one("up_proj"), inter, h)?,
        down: load_linear(s, ckpt, &one("down_proj"), h, inter)?,
    })
}

impl CausalLm for GpuModel {
    type Cache = GpuCache;

    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn new_cache(&self) -> Result<GpuCache> {
        self.new_gpu_cache()
    }

    fn forward(&self, tokens: &[u32], cache: &mut GpuCache) -> Result<Tensor> {
        self.forward_gpu(tokens, cache)
    }
}
