//! INT8 and AWQ layers on the host, between the checkpoint and the device: read (with the
//! checkpoint's own layout checks), cut to a rank's slice, padded, concatenated (an expert's gate
//! and up), in the form the INT8 / AWQ GEMMs read. Every step keeps the layer's exact values:
//! padding adds weights that are exactly zero, so the padded GEMM computes the same sums.
#![allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; MSRV is 1.80

use std::ops::Range;

use half::f16;

use crate::backend::quant_gemm::{awq_repack, Int8Scheme};
use crate::error::{Error, Result};
use crate::model::checkpoint::{awq_pack, awq_unpack, Checkpoint, DType};
use crate::model::shard::TensorSlice;

/// The block of block INT8 scales the kernels read.
const BLOCK: usize = 128;

fn err(name: &str, msg: String) -> Error {
    Error::CheckpointTensor { name: name.to_string(), msg }
}

fn words(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Whether a split `r` of `0..len` keeps whole groups of `g`.
fn aligned(r: &Range<usize>, len: usize, g: usize) -> bool {
    r.start % g == 0 && (r.end % g == 0 || r.end == len)
}

/// Rows `rows`, columns `cols` of the row-major `[.., width]` `t`.
fn cut<T: Copy>(t: &[T], width: usize, rows: Range<usize>, cols: Range<usize>) -> Vec<T> {
    rows.flat_map(|r| t[r * width + cols.start..r * width + cols.end].iter().copied()).collect()
}

/// An int8 Linear weight: codes `[n, k]` and scales (`Block`: `[⌈n/128⌉, ⌈k/128⌉]`, `Channel`: `[n]`).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Int8Host {
    pub scheme: Int8Scheme,
    pub n: usize,
    pub k: usize,
    pub q: Vec<i8>,
    pub scale: Vec<f32>,
}

impl Int8Host {
    /// The int8 weight `name` [n, k], or `None` when it is not int8 or its blocks are not the
    /// kernels' 128×128 (those layers keep the dequantized path).
    pub fn read(ckpt: &Checkpoint, name: &str, n: usize, k: usize) -> Result<Option<Int8Host>> {
        if ckpt.info(name).map(|i| i.dtype) != Some(DType::I8) {
            return Ok(None);
        }
        let raw = ckpt.raw(name)?;
        if raw.shape != [n, k] {
            return Err(err(name, format!("expected shape [{n}, {k}], found {:?}", raw.shape)));
        }
        let (scale_name, block) = ckpt.int8_layout(name, &raw.shape)?;
        let scheme = match block {
            None => Int8Scheme::Channel,
            Some((BLOCK, BLOCK)) => Int8Scheme::Block,
            Some(_) => return Ok(None),
        };
        let sc = ckpt.raw(&scale_name)?;
        let scale = sc.to_f32_vec().ok_or_else(|| err(&scale_name, format!("scale has dtype {}; expected F32", sc.dtype)))?;
        if scale.len() != scheme.w_scales_len(n, k) {
            return Err(err(&scale_name, format!("{} scales for weight [{n}, {k}] ({scheme:?})", scale.len())));
        }
        Ok(Some(Int8Host { scheme, n, k, q: raw.bytes.iter().map(|&b| b as i8).collect(), scale }))
    }

    fn scale_cols(&self) -> usize {
        match self.scheme {
            Int8Scheme::Block => self.k.div_ceil(BLOCK),
            Int8Scheme::Channel => 1,
        }
    }

    /// Rows `part.rows`, columns `part.cols`; `None` when a block INT8 split cuts a scale block.
    pub fn slice(&self, part: &TensorSlice) -> Option<Int8Host> {
        if part.is_full(self.n, self.k) {
            return Some(self.clone());
        }
        let [pn, pk] = part.shape();
        let q = cut(&self.q, self.k, part.rows.clone(), part.cols.clone());
        let scale = match self.scheme {
            Int8Scheme::Channel => self.scale[part.rows.clone()].to_vec(),
            Int8Scheme::Block => {
                if !aligned(&part.rows, self.n, BLOCK) || !aligned(&part.cols, self.k, BLOCK) {
                    return None;
                }
                let rows = part.rows.start / BLOCK..part.rows.end.div_ceil(BLOCK);
                let cols = part.cols.start / BLOCK..part.cols.end.div_ceil(BLOCK);
                cut(&self.scale, self.scale_cols(), rows, cols)
            }
        };
        Some(Int8Host { scheme: self.scheme, n: pn, k: pk, q, scale })
    }

    /// Zero rows up to `n` and zero columns up to `k` (at least the current ones). Block scales
    /// keep their count when the padding stays inside the last block (a multiple of 128).
    pub fn pad(&self, n: usize, k: usize) -> Result<Int8Host> {
        if n < self.n || k < self.k || (self.scheme == Int8Scheme::Block && (n.div_ceil(BLOCK) != self.n.div_ceil(BLOCK) || k.div_ceil(BLOCK) != self.k.div_ceil(BLOCK))) {
            return Err(Error::InvalidArgument(format!("int8 pad: [{}, {}] to [{n}, {k}] ({:?})", self.n, self.k, self.scheme)));
        }
        let mut q = vec![0i8; n * k];
        for r in 0..self.n {
            q[r * k..r * k + self.k].copy_from_slice(&self.q[r * self.k..(r + 1) * self.k]);
        }
        let mut scale = self.scale.clone();
        if self.scheme == Int8Scheme::Channel {
            scale.resize(n, 0.0);
        }
        Ok(Int8Host { scheme: self.scheme, n, k, q, scale })
    }

    /// `self` over `other` along the rows (block scales: `self.n` a multiple of 128).
    pub fn concat_rows(mut self, other: &Int8Host) -> Result<Int8Host> {
        if other.scheme != self.scheme || other.k != self.k || (self.scheme == Int8Scheme::Block && self.n % BLOCK != 0) {
            return Err(Error::InvalidArgument(format!("int8 concat: [{}, {}] {:?} over [{}, {}] {:?}", self.n, self.k, self.scheme, other.n, other.k, other.scheme)));
        }
        self.q.extend_from_slice(&other.q);
        self.scale.extend_from_slice(&other.scale);
        self.n += other.n;
        Ok(self)
    }
}

/// An AWQ layer as the Linear weight `[n, k]` it stands for, unpacked: codes `q[k][n]`, zeros
/// `z[k/g][n]` (0..16 each) and f16 scales `s[k/g][n]`; w[nn, kk] = (q − z)·s of group kk / g.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct AwqHost {
    pub n: usize,
    pub k: usize,
    pub group: usize,
    pub q: Vec<u8>,
    pub z: Vec<u8>,
    pub s: Vec<f16>,
}

impl AwqHost {
    /// The AWQ layer standing for `name` (`{base}.weight` absent, `{base}.qweight` present), or
    /// `None` when `name` is not AWQ or its scales are not f16 (the kernels read f16).
    pub fn read(ckpt: &Checkpoint, name: &str, n: usize, k: usize) -> Result<Option<AwqHost>> {
        let Some(base) = name.strip_suffix(".weight").filter(|b| !ckpt.contains(name) && ckpt.contains(&format!("{b}.qweight"))) else {
            return Ok(None);
        };
        let group = ckpt.awq_layout(base, n, k)?;
        let sc = ckpt.raw(&format!("{base}.scales"))?;
        if sc.dtype != DType::F16 {
            return Ok(None);
        }
        let groups = k.div_ceil(group);
        let q = awq_unpack(&words(ckpt.raw(&format!("{base}.qweight"))?.bytes));
        let z = awq_unpack(&words(ckpt.raw(&format!("{base}.qzeros"))?.bytes));
        let s: Vec<f16> = sc.bytes.chunks_exact(2).map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]]))).collect();
        if q.len() != k * n || z.len() != groups * n || s.len() != groups * n {
            return Err(err(&format!("{base}.qweight"), format!("AWQ layer of {} codes, {} zeros, {} scales for [{n}, {k}] in groups of {group}", q.len(), z.len(), s.len())));
        }
        Ok(Some(AwqHost { n, k, group, q, z, s }))
    }

    fn groups(&self) -> usize {
        self.k.div_ceil(self.group)
    }

    /// Rows `part.rows` (output channels), columns `part.cols` (input channels, whole groups:
    /// `None` otherwise).
    pub fn slice(&self, part: &TensorSlice) -> Option<AwqHost> {
        if part.is_full(self.n, self.k) {
            return Some(self.clone());
        }
        if !aligned(&part.cols, self.k, self.group) {
            return None;
        }
        let [pn, pk] = part.shape();
        let g = part.cols.start / self.group..part.cols.end.div_ceil(self.group);
        Some(AwqHost {
            n: pn,
            k: pk,
            group: self.group,
            q: cut(&self.q, self.n, part.cols.clone(), part.rows.clone()),
            z: cut(&self.z, self.n, g.clone(), part.rows.clone()),
            s: cut(&self.s, self.n, g, part.rows.clone()),
        })
    }

    /// Output channels up to `n` (weights 0: q = z = 0, s = 0) and input channels up to `k`
    /// (weights 0: q = the group's zero point; new groups get z = 0, s = 0).
    pub fn pad(&self, n: usize, k: usize) -> Result<AwqHost> {
        if n < self.n || k < self.k {
            return Err(Error::InvalidArgument(format!("awq pad: [{}, {}] to [{n}, {k}]", self.n, self.k)));
        }
        let groups = k.div_ceil(self.group);
        let mut z = vec![0u8; groups * n];
        let mut s = vec![f16::ZERO; groups * n];
        for gi in 0..self.groups() {
            z[gi * n..gi * n + self.n].copy_from_slice(&self.z[gi * self.n..(gi + 1) * self.n]);
            s[gi * n..gi * n + self.n].copy_from_slice(&self.s[gi * self.n..(gi + 1) * self.n]);
        }
        let mut q = vec![0u8; k * n];
        for kk in 0..k {
            let row = &mut q[kk * n..kk * n + self.n];
            if kk < self.k {
                row.copy_from_slice(&self.q[kk * self.n..(kk + 1) * self.n]);
            } else {
                row.copy_from_slice(&z[(kk / self.group) * n..(kk / self.group) * n + self.n]);
            }
        }
        Ok(AwqHost { n, k, group: self.group, q, z, s })
    }

    /// `self`'s output channels followed by `other`'s (same input channels and groups).
    pub fn concat_n(&self, other: &AwqHost) -> Result<AwqHost> {
        if other.k != self.k || other.group != self.group {
            return Err(Error::InvalidArgument(format!("awq concat: [{}, {}] g{} with [{}, {}] g{}", self.n, self.k, self.group, other.n, other.k, other.group)));
        }
        let join = |a: &[u8], b: &[u8], rows: usize| -> Vec<u8> { (0..rows).flat_map(|r| a[r * self.n..(r + 1) * self.n].iter().chain(&b[r * other.n..(r + 1) * other.n]).copied()).collect() };
        let s = (0..self.groups()).flat_map(|r| self.s[r * self.n..(r + 1) * self.n].iter().chain(&other.s[r * other.n..(r + 1) * other.n]).copied()).collect();
        Ok(AwqHost { n: self.n + other.n, k: self.k, group: self.group, q: join(&self.q, &other.q, self.k), z: join(&self.z, &other.z, self.groups()), s })
    }

    /// Whether the AWQ GEMM takes this layer: G ∈ {64, 128}, K % G == 0, N % 8 == 0.
    pub fn kernel_ok(&self) -> bool {
        matches!(self.group, 64 | 128) && self.k % self.group == 0 && self.n % 8 == 0 && self.k > 0 && self.n > 0
    }

    /// (qweight repacked by `awq_repack`, qzeros packed `[K/G, N/8]`, scales `[K/G, N]`).
    pub fn kernel_layout(&self) -> Result<(Vec<i32>, Vec<i32>, Vec<f16>)> {
        let qweight: Vec<i32> = awq_pack(&self.q).into_iter().map(|w| w as i32).collect();
        let qzeros = awq_pack(&self.z).into_iter().map(|w| w as i32).collect();
        Ok((awq_repack(&qweight, self.k, self.n)?, qzeros, self.s.clone()))
    }

    /// The Linear weight `[n, k]` in f32 (as `Checkpoint::load_f32` dequantizes it).
    #[cfg(test)]
    pub fn dequant(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.n * self.k];
        for nn in 0..self.n {
            for kk in 0..self.k {
                let gi = (kk / self.group) * self.n + nn;
                w[nn * self.k + kk] = (f32::from(self.q[kk * self.n + nn]) - f32::from(self.z[gi])) * self.s[gi].to_f32();
            }
        }
        w
    }
}

#[cfg(test)]
impl Int8Host {
    /// The Linear weight `[n, k]` in f32.
    pub fn dequant(&self) -> Vec<f32> {
        let sc = self.scale_cols();
        (0..self.n * self.k)
            .map(|i| {
                let (r, c) = (i / self.k, i % self.k);
                let s = match self.scheme {
                    Int8Scheme::Block => self.scale[(r / BLOCK) * sc + c / BLOCK],
                    Int8Scheme::Channel => self.scale[r],
                };
                f32::from(self.q[i]) * s
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int8(scheme: Int8Scheme, n: usize, k: usize) -> Int8Host {
        let q = (0..n * k).map(|i| ((i * 37 + 11) % 255) as i32 as i8).collect();
        let scale = (0..scheme.w_scales_len(n, k)).map(|i| 0.01 + i as f32 * 0.003).collect();
        Int8Host { scheme, n, k, q, scale }
    }

    fn awq(n: usize, k: usize, group: usize) -> AwqHost {
        let g = k.div_ceil(group);
        AwqHost {
            n,
            k,
            group,
            q: (0..k * n).map(|i| ((i * 7 + i / 5) % 16) as u8).collect(),
            z: (0..g * n).map(|i| ((i * 3 + 1) % 16) as u8).collect(),
            s: (0..g * n).map(|i| f16::from_f32(0.01 + 0.001 * i as f32)).collect(),
        }
    }

    /// Rows `rows` of the [.., k] f32 matrix `w`, each zero-padded to `k_pad`.
    fn pad_rows(w: &[f32], k: usize, k_pad: usize) -> Vec<f32> {
        w.chunks(k).flat_map(|r| r.iter().copied().chain(vec![0.0; k_pad - k])).collect()
    }

    #[test]
    fn int8_slices_pads_and_concats_keep_the_values() {
        for scheme in Int8Scheme::ALL {
            let w = int8(scheme, 300, 200);
            let full = w.dequant();
            let part = TensorSlice { rows: 128..256, cols: 128..200 };
            let s = w.slice(&part).unwrap();
            assert_eq!(s.dequant(), cut(&full, 200, part.rows.clone(), part.cols.clone()));
            let odd = TensorSlice { rows: 10..20, cols: 0..200 };
            assert_eq!(w.slice(&odd).is_some(), scheme == Int8Scheme::Channel);
            // I = 48 padded to 128, then gate over up: values in place, zeros around.
            let (gate, up) = (int8(scheme, 48, 160), int8(scheme, 48, 160));
            let both = gate.pad(128, 160).unwrap().concat_rows(&up.pad(128, 160).unwrap()).unwrap();
            let d = both.dequant();
            assert_eq!(&d[..48 * 160], &gate.dequant()[..]);
            assert!(d[48 * 160..128 * 160].iter().all(|&x| x == 0.0));
            assert_eq!(&d[128 * 160..176 * 160], &up.dequant()[..]);
            let down = int8(scheme, 160, 48);
            assert_eq!(down.pad(160, 128).unwrap().dequant(), pad_rows(&down.dequant(), 48, 128));
        }
        assert!(int8(Int8Scheme::Block, 48, 160).pad(200, 160).is_err());
    }

    #[test]
    fn awq_slices_pads_concats_and_packs_keep_the_values() {
        let w = awq(40, 64, 32);
        let full = w.dequant();
        let part = TensorSlice { rows: 8..24, cols: 32..64 };
        assert_eq!(w.slice(&part).unwrap().dequant(), cut(&full, 64, part.rows.clone(), part.cols.clone()));
        assert!(w.slice(&TensorSlice { rows: 0..40, cols: 16..64 }).is_none());
        // K 32 in one group of 64, padded to K 64 and N 48: the padded weights are exactly 0.
        let down = awq(40, 32, 64);
        let p = down.pad(48, 64).unwrap();
        assert!(p.kernel_ok() && !down.kernel_ok());
        let d = p.dequant();
        let want = pad_rows(&down.dequant(), 32, 64);
        assert_eq!(&d[..40 * 64], &want[..]);
        assert!(d[40 * 64..].iter().all(|&x| x == 0.0));
        // gate | up along N.
        let (g, u) = (awq(32, 64, 64), awq(32, 64, 64));
        let c = g.concat_n(&u).unwrap();
        assert_eq!(c.dequant(), [g.dequant(), u.dequant()].concat());
        let (qw, qz, s) = c.kernel_layout().unwrap();
        assert_eq!((qw.len(), qz.len(), s.len()), (64 * 64 / 8, 64 / 8, 64));
    }
}
