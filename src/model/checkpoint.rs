//! safetensors checkpoints: one file or sharded with `model.safetensors.index.json`, mmapped.
//!
//! [`Checkpoint::open`] validates every shard up front (the header parses, the data section is
//! exactly as long as the header says, every tensor the index names is in its shard), so a broken
//! download fails at once with one line naming the file or tensor, not halfway through loading.
//! Tensor bytes stay in the page cache until [`Checkpoint::load_f32`] or [`Checkpoint::raw`]
//! touches them.
//!
//! The files are memory-mapped: modifying a shard while a `Checkpoint` is open is not supported
//! (as with every mmap-based loader).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use memmap2::Mmap;
use rayon::prelude::*;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::config::{ModelConfig, Quantization};
use crate::ops::fp8;
use crate::tensor::Tensor;

/// Name of the shard index written by transformers / huggingface_hub.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of an unsharded checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

/// Largest safetensors header we accept (the safetensors crate's own limit).
const MAX_HEADER: u64 = 100_000_000;
/// Elements per rayon task when converting to f32.
const CONVERT_CHUNK: usize = 1 << 16;

/// Element type of a stored tensor (the safetensors dtypes we may meet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    Bool,
    U8,
    I8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    /// float8_e4m3fn.
    F8E4M3,
    F8E5M2,
    F8E8M0,
    F16,
    BF16,
    F32,
    F64,
    /// A dtype this crate never reads (F4, F6_*, C64, ...), by its safetensors name.
    Other(&'static str),
}

impl DType {
    fn from_safetensors(d: safetensors::Dtype) -> DType {
        use safetensors::Dtype as S;
        match d {
            S::BOOL => DType::Bool,
            S::U8 => DType::U8,
            S::I8 => DType::I8,
            S::I16 => DType::I16,
            S::U16 => DType::U16,
            S::I32 => DType::I32,
            S::U32 => DType::U32,
            S::I64 => DType::I64,
            S::U64 => DType::U64,
            S::F8_E4M3 => DType::F8E4M3,
            S::F8_E5M2 => DType::F8E5M2,
            S::F8_E8M0 => DType::F8E8M0,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::F32 => DType::F32,
            S::F64 => DType::F64,
            S::F4 => DType::Other("F4"),
            S::F6_E2M3 => DType::Other("F6_E2M3"),
            S::F6_E3M2 => DType::Other("F6_E3M2"),
            S::C64 => DType::Other("C64"),
            _ => DType::Other("unknown"),
        }
    }

    /// The name safetensors uses ("BF16", "F8_E4M3", ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::I16 => "I16",
            DType::U16 => "U16",
            DType::I32 => "I32",
            DType::U32 => "U32",
            DType::I64 => "I64",
            DType::U64 => "U64",
            DType::F8E4M3 => "F8_E4M3",
            DType::F8E5M2 => "F8_E5M2",
            DType::F8E8M0 => "F8_E8M0",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
            DType::F64 => "F64",
            DType::Other(name) => name,
        }
    }

    /// bf16, f16, f32 or f64: converted to f32 as they are.
    pub fn is_plain_float(self) -> bool {
        matches!(self, DType::BF16 | DType::F16 | DType::F32 | DType::F64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the header says about one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// The shard that holds it.
    pub file: PathBuf,
}

/// A tensor's bytes as stored (little-endian, row-major), borrowed from the mmap.
#[derive(Clone, Debug)]
pub struct RawTensor<'a> {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: &'a [u8],
}

impl RawTensor<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// bf16 / f16 / f32 / f64 values as f32 (exact except f64). `None` for other dtypes.
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        convert_to_f32(self.dtype, self.bytes)
    }
}

/// The format of a checkpoint's linear (`*_proj.weight`) weights, from [`Checkpoint::check_against`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    Bf16,
    F16,
    F32,
    /// float8_e4m3fn with `weight_scale_inv` per `[block_n, block_k]` block.
    Fp8Block { block_n: usize, block_k: usize },
    /// int8 with `weight_scale_inv` f32 per `[block_n, block_k]` block.
    Int8Block { block_n: usize, block_k: usize },
    /// int8 with `weight_scale` f32 `[N, 1]`.
    Int8Channel,
    /// AWQ 4-bit: `qweight` / `qzeros` int32, `scales` per `group_size` input channels.
    Awq { group_size: usize },
    /// Anything else (int8, packed int32, ...): loaders for those decide.
    Other(DType),
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

struct Entry {
    info: TensorInfo,
    shard: usize,
    /// Absolute byte range in the shard's mmap.
    start: usize,
    end: usize,
}

/// An opened, validated checkpoint directory.
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, Entry>,
    total_bytes: u64,
    /// FP8 block size: set from the config by `check_against`/`set_fp8_block`, else inferred per
    /// tensor from its scale's shape.
    fp8_block: RwLock<Option<(usize, usize)>>,
    /// The config's `quantization_config`, set by `check_against`: INT8 block size, AWQ group
    /// size and `modules_to_not_convert`, and which format the tensors must be in.
    quant: RwLock<Option<Quantization>>,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("shards", &self.shards.len())
            .field("tensors", &self.tensors.len())
            .field("total_bytes", &self.total_bytes)
            .finish()
    }
}

fn file_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::CheckpointFile { path: path.to_path_buf(), msg: msg.into() }
}

fn tensor_err(name: &str, msg: impl Into<String>) -> Error {
    Error::CheckpointTensor { name: name.to_string(), msg: msg.into() }
}

/// Tensors of one shard: name → (dtype, shape, absolute byte range).
type ShardTensors = Vec<(String, DType, Vec<usize>, usize, usize)>;

/// Maps a shard and checks its header and that its data section is complete.
fn open_shard(path: &Path) -> Result<(Mmap, ShardTensors)> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            file_err(path, "missing")
        } else {
            file_err(path, format!("cannot open: {e}"))
        }
    })?;
    let len = file.metadata().map_err(|e| file_err(path, format!("cannot stat: {e}")))?.len();
    if len < 8 {
        return Err(file_err(path, format!("truncated: {len} bytes, too short for a safetensors header")));
    }
    // SAFETY: the map is read-only; we document that shards must not change while open.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| file_err(path, format!("cannot mmap: {e}")))?;
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(&mmap[..8]);
    let n = u64::from_le_bytes(n8);
    if n > MAX_HEADER {
        return Err(file_err(path, format!("header length {n} is implausible (not a safetensors file?)")));
    }
    if 8 + n > len {
        return Err(file_err(
            path,
            format!("truncated: {len} bytes, but the header alone needs {}", 8 + n),
        ));
    }
    let header_end = 8 + n as usize;
    let meta: safetensors::tensor::Metadata = serde_json::from_slice(&mmap[8..header_end])
        .map_err(|e| file_err(path, format!("invalid safetensors header: {e}")))?;
    let expected = header_end as u64 + meta.data_len() as u64;
    if len < expected {
        return Err(file_err(
            path,
            format!("truncated: {len} bytes, but its header describes {expected}"),
        ));
    }
    if len > expected {
        return Err(file_err(
            path,
            format!("{len} bytes, but its header describes {expected} (corrupt file)"),
        ));
    }
    let tensors = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (s, e) = info.data_offsets;
            (name, DType::from_safetensors(info.dtype), info.shape.clone(), header_end + s, header_end + e)
        })
        .collect();
    Ok((mmap, tensors))
}

/// The `weight_map` of an index file: tensor name → shard file name.
fn read_index(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| file_err(path, format!("not valid JSON: {e}")))?;
    let Some(map) = v.get("weight_map").and_then(Value::as_object) else {
        return Err(file_err(path, "has no `weight_map` object"));
    };
    let mut out = BTreeMap::new();
    for (name, file) in map {
        let Some(file) = file.as_str() else {
            return Err(file_err(path, format!("`weight_map` entry `{name}` is not a file name")));
        };
        let p = Path::new(file);
        if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(file_err(path, format!("`weight_map` entry `{name}` points outside the directory: {file}")));
        }
        out.insert(name.clone(), file.to_string());
    }
    if out.is_empty() {
        return Err(file_err(path, "`weight_map` is empty"));
    }
    Ok(out)
}

/// bf16 / f16 / f32 / f64 little-endian bytes to f32; `None` for other dtypes. Parallel for big
/// tensors.
pub fn convert_to_f32(dtype: DType, bytes: &[u8]) -> Option<Vec<f32>> {
    fn run<const W: usize>(bytes: &[u8], f: impl Fn(&[u8]) -> f32 + Sync) -> Vec<f32> {
        let n = bytes.len() / W;
        let mut out = vec![0f32; n];
        let body = |(o, b): (&mut [f32], &[u8])| {
            for (x, c) in o.iter_mut().zip(b.chunks_exact(W)) {
                *x = f(c);
            }
        };
        if n > CONVERT_CHUNK {
            out.par_chunks_mut(CONVERT_CHUNK).zip(bytes.par_chunks(CONVERT_CHUNK * W)).for_each(body);
        } else {
            body((&mut out, bytes));
        }
        out
    }
    Some(match dtype {
        DType::BF16 => run::<2>(bytes, |c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)),
        DType::F16 => run::<2>(bytes, |c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        DType::F32 => run::<4>(bytes, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        DType::F64 => run::<8>(bytes, |c| {
            f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
        }),
        _ => return None,
    })
}

/// The block edge that splits `dim` into `blocks` blocks: 128 when it fits (DeepSeek's), else
/// `dim / blocks` when that tiles exactly; anything else is ambiguous and rejected.
#[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; MSRV is 1.80
fn infer_block_dim(dim: usize, blocks: usize) -> Option<usize> {
    if blocks == 0 {
        return None;
    }
    if dim.div_ceil(128) == blocks {
        return Some(128);
    }
    (dim % blocks == 0 && dim > 0).then_some(dim / blocks)
}

fn is_linear_weight(name: &str) -> bool {
    name.ends_with("_proj.weight")
}

impl Checkpoint {
    /// Opens `dir`: its `model.safetensors.index.json` and the shards it names; else
    /// `model.safetensors`; else every `*.safetensors` file in it. Every shard is validated (see
    /// the module docs); a progress bar is drawn on a terminal for big checkpoints.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        if !dir.is_dir() {
            let msg = if dir.exists() { "is not a directory" } else { "does not exist" };
            return Err(file_err(dir, msg));
        }
        let index_path = dir.join(INDEX_FILE);
        let (index, shard_names): (Option<BTreeMap<String, String>>, Vec<String>) = if index_path.is_file() {
            let index = read_index(&index_path)?;
            let mut names: Vec<String> = index.values().cloned().collect();
            names.sort();
            names.dedup();
            (Some(index), names)
        } else if dir.join(SINGLE_FILE).is_file() {
            (None, vec![SINGLE_FILE.to_string()])
        } else {
            let rd = std::fs::read_dir(dir).map_err(|e| file_err(dir, format!("cannot list: {e}")))?;
            let mut names = Vec::new();
            for ent in rd {
                let ent = ent.map_err(|e| file_err(dir, format!("cannot list: {e}")))?;
                let name = ent.file_name().to_string_lossy().into_owned();
                if name.ends_with(".safetensors") && ent.path().is_file() {
                    names.push(name);
                }
            }
            names.sort();
            if names.is_empty() {
                return Err(file_err(
                    dir,
                    format!("no {INDEX_FILE}, {SINGLE_FILE} or *.safetensors file found"),
                ));
            }
            (None, names)
        };

        // Every shard the index names must be there; report the first missing one and the count.
        let paths: Vec<PathBuf> = shard_names.iter().map(|n| dir.join(n)).collect();
        let missing: Vec<&PathBuf> = paths.iter().filter(|p| !p.is_file()).collect();
        if let Some(first) = missing.first() {
            let mut msg = format!("missing (named by {INDEX_FILE})");
            if missing.len() > 1 {
                msg = format!("missing (named by {INDEX_FILE}; {} of {} shards are missing)", missing.len(), paths.len());
            }
            return Err(file_err(first, msg));
        }

        let total_file_bytes: u64 =
            paths.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
        let progress = if std::io::stderr().is_terminal() && (total_file_bytes > (1 << 30) || paths.len() > 4) {
            let pb = ProgressBar::with_draw_target(Some(paths.len() as u64), ProgressDrawTarget::stderr());
            pb.set_style(
                ProgressStyle::with_template("checking checkpoint {bar:40} {pos}/{len} shards {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            pb
        } else {
            ProgressBar::hidden()
        };

        let shard_of: HashMap<&str, usize> =
            shard_names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        let mut shards = Vec::with_capacity(paths.len());
        let mut tensors: BTreeMap<String, Entry> = BTreeMap::new();
        for (si, path) in paths.iter().enumerate() {
            progress.set_message(shard_names[si].clone());
            let (mmap, list) = open_shard(path)?;
            for (name, dtype, shape, start, end) in list {
                // A name in two shards: the index decides; without one the first file wins.
                if let Some(prev) = tensors.get(&name) {
                    let wanted = index.as_ref().and_then(|ix| ix.get(&name)).and_then(|f| shard_of.get(f.as_str()));
                    if wanted != Some(&si) || wanted == Some(&prev.shard) {
                        tracing::debug!("tensor `{name}` appears in more than one shard; keeping {}", shards_path(&paths, prev.shard).display());
                        continue;
                    }
                }
                let info = TensorInfo { dtype, shape, file: path.clone() };
                tensors.insert(name, Entry { info, shard: si, start, end });
            }
            shards.push(Shard { path: path.clone(), mmap });
            progress.inc(1);
        }
        progress.finish_and_clear();

        if let Some(index) = &index {
            for (name, file) in index {
                let ok = tensors.get(name).is_some_and(|e| shard_names[e.shard] == *file);
                if !ok {
                    return Err(tensor_err(
                        name,
                        format!("{INDEX_FILE} places it in {file}, but that file does not hold it"),
                    ));
                }
            }
        }

        let total_bytes = tensors.values().map(|e| (e.end - e.start) as u64).sum();
        Ok(Checkpoint { dir: dir.to_path_buf(), shards, tensors, total_bytes, fp8_block: RwLock::new(None), quant: RwLock::new(None) })
    }

    /// The directory this checkpoint was opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shard files, in the order they were opened.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.shards.iter().map(|s| s.path.as_path())
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name).map(|e| &e.info)
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Bytes of tensor data over all shards (headers excluded).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The FP8 block size used to dequantize, if one was set (else inferred per tensor).
    pub fn fp8_block(&self) -> Option<(usize, usize)> {
        self.fp8_block.read().map(|g| *g).unwrap_or(None)
    }

    /// Sets the FP8 block size (`weight_block_size` of the config) used by [`Self::load_f32`].
    pub fn set_fp8_block(&self, block: Option<(usize, usize)>) {
        if let Ok(mut g) = self.fp8_block.write() {
            *g = block;
        }
    }

    /// A tensor's stored bytes; a missing name is a `CheckpointTensor` error.
    pub fn raw(&self, name: &str) -> Result<RawTensor<'_>> {
        let e = self.tensors.get(name).ok_or_else(|| {
            tensor_err(name, format!("not found in the checkpoint at {}", self.dir.display()))
        })?;
        let mmap = &self.shards[e.shard].mmap;
        Ok(RawTensor { dtype: e.info.dtype, shape: e.info.shape.clone(), bytes: &mmap[e.start..e.end] })
    }

    /// Loads a tensor as f32: bf16/f16/f32(/f64) are converted; float8_e4m3fn is dequantized with
    /// `{name}_scale_inv` (blocks from the config via [`Self::check_against`] /
    /// [`Self::set_fp8_block`], else inferred from the scale's shape). The shape must equal
    /// `expected_shape`.
    ///
    /// int8 `[N, K]` is dequantized with `{name}_scale_inv` (block INT8) or `{name}_scale`
    /// `[N, 1]` (channel INT8). A `{base}.weight` that is absent while `{base}.qweight` exists is
    /// the AWQ layer `{base}` and comes back dequantized as the `[N, K]` Linear weight.
    pub fn load_f32(&self, name: &str, expected_shape: &[usize]) -> Result<Tensor> {
        if !self.contains(name) {
            if let Some(base) = name.strip_suffix(".weight") {
                if self.contains(&format!("{base}.qweight")) {
                    let data = self.dequant_awq(base, expected_shape)?;
                    return Tensor::new(expected_shape.to_vec(), data).map_err(|e| tensor_err(name, e.to_string()));
                }
            }
        }
        let raw = self.raw(name)?;
        if raw.shape != expected_shape {
            return Err(tensor_err(name, format!("expected shape {expected_shape:?}, found {:?}", raw.shape)));
        }
        let data = match raw.dtype {
            d if d.is_plain_float() => convert_to_f32(d, raw.bytes)
                .ok_or_else(|| tensor_err(name, format!("cannot convert dtype {d}")))?,
            DType::F8E4M3 => self.dequant_fp8(name, &raw)?,
            DType::I8 => self.dequant_int8(name, &raw)?,
            d => {
                return Err(tensor_err(
                    name,
                    format!("dtype {d} where a floating-point tensor (BF16, F16, F32 or F8_E4M3 with scale) is needed"),
                ))
            }
        };
        Tensor::new(raw.shape, data).map_err(|e| tensor_err(name, e.to_string()))
    }

    /// The `[block_n, block_k]` of an fp8 `[n, k]` weight, checked against its scale's shape.
    fn fp8_layout(&self, name: &str, shape: &[usize]) -> Result<(String, (usize, usize))> {
        let &[n, k] = shape else {
            return Err(tensor_err(name, format!("float8_e4m3fn tensor of shape {shape:?}; only 2-D block-quantized weights are supported")));
        };
        let scale_name = format!("{name}_scale_inv");
        let Some(sinfo) = self.info(&scale_name) else {
            return Err(tensor_err(name, format!("float8_e4m3fn weight without its scale `{scale_name}`")));
        };
        let &[sn, sk] = sinfo.shape.as_slice() else {
            return Err(tensor_err(
                &scale_name,
                format!("scale of weight [{n}, {k}] must be 2-D, found shape {:?}", sinfo.shape),
            ));
        };
        if !sinfo.dtype.is_plain_float() {
            return Err(tensor_err(&scale_name, format!("scale has dtype {}; expected F32", sinfo.dtype)));
        }
        let block = match self.fp8_block() {
            Some(b) => b,
            None => match (infer_block_dim(n, sn), infer_block_dim(k, sk)) {
                (Some(bn), Some(bk)) => (bn, bk),
                _ => {
                    return Err(tensor_err(
                        &scale_name,
                        format!(
                            "shape [{sn}, {sk}] does not tile weight [{n}, {k}] in [128, 128] or exact blocks \
                             (set the block size from the config's weight_block_size)"
                        ),
                    ))
                }
            },
        };
        let want = [n.div_ceil(block.0), k.div_ceil(block.1)];
        if [sn, sk] != want {
            return Err(tensor_err(
                &scale_name,
                format!(
                    "expected shape {want:?} for weight [{n}, {k}] in [{}, {}] blocks, found [{sn}, {sk}]",
                    block.0, block.1
                ),
            ));
        }
        Ok((scale_name, block))
    }

    fn dequant_fp8(&self, name: &str, raw: &RawTensor<'_>) -> Result<Vec<f32>> {
        let (scale_name, block) = self.fp8_layout(name, &raw.shape)?;
        let scale = self.raw(&scale_name)?;
        let s = scale
            .to_f32_vec()
            .ok_or_else(|| tensor_err(&scale_name, format!("scale has dtype {}; expected F32", scale.dtype)))?;
        fp8::try_dequant_block_weight(raw.bytes, raw.shape[0], raw.shape[1], &s, block)
            .map_err(|e| tensor_err(name, e.to_string()))
    }

    /// The `quantization_config` set by [`Self::check_against`] / [`Self::set_quantization`].
    pub fn quantization(&self) -> Option<Quantization> {
        self.quant.read().map(|g| g.clone()).unwrap_or(None)
    }

    /// Sets the declared quantization used by [`Self::load_f32`] for INT8 / AWQ weights (block
    /// size, group size, `modules_to_not_convert`, and the format the tensors must have).
    pub fn set_quantization(&self, q: Option<Quantization>) {
        if let Ok(mut g) = self.quant.write() {
            *g = q;
        }
    }

    /// How an int8 `[n, k]` weight is scaled: `(scale name, Some(block))` for block INT8,
    /// `(scale name, None)` for channel INT8; checked against the declared quantization.
    pub(crate) fn int8_layout(&self, name: &str, shape: &[usize]) -> Result<(String, Option<(usize, usize)>)> {
        let &[n, k] = shape else {
            return Err(tensor_err(name, format!("dtype I8 with shape {shape:?}; only 2-D int8 weights with a scale are supported")));
        };
        let declared = self.quantization();
        let block_name = format!("{name}_scale_inv");
        let chan_name = format!("{name}_scale");
        match (self.info(&block_name), self.info(&chan_name)) {
            (Some(_), Some(_)) => Err(tensor_err(
                name,
                format!("int8 weight has both `{block_name}` (block INT8) and `{chan_name}` (channel INT8)"),
            )),
            (None, None) => Err(tensor_err(
                name,
                format!("int8 weight without its scale (`{block_name}` for block INT8 or `{chan_name}` for channel INT8)"),
            )),
            (Some(sinfo), None) => {
                match &declared {
                    None | Some(Quantization::Int8Block { .. }) | Some(Quantization::Unsupported(_)) => {}
                    Some(q) => {
                        return Err(tensor_err(
                            name,
                            format!("block INT8 weight (has `{block_name}`), but config.json declares {}", describe(q)),
                        ))
                    }
                }
                let &[sn, sk] = sinfo.shape.as_slice() else {
                    return Err(tensor_err(&block_name, format!("scale of weight [{n}, {k}] must be 2-D, found shape {:?}", sinfo.shape)));
                };
                if !sinfo.dtype.is_plain_float() {
                    return Err(tensor_err(&block_name, format!("scale has dtype {}; expected F32", sinfo.dtype)));
                }
                let block = match &declared {
                    Some(Quantization::Int8Block { block_n, block_k }) => (*block_n, *block_k),
                    _ => match (infer_block_dim(n, sn), infer_block_dim(k, sk)) {
                        (Some(bn), Some(bk)) => (bn, bk),
                        _ => {
                            return Err(tensor_err(
                                &block_name,
                                format!("shape [{sn}, {sk}] does not tile weight [{n}, {k}] in [128, 128] or exact blocks"),
                            ))
                        }
                    },
                };
                let want = [n.div_ceil(block.0), k.div_ceil(block.1)];
                if [sn, sk] != want {
                    return Err(tensor_err(
                        &block_name,
                        format!("expected shape {want:?} for weight [{n}, {k}] in [{}, {}] blocks, found [{sn}, {sk}]", block.0, block.1),
                    ));
                }
                Ok((block_name, Some(block)))
            }
            (None, Some(sinfo)) => {
                match &declared {
                    None | Some(Quantization::Int8Channel) | Some(Quantization::Unsupported(_)) => {}
                    Some(q) => {
                        return Err(tensor_err(
                            name,
                            format!("channel INT8 weight (has `{chan_name}`), but config.json declares {}", describe(q)),
                        ))
                    }
                }
                if !(sinfo.shape == [n, 1] || sinfo.shape == [n]) {
                    return Err(tensor_err(&chan_name, format!("expected shape [{n}, 1] for weight [{n}, {k}], found {:?}", sinfo.shape)));
                }
                if !sinfo.dtype.is_plain_float() {
                    return Err(tensor_err(&chan_name, format!("scale has dtype {}; expected F32", sinfo.dtype)));
                }
                Ok((chan_name, None))
            }
        }
    }

    fn dequant_int8(&self, name: &str, raw: &RawTensor<'_>) -> Result<Vec<f32>> {
        let (scale_name, block) = self.int8_layout(name, &raw.shape)?;
        let scale = self.raw(&scale_name)?;
        let s = scale
            .to_f32_vec()
            .ok_or_else(|| tensor_err(&scale_name, format!("scale has dtype {}; expected F32", scale.dtype)))?;
        let (n, k) = (raw.shape[0], raw.shape[1]);
        Ok(match block {
            Some(b) => dequant_int8_block(raw.bytes, n, k, &s, b),
            None => dequant_int8_channel(raw.bytes, n, k, &s),
        })
    }

    /// Checks the AWQ layer `base` (`qweight` [K, N/8], `qzeros` [K/G, N/8], `scales` [K/G, N])
    /// for a Linear weight `[n, k]`; returns G.
    #[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; MSRV is 1.80
    pub(crate) fn awq_layout(&self, base: &str, n: usize, k: usize) -> Result<usize> {
        let qw_name = format!("{base}.qweight");
        let qz_name = format!("{base}.qzeros");
        let sc_name = format!("{base}.scales");
        let declared = self.quantization();
        let group = match &declared {
            Some(Quantization::Awq { group_size, modules_to_not_convert, .. }) => {
                if let Some(m) = modules_to_not_convert.iter().find(|m| base.contains(m.as_str())) {
                    return Err(tensor_err(
                        &qw_name,
                        format!("AWQ-quantized, but config.json lists `{m}` in modules_to_not_convert"),
                    ));
                }
                Some(*group_size)
            }
            None | Some(Quantization::Unsupported(_)) => None,
            Some(q) => return Err(tensor_err(&qw_name, format!("AWQ weight, but config.json declares {}", describe(q)))),
        };
        let info = |nm: &str| self.info(nm).ok_or_else(|| tensor_err(nm, format!("missing (AWQ layer `{base}` has `{qw_name}`)")));
        let (qw, qz, sc) = (info(&qw_name)?, info(&qz_name)?, info(&sc_name)?);
        if qw.dtype != DType::I32 && qw.dtype != DType::U32 {
            return Err(tensor_err(&qw_name, format!("dtype {}; expected I32", qw.dtype)));
        }
        if qz.dtype != DType::I32 && qz.dtype != DType::U32 {
            return Err(tensor_err(&qz_name, format!("dtype {}; expected I32", qz.dtype)));
        }
        if !sc.dtype.is_plain_float() {
            return Err(tensor_err(&sc_name, format!("dtype {}; expected F16", sc.dtype)));
        }
        if n % 8 != 0 || qw.shape != [k, n / 8] {
            return Err(tensor_err(&qw_name, format!("expected shape [{k}, {}] for Linear weight [{n}, {k}], found {:?}", n / 8, qw.shape)));
        }
        let groups = match sc.shape.as_slice() {
            &[g, sn] if sn == n && g > 0 => g,
            _ => return Err(tensor_err(&sc_name, format!("expected shape [K/G, {n}] for Linear weight [{n}, {k}], found {:?}", sc.shape))),
        };
        let g = group.unwrap_or(k / groups);
        if g == 0 || k.div_ceil(g) != groups {
            return Err(tensor_err(&sc_name, format!("expected shape [{}, {n}] for K = {k} in groups of {g}, found {:?}", k.div_ceil(g.max(1)), sc.shape)));
        }
        if qz.shape != [groups, n / 8] {
            return Err(tensor_err(&qz_name, format!("expected shape [{groups}, {}], found {:?}", n / 8, qz.shape)));
        }
        Ok(g)
    }

    fn dequant_awq(&self, base: &str, expected_shape: &[usize]) -> Result<Vec<f32>> {
        let &[n, k] = expected_shape else {
            return Err(tensor_err(&format!("{base}.qweight"), format!("AWQ layer where a tensor of shape {expected_shape:?} is needed")));
        };
        let g = self.awq_layout(base, n, k)?;
        let qw = self.raw(&format!("{base}.qweight"))?;
        let qz = self.raw(&format!("{base}.qzeros"))?;
        let sc = self.raw(&format!("{base}.scales"))?;
        let s = sc.to_f32_vec().ok_or_else(|| tensor_err(&format!("{base}.scales"), "cannot convert"))?;
        Ok(dequant_awq(&words(qw.bytes), &words(qz.bytes), &s, n, k, g))
    }

    /// The format of the linear (`*_proj.weight`) weights, without any logging. The fp8 block
    /// size is the one set by [`Self::set_fp8_block`], else inferred from a scale's shape.
    pub fn weight_format(&self) -> WeightFormat {
        self.detect_format(self.fp8_block())
    }

    fn detect_format(&self, block_hint: Option<(usize, usize)>) -> WeightFormat {
        let mut linear: Vec<(&str, &TensorInfo)> = self
            .tensors
            .iter()
            .filter(|(n, _)| is_linear_weight(n))
            .map(|(n, e)| (n.as_str(), &e.info))
            .collect();
        if linear.is_empty() {
            // Not the HF DeepSeek layout: look at every 2-D weight.
            linear = self
                .tensors
                .iter()
                .filter(|(n, e)| n.ends_with(".weight") && e.info.shape.len() == 2)
                .map(|(n, e)| (n.as_str(), &e.info))
                .collect();
        }
        if let Some((name, info)) = linear.iter().find(|(_, i)| i.dtype == DType::F8E4M3) {
            let block = block_hint
                .or_else(|| {
                    let scale = self.info(&format!("{name}_scale_inv"))?;
                    match (info.shape.as_slice(), scale.shape.as_slice()) {
                        (&[n, k], &[sn, sk]) => Some((infer_block_dim(n, sn)?, infer_block_dim(k, sk)?)),
                        _ => None,
                    }
                })
                .unwrap_or((128, 128));
            return WeightFormat::Fp8Block { block_n: block.0, block_k: block.1 };
        }
        if let Some(g) = self.awq_group_hint() {
            return WeightFormat::Awq { group_size: g };
        }
        if let Some((name, info)) = linear.iter().find(|(_, i)| i.dtype == DType::I8) {
            if let Some(scale) = self.info(&format!("{name}_scale_inv")) {
                let block = match (info.shape.as_slice(), scale.shape.as_slice()) {
                    (&[n, k], &[sn, sk]) => infer_block_dim(n, sn).zip(infer_block_dim(k, sk)),
                    _ => None,
                };
                let (block_n, block_k) = self.quantization().as_ref().and_then(int8_block_of).or(block).unwrap_or((128, 128));
                return WeightFormat::Int8Block { block_n, block_k };
            }
            if self.contains(&format!("{name}_scale")) {
                return WeightFormat::Int8Channel;
            }
        }
        let mut counts: BTreeMap<&'static str, (usize, DType)> = BTreeMap::new();
        for (_, info) in &linear {
            counts.entry(info.dtype.name()).or_insert((0, info.dtype)).0 += 1;
        }
        match counts.values().max_by_key(|(c, _)| *c).map(|(_, d)| *d) {
            Some(DType::BF16) | None => WeightFormat::Bf16,
            Some(DType::F16) => WeightFormat::F16,
            Some(DType::F32) => WeightFormat::F32,
            Some(d) => WeightFormat::Other(d),
        }
    }

    /// Reconciles the config's `quantization_config` with the weights actually stored and returns
    /// their format.
    ///
    /// - fp8 config over BF16/F16/F32 weights (a dequantized checkpoint that kept its
    ///   `quantization_config`): ONE `tracing::warn!`, and the quantization_config is ignored.
    /// - fp8 weights: the block size comes from the config (or is inferred from the scales, with a
    ///   warning when the config declares no fp8 quantization) and is kept for
    ///   [`Self::load_f32`]; every fp8 weight's `_scale_inv` is checked now (presence, dtype,
    ///   shape), so a bad checkpoint fails before loading starts.
    pub fn check_against(&self, cfg: &ModelConfig) -> Result<WeightFormat> {
        let declared_q = match &cfg.quantization {
            Some(q @ (Quantization::Int8Block { .. } | Quantization::Int8Channel | Quantization::Awq { .. })) => {
                Some(q.clone())
            }
            _ => None,
        };
        self.set_quantization(declared_q.clone());
        let fmt = self.detect_format(cfg.fp8_block().or(self.fp8_block()));
        if matches!(fmt, WeightFormat::Int8Block { .. } | WeightFormat::Int8Channel | WeightFormat::Awq { .. }) {
            if declared_q.is_none() {
                let declared = match &cfg.quantization {
                    Some(q) => format!("declares {}", describe(q)),
                    None => "has no quantization_config".to_string(),
                };
                if cfg.fp8_block().is_some() {
                    let first = self.tensors.iter().find(|(n, e)| e.info.dtype == DType::I8 || n.ends_with(".qweight"));
                    let name = first.map(|(n, _)| n.as_str()).unwrap_or("?");
                    return Err(tensor_err(name, format!("weights are {fmt:?}, but config.json {declared}")));
                }
                tracing::warn!("checkpoint {}: weights are {fmt:?} but config.json {declared}; loading them as stored", self.dir.display());
            }
            // Every int8 / AWQ tensor's layout now, so a bad checkpoint fails before loading.
            for (name, e) in &self.tensors {
                if e.info.dtype == DType::I8 {
                    self.int8_layout(name, &e.info.shape)?;
                } else if let Some(base) = name.strip_suffix(".qweight") {
                    let (k, n8) = match e.info.shape.as_slice() {
                        &[k, n8] => (k, n8),
                        s => return Err(tensor_err(name, format!("expected a 2-D [K, N/8] tensor, found shape {s:?}"))),
                    };
                    self.awq_layout(base, n8 * 8, k)?;
                } else if e.info.dtype == DType::F8E4M3 {
                    return Err(tensor_err(name, format!("float8_e4m3fn in a {fmt:?} checkpoint")));
                }
            }
            return Ok(fmt);
        }
        if let (Some(q), WeightFormat::Fp8Block { .. }) = (&declared_q, fmt) {
            let name = self.tensors.iter().find(|(_, e)| e.info.dtype == DType::F8E4M3).map(|(n, _)| n.as_str()).unwrap_or("?");
            return Err(tensor_err(name, format!("float8_e4m3fn weight, but config.json declares {}", describe(q))));
        }
        if let Some(q) = &declared_q {
            tracing::warn!(
                "checkpoint {}: config.json declares {}, but the weights are {fmt:?}; loading them as stored",
                self.dir.display(),
                describe(q)
            );
            return Ok(fmt);
        }
        let WeightFormat::Fp8Block { block_n, block_k } = fmt else {
            if cfg.fp8_block().is_some() {
                let stored = match fmt {
                    WeightFormat::Bf16 => "BF16",
                    WeightFormat::F16 => "F16",
                    WeightFormat::F32 => "F32",
                    WeightFormat::Other(d) => d.name(),
                    WeightFormat::Fp8Block { .. } => "FP8",
                    WeightFormat::Int8Block { .. } | WeightFormat::Int8Channel => "INT8",
                    WeightFormat::Awq { .. } => "AWQ",
                };
                tracing::warn!(
                    "checkpoint {}: config.json declares an fp8 quantization_config, but the weights are {stored}; \
                     loading them as {stored} and ignoring quantization_config",
                    self.dir.display()
                );
            }
            return Ok(fmt);
        };
        if cfg.fp8_block().is_none() {
            let declared = match &cfg.quantization {
                Some(Quantization::Unsupported(m)) => format!("declares quantization `{m}`"),
                _ => "has no fp8 quantization_config".to_string(),
            };
            tracing::warn!(
                "checkpoint {}: weights are float8_e4m3fn but config.json {declared}; \
                 dequantizing them with [{block_n}, {block_k}] blocks inferred from the scales",
                self.dir.display()
            );
        }
        self.set_fp8_block(Some((block_n, block_k)));
        for (name, e) in &self.tensors {
            if e.info.dtype == DType::F8E4M3 {
                self.fp8_layout(name, &e.info.shape)?;
            }
        }
        Ok(fmt)
    }

    /// [`Self::check_against`] for callers that only want the warning and the format; a
    /// consistency error is logged and the inferred format returned.
    pub fn warn_if_stale_quantization(&self, cfg: &ModelConfig) -> WeightFormat {
        match self.check_against(cfg) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("{e}");
                self.weight_format()
            }
        }
    }
}

impl Checkpoint {
    /// The AWQ group size when the checkpoint has `*.qweight` tensors: the declared one, else
    /// inferred from the first layer's shapes.
    fn awq_group_hint(&self) -> Option<usize> {
        let (name, e) = self.tensors.iter().find(|(n, _)| n.ends_with(".qweight"))?;
        if let Some(Quantization::Awq { group_size, .. }) = self.quantization() {
            return Some(group_size);
        }
        let base = name.strip_suffix(".qweight")?;
        let groups = *self.info(&format!("{base}.scales"))?.shape.first()?;
        let k = *e.info.shape.first()?;
        (groups > 0).then(|| k / groups)
    }
}

fn int8_block_of(q: &Quantization) -> Option<(usize, usize)> {
    match q {
        Quantization::Int8Block { block_n, block_k } => Some((*block_n, *block_k)),
        _ => None,
    }
}

/// A quantization_config in words, for error messages.
fn describe(q: &Quantization) -> String {
    match q {
        Quantization::Fp8Block { block_n, block_k } => format!("fp8 with [{block_n}, {block_k}] blocks"),
        Quantization::Int8Block { block_n, block_k } => format!("block INT8 with [{block_n}, {block_k}] blocks"),
        Quantization::Int8Channel => "channel INT8 (w8a8_int8 without weight_block_size)".to_string(),
        Quantization::Awq { bits, group_size, .. } => format!("AWQ {bits}-bit with group size {group_size}"),
        Quantization::Unsupported(m) => format!("quantization `{m}`"),
    }
}

/// Little-endian 32-bit words.
fn words(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Where column `j` (0..8) of a packed group of 8 sits: nibble `AWQ_REVERSE_ORDER[j]`.
pub const AWQ_REVERSE_ORDER: [u32; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// Packs `vals` (each 0..16, length a multiple of 8) along their row into AWQ words.
pub fn awq_pack(vals: &[u8]) -> Vec<u32> {
    vals.chunks_exact(8)
        .map(|c| c.iter().enumerate().fold(0u32, |w, (j, &v)| w | (u32::from(v & 0xF) << (4 * AWQ_REVERSE_ORDER[j]))))
        .collect()
}

/// Unpacks AWQ words into 8 values each, in column order.
pub fn awq_unpack(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|&w| AWQ_REVERSE_ORDER.map(|sh| ((w >> (4 * sh)) & 0xF) as u8)).collect()
}

/// Block INT8 `[n, k]` with scales `[ceil(n/bn), ceil(k/bk)]` → f32 `[n, k]`, W = q · s.
pub fn dequant_int8_block(q: &[u8], n: usize, k: usize, s: &[f32], (bn, bk): (usize, usize)) -> Vec<f32> {
    let sk = k.div_ceil(bk);
    let mut out = vec![0f32; n * k];
    out.par_chunks_mut(k.max(1)).enumerate().for_each(|(r, row)| {
        let srow = &s[(r / bn) * sk..(r / bn + 1) * sk];
        for (c, x) in row.iter_mut().enumerate() {
            *x = f32::from(q[r * k + c] as i8) * srow[c / bk];
        }
    });
    out
}

/// Channel INT8 `[n, k]` with scales `[n]` (stored `[n, 1]`) → f32 `[n, k]`, W = q · s per row.
pub fn dequant_int8_channel(q: &[u8], n: usize, k: usize, s: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; n * k];
    out.par_chunks_mut(k.max(1)).enumerate().for_each(|(r, row)| {
        for (c, x) in row.iter_mut().enumerate() {
            *x = f32::from(q[r * k + c] as i8) * s[r];
        }
    });
    let _ = n;
    out
}

/// AWQ: `qweight` [k, n/8], `qzeros` [ceil(k/g), n/8] (words), `scales` [ceil(k/g), n] →
/// the Linear weight f32 `[n, k]` with W[nn, kk] = (q[kk, nn] − z[kk/g, nn]) · s[kk/g, nn].
pub fn dequant_awq(qweight: &[u32], qzeros: &[u32], scales: &[f32], n: usize, k: usize, g: usize) -> Vec<f32> {
    let n8 = n / 8;
    let nib = |w: &[u32], row: usize, col: usize| -> f32 {
        f32::from(((w[row * n8 + col / 8] >> (4 * AWQ_REVERSE_ORDER[col % 8])) & 0xF) as u8)
    };
    let mut out = vec![0f32; n * k];
    out.par_chunks_mut(k.max(1)).enumerate().for_each(|(nn, row)| {
        for (kk, x) in row.iter_mut().enumerate() {
            let gi = kk / g;
            *x = (nib(qweight, kk, nn) - nib(qzeros, gi, nn)) * scales[gi * n + nn];
        }
    });
    out
}

fn shards_path(paths: &[PathBuf], i: usize) -> &Path {
    paths.get(i).map(PathBuf::as_path).unwrap_or(Path::new("?"))
}
