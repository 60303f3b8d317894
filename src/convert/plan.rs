//! What the converter writes: for each source shard, the output shard's tensors in data order and
//! where each comes from; the index's `weight_map` and `total_size`.
//!
//! Which weights are (re-)encoded mirrors DeepSeek's FP8 checkpoints and the loader: every tensor
//! stored quantized (float8_e4m3fn or int8 with its scale, AWQ `qweight`), and every plain-float
//! 2-D `*_proj.weight` / `kv_a_proj_with_mqa.weight` (attention, dense MLP, routed and shared
//! experts). Embeddings, `lm_head`,
//! the router `mlp.gate.weight`, `e_score_correction_bias`, norms and the MTP `eh_proj` (a plain
//! `nn.Linear` in DeepSeek's and SGLang's MTP code) are copied as stored. Source scales
//! (`weight_scale_inv`, `weight_scale`, AWQ `qzeros` / `scales`) are dropped; a new scale is
//! written next to its weight, in the weight's shard.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::checkpoint::{Checkpoint, DType, TensorInfo};

use super::transform;
use super::writer::Slot;
use super::Target;

/// Where an output tensor's bytes come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Job {
    /// Copied byte for byte from the source tensor of the same name.
    Copy(Slot),
    /// The Linear weight `[n, k]`, loaded as f32 through `Checkpoint::load_f32(load_name)`
    /// (dequantized when stored quantized), encoded as `weight` and, for INT8, `scale`.
    Encode {
        load_name: String,
        n: usize,
        k: usize,
        weight: Slot,
        scale: Option<Slot>,
        source_bytes: u64,
    },
}

impl Job {
    /// The output tensors, in data order.
    pub fn slots(&self) -> Vec<&Slot> {
        match self {
            Job::Copy(s) => vec![s],
            Job::Encode { weight, scale, .. } => {
                std::iter::once(weight).chain(scale.as_ref()).collect()
            }
        }
    }
}

/// One output shard: same file name as its source shard.
#[derive(Clone, Debug)]
pub struct ShardPlan {
    pub file: String,
    pub source: PathBuf,
    pub jobs: Vec<Job>,
    /// Bytes of source tensor data this shard reads (for the progress bar).
    pub source_bytes: u64,
}

impl ShardPlan {
    pub fn slots(&self) -> Vec<Slot> {
        self.jobs
            .iter()
            .flat_map(|j| j.slots().into_iter().cloned())
            .collect()
    }
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub target: Target,
    pub shards: Vec<ShardPlan>,
}

/// What happens to one source tensor.
enum Role {
    Drop,
    Copy,
    Encode {
        out: String,
        load: String,
        n: usize,
        k: usize,
    },
}

fn quantized(info: Option<&TensorInfo>) -> bool {
    info.is_some_and(|i| matches!(i.dtype, DType::F8E4M3 | DType::I8))
}

/// Plain-float Linear weights that a quantized DeepSeek checkpoint stores quantized: modules
/// named `*_proj` (q_a, q_b, kv_b, o, gate/up/down of MLPs and experts) and
/// `kv_a_proj_with_mqa`, but not the MTP `eh_proj`.
pub fn is_quantizable_linear(name: &str, info: &TensorInfo) -> bool {
    let Some(module) = name
        .strip_suffix(".weight")
        .map(|s| s.rsplit('.').next().unwrap_or(s))
    else {
        return false;
    };
    let linear =
        (module.ends_with("_proj") || module == "kv_a_proj_with_mqa") && module != "eh_proj";
    linear && info.shape.len() == 2 && info.dtype.is_plain_float()
}

fn role(ckpt: &Checkpoint, name: &str, info: &TensorInfo) -> Result<Role> {
    let err = |msg: String| Error::CheckpointTensor {
        name: name.to_string(),
        msg,
    };
    if let Some(base) = name.strip_suffix(".qweight") {
        let &[k, n8] = info.shape.as_slice() else {
            return Err(err(format!(
                "AWQ qweight must be 2-D [K, N/8], found shape {:?}",
                info.shape
            )));
        };
        let out = format!("{base}.weight");
        return Ok(Role::Encode {
            load: out.clone(),
            out,
            n: n8 * 8,
            k,
        });
    }
    for aux in [".qzeros", ".scales"] {
        if let Some(base) = name.strip_suffix(aux) {
            if ckpt.contains(&format!("{base}.qweight")) {
                return Ok(Role::Drop);
            }
        }
    }
    for aux in ["_scale_inv", "_scale"] {
        if let Some(weight) = name.strip_suffix(aux) {
            if quantized(ckpt.info(weight)) {
                return Ok(Role::Drop);
            }
        }
    }
    if quantized(Some(info)) || is_quantizable_linear(name, info) {
        let &[n, k] = info.shape.as_slice() else {
            return Err(err(format!(
                "{} tensor of shape {:?}; only 2-D quantized weights can be converted",
                info.dtype, info.shape
            )));
        };
        return Ok(Role::Encode {
            out: name.to_string(),
            load: name.to_string(),
            n,
            k,
        });
    }
    Ok(Role::Copy)
}

impl Plan {
    /// Plans the conversion of `ckpt` (opened and checked against its config) to `target`.
    pub fn build(ckpt: &Checkpoint, target: Target) -> Result<Plan> {
        let files: Vec<PathBuf> = ckpt.files().map(Path::to_path_buf).collect();
        let mut by_file: BTreeMap<&Path, Vec<(&str, &TensorInfo)>> = BTreeMap::new();
        for name in ckpt.names() {
            if let Some(info) = ckpt.info(name) {
                by_file
                    .entry(info.file.as_path())
                    .or_default()
                    .push((name, info));
            }
        }
        let mut shards = Vec::with_capacity(files.len());
        for path in &files {
            let file = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .ok_or_else(|| Error::CheckpointFile {
                    path: path.clone(),
                    msg: "has no file name".into(),
                })?;
            let mut jobs = Vec::new();
            let mut source_bytes = 0u64;
            for &(name, info) in by_file
                .get(path.as_path())
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                let bytes = ckpt.raw(name)?.bytes.len() as u64;
                match role(ckpt, name, info)? {
                    Role::Drop => {}
                    Role::Copy => {
                        source_bytes += bytes;
                        jobs.push(Job::Copy(Slot {
                            name: name.to_string(),
                            dtype: info.dtype,
                            shape: info.shape.clone(),
                        }));
                    }
                    Role::Encode { out, load, n, k } => {
                        source_bytes += bytes;
                        let (dtype, scale) = transform::layout(target, n, k);
                        let scale = scale.map(|(suffix, shape)| Slot {
                            name: format!("{out}{suffix}"),
                            dtype: DType::F32,
                            shape,
                        });
                        let weight = Slot {
                            name: out,
                            dtype,
                            shape: vec![n, k],
                        };
                        jobs.push(Job::Encode {
                            load_name: load,
                            n,
                            k,
                            weight,
                            scale,
                            source_bytes: bytes,
                        });
                    }
                }
            }
            shards.push(ShardPlan {
                file,
                source: path.clone(),
                jobs,
                source_bytes,
            });
        }
        // Two sources must not produce one output name (e.g. both `x.weight` and `x.qweight`).
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        for s in &shards {
            for j in &s.jobs {
                for slot in j.slots() {
                    if let Some(prev) = seen.insert(&slot.name, &s.file) {
                        return Err(Error::CheckpointTensor {
                            name: slot.name.clone(),
                            msg: format!("would be written twice (from {prev} and {}); the checkpoint holds it in two forms", s.file),
                        });
                    }
                }
            }
        }
        Ok(Plan { target, shards })
    }

    /// tensor name → output shard file, for `model.safetensors.index.json`.
    pub fn weight_map(&self) -> BTreeMap<String, String> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.slots()
                    .into_iter()
                    .map(move |slot| (slot.name, s.file.clone()))
            })
            .collect()
    }

    /// Bytes of tensor data over all output shards (the index's `metadata.total_size`).
    pub fn total_size(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| s.slots())
            .map(|s| s.nbytes() as u64)
            .sum()
    }

    pub fn source_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.source_bytes).sum()
    }
}
