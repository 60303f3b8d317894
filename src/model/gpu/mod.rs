//! DeepSeek-V3 forward pass on a GPU stream (CUDA or HIP), assembled from the generated kernels
//! in their first, simple form (`backend::dispatch`). Activations are f32; weights stay in their
//! checkpoint format where a kernel reads it (bf16, or float8 e4m3fn with 128×128 block scales,
//! and with the fast options INT8 and repacked AWQ, see `quant`), f16 and f32 weights are used
//! as f32. The latent KV cache is paged: per layer [pages, page_size, kv_lora + rope] f32 or
//! bf16, or [pages, 64, 656] bytes of fp8 e4m3 rows ([`PagePool`], [`KvCacheDtype`]).
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
use std::sync::Mutex;

mod attention;
mod ep;
mod ffn;
mod forward;
mod graph;
mod norm_quant;
mod pool;
mod probe;
mod quant;
mod quant_host;
mod random;
mod step;
#[cfg(any(feature = "cuda", feature = "hip"))]
mod tp;
mod weights;

pub use graph::DecodeGraph;
pub use random::{deepseek_v3_slice, RoutingBalance};
pub use pool::{GpuCache, PagePool};
pub use quant::QuantKernelLayers;
pub use step::{BatchOutput, BatchSeq, LogitRows, Readout};
#[cfg(any(feature = "cuda", feature = "hip"))]
pub use tp::{TpCache, TpDecodeGraph, TpModel};

use crate::backend::dispatch;
use crate::backend::stream::StreamEvent;
use crate::backend::{open_stream, DType as DevDType, Device, DeviceTensor, GpuStream};
use crate::backend::fp8_gemm::{Fp8Workspace, FusedMoeWorkspace};
use crate::error::{Error, Result};
use crate::model::checkpoint::{Checkpoint, DType};
use crate::model::config::ModelConfig;
use crate::model::generate::CausalLm;
use crate::model::shard::{Shard, ShardPlan, TensorSlice};
use crate::ops::rope::YarnRope;
use crate::tensor::Tensor;
use crate::backend::mla::{self, MlaCacheDtype, MlaDecodePlan};
use forward::{run_ranks, AttnPart, RankStep};
use step::{pack_step, row_counts, split_rows, StepLayout, StepTensors};
use weights::{load_layer, load_linear_part, upload_f32, Layer, Linear, Weights};


/// Positions per cache page.
pub const PAGE_SIZE: usize = 64;

/// The latent cache's format (`--kv-cache-dtype`): the element type of the page pool's rows and
/// the kernels that read and write them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvCacheDtype {
    /// [pages, page_size, kv_lora + rope] f32: the reference (the CPU's numbers to f32 rounding).
    F32,
    /// [pages, page_size, kv_lora + rope] bf16; decode steps over 512 + 64 latents and pages of
    /// 64 run the split-KV MLA decode kernel.
    Bf16,
    /// [pages, 64, 656] u8: FlashMLA's fp8 rows (512 e4m3fn latent values, 4 f32 scales of 128
    /// values each, 64 bf16 rope values; [`crate::ops::mla_fp8`]), quantized on write
    /// ([`mla::mla_cache_write`]). Needs DeepSeek's 512 + 64 latent and pages of 64 positions;
    /// decode steps run the split-KV kernel's fp8 variant, other steps the paged attention's.
    Fp8E4m3,
}

impl KvCacheDtype {
    /// Parses a `--kv-cache-dtype` value: `auto` / `bf16` / `bfloat16`, `f32` / `float32`,
    /// `fp8_e4m3` / `fp8`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "auto" | "bf16" | "bfloat16" => Ok(KvCacheDtype::Bf16),
            "f32" | "float32" => Ok(KvCacheDtype::F32),
            "fp8_e4m3" | "fp8" => Ok(KvCacheDtype::Fp8E4m3),
            other => Err(Error::InvalidArgument(format!("kv cache dtype `{other}`: expected auto, bf16, f32 or fp8_e4m3"))),
        }
    }
    /// Element type of the pool's tensors.
    pub fn tensor_dtype(self) -> DevDType {
        match self {
            KvCacheDtype::F32 => DevDType::F32,
            KvCacheDtype::Bf16 => DevDType::Bf16,
            KvCacheDtype::Fp8E4m3 => DevDType::U8,
        }
    }
    /// Last dimension of the pool's tensors for a latent of `width` values per position.
    pub fn row_len(self, width: usize) -> usize {
        match self {
            KvCacheDtype::F32 | KvCacheDtype::Bf16 => width,
            KvCacheDtype::Fp8E4m3 => mla::FP8_ROW_BYTES,
        }
    }
    /// Bytes of one cached position of one layer (a latent of `width` values): width × 4 or × 2,
    /// or the fp8 row's 656 bytes.
    pub fn row_bytes(self, width: usize) -> usize {
        self.row_len(width) * self.tensor_dtype().size()
    }
    /// The MLA decode kernel's cache type for this format (none for f32).
    pub fn mla(self) -> Option<MlaCacheDtype> {
        match self {
            KvCacheDtype::F32 => None,
            KvCacheDtype::Bf16 => Some(MlaCacheDtype::Bf16),
            KvCacheDtype::Fp8E4m3 => Some(MlaCacheDtype::Fp8E4m3),
        }
    }
    /// Element type of W_uk / W_uv next to this cache: f32 for the reference, bf16 otherwise
    /// (the attention reads bf16 or coarser rows anyway).
    pub fn absorb_dtype(self) -> DevDType {
        match self {
            KvCacheDtype::F32 => DevDType::F32,
            KvCacheDtype::Bf16 | KvCacheDtype::Fp8E4m3 => DevDType::Bf16,
        }
    }
    /// Whether a model of `cfg` can hold its latent in this format (the fp8 rows are fixed to
    /// 512 + 64 values): `InvalidArgument` naming the widths otherwise.
    pub fn check(self, cfg: &ModelConfig) -> Result<()> {
        let (lora, rope) = (cfg.kv_lora_rank, cfg.qk_rope_head_dim);
        if self == KvCacheDtype::Fp8E4m3 && (lora != mla::DV || lora + rope != mla::DK) {
            return Err(Error::InvalidArgument(format!(
                "--kv-cache-dtype fp8_e4m3 needs DeepSeek's latent of 512 + 64 values (FlashMLA's 656-byte rows); this model's is {lora} + {rope}"
            )));
        }
        Ok(())
    }
}

impl std::fmt::Display for KvCacheDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvCacheDtype::F32 => "f32",
            KvCacheDtype::Bf16 => "bf16",
            KvCacheDtype::Fp8E4m3 => "fp8_e4m3",
        })
    }
}

impl std::str::FromStr for KvCacheDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        KvCacheDtype::parse(s)
    }
}

/// How the forward computes. [`GpuOptions::reference`] matches the CPU reference to f32
/// rounding; [`GpuOptions::fast`] is DeepSeek's inference recipe on the fast kernels;
/// [`GpuOptions::fast_fp8_cache`] the same over the fp8 e4m3 latent cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuOptions {
    /// The latent cache's format: f32, bf16 (which the MLA decode kernels read) or fp8 e4m3.
    pub kv_cache: KvCacheDtype,
    /// float8 weights through the FP8 tensor-core GEMMs and the fused MoE, activations quantized
    /// per token and 128-channel group (scale amax/448); bf16 weights through the vendor BLAS;
    /// INT8 weights (block / channel) through the INT8 GEMMs on int8 activations (per token
    /// group of 128 / per token) and AWQ weights through the W4A16 GEMM on bf16 activations,
    /// dense and routed experts alike, where the kernels take the shape (`quant`).
    /// Off: the simple GEMM on f32 activations, the float8 weights' exact values, INT8 / AWQ
    /// dequantized to f32.
    pub quant_kernels: bool,
}

impl GpuOptions {
    pub fn reference() -> Self {
        GpuOptions { kv_cache: KvCacheDtype::F32, quant_kernels: false }
    }
    pub fn fast() -> Self {
        GpuOptions { kv_cache: KvCacheDtype::Bf16, quant_kernels: true }
    }
    /// [`GpuOptions::fast`] over the fp8 e4m3 latent cache (`--kv-cache-dtype fp8_e4m3`).
    pub fn fast_fp8_cache() -> Self {
        GpuOptions { kv_cache: KvCacheDtype::Fp8E4m3, quant_kernels: true }
    }
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self::reference()
    }
}

/// The profiler's events of one forward, each labelled with the step it ends.
type ProfileEvents = Vec<(&'static str, Box<dyn StreamEvent>)>;

pub struct GpuModel {
    cfg: ModelConfig,
    opts: GpuOptions,
    stream: Box<dyn GpuStream>,
    /// Split-K scratch of the FP8 GEMMs and the fused MoE on this model's stream.
    fp8_ws: Mutex<Fp8Workspace>,
    moe_ws: Mutex<FusedMoeWorkspace>,
    /// When set, every MoE layer of an eager forward appends its expert ids [T·top_k] here
    /// (routing statistics; see `random::balance_routing`).
    routing_probe: Mutex<Option<Vec<Vec<i32>>>>,
    /// When set, [`GpuModel::mark`] records a timing event after each step of the forward.
    profile: Mutex<Option<ProfileEvents>>,
    /// RMSNorm fused with the next GEMMs' activation quantization (`norm_quant`); on by default,
    /// off only to compare against the two-kernel path ([`GpuModel::set_norm_quant_fusion`]).
    norm_quant_fusion: std::sync::atomic::AtomicBool,
    embed: DeviceTensor,
    layers: Vec<Layer>,
    norm: DeviceTensor,
    lm_head: Linear,
    cos: DeviceTensor,
    sin: DeviceTensor,
    /// Cache capacity of one sequence, in positions (a whole number of pages).
    max_positions: usize,
    /// Attention heads of this rank (all of them on one GPU).
    heads: usize,
    /// What this rank holds ([`Shard::single`] for the whole model).
    plan: ShardPlan,
    /// Multiprocessors of the device (sizes the MLA kernel's split), when the stream reports it.
    sm_count: Option<usize>,
    /// Shared memory per block the MLA plans are fitted to ([`mla::plan_smem_limit`]).
    mla_smem_limit: Option<usize>,
}

// SAFETY: every GpuStream implementation (CudaStream, HipStream) is Send + Sync (their raw
// handles are used behind mutexes or by the thread-safe driver, and each call binds the device's
// context first); the trait object just does not say so. The model moves to the engine thread.
unsafe impl Send for GpuModel {}

impl GpuModel {
    /// Loads config.json and the checkpoint in `dir` onto `device` (`cuda:N` or `hip:N`) with
    /// the reference options.
    pub fn load(dir: &Path, device: Device) -> Result<GpuModel> {
        Self::load_with(dir, device, GpuOptions::reference())
    }

    /// Loads `dir` onto `device` to compute as `opts` says.
    pub fn load_with(dir: &Path, device: Device, opts: GpuOptions) -> Result<GpuModel> {
        Self::load_shard(dir, open_stream(device)?, Shard::single(), opts)
    }

    /// Loads only `shard`'s slice of the checkpoint in `dir` (see [`crate::model::shard`]) and
    /// runs on `stream` (for a TP group: its rank's stream of the communicator).
    pub fn load_shard(dir: &Path, stream: Box<dyn GpuStream>, shard: Shard, opts: GpuOptions) -> Result<GpuModel> {
        let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
        opts.kv_cache.check(&cfg)?;
        let ckpt = Checkpoint::open(dir)?;
        ckpt.check_against(&cfg)?;
        let plan = ShardPlan::new(&cfg, shard)?;
        let s = stream.as_ref();
        let h = cfg.hidden_size;
        let embed_name = "model.embed_tokens.weight";
        // Vocab-parallel like lm_head: this rank's rows (all of them on one GPU).
        let vocab = TensorSlice { rows: plan.vocab.clone(), cols: 0..h };
        let embed = match ckpt.info(embed_name).map(|i| i.dtype) {
            Some(DType::BF16) => load_linear_part(s, &ckpt, &[embed_name.to_string()], cfg.vocab_size, h, &vocab)?.w,
            _ => {
                let all = ckpt.load_f32(embed_name, &[cfg.vocab_size, h])?;
                let rows = &all.data()[vocab.rows.start * h..vocab.rows.end * h];
                DeviceTensor::from_f32(s, &[vocab.rows.len(), h], rows, DevDType::F32)?
            }
        };
        let layers = (0..cfg.num_hidden_layers).map(|i| load_layer(s, &ckpt, &cfg, &opts, i, &plan)).collect::<Result<Vec<_>>>()?;
        let norm = upload_f32(s, &ckpt.load_f32("model.norm.weight", &[h])?)?;
        let lm_name = if cfg.tie_word_embeddings && !ckpt.contains("lm_head.weight") { embed_name } else { "lm_head.weight" };
        let lm_head = load_linear_part(s, &ckpt, &[lm_name.to_string()], cfg.vocab_size, h, &vocab)?;
        Self::assemble(cfg, opts, stream, Weights { embed, layers, norm, lm_head }, plan)
    }

    /// The model over weights already on `stream`'s device (`plan`'s shard): adds the RoPE tables.
    fn assemble(cfg: ModelConfig, opts: GpuOptions, stream: Box<dyn GpuStream>, w: Weights, plan: ShardPlan) -> Result<GpuModel> {
        // Steps return their logits to the host: keep that memory mapped between steps.
        crate::host_alloc::keep_freed_memory();
        let sm_count = stream.sm_count().ok();
        let mla_smem_limit = mla::plan_smem_limit(stream.as_ref());
        let s = stream.as_ref();
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
        Ok(GpuModel {
            cfg,
            opts,
            embed: w.embed,
            layers: w.layers,
            norm: w.norm,
            lm_head: w.lm_head,
            cos,
            sin,
            max_positions,
            stream,
            heads: plan.heads.len(),
            plan,
            sm_count,
            mla_smem_limit,
            fp8_ws: Mutex::new(Fp8Workspace::new()),
            moe_ws: Mutex::new(FusedMoeWorkspace::new()),
            routing_probe: Mutex::new(None),
            profile: Mutex::new(None),
            norm_quant_fusion: std::sync::atomic::AtomicBool::new(true),
        })
    }

    fn s(&self) -> &dyn GpuStream {
        self.stream.as_ref()
    }

    fn empty(&self, shape: &[usize]) -> Result<DeviceTensor> {
        DeviceTensor::empty(self.s(), DevDType::F32, shape)
    }

    fn empty_as(&self, dtype: DevDType, shape: &[usize]) -> Result<DeviceTensor> {
        DeviceTensor::empty(self.s(), dtype, shape)
    }

    /// `x` converted to `dtype` (a new tensor of the same shape).
    fn cast_to(&self, x: &DeviceTensor, dtype: DevDType) -> Result<DeviceTensor> {
        let y = self.empty_as(dtype, x.shape())?;
        dispatch::cast(self.s(), &y, x)?;
        Ok(y)
    }

    /// How this model computes.
    pub fn options(&self) -> GpuOptions {
        self.opts
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// What this model holds of the checkpoint (its rank's shard).
    pub fn shard_plan(&self) -> &ShardPlan {
        &self.plan
    }

    /// Logits columns this model computes: its vocab slice (the whole vocabulary on one GPU).
    pub fn vocab_slice(&self) -> std::ops::Range<usize> {
        self.plan.vocab.clone()
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

    /// Bytes of one cached position per layer in this model's page pools: the latent width times
    /// the element size, or 656 for the fp8 cache.
    pub fn cache_row_bytes(&self) -> usize {
        self.opts.kv_cache.row_bytes(self.latent_width())
    }


    pub fn forward_gpu(&self, tokens: &[u32], cache: &mut GpuCache) -> Result<Tensor> {
        let seq = BatchSeq { tokens, start: cache.len, block_table: &cache.table, logits: LogitRows::All };
        let mut out = self.forward_batch(&mut cache.pool, &[seq])?;
        cache.len += tokens.len();
        let logits = out.pop().unwrap_or_default();
        Tensor::new(vec![tokens.len(), self.lm_head.n], logits)
    }

    /// One forward over a batch of sequences sharing `pool`: appends every sequence's new latent
    /// rows to its pages and returns, per sequence, the logits rows it asked for (row-major
    /// [rows, vocab]; empty for [`LogitRows::None`]). One host synchronization: the logits copy.
    pub fn forward_batch(&self, pool: &mut PagePool, seqs: &[BatchSeq<'_>]) -> Result<Vec<Vec<f32>>> {
        self.forward_batch_as(pool, seqs, Readout::Logits)?.into_logits()
    }

    /// [`GpuModel::forward_batch`] with the rows read out as `readout` says: the logits, or only
    /// their argmax (B·4 bytes to the host instead of B·vocab·4).
    pub fn forward_batch_as(&self, pool: &mut PagePool, seqs: &[BatchSeq<'_>], readout: Readout) -> Result<BatchOutput> {
        let (packed, layout) = pack_step(self, pool, seqs, None)?;
        let step = self.step_tensors(pool, seqs, &packed, &layout)?;
        let logits = self.run(pool, &step)?;
        self.read_rows(logits.as_ref(), &row_counts(seqs), readout)
    }

    /// The step tensors of `seqs` (packed as `packed`, `layout`) on this model's stream, with the
    /// MLA kernel's schedules where the cache allows it: one for a decode step, one per sequence
    /// otherwise.
    fn step_tensors(&self, pool: &PagePool, seqs: &[BatchSeq<'_>], packed: &[u32], layout: &StepLayout) -> Result<StepTensors> {
        let step = StepTensors::uploaded(self.s(), layout, self.mla_decode_plan(pool, layout), packed)?;
        match step.mla_decode {
            None => step.with_mla_prefill(self.s(), self.mla_prefill_plans(pool, seqs)),
            Some(_) => Ok(step),
        }
    }

    /// Per sequence, its `counts[i]` consecutive rows of `logits` [R, vocab] (`None`: no row was
    /// computed), as `readout` says.
    fn read_rows(&self, logits: Option<&DeviceTensor>, counts: &[usize], readout: Readout) -> Result<BatchOutput> {
        let Some(l) = logits else { return Ok(BatchOutput::empty(readout, counts.len())) };
        Ok(match readout {
            Readout::Logits => BatchOutput::Logits(l.rows_f32(self.s(), counts, self.lm_head.n)?),
            Readout::Argmax => BatchOutput::Argmax(split_rows(&self.argmax_rows(l, false)?.0, counts, 1)),
        })
    }

    /// Each row's argmax of `logits` [R, cols] taken on the device, and with `values` the row's
    /// maximum (-inf for a row without a value above it); two copies to the host at most.
    fn argmax_rows(&self, logits: &DeviceTensor, values: bool) -> Result<(Vec<u32>, Vec<f32>)> {
        let rows = logits.shape().first().copied().unwrap_or(0);
        let ids = self.empty_as(DevDType::I32, &[rows])?;
        let maxima = if values { Some(self.empty(&[rows])?) } else { None };
        dispatch::argmax(self.s(), &ids, maxima.as_ref(), logits)?;
        // The kernel writes indices in 0..cols.
        let ids = ids.to_vec::<i32>(self.s())?.into_iter().map(|i| i as u32).collect();
        let maxima = match maxima {
            Some(m) => m.to_f32(self.s())?,
            None => Vec::new(),
        };
        Ok((ids, maxima))
    }

    /// Ends the forward step `label` when profiling ([`GpuModel::profile_batch`]): records an
    /// event; the step's device time is the time since the previous one.
    fn mark(&self, label: &'static str) -> Result<()> {
        let mut p = self.profile.lock().map_err(|_| Error::InvalidArgument("profiler lock poisoned".into()))?;
        if let Some(events) = p.as_mut() {
            events.push((label, self.s().record_event()?));
        }
        Ok(())
    }

    /// [`GpuModel::forward_batch`] with a timing event after every step of the forward: returns
    /// the device milliseconds per step label (summed over the layers), in forward order, with
    /// the total. Eager only; the events add a little time of their own.
    pub fn profile_batch(&self, pool: &mut PagePool, seqs: &[BatchSeq<'_>]) -> Result<Vec<(String, f64)>> {
        let lock = || self.profile.lock().map_err(|_| Error::InvalidArgument("profiler lock poisoned".into()));
        self.s().synchronize()?;
        *lock()? = Some(vec![("start", self.s().record_event()?)]);
        let run = self.forward_batch(pool, seqs);
        let events = lock()?.take().unwrap_or_default();
        run?;
        let mut out: Vec<(String, f64)> = Vec::new();
        for w in events.windows(2) {
            let ms = w[1].1.ms_since(w[0].1.as_ref())? as f64;
            match out.iter_mut().find(|(l, _)| l == w[1].0) {
                Some((_, sum)) => *sum += ms,
                None => out.push((w[1].0.to_string(), ms)),
            }
        }
        if let (Some(first), Some(last)) = (events.first(), events.last()) {
            out.push(("total".into(), last.1.ms_since(first.1.as_ref())? as f64));
        }
        Ok(out)
    }

    /// The MLA decode kernel's plan for a step of `layout` over `pool`, when the step runs it:
    /// every sequence decodes one token, over a bf16 or fp8 cache of 64-position pages, with
    /// DeepSeek's 512 + 64 latent (the kernel's fixed widths); the plan carries the cache type.
    /// Other steps take the paged attention kernel.
    fn mla_decode_plan(&self, pool: &PagePool, layout: &StepLayout) -> Option<MlaDecodePlan> {
        if layout.tokens != layout.seqs {
            return None;
        }
        self.mla_kernel_plan(pool, layout.seqs, 1)
    }

    /// A plan of the split-KV MLA kernel for `batch` sequences of `s_q` new tokens each, when the
    /// cache is one it reads (bf16 or fp8 rows of DeepSeek's 512 + 64 latent in 64-position pages).
    fn mla_kernel_plan(&self, pool: &PagePool, batch: usize, s_q: usize) -> Option<MlaDecodePlan> {
        let c = &self.cfg;
        let cache = self.opts.kv_cache.mla()?;
        let fits = pool.page_size == mla::PAGE && c.kv_lora_rank == mla::DV && c.kv_lora_rank + c.qk_rope_head_dim == mla::DK;
        if !fits {
            return None;
        }
        let sms = self.sm_count?;
        // The sm_90a wgmma kernel where it runs and pays (bf16 cache, s_q·H ≥ 32; fp8 cache with
        // DSV3_MLA_WGMMA_FP8=1; DSV3_MLA_WGMMA=0: off).
        // Sized to the device's shared memory (A100 / Ada: the 32-key-tile kernel), else none.
        let plan = MlaDecodePlan::new(batch, s_q, self.heads, sms).ok()?.with_cache_dtype(cache).with_default_kernel(self.stream.as_ref());
        match self.mla_smem_limit {
            Some(limit) => plan.fit_shared_memory(limit),
            None => Some(plan),
        }
    }

    /// Prefill and mixed steps: one split-KV MLA launch per sequence (its new tokens as the query
    /// block) where the cache allows the kernel — the absorbed prefill on tensor cores instead of
    /// the simple paged attention. (sequence, first token row, tokens, plan); empty otherwise.
    fn mla_prefill_plans(&self, pool: &PagePool, seqs: &[BatchSeq<'_>]) -> Vec<(usize, usize, usize, MlaDecodePlan)> {
        let mut first = 0;
        let mut plans = Vec::with_capacity(seqs.len());
        for (i, q) in seqs.iter().enumerate() {
            let n = q.tokens.len();
            match self.mla_kernel_plan(pool, 1, n) {
                Some(plan) => plans.push((i, first, n, plan)),
                None => return Vec::new(),
            }
            first += n;
        }
        plans
    }

    /// The forward proper, from uploaded step tensors: queues every kernel and returns the logits
    /// [R, vocab slice] of the rows asked for (`None` when none is), without synchronizing (so
    /// that it can be captured in a graph). The one-rank case of [`forward::run_ranks`].
    fn run(&self, pool: &PagePool, step: &StepTensors) -> Result<Option<DeviceTensor>> {
        let mut out = run_ranks(&[RankStep { model: self, pool, step, attn: AttnPart::Heads }], &mut |_| Ok(()))?;
        Ok(out.pop().flatten())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_cache_dtypes_size_their_rows() {
        for (s, want) in [("auto", KvCacheDtype::Bf16), ("bf16", KvCacheDtype::Bf16), ("f32", KvCacheDtype::F32), ("fp8_e4m3", KvCacheDtype::Fp8E4m3), ("fp8", KvCacheDtype::Fp8E4m3)] {
            assert_eq!(KvCacheDtype::parse(s).unwrap(), want, "{s}");
        }
        assert!(KvCacheDtype::parse("fp8_e5m2").is_err());
        assert_eq!("fp8_e4m3".parse::<KvCacheDtype>().unwrap().to_string(), "fp8_e4m3");
        // DeepSeek-V3: 576 values per position per layer.
        let w = 576;
        assert_eq!((KvCacheDtype::F32.row_len(w), KvCacheDtype::F32.row_bytes(w)), (576, 2304));
        assert_eq!((KvCacheDtype::Bf16.row_len(w), KvCacheDtype::Bf16.row_bytes(w)), (576, 1152));
        assert_eq!((KvCacheDtype::Fp8E4m3.row_len(w), KvCacheDtype::Fp8E4m3.row_bytes(w)), (656, 656));
        assert_eq!(KvCacheDtype::Fp8E4m3.tensor_dtype(), DevDType::U8);
        assert_eq!(KvCacheDtype::Fp8E4m3.mla(), Some(MlaCacheDtype::Fp8E4m3));
        assert_eq!(KvCacheDtype::Bf16.mla(), Some(MlaCacheDtype::Bf16));
        assert_eq!(KvCacheDtype::F32.mla(), None);
        assert_eq!(KvCacheDtype::Fp8E4m3.absorb_dtype(), DevDType::Bf16);
        assert_eq!(KvCacheDtype::F32.absorb_dtype(), DevDType::F32);
        // The fp8 rows fix the latent to 512 + 64.
        let mut cfg = deepseek_v3_slice(2, 1).unwrap();
        assert!(KvCacheDtype::Fp8E4m3.check(&cfg).is_ok());
        cfg.kv_lora_rank = 256;
        let e = KvCacheDtype::Fp8E4m3.check(&cfg).unwrap_err().to_string();
        assert!(e.contains("512 + 64") && e.contains("256 + 64"), "{e}");
        assert!(KvCacheDtype::Bf16.check(&cfg).is_ok() && KvCacheDtype::F32.check(&cfg).is_ok());
    }
}
