//! Shape-checked launches of every kernel family on any [`GpuStream`]: the instance is chosen
//! from the tensors' dtypes, arguments are checked against the registry's argument list, and
//! the launch configuration is computed here (one place per family).
#![allow(clippy::too_many_arguments, clippy::manual_is_multiple_of, clippy::manual_checked_ops)]

use super::memory::DeviceTensor;
use super::registry::{self, KERNELS};
use super::stream::{BlasBatched, GpuStream};
use super::types::*;
use crate::error::{Error, Result};
use std::ffi::c_void;

/// A kernel argument for [`launch_by_name`].
pub enum KArg<'a> {
    /// A tensor the kernel reads.
    In(&'a DeviceTensor),
    /// A tensor the kernel writes.
    Out(&'a DeviceTensor),
    /// A tensor address plus an element offset (views into a tensor).
    InAt(&'a DeviceTensor, usize),
    OutAt(&'a DeviceTensor, usize),
    /// A null pointer (optional inputs, e.g. float8 scales of a bf16 GEMM, or optional outputs).
    Null,
    U32(u32),
    I32(i32),
    F32(f32),
    U64(u64),
    /// A TMA descriptor ([`GpuStream::tensor_map`]), passed by value.
    Map(TensorMap),
}

fn bad(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

/// Launches registry kernel `name` with `args`, checked against its argument list (count,
/// pointer vs scalar, element types).
pub fn launch_by_name(s: &dyn GpuStream, name: &str, cfg: LaunchCfg, args: &[KArg]) -> Result<()> {
    let k = registry::kernel(name).ok_or_else(|| bad(format!("no kernel `{name}` in the registry")))?;
    launch_checked(s, k, cfg, args)
}

pub fn launch_checked(s: &dyn GpuStream, k: &'static KernelInfo, cfg: LaunchCfg, args: &[KArg]) -> Result<()> {
    if args.len() != k.args.len() {
        return Err(bad(format!("{}: {} arguments given, {} expected", k.name, args.len(), k.args.len())));
    }
    // Values live here while the launch reads them (descriptors in their own slots: 128 bytes).
    let mut vals: Vec<u64> = Vec::with_capacity(args.len());
    let mut maps: Vec<TensorMap> = args.iter().filter_map(|a| if let KArg::Map(m) = a { Some(*m) } else { None }).collect();
    for (a, info) in args.iter().zip(k.args) {
        let mismatch = || bad(format!("{}: argument `{}` expects {:?}", k.name, info.name, info.ty));
        let v: u64 = match (a, info.ty) {
            (KArg::Map(_), ArgType::TensorMap) => 0,
            (KArg::In(t), ArgType::Ptr(d)) | (KArg::Out(t), ArgType::PtrMut(d)) => {
                t.check_dtype(d).map_err(|e| bad(format!("{}: argument `{}`: {e}", k.name, info.name)))?;
                t.raw()
            }
            (KArg::InAt(t, off), ArgType::Ptr(d)) | (KArg::OutAt(t, off), ArgType::PtrMut(d)) => {
                t.check_dtype(d).map_err(|e| bad(format!("{}: argument `{}`: {e}", k.name, info.name)))?;
                if *off > t.numel() {
                    return Err(bad(format!("{}: argument `{}`: offset {off} past {} elements", k.name, info.name, t.numel())));
                }
                t.raw() + (*off * d.size()) as u64
            }
            (KArg::Null, ArgType::Ptr(_) | ArgType::PtrMut(_)) => 0,
            (KArg::U32(x), ArgType::Scalar(DType::U32)) => *x as u64,
            (KArg::I32(x), ArgType::Scalar(DType::I32)) => *x as u32 as u64,
            (KArg::F32(x), ArgType::Scalar(DType::F32)) => x.to_bits() as u64,
            (KArg::U64(x), ArgType::Scalar(DType::U64)) => *x,
            _ => return Err(mismatch()),
        };
        vals.push(v);
    }
    // Little-endian: the low 4 bytes of each u64 hold a 4-byte scalar.
    let mut map_slots = maps.iter_mut();
    let mut params: Vec<*mut c_void> = args
        .iter()
        .zip(vals.iter_mut())
        .map(|(a, v)| match a {
            KArg::Map(_) => map_slots.next().map_or(std::ptr::null_mut(), |m| m as *mut TensorMap as *mut c_void),
            _ => v as *mut u64 as *mut c_void,
        })
        .collect();
    unsafe { s.launch(k, cfg, &mut params) }
}

fn u32_of(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| bad(format!("{what} = {n} does not fit the kernels' 32-bit sizes")))
}

fn rows_cols(t: &DeviceTensor) -> (usize, usize) {
    let cols = *t.shape().last().unwrap_or(&1);
    (if cols == 0 { 0 } else { t.numel() / cols }, cols)
}

fn same_shape(a: &DeviceTensor, b: &DeviceTensor, what: &str) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(bad(format!("{what}: shapes {:?} and {:?} differ", a.shape(), b.shape())));
    }
    Ok(())
}

fn grid_stride_blocks(n: usize) -> u32 {
    n.div_ceil(256).clamp(1, 65535 * 8) as u32
}

/// out[t, :] = table[ids[t], :].
pub fn embedding(s: &dyn GpuStream, out: &DeviceTensor, table: &DeviceTensor, ids: &DeviceTensor) -> Result<()> {
    embedding_slice(s, out, table, ids, 0, rows_cols(table).0)
}

/// [`embedding`] from a vocab-parallel slice: `table` holds rows `first..first + rows` of a
/// vocabulary of `total`; ids of other slices give zero rows (summed over the ranks, the lookup),
/// ids >= `total` NaN rows.
pub fn embedding_slice(s: &dyn GpuStream, out: &DeviceTensor, table: &DeviceTensor, ids: &DeviceTensor, first: usize, total: usize) -> Result<()> {
    let (rows, hidden) = rows_cols(table);
    let tokens = ids.numel();
    if out.numel() != tokens * hidden || first + rows > total {
        return Err(bad(format!("embedding: out {:?} for {tokens} tokens of {hidden}, rows {first}..{} of {total}", out.shape(), first + rows)));
    }
    let name = format!("embedding_{}_{}", table.dtype(), out.dtype());
    let u = |x: usize, what: &str| u32_of(x, what).map(KArg::U32);
    launch_by_name(
        s,
        &name,
        LaunchCfg::linear(u32_of(tokens, "tokens")?, 256),
        &[KArg::Out(out), KArg::In(table), KArg::In(ids), u(tokens, "tokens")?, u(hidden, "hidden")?, u(rows, "rows")?, u(first, "first")?, u(total, "vocab")?],
    )
}

/// Threads of a norm kernel's block (one block per row; the manifest's `norm` family allows 1024)
/// for `rows` rows. A decode step's few rows are latency-bound at 256 threads (H200 ncu, one
/// 7168-wide row: 21.9 µs, no eligible warp 87% of cycles; 7.9 µs at 1024); with a row per SM or
/// more, 256 (a 4096-token prefill's norms took 1.32 ms at 256, 1.60 at 1024). The fused and
/// unfused norms of the same rows take the same block, so their sums stay identical.
fn norm_threads(s: &dyn GpuStream, rows: usize) -> u32 {
    if rows < s.sm_count().unwrap_or(132) {
        1024
    } else {
        256
    }
}

/// Row-wise RMSNorm over the last dimension.
pub fn rms_norm(s: &dyn GpuStream, out: &DeviceTensor, x: &DeviceTensor, w: &DeviceTensor, eps: f32) -> Result<()> {
    same_shape(out, x, "rms_norm")?;
    let (rows, cols) = rows_cols(x);
    if w.numel() != cols {
        return Err(bad(format!("rms_norm: weight of {} for rows of {cols}", w.numel())));
    }
    launch_by_name(
        s,
        &format!("rms_norm_{}", x.dtype()),
        LaunchCfg::linear(u32_of(rows, "rows")?, norm_threads(s, rows)),
        &[KArg::Out(out), KArg::In(x), KArg::In(w), KArg::U32(rows as u32), KArg::U32(cols as u32), KArg::F32(eps)],
    )
}

/// residual += x; out = rms_norm(residual).
pub fn add_rms_norm(s: &dyn GpuStream, out: &DeviceTensor, residual: &DeviceTensor, x: &DeviceTensor, w: &DeviceTensor, eps: f32) -> Result<()> {
    same_shape(out, x, "add_rms_norm")?;
    same_shape(residual, x, "add_rms_norm")?;
    let (rows, cols) = rows_cols(x);
    if w.numel() != cols {
        return Err(bad(format!("add_rms_norm: weight of {} for rows of {cols}", w.numel())));
    }
    launch_by_name(
        s,
        &format!("add_rms_norm_{}", x.dtype()),
        LaunchCfg::linear(u32_of(rows, "rows")?, norm_threads(s, rows)),
        &[KArg::Out(out), KArg::Out(residual), KArg::In(x), KArg::In(w), KArg::U32(rows as u32), KArg::U32(cols as u32), KArg::F32(eps)],
    )
}

/// The quantized operand a fused RMSNorm ([`rms_norm_quant`], [`add_rms_norm_quant`]) writes for
/// the next linear layer: what [`fp8_quant_group128`] (FP8, per token and 128-channel group) or
/// `quant_gemm::int8_act_quant` (block INT8: per 128-group; channel INT8: per token) would write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActQuant {
    /// e4m3fn / e4m3fnuz codes (the q tensor's dtype), scales [rows, ⌈cols/128⌉].
    Fp8Group128,
    /// i8 codes, scales [rows, ⌈cols/128⌉].
    Int8Group128,
    /// i8 codes, scales [rows].
    Int8Token,
}

impl ActQuant {
    /// Scale count of `rows` rows of `cols`.
    pub fn scales_len(self, rows: usize, cols: usize) -> usize {
        match self {
            ActQuant::Fp8Group128 | ActQuant::Int8Group128 => rows * cols.div_ceil(128),
            ActQuant::Int8Token => rows,
        }
    }

    /// The kernel-name part after `{rms_norm,add_rms_norm}_quant_` for rows of `t`, codes `q`.
    fn kernel_tail(self, t: DType, q: DType) -> Result<String> {
        match (self, q) {
            (ActQuant::Fp8Group128, DType::E4m3fn | DType::E4m3fnuz) => Ok(format!("fp8_{t}_{q}")),
            (ActQuant::Int8Group128, DType::I8) => Ok(format!("int8_group128_{t}")),
            (ActQuant::Int8Token, DType::I8) => Ok(format!("int8_token_{t}")),
            _ => Err(bad(format!("norm quant {self:?}: codes of {q}"))),
        }
    }
}

/// Checks a fused norm's quantized outputs against `x` [rows, cols] and the optional `out`.
fn check_norm_quant(what: &str, out: Option<&DeviceTensor>, x: &DeviceTensor, w: &DeviceTensor, kind: ActQuant, q: &DeviceTensor, scales: &DeviceTensor) -> Result<(usize, usize)> {
    if let Some(o) = out {
        same_shape(o, x, what)?;
        o.check_dtype(x.dtype())?;
    }
    let (rows, cols) = rows_cols(x);
    scales.check_dtype(DType::F32)?;
    if w.numel() != cols || q.numel() != rows * cols || scales.numel() != kind.scales_len(rows, cols) {
        return Err(bad(format!(
            "{what} ({kind:?}): weight {:?} q {:?} scales {:?} for x {:?}",
            w.shape(),
            q.shape(),
            scales.shape(),
            x.shape()
        )));
    }
    Ok((rows, cols))
}

/// out = rms_norm(x) (f32 or bf16; `None`: not written) and that output quantized for the next
/// linear layer as `kind`'s standalone kernel would quantize it (epsilon `qeps` on the amax):
/// `q` [rows, cols] (float8 or i8), `scales` ([`ActQuant::scales_len`]). One launch, one block
/// per row; codes and scales bit-identical to [`rms_norm`] followed by the quantization.
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_quant(s: &dyn GpuStream, out: Option<&DeviceTensor>, x: &DeviceTensor, w: &DeviceTensor, eps: f32, kind: ActQuant, q: &DeviceTensor, scales: &DeviceTensor, qeps: f32) -> Result<()> {
    launch_norm_quant(s, out, None, x, w, eps, kind, q, scales, qeps)
}

/// residual += x; out = rms_norm(residual) (`None`: not written), quantized as in
/// [`rms_norm_quant`]: bit-identical to [`add_rms_norm`] followed by the quantization.
#[allow(clippy::too_many_arguments)]
pub fn add_rms_norm_quant(
    s: &dyn GpuStream,
    out: Option<&DeviceTensor>,
    residual: &DeviceTensor,
    x: &DeviceTensor,
    w: &DeviceTensor,
    eps: f32,
    kind: ActQuant,
    q: &DeviceTensor,
    scales: &DeviceTensor,
    qeps: f32,
) -> Result<()> {
    same_shape(residual, x, "add_rms_norm_quant")?;
    residual.check_dtype(x.dtype())?;
    launch_norm_quant(s, out, Some(residual), x, w, eps, kind, q, scales, qeps)
}

/// The fused norm → quant launch, with the residual add where `residual` is given.
#[allow(clippy::too_many_arguments)]
fn launch_norm_quant(s: &dyn GpuStream, out: Option<&DeviceTensor>, residual: Option<&DeviceTensor>, x: &DeviceTensor, w: &DeviceTensor, eps: f32, kind: ActQuant, q: &DeviceTensor, scales: &DeviceTensor, qeps: f32) -> Result<()> {
    let what = if residual.is_some() { "add_rms_norm_quant" } else { "rms_norm_quant" };
    let (rows, cols) = check_norm_quant(what, out, x, w, kind, q, scales)?;
    if rows * cols == 0 {
        return Ok(());
    }
    let args: Vec<KArg> = [out.map_or(KArg::Null, KArg::Out)]
        .into_iter()
        .chain(residual.map(KArg::Out))
        .chain([
            KArg::In(x),
            KArg::In(w),
            KArg::Out(q),
            KArg::Out(scales),
            KArg::U32(rows as u32),
            KArg::U32(u32_of(cols, "cols")?),
            KArg::F32(eps),
            KArg::F32(qeps),
        ])
        .collect();
    launch_by_name(s, &format!("{what}_{}", kind.kernel_tail(x.dtype(), q.dtype())?), LaunchCfg::linear(u32_of(rows, "rows")?, norm_threads(s, rows)), &args)
}

/// Where the rope part of each head sits in a tensor of `tokens` rows.
#[derive(Clone, Copy, Debug)]
pub struct RopeLayout {
    pub heads: usize,
    pub token_stride: usize,
    pub head_stride: usize,
    pub offset: usize,
    pub rope_dim: usize,
}

/// In-place interleaved rotary embedding; `cos`/`sin` are [max_pos, rope_dim/2] f32, `pos` [tokens] i32.
pub fn rope(s: &dyn GpuStream, x: &DeviceTensor, cos: &DeviceTensor, sin: &DeviceTensor, pos: &DeviceTensor, l: RopeLayout) -> Result<()> {
    let tokens = pos.numel();
    if l.rope_dim % 2 != 0 || l.heads == 0 || (l.heads > 1 && l.offset + l.rope_dim > l.head_stride) {
        return Err(bad(format!("rope: bad layout {l:?}")));
    }
    if tokens > 0 && (tokens - 1) * l.token_stride + (l.heads - 1) * l.head_stride + l.offset + l.rope_dim > x.numel() {
        return Err(bad(format!("rope: layout {l:?} for {tokens} tokens overruns {:?}", x.shape())));
    }
    if cos.numel() != sin.numel() || cos.numel() % (l.rope_dim / 2) != 0 {
        return Err(bad("rope: cos/sin tables must both be [max_pos, rope_dim/2]".into()));
    }
    launch_by_name(
        s,
        &format!("rope_{}", x.dtype()),
        LaunchCfg::linear(u32_of(tokens.max(1), "tokens")?, 256),
        &[
            KArg::Out(x),
            KArg::In(cos),
            KArg::In(sin),
            KArg::In(pos),
            KArg::U32(tokens as u32),
            KArg::U32(l.heads as u32),
            KArg::U32(u32_of(l.token_stride, "token_stride")?),
            KArg::U32(l.head_stride as u32),
            KArg::U32(l.offset as u32),
            KArg::U32(l.rope_dim as u32),
        ],
    )
}

/// out[r, :] = silu(gate_up[r, :I]) * gate_up[r, I:], gate_up [rows, 2I], out [rows, I].
pub fn silu_mul(s: &dyn GpuStream, out: &DeviceTensor, gate_up: &DeviceTensor) -> Result<()> {
    let (rows, cols2) = rows_cols(gate_up);
    let (orows, i) = rows_cols(out);
    if cols2 != 2 * i || rows != orows {
        return Err(bad(format!("silu_mul: gate_up {:?} for out {:?}", gate_up.shape(), out.shape())));
    }
    launch_by_name(
        s,
        &format!("silu_mul_{}", out.dtype()),
        LaunchCfg::linear(grid_stride_blocks(rows * i), 256),
        &[KArg::Out(out), KArg::In(gate_up), KArg::InAt(gate_up, i), KArg::U32(u32_of(rows, "rows")?), KArg::U32(u32_of(i, "cols")?), KArg::U32(u32_of(cols2, "stride")?)],
    )
}

/// Element-wise dtype conversion.
pub fn cast(s: &dyn GpuStream, out: &DeviceTensor, x: &DeviceTensor) -> Result<()> {
    if out.numel() != x.numel() {
        return Err(bad(format!("cast: {:?} into {:?}", x.shape(), out.shape())));
    }
    let n = x.numel();
    launch_by_name(s, &format!("cast_{}_{}", x.dtype(), out.dtype()), LaunchCfg::linear(grid_stride_blocks(n), 256), &[KArg::Out(out), KArg::In(x), KArg::U32(u32_of(n, "n")?)])
}

/// A view of `rows` rows of `cols` elements: element offset of the first and distance between rows.
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a> {
    pub t: &'a DeviceTensor,
    pub offset: usize,
    pub stride: usize,
}

impl<'a> Strided<'a> {
    /// The whole tensor as contiguous rows of its last dimension.
    pub fn rows(t: &'a DeviceTensor) -> Self {
        Strided { t, offset: 0, stride: rows_cols(t).1 }
    }
    pub fn at(t: &'a DeviceTensor, offset: usize, stride: usize) -> Self {
        Strided { t, offset, stride }
    }
    fn check(&self, rows: usize, cols: usize, what: &str) -> Result<()> {
        if cols > self.stride || (rows > 0 && self.offset + (rows - 1) * self.stride + cols > self.t.numel()) {
            return Err(bad(format!("copy_2d: {what} view (offset {}, stride {}) of {:?} cannot hold {rows}×{cols}", self.offset, self.stride, self.t.shape())));
        }
        Ok(())
    }
}

/// Strided 2-D copy of `rows` × `cols` elements between views of the same dtype.
pub fn copy_2d(s: &dyn GpuStream, out: Strided, x: Strided, rows: usize, cols: usize) -> Result<()> {
    out.check(rows, cols, "out")?;
    x.check(rows, cols, "x")?;
    if rows * cols == 0 {
        return Ok(());
    }
    launch_by_name(
        s,
        &format!("copy_2d_{}", x.t.dtype()),
        LaunchCfg::linear(grid_stride_blocks(rows * cols), 256),
        &[
            KArg::OutAt(out.t, out.offset),
            KArg::InAt(x.t, x.offset),
            KArg::U32(u32_of(rows, "rows")?),
            KArg::U32(u32_of(cols, "cols")?),
            KArg::U32(u32_of(out.stride, "out_stride")?),
            KArg::U32(u32_of(x.stride, "x_stride")?),
        ],
    )
}

/// `out` = x rounded as the FP8 GEMMs round their activations: per token and 128-channel group,
/// scale max(amax, eps)/448, e4m3fn — the same codes as [`fp8_quant_group128`], dequantized.
pub fn fp8_fake_quant_group128(s: &dyn GpuStream, out: &DeviceTensor, x: &DeviceTensor, eps: f32) -> Result<()> {
    same_shape(out, x, "fp8_fake_quant_group128")?;
    let (rows, cols) = rows_cols(x);
    if rows * cols == 0 {
        return Ok(());
    }
    launch_by_name(
        s,
        &format!("fp8_fake_quant_group128_{}_e4m3fn", x.dtype()),
        LaunchCfg::new((u32_of(cols.div_ceil(128), "groups")?, u32_of(rows, "rows")?, 1), (128, 1, 1), 0),
        &[KArg::Out(out), KArg::In(x), KArg::U32(rows as u32), KArg::U32(cols as u32), KArg::F32(eps)],
    )
}

/// Per-token-group (128) FP8 quantization: q [rows, cols] (e4m3fn or e4m3fnuz), scales [rows, ceil(cols/128)].
pub fn fp8_quant_group128(s: &dyn GpuStream, q: &DeviceTensor, scales: &DeviceTensor, x: &DeviceTensor, eps: f32) -> Result<()> {
    let (rows, cols) = rows_cols(x);
    let g = cols.div_ceil(128);
    if q.numel() != x.numel() || scales.numel() != rows * g {
        return Err(bad(format!("fp8_quant: q {:?} scales {:?} for x {:?}", q.shape(), scales.shape(), x.shape())));
    }
    launch_by_name(
        s,
        &format!("fp8_quant_group128_{}_{}", x.dtype(), q.dtype()),
        LaunchCfg::quant_groups128(rows, cols)?,
        &[KArg::Out(q), KArg::Out(scales), KArg::In(x), KArg::U32(rows as u32), KArg::U32(cols as u32), KArg::F32(eps)],
    )
}

/// out [N, K] = q [N, K] * scale_inv [ceil(N/128), ceil(K/128)].
pub fn fp8_dequant_block128(s: &dyn GpuStream, out: &DeviceTensor, q: &DeviceTensor, scale_inv: &DeviceTensor) -> Result<()> {
    let (n, k) = rows_cols(q);
    if out.numel() != q.numel() || scale_inv.numel() != n.div_ceil(128) * k.div_ceil(128) {
        return Err(bad(format!("fp8_dequant: out {:?} scale_inv {:?} for q {:?}", out.shape(), scale_inv.shape(), q.shape())));
    }
    launch_by_name(
        s,
        &format!("fp8_dequant_block128_{}_{}", q.dtype(), out.dtype()),
        LaunchCfg::linear(grid_stride_blocks(n * k), 256),
        &[KArg::Out(out), KArg::In(q), KArg::In(scale_inv), KArg::U32(u32_of(n, "n")?), KArg::U32(u32_of(k, "k")?)],
    )
}

/// c[M, N] = alpha · a[M, K] · b[N, K]ᵀ + beta · c with the generated tiled kernel; `b_scale`
/// gives float8 `b`'s block scales.
pub fn gemm_kernel(s: &dyn GpuStream, c: &DeviceTensor, a: &DeviceTensor, b: &DeviceTensor, b_scale: Option<&DeviceTensor>, alpha: f32, beta: f32) -> Result<()> {
    let (m, k) = rows_cols(a);
    let (n, kb) = rows_cols(b);
    if k != kb || c.numel() != m * n {
        return Err(bad(format!("gemm: a {:?} b {:?} c {:?}", a.shape(), b.shape(), c.shape())));
    }
    let fp8 = matches!(b.dtype(), DType::E4m3fn | DType::E4m3fnuz);
    let scale = match (fp8, b_scale) {
        (true, Some(sc)) if sc.numel() == n.div_ceil(128) * k.div_ceil(128) => KArg::In(sc),
        (true, _) => return Err(bad("gemm: float8 b needs block scales [ceil(N/128), ceil(K/128)]".into())),
        (false, _) => KArg::Null,
    };
    launch_by_name(
        s,
        &format!("gemm_nt_{}_{}_{}", a.dtype(), b.dtype(), c.dtype()),
        LaunchCfg::new((u32_of(n.div_ceil(64).max(1), "n")?, u32_of(m.div_ceil(64).max(1), "m")?, 1), (256, 1, 1), 0),
        &[KArg::Out(c), KArg::In(a), KArg::In(b), scale, KArg::U32(m as u32), KArg::U32(n as u32), KArg::U32(k as u32), KArg::U32(k as u32), KArg::U32(k as u32), KArg::U32(n as u32), KArg::U64(0), KArg::U64(0), KArg::U64(0), KArg::F32(alpha), KArg::F32(beta)],
    )
}

/// One operand of [`gemm_batched`]: matrix z of the batch starts at element
/// `view.offset + z · batch_stride`, its rows `view.stride` apart.
#[derive(Clone, Copy, Debug)]
pub struct Batched<'a> {
    pub view: Strided<'a>,
    pub batch_stride: usize,
}

impl Batched<'_> {
    fn check(&self, batch: usize, rows: usize, cols: usize, what: &str) -> Result<()> {
        let v = &self.view;
        let last = v.offset + (batch - 1) * self.batch_stride + (rows - 1) * v.stride + cols;
        if cols > v.stride || last > v.t.numel() {
            return Err(bad(format!(
                "gemm_batched: {what} (offset {}, row stride {}, batch stride {}) of {:?} cannot hold {batch} × {rows}×{cols}",
                v.offset,
                v.stride,
                self.batch_stride,
                v.t.shape()
            )));
        }
        Ok(())
    }
}

/// `batch` products c_z[M, N] = a_z[M, K] · b_z[N, K]ᵀ in one launch of the generated GEMM (MLA's
/// per-head W_uk / W_uv products over strided views of the activations). b is f32 or bf16;
/// bf16 a and b go through the vendor BLAS where the stream has it.
pub fn gemm_batched(s: &dyn GpuStream, c: Batched, a: Batched, b: Batched, m: usize, n: usize, k: usize, batch: usize) -> Result<()> {
    if m * n * batch == 0 {
        return Ok(());
    }
    if matches!(b.view.t.dtype(), DType::E4m3fn | DType::E4m3fnuz) {
        return Err(bad("gemm_batched: float8 b is not batched (its block scales have no batch stride)".into()));
    }
    c.check(batch, m, n, "c")?;
    a.check(batch, m, k.max(1), "a")?;
    b.check(batch, n, k.max(1), "b")?;
    let bf16_operands = a.view.t.dtype() == DType::Bf16 && b.view.t.dtype() == DType::Bf16;
    if bf16_operands && matches!(c.view.t.dtype(), DType::F32 | DType::Bf16) && s.has_blas() && k > 0 {
        let view = |x: &Batched| BlasBatched { ptr: x.view.t.raw() + (x.view.offset * x.view.t.dtype().size()) as u64, ld: x.view.stride, batch_stride: x.batch_stride };
        return unsafe { s.blas_gemm_bf16_batched(view(&c), view(&a), view(&b), m, n, k, batch, c.view.t.dtype() == DType::F32) };
    }
    launch_by_name(
        s,
        &format!("gemm_nt_{}_{}_{}", a.view.t.dtype(), b.view.t.dtype(), c.view.t.dtype()),
        LaunchCfg::new((u32_of(n.div_ceil(64), "n")?, u32_of(m.div_ceil(64), "m")?, u32_of(batch, "batch")?), (256, 1, 1), 0),
        &[
            KArg::OutAt(c.view.t, c.view.offset),
            KArg::InAt(a.view.t, a.view.offset),
            KArg::InAt(b.view.t, b.view.offset),
            KArg::Null,
            KArg::U32(u32_of(m, "m")?),
            KArg::U32(u32_of(n, "n")?),
            KArg::U32(u32_of(k, "k")?),
            KArg::U32(u32_of(a.view.stride, "lda")?),
            KArg::U32(u32_of(b.view.stride, "ldb")?),
            KArg::U32(u32_of(c.view.stride, "ldc")?),
            KArg::U64(a.batch_stride as u64),
            KArg::U64(b.batch_stride as u64),
            KArg::U64(c.batch_stride as u64),
            KArg::F32(1.0),
            KArg::F32(0.0),
        ],
    )
}

/// Dense linear y[T, N] = x[T, K] · W[N, K]ᵀ: cuBLAS for bf16·bf16 where the stream has it,
/// the generated kernel otherwise.
pub fn linear(s: &dyn GpuStream, y: &DeviceTensor, x: &DeviceTensor, w: &DeviceTensor, w_scale: Option<&DeviceTensor>) -> Result<()> {
    let (t, k) = rows_cols(x);
    let (n, kw) = rows_cols(w);
    if x.dtype() == DType::Bf16 && w.dtype() == DType::Bf16 && matches!(y.dtype(), DType::F32 | DType::Bf16) && s.has_blas() && k == kw && y.numel() == t * n {
        return unsafe { s.blas_gemm_bf16(y.raw(), x.raw(), w.raw(), t, n, k, y.dtype() == DType::F32) };
    }
    if [x.dtype(), w.dtype(), y.dtype()] == [DType::F32; 3] && s.has_blas() && k == kw && y.numel() == t * n && t * n * k > 0 {
        return unsafe { s.blas_gemm_f32(y.raw(), x.raw(), w.raw(), t, n, k) };
    }
    gemm_kernel(s, y, x, w, w_scale, 1.0, 0.0)
}

/// out[i] = lo + (hi - lo) · u(seed, i) rounded to out's type (f32, bf16 or float8 e4m3fn);
/// `ops::random` is the CPU mirror.
pub fn fill_uniform(s: &dyn GpuStream, out: &DeviceTensor, seed: u64, lo: f32, hi: f32) -> Result<()> {
    let n = out.numel();
    let whole = UniformWindow { a: 0..1, rows: 0..1, cols: 0..n, n: 1, k: n };
    fill_uniform_window(s, out, 0, n, &whole, seed, lo, hi)
}

/// A window of a random tensor [.., n, k]: lead indices `a`, rows and columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UniformWindow {
    pub a: std::ops::Range<usize>,
    pub rows: std::ops::Range<usize>,
    pub cols: std::ops::Range<usize>,
    pub n: usize,
    pub k: usize,
}

/// [`fill_uniform`] of `w`'s window of the whole tensor: the values the whole tensor drawn with
/// `seed` holds there, written as [a, rows, cols] into `out` from element `offset` on, lead index
/// `a` at `offset + a·a_stride`.
#[allow(clippy::too_many_arguments)]
pub fn fill_uniform_window(s: &dyn GpuStream, out: &DeviceTensor, offset: usize, a_stride: usize, w: &UniformWindow, seed: u64, lo: f32, hi: f32) -> Result<()> {
    let (na, nr, nc) = (w.a.len(), w.rows.len(), w.cols.len());
    if na * nr * nc == 0 {
        return Ok(());
    }
    if w.rows.end > w.n || w.cols.end > w.k || (na > 1 && nr * nc > a_stride) || offset + (na - 1) * a_stride + nr * nc > out.numel() {
        return Err(bad(format!("fill_uniform: window {w:?} at offset {offset}, stride {a_stride} does not fit {:?}", out.shape())));
    }
    let u = |x: usize| KArg::U64(x as u64);
    launch_by_name(
        s,
        &format!("fill_uniform_{}", out.dtype()),
        LaunchCfg::linear(grid_stride_blocks(na * nr * nc), 256),
        &[KArg::OutAt(out, offset), u(na), u(nr), u(nc), u(a_stride), u(w.a.start), u(w.rows.start), u(w.cols.start), u(w.n), u(w.k), KArg::U64(seed), KArg::F32(lo), KArg::F32(hi)],
    )
}

/// Routing parameters of `route_noaux_tc`.
#[derive(Clone, Copy, Debug)]
pub struct RouteParams {
    pub n_group: usize,
    pub topk_group: usize,
    pub top_k: usize,
    pub scaling: f32,
    pub renormalize: bool,
}

/// ids [T, top_k] i32, weights [T, top_k] f32 from logits [T, E] f32 and bias [E] f32.
pub fn route_noaux_tc(s: &dyn GpuStream, ids: &DeviceTensor, weights: &DeviceTensor, logits: &DeviceTensor, bias: &DeviceTensor, p: RouteParams) -> Result<()> {
    let (t, e) = rows_cols(logits);
    if bias.numel() != e || ids.numel() != t * p.top_k || weights.numel() != t * p.top_k || p.n_group == 0 || e % p.n_group != 0 || p.topk_group > p.n_group {
        return Err(bad(format!("route_noaux_tc: logits {:?} bias {:?} ids {:?} {p:?}", logits.shape(), bias.shape(), ids.shape())));
    }
    let smem = ((2 * e + p.n_group) * 4) as u32;
    launch_by_name(
        s,
        "route_noaux_tc",
        LaunchCfg::linear(u32_of(t.max(1), "tokens")?, 256).with_shared(smem),
        &[
            KArg::Out(ids),
            KArg::Out(weights),
            KArg::In(logits),
            KArg::In(bias),
            KArg::U32(t as u32),
            KArg::U32(e as u32),
            KArg::U32(p.n_group as u32),
            KArg::U32(p.topk_group as u32),
            KArg::U32(p.top_k as u32),
            KArg::F32(p.scaling),
            KArg::U32(p.renormalize as u32),
        ],
    )
}

/// Sorting of (token, k) pairs by expert, see `kernels/moe.cuh`.
pub fn moe_align(s: &dyn GpuStream, expert_offsets: &DeviceTensor, sorted_pairs: &DeviceTensor, pair_to_row: &DeviceTensor, topk_ids: &DeviceTensor, num_experts: usize) -> Result<()> {
    let p = topk_ids.numel();
    if expert_offsets.numel() != num_experts + 1 || sorted_pairs.numel() != p || pair_to_row.numel() != p {
        return Err(bad("moe_align: offsets [E+1], sorted_pairs [P], pair_to_row [P]".into()));
    }
    launch_by_name(
        s,
        "moe_align",
        LaunchCfg::linear(1, 1024),
        &[KArg::Out(expert_offsets), KArg::Out(sorted_pairs), KArg::Out(pair_to_row), KArg::In(topk_ids), KArg::U32(u32_of(p, "pairs")?), KArg::U32(u32_of(num_experts, "experts")?)],
    )
}

/// `local` [P] i32: the ids `ids` [P] of experts `experts` as ids local to them (id − start), every
/// other id −1 — what an expert-parallel rank passes to the kernels that index its stacked experts.
pub fn moe_local_ids(s: &dyn GpuStream, local: &DeviceTensor, ids: &DeviceTensor, experts: std::ops::Range<usize>) -> Result<()> {
    let n = ids.numel();
    if local.numel() != n {
        return Err(bad(format!("moe_local_ids: {:?} ids into {:?}", ids.shape(), local.shape())));
    }
    launch_by_name(
        s,
        "moe_local_ids",
        LaunchCfg::linear(grid_stride_blocks(n), 256),
        &[KArg::Out(local), KArg::In(ids), KArg::U32(u32_of(n, "ids")?), KArg::U32(u32_of(experts.start, "first expert")?), KArg::U32(u32_of(experts.len(), "experts")?)],
    )
}

pub fn moe_gather(s: &dyn GpuStream, rows: &DeviceTensor, x: &DeviceTensor, sorted_pairs: &DeviceTensor, expert_offsets: &DeviceTensor, topk: usize) -> Result<()> {
    let (_, hidden) = rows_cols(x);
    let p = sorted_pairs.numel();
    if rows.numel() != p * hidden {
        return Err(bad("moe_gather: rows [P, hidden]".into()));
    }
    launch_by_name(
        s,
        &format!("moe_gather_{}", x.dtype()),
        LaunchCfg::linear(u32_of(p.max(1), "pairs")?, 256),
        &[KArg::Out(rows), KArg::In(x), KArg::In(sorted_pairs), KArg::In(expert_offsets), KArg::U32(p as u32), KArg::U32((expert_offsets.numel() - 1) as u32), KArg::U32(topk as u32), KArg::U32(hidden as u32)],
    )
}

/// c[r, :] = a[r, :] · w[e]ᵀ for the rows of each expert e; w [E, N, K].
pub fn moe_gemm(s: &dyn GpuStream, c: &DeviceTensor, a: &DeviceTensor, w: &DeviceTensor, w_scale: Option<&DeviceTensor>, expert_offsets: &DeviceTensor) -> Result<()> {
    let (p, k) = rows_cols(a);
    let e = expert_offsets.numel() - 1;
    let sh = w.shape();
    if sh.len() != 3 || sh[0] != e || sh[2] != k || c.numel() != p * sh[1] {
        return Err(bad(format!("moe_gemm: a {:?} w {:?} c {:?} experts {e}", a.shape(), w.shape(), c.shape())));
    }
    let n = sh[1];
    let fp8 = matches!(w.dtype(), DType::E4m3fn | DType::E4m3fnuz);
    let scale = match (fp8, w_scale) {
        (true, Some(sc)) if sc.numel() == e * n.div_ceil(128) * k.div_ceil(128) => KArg::In(sc),
        (true, _) => return Err(bad("moe_gemm: float8 w needs scales [E, ceil(N/128), ceil(K/128)]".into())),
        (false, _) => KArg::Null,
    };
    launch_by_name(
        s,
        &format!("moe_gemm_{}_{}_{}", a.dtype(), w.dtype(), c.dtype()),
        LaunchCfg::new((u32_of(n.div_ceil(64), "n")?, u32_of(p.div_ceil(64).max(1), "rows")?, u32_of(e, "experts")?), (256, 1, 1), 0),
        &[KArg::Out(c), KArg::In(a), KArg::In(w), scale, KArg::In(expert_offsets), KArg::U32(e as u32), KArg::U32(n as u32), KArg::U32(k as u32)],
    )
}

/// out[t, :] = beta · out[t, :] + Σ_k w[t, k] · y[pair_to_row[t·K + k], :].
pub fn moe_combine(s: &dyn GpuStream, out: &DeviceTensor, y: &DeviceTensor, topk_weights: &DeviceTensor, pair_to_row: &DeviceTensor, topk: usize, beta: f32) -> Result<()> {
    let (t, hidden) = rows_cols(out);
    if topk_weights.numel() != t * topk || pair_to_row.numel() != t * topk || y.numel() != t * topk * hidden {
        return Err(bad("moe_combine: out [T, H], y [T·K, H], weights and pair_to_row [T·K]".into()));
    }
    launch_by_name(
        s,
        &format!("moe_combine_{}_{}", y.dtype(), out.dtype()),
        LaunchCfg::linear(u32_of(t.max(1), "tokens")?, 256),
        &[KArg::Out(out), KArg::In(y), KArg::In(topk_weights), KArg::In(pair_to_row), KArg::U32(t as u32), KArg::U32(topk as u32), KArg::U32(hidden as u32), KArg::F32(beta)],
    )
}

/// Paged cache addressing shared by attention and the cache write.
pub struct PagedCache<'a> {
    /// [pages, page_size, dk]
    pub cache: &'a DeviceTensor,
    /// [B, max_pages] i32
    pub block_table: &'a DeviceTensor,
    /// [B] i32
    pub seq_lens: &'a DeviceTensor,
}

/// MLA absorbed attention: out [T, H, dv] f32 from q [T, H, dk] (f32 or bf16) over the paged
/// cache: f32 / bf16 [pages, page_size, dk], or the fp8 e4m3 rows [pages, page_size, 656] u8
/// ([`crate::ops::mla_fp8`]'s layout; then dk must be 576 and dv at most 512).
pub fn mla_paged_attention(s: &dyn GpuStream, out: &DeviceTensor, q: &DeviceTensor, c: &PagedCache, token_seq: &DeviceTensor, token_pos: &DeviceTensor, dv: usize, scale: f32) -> Result<()> {
    use crate::backend::mla::{DK, DV, FP8_ROW_BYTES};
    let sh = q.shape();
    let cs = c.cache.shape();
    let fp8 = c.cache.dtype() == DType::U8;
    // Values of a cache row the kernel reads, and the last dimension it must have.
    let (width, row) = if fp8 { (DV, FP8_ROW_BYTES) } else { (cs.get(2).copied().unwrap_or(0), sh.get(2).copied().unwrap_or(0)) };
    let fp8_ok = !fp8 || sh.get(2) == Some(&DK);
    if sh.len() != 3 || cs.len() != 3 || cs[2] != row || !fp8_ok || dv > width || dv > 1024 || out.numel() != sh[0] * sh[1] * dv {
        let need = if fp8 { "the fp8 cache needs q [T, H, 576], cache [pages, page_size, 656] u8, dv <= 512" } else { "cache [pages, page_size, dk], dv <= dk" };
        return Err(bad(format!("mla_paged_attention: q {:?} cache {:?} {} out {:?} dv {dv} ({need})", sh, cs, c.cache.dtype(), out.shape())));
    }
    let (t, h, dk) = (sh[0], sh[1], sh[2]);
    let bsh = c.block_table.shape();
    let max_pages = *bsh.last().unwrap_or(&0);
    if token_seq.numel() != t || token_pos.numel() != t {
        return Err(bad("mla_paged_attention: token_seq and token_pos need one entry per token".into()));
    }
    launch_by_name(
        s,
        &format!("mla_paged_attention_{}_{}", q.dtype(), if fp8 { "fp8".to_string() } else { c.cache.dtype().to_string() }),
        LaunchCfg::new((u32_of(t.max(1), "tokens")?, u32_of(h, "heads")?, 1), (256, 1, 1), ((dk + 64) * 4) as u32),
        &[
            KArg::Out(out),
            KArg::In(q),
            KArg::In(c.cache),
            KArg::In(c.block_table),
            KArg::In(c.seq_lens),
            KArg::In(token_seq),
            KArg::In(token_pos),
            KArg::U32(t as u32),
            KArg::U32(h as u32),
            KArg::U32(dk as u32),
            KArg::U32(dv as u32),
            KArg::U32(cs[1] as u32),
            KArg::U32(max_pages as u32),
            KArg::F32(scale),
        ],
    )
}

/// Writes kv [T, kv_stride] rows (first dk values) into the cache slots of (token_seq, token_pos).
pub fn paged_kv_write(s: &dyn GpuStream, c: &PagedCache, kv: &DeviceTensor, token_seq: &DeviceTensor, token_pos: &DeviceTensor) -> Result<()> {
    let cs = c.cache.shape();
    let (t, stride) = rows_cols(kv);
    if cs.len() != 3 || stride < cs[2] || token_seq.numel() != t || token_pos.numel() != t {
        return Err(bad(format!("paged_kv_write: kv {:?} cache {:?}", kv.shape(), cs)));
    }
    let max_pages = *c.block_table.shape().last().unwrap_or(&0);
    launch_by_name(
        s,
        &format!("paged_kv_write_{}_{}", kv.dtype(), c.cache.dtype()),
        LaunchCfg::linear(u32_of(t.max(1), "tokens")?, 256),
        &[KArg::Out(c.cache), KArg::In(kv), KArg::In(c.block_table), KArg::In(token_seq), KArg::In(token_pos), KArg::U32(t as u32), KArg::U32(cs[2] as u32), KArg::U32(stride as u32), KArg::U32(cs[1] as u32), KArg::U32(max_pages as u32)],
    )
}

/// out [rows] i32 = argmax of each row of x [rows, cols], and `values` [rows] f32 (when given) the
/// maximum: the first index of the largest value, NaN and -inf never winning (0 and -inf for a
/// row without a larger value), as [`crate::ops::sampling::argmax`] on the host.
pub fn argmax(s: &dyn GpuStream, out: &DeviceTensor, values: Option<&DeviceTensor>, x: &DeviceTensor) -> Result<()> {
    let (rows, cols) = rows_cols(x);
    if out.numel() != rows || values.is_some_and(|v| v.numel() != rows) {
        return Err(bad("argmax: out and values need one entry per row".into()));
    }
    let values = values.map_or(KArg::Null, KArg::Out);
    launch_by_name(s, &format!("argmax_{}", x.dtype()), LaunchCfg::linear(u32_of(rows.max(1), "rows")?, 256), &[KArg::Out(out), values, KArg::In(x), KArg::U32(rows as u32), KArg::U32(u32_of(cols, "cols")?)])
}

/// Per-row sampling parameters as device tensors: temperature f32, top_k i32, top_p f32, seed u64 (each [rows]).
pub struct SamplingParams<'a> {
    pub temperature: &'a DeviceTensor,
    pub top_k: &'a DeviceTensor,
    pub top_p: &'a DeviceTensor,
    pub seeds: &'a DeviceTensor,
}

pub fn sample(s: &dyn GpuStream, out: &DeviceTensor, x: &DeviceTensor, p: &SamplingParams) -> Result<()> {
    let (rows, cols) = rows_cols(x);
    for (t, n) in [(out, "out"), (p.temperature, "temperature"), (p.top_k, "top_k"), (p.top_p, "top_p"), (p.seeds, "seeds")] {
        if t.numel() != rows {
            return Err(bad(format!("sample: {n} needs one entry per row")));
        }
    }
    launch_by_name(
        s,
        &format!("sample_{}", x.dtype()),
        LaunchCfg::linear(u32_of(rows.max(1), "rows")?, 256),
        &[KArg::Out(out), KArg::In(x), KArg::In(p.temperature), KArg::In(p.top_k), KArg::In(p.top_p), KArg::In(p.seeds), KArg::U32(rows as u32), KArg::U32(u32_of(cols, "cols")?)],
    )
}

/// Every kernel instance of the registry, for tests and benches to iterate.
pub fn all_kernels() -> &'static [KernelInfo] {
    KERNELS
}
