//! MLA in the absorbed form: projections, RoPE, the latent cache write, attention over the
//! latent cache and the value up-projection, each step in its own method.

use super::norm_quant::QuantAct;
use super::step::StepTensors;
use super::weights::{Layer, QProj};
use super::{GpuModel, KvCacheDtype, PagePool};
use crate::backend::dispatch::{self, ActQuant, Batched, PagedCache, RopeLayout, Strided};
use crate::backend::mla::{mla_cache_write, mla_decode, MlaCacheDtype};
use crate::backend::{DType as DevDType, DeviceTensor};
use crate::error::Result;

impl GpuModel {
    /// The quantized operand the first projections of `layer` (q_a or the direct q, and kv_a)
    /// share, if any: what the input norm may write for them (`super::norm_quant`).
    pub(super) fn attn_act_quant(&self, layer: &Layer) -> Option<ActQuant> {
        let q = match &layer.q {
            QProj::LowRank { q_a, .. } => q_a,
            QProj::Direct(w) => w,
        };
        self.shared_act_quant(&[q, &layer.kv_a], self.cfg.hidden_size)
    }

    /// MLA for `x` [T, hidden] of the batch's tokens (`xq`: its quantized form, when the input
    /// norm wrote it); writes their latent rows to the pool.
    pub(super) fn attention(&self, layer: &Layer, li: usize, x: &DeviceTensor, xq: Option<&QuantAct>, pool: &PagePool, step: &StepTensors) -> Result<DeviceTensor> {
        let s = self.s();
        let c = &self.cfg;
        let (t, heads) = (x.shape()[0], self.heads);
        let (nope, rope, lora) = (c.qk_nope_head_dim, c.qk_rope_head_dim, c.kv_lora_rank);
        let qk = nope + rope;
        let latent = lora + rope;
        let q = match &layer.q {
            QProj::LowRank { q_a, q_a_norm, q_b } => {
                let c_q = self.linear_q(x, xq, q_a)?;
                let q_lora = c_q.shape().last().copied().unwrap_or(1);
                match self.shared_act_quant(&[q_b], q_lora) {
                    // q_b is the normalized row's only reader: the norm writes just its codes.
                    Some(kind) => self.linear_quantized(&self.norm_quant(None, None, &c_q, q_a_norm, kind)?, q_b)?,
                    None => {
                        let c_q_n = self.empty(c_q.shape())?;
                        dispatch::rms_norm(s, &c_q_n, &c_q, q_a_norm, c.rms_norm_eps)?;
                        self.linear(&c_q_n, q_b)?
                    }
                }
            }
            QProj::Direct(w) => self.linear_q(x, xq, w)?,
        };
        self.mark("attn.q_proj")?;
        let kv = self.linear_q(x, xq, &layer.kv_a)?;
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
        self.mark("attn.kv_a_norm_rope_write")?;
        let q_abs = self.absorb_q(layer, &q, t)?;
        self.mark("attn.absorb_q")?;
        let o_lat = self.mla_attend(&q_abs, &paged, step)?;
        self.mark("attn.mla")?;
        let o_cat = self.unabsorb_o(layer, &o_lat, t)?;
        self.mark("attn.unabsorb_o")?;
        let o = self.linear(&o_cat, &layer.o)?;
        self.mark("attn.o_proj")?;
        Ok(o)
    }

    /// `x` in bf16 when the per-head weights `w` are bf16 and the stream has a vendor BLAS (whose
    /// batched GEMM then takes both); `None`: use `x` as it is (the generated GEMM).
    fn blas_operand(&self, x: &DeviceTensor, w: &DeviceTensor) -> Result<Option<DeviceTensor>> {
        if w.dtype() == DevDType::Bf16 && x.dtype() != DevDType::Bf16 && self.s().has_blas() {
            return self.cast_to(x, DevDType::Bf16).map(Some);
        }
        Ok(None)
    }

    /// Appends the batch's latent rows `kv` [T, kv_lora + rope] to their sequences' pages: as
    /// f32 / bf16 values, or quantized on write into the fp8 rows.
    pub(super) fn kv_write(&self, paged: &PagedCache, kv: &DeviceTensor, step: &StepTensors) -> Result<()> {
        match self.opts.kv_cache {
            KvCacheDtype::F32 | KvCacheDtype::Bf16 => dispatch::paged_kv_write(self.s(), paged, kv, &step.seq, &step.pos),
            KvCacheDtype::Fp8E4m3 => {
                mla_cache_write(self.s(), MlaCacheDtype::Fp8E4m3, paged.cache, kv, paged.block_table, &step.seq, &step.pos)
            }
        }
    }

    /// Absorbed query [T, H, kv_lora + rope]: q_nope · W_uk per head (one batched GEMM over the
    /// heads), then q_pe (already rotated).
    pub(super) fn absorb_q(&self, layer: &Layer, q: &DeviceTensor, t: usize) -> Result<DeviceTensor> {
        let s = self.s();
        let c = &self.cfg;
        let (heads, nope, rope, lora) = (self.heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.kv_lora_rank);
        let (qk, latent) = (nope + rope, lora + rope);
        let q_abs = self.empty(&[t, heads, latent])?;
        let q_in = self.blas_operand(q, &layer.w_uk_t)?;
        dispatch::gemm_batched(
            s,
            Batched { view: Strided::at(&q_abs, 0, heads * latent), batch_stride: latent },
            Batched { view: Strided::at(q_in.as_ref().unwrap_or(q), 0, heads * qk), batch_stride: qk },
            Batched { view: Strided::rows(&layer.w_uk_t), batch_stride: lora * nope },
            t,
            lora,
            nope,
            heads,
        )?;
        dispatch::copy_2d(s, Strided::at(&q_abs, lora, latent), Strided::at(q, nope, qk), t * heads, rope)?;
        Ok(q_abs)
    }

    /// Latent attention output o_lat [T, H, kv_lora] over each token's sequence, causal: the
    /// split-KV MLA decode kernel where the step planned it (its plan carries the bf16 / fp8
    /// cache type), the paged attention kernel otherwise (over f32, bf16 or fp8 rows).
    pub(super) fn mla_attend(&self, q_abs: &DeviceTensor, paged: &PagedCache, step: &StepTensors) -> Result<DeviceTensor> {
        let c = &self.cfg;
        let (t, heads) = (q_abs.shape()[0], self.heads);
        if let Some(meta) = &step.mla_decode {
            let q = self.empty_as(DevDType::Bf16, &[t, 1, heads, c.kv_lora_rank + c.qk_rope_head_dim])?;
            dispatch::cast(self.s(), &q, q_abs)?;
            let o_lat = self.empty(&[t, 1, heads, c.kv_lora_rank])?;
            let lse = self.empty(&[t, 1, heads])?;
            mla_decode(self.s(), &o_lat, &lse, &q, paged.cache, paged.block_table, paged.seq_lens, meta, c.softmax_scale())?;
            return Ok(o_lat);
        }
        let o_lat = self.empty(&[t, heads, c.kv_lora_rank])?;
        if !step.mla_prefill.is_empty() {
            self.mla_attend_per_sequence(&o_lat, q_abs, paged, step)?;
            return Ok(o_lat);
        }
        dispatch::mla_paged_attention(self.s(), &o_lat, q_abs, paged, &step.seq, &step.pos, c.kv_lora_rank, c.softmax_scale())?;
        Ok(o_lat)
    }

    /// o_lat of a prefill / mixed step through the split-KV kernel, one launch per sequence: its
    /// query rows copied out (bf16), attended with its own schedule, copied back.
    fn mla_attend_per_sequence(&self, o_lat: &DeviceTensor, q_abs: &DeviceTensor, paged: &PagedCache, step: &StepTensors) -> Result<()> {
        let s = self.s();
        let c = &self.cfg;
        let (heads, dk, dv) = (self.heads, c.kv_lora_rank + c.qk_rope_head_dim, c.kv_lora_rank);
        let q_all = self.cast_to(q_abs, DevDType::Bf16)?;
        for e in &step.mla_prefill {
            let q = self.empty_as(DevDType::Bf16, &[1, e.tokens, heads, dk])?;
            let o = self.empty(&[1, e.tokens, heads, dv])?;
            let lse = self.empty(&[1, e.tokens, heads])?;
            // SAFETY: rows first .. first + tokens lie inside the step's [T, H, ·] tensors.
            unsafe { s.copy_dtod(q.raw(), q_all.raw() + (e.first * heads * dk * 2) as u64, q.bytes())? };
            mla_decode(s, &o, &lse, &q, paged.cache, &e.block_table, &e.seq_lens, &e.meta, c.softmax_scale())?;
            unsafe { s.copy_dtod(o_lat.raw() + (e.first * heads * dv * 4) as u64, o.raw(), o.bytes())? };
        }
        Ok(())
    }

    /// o = o_lat · W_uvᵀ per head (one batched GEMM over the heads), as [T, H·v] for o_proj.
    pub(super) fn unabsorb_o(&self, layer: &Layer, o_lat: &DeviceTensor, t: usize) -> Result<DeviceTensor> {
        let c = &self.cfg;
        let (heads, v, lora) = (self.heads, c.v_head_dim, c.kv_lora_rank);
        let o_cat = self.empty(&[t, heads * v])?;
        let o_in = self.blas_operand(o_lat, &layer.w_uv)?;
        dispatch::gemm_batched(
            self.s(),
            Batched { view: Strided::at(&o_cat, 0, heads * v), batch_stride: v },
            Batched { view: Strided::at(o_in.as_ref().unwrap_or(o_lat), 0, heads * lora), batch_stride: lora },
            Batched { view: Strided::rows(&layer.w_uv), batch_stride: v * lora },
            t,
            v,
            lora,
            heads,
        )
        .map(|()| o_cat)
    }
}
