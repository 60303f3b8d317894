//! Re-reads a written shard and checks it against the source: the tensor names are exactly the
//! planned ones, every dtype and shape is right, copied tensors are byte-identical, and every
//! encoded weight decodes to within its format's error bound of the source weight (dequantized).

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;
use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::model::checkpoint::{convert_to_f32, Checkpoint};
use crate::tensor::rel_error;

use super::plan::{Job, ShardPlan};
use super::transform;
use super::writer::Slot;
use super::Target;

/// What verification measured, over every shard it checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VerifyStats {
    pub shards: usize,
    pub copied: usize,
    pub encoded: usize,
    /// Largest relative Frobenius error ‖decoded − source‖ / ‖source‖ of an encoded weight.
    pub max_rel_error: f64,
    pub worst_tensor: String,
    /// Largest |decoded − source| / bound over every element (≤ 1 passes).
    pub max_bound_ratio: f64,
}

impl VerifyStats {
    pub fn merge(&mut self, o: &VerifyStats) {
        self.shards += o.shards;
        self.copied += o.copied;
        self.encoded += o.encoded;
        if o.max_rel_error > self.max_rel_error {
            self.max_rel_error = o.max_rel_error;
            self.worst_tensor = o.worst_tensor.clone();
        }
        self.max_bound_ratio = self.max_bound_ratio.max(o.max_bound_ratio);
    }
}

fn check_slot(path: &Path, st: &SafeTensors<'_>, slot: &Slot) -> Result<Vec<u8>> {
    let err = |msg: String| Error::Verify {
        path: path.to_path_buf(),
        name: slot.name.clone(),
        msg,
    };
    let t = st
        .tensor(&slot.name)
        .map_err(|e| err(format!("missing: {e}")))?;
    let dtype = format!("{:?}", t.dtype());
    if dtype != slot.dtype.name() || t.shape() != slot.shape.as_slice() {
        return Err(err(format!(
            "{dtype} {:?}, expected {} {:?}",
            t.shape(),
            slot.dtype,
            slot.shape
        )));
    }
    Ok(t.data().to_vec())
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    convert_to_f32(crate::model::checkpoint::DType::F32, bytes).unwrap_or_default()
}

/// Verifies the written shard `path` of `plan` against the source checkpoint.
pub fn verify_shard(
    src: &Checkpoint,
    target: Target,
    plan: &ShardPlan,
    path: &Path,
) -> Result<VerifyStats> {
    let file_err = |msg: String| Error::OutputFile {
        path: path.to_path_buf(),
        msg,
    };
    let file = File::open(path).map_err(|e| file_err(format!("cannot open: {e}")))?;
    // SAFETY: read-only map of a file this process just wrote and no one else modifies.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| file_err(format!("cannot mmap: {e}")))?;
    let st = SafeTensors::deserialize(&mmap)
        .map_err(|e| file_err(format!("not a valid safetensors file: {e}")))?;
    let planned = plan.slots();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut want: Vec<String> = planned.iter().map(|s| s.name.clone()).collect();
    want.sort();
    if names != want {
        let extra = names.iter().find(|n| !want.contains(n));
        let missing = want.iter().find(|n| !names.contains(n));
        return Err(file_err(format!(
            "holds {} tensors, planned {} (extra: {extra:?}, missing: {missing:?})",
            names.len(),
            want.len()
        )));
    }
    let mut stats = VerifyStats {
        shards: 1,
        ..Default::default()
    };
    for job in &plan.jobs {
        match job {
            Job::Copy(slot) => {
                let got = check_slot(path, &st, slot)?;
                if got != src.raw(&slot.name)?.bytes {
                    return Err(Error::Verify {
                        path: path.to_path_buf(),
                        name: slot.name.clone(),
                        msg: "differs from the source tensor it copies".into(),
                    });
                }
                stats.copied += 1;
            }
            Job::Encode {
                load_name,
                n,
                k,
                weight,
                scale,
                ..
            } => {
                let (n, k) = (*n, *k);
                let wbytes = check_slot(path, &st, weight)?;
                let s = scale
                    .as_ref()
                    .map(|s| check_slot(path, &st, s).map(|b| f32s(&b)))
                    .transpose()?;
                let err = |msg: String| Error::Verify {
                    path: path.to_path_buf(),
                    name: weight.name.clone(),
                    msg,
                };
                if let Some(bad) = s
                    .as_ref()
                    .and_then(|s| s.iter().find(|x| !(x.is_finite() && **x > 0.0)))
                {
                    return Err(err(format!("scale {bad} is not a positive finite number")));
                }
                let got = transform::decode(target, &wbytes, s.as_deref(), n, k);
                let want = src.load_f32(load_name, &[n, k])?;
                let want = want.data();
                let mut ratio = 0f64;
                for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
                    let b =
                        transform::bound(target, w, s.as_deref(), i / k.max(1), i % k.max(1), k);
                    let d = (g - w).abs();
                    if d.is_nan() || d > b {
                        return Err(err(format!(
                            "element [{}, {}] decodes to {g}, source {w}: |error| {d:e} exceeds the {target} bound {b:e}",
                            i / k.max(1),
                            i % k.max(1)
                        )));
                    }
                    if b > 0.0 {
                        ratio = ratio.max(f64::from(d) / f64::from(b));
                    }
                }
                let rel = rel_error(&got, want);
                if rel > stats.max_rel_error || stats.worst_tensor.is_empty() {
                    stats.max_rel_error = stats.max_rel_error.max(rel);
                    stats.worst_tensor = weight.name.clone();
                }
                stats.max_bound_ratio = stats.max_bound_ratio.max(ratio);
                stats.encoded += 1;
            }
        }
    }
    Ok(stats)
}
