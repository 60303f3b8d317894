//! Checkpoint conversion (`examples/convert.rs`): FP8 → BF16 (DeepSeek's `fp8_cast_bf16.py`),
//! and BF16 / FP8 (or INT8, AWQ) → block INT8 or channel INT8 (Meituan's formats).
//!
//! - [`plan`]: which tensors are re-encoded, copied or dropped; the output layout and index;
//! - [`transform`]: the per-tensor encodings and their error bounds;
//! - [`writer`]: the streaming shard writer (`.tmp` + rename) and the checksum;
//! - [`manifest`]: `convert-manifest.json`, which makes re-runs skip finished shards;
//! - [`verify`]: re-reading each written shard against the source.
//!
//! Output shards mirror the source shards (same names). One source shard is read (mmapped) and
//! one output shard written at a time, one tensor in memory at a time.

pub mod manifest;
pub mod plan;
pub mod transform;
pub mod verify;
pub mod writer;

use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::model::checkpoint::{Checkpoint, WeightFormat, INDEX_FILE};
use crate::model::config::ModelConfig;

use manifest::{Manifest, ShardRecord, SourceStamp, MANIFEST_FILE};
use plan::{Job, Plan, ShardPlan};
use verify::{verify_shard, VerifyStats};
use writer::{checksum_file, tmp_path, write_if_changed, ShardWriter};

/// The format a checkpoint is converted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Linear weights in bf16, no scales, no `quantization_config`.
    Bf16,
    /// int8 + `weight_scale_inv` f32 per 128 × 128 block (`blockwise_int8`).
    Int8Block,
    /// int8 + `weight_scale` f32 `[N, 1]` (`w8a8_int8`).
    Int8Channel,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Bf16, Target::Int8Block, Target::Int8Channel];

    pub fn name(self) -> &'static str {
        match self {
            Target::Bf16 => "bf16",
            Target::Int8Block => "int8-block",
            Target::Int8Channel => "int8-channel",
        }
    }

    /// The `quantization_config` written to config.json (`None`: the key is removed). These are
    /// the `quant_method`s the loader (and SGLang) read as block INT8 / channel INT8.
    pub fn quantization_config(self) -> Option<Value> {
        match self {
            Target::Bf16 => None,
            Target::Int8Block => Some(json!({
                "activation_scheme": "dynamic",
                "quant_method": "blockwise_int8",
                "weight_block_size": [transform::INT8_BLOCK.0, transform::INT8_BLOCK.1],
            })),
            Target::Int8Channel => {
                Some(json!({"activation_scheme": "dynamic", "quant_method": "w8a8_int8"}))
            }
        }
    }

    /// The weight format the loader must detect in the output.
    pub fn weight_format(self) -> WeightFormat {
        match self {
            Target::Bf16 => WeightFormat::Bf16,
            Target::Int8Block => WeightFormat::Int8Block {
                block_n: transform::INT8_BLOCK.0,
                block_k: transform::INT8_BLOCK.1,
            },
            Target::Int8Channel => WeightFormat::Int8Channel,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Target, String> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                format!("unknown target `{s}` (expected bf16, int8-block or int8-channel)")
            })
    }
}

/// What a conversion (or `--verify-only`) did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Output shards written by this run.
    pub written: Vec<String>,
    /// Output shards that were already converted (manifest, size and checksum match).
    pub skipped: Vec<String>,
    /// Other files (config.json, index, tokenizer, manifest, ...) this run created or changed.
    pub files_changed: Vec<String>,
    /// Verification of the shards written (all shards for `--verify-only`).
    pub verified: VerifyStats,
}

impl Report {
    /// True when the output was already complete and nothing was written.
    pub fn nothing_to_do(&self) -> bool {
        self.written.is_empty() && self.files_changed.is_empty()
    }
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error::io(format!("{what} {}", path.display()), e)
}

/// Opens the source: config, checkpoint (every shard's header validated) and the consistency
/// check that sets FP8 / INT8 block sizes for dequantization.
fn open_source(src: &Path) -> Result<(ModelConfig, Checkpoint)> {
    let cfg = ModelConfig::from_file(&src.join("config.json"))?;
    let ckpt = Checkpoint::open(src)?;
    ckpt.check_against(&cfg)?;
    Ok((cfg, ckpt))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn progress(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("converting {bar:40} {bytes}/{total_bytes} ({eta}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// Whether the output shard of `shard` is already done: its record matches the source stamp
/// and the file on disk has the recorded size and checksum.
fn is_done(dst: &Path, shard: &ShardPlan, stamp: &SourceStamp, m: &Manifest) -> bool {
    let Some(rec) = m.shards.get(&shard.file) else {
        return false;
    };
    if rec.source != *stamp || rec.tensors != shard.slots().len() {
        return false;
    }
    let path = dst.join(&shard.file);
    if rec.tensors == 0 {
        return !path.exists();
    }
    match std::fs::metadata(&path) {
        Ok(meta) if meta.len() == rec.size => {}
        _ => return false,
    }
    checksum_file(&path).is_ok_and(|w| w.checksum == rec.checksum && w.size == rec.size)
}

/// Writes one output shard: encodes each job's tensor and streams it into `<file>.tmp`.
fn write_shard(
    src: &Checkpoint,
    target: Target,
    shard: &ShardPlan,
    dest: &Path,
    pb: &ProgressBar,
) -> Result<writer::Written> {
    let mut w = ShardWriter::create(dest, shard.slots())?;
    for job in &shard.jobs {
        match job {
            Job::Copy(slot) => {
                let raw = src.raw(&slot.name)?;
                w.write(&slot.name, raw.bytes)?;
                pb.inc(raw.bytes.len() as u64);
            }
            Job::Encode {
                load_name,
                n,
                k,
                weight,
                scale,
                source_bytes,
            } => {
                let f = src.load_f32(load_name, &[*n, *k])?;
                let e = transform::encode(target, load_name, f.data(), *n, *k)?;
                w.write(&weight.name, &e.weight)?;
                if let (Some(slot), Some(s)) = (scale, &e.scale) {
                    let bytes: Vec<u8> = s.iter().flat_map(|x| x.to_le_bytes()).collect();
                    w.write(&slot.name, &bytes)?;
                }
                pb.inc(*source_bytes);
            }
        }
    }
    w.finish()
}

/// The output config.json: the source's with `quantization_config` replaced for `target`.
fn converted_config(src_cfg: &Path, dst_cfg: &Path, target: Target) -> Result<Vec<u8>> {
    let text = std::fs::read_to_string(src_cfg).map_err(|e| io_err(src_cfg, "reading", e))?;
    let mut v: Value = serde_json::from_str(&text).map_err(|e| Error::ConfigFile {
        path: src_cfg.to_path_buf(),
        msg: format!("not valid JSON: {e}"),
    })?;
    let Some(obj) = v.as_object_mut() else {
        return Err(Error::ConfigFile {
            path: src_cfg.to_path_buf(),
            msg: "not a JSON object".into(),
        });
    };
    obj.remove("quantization_config");
    if let Some(q) = target.quantization_config() {
        obj.insert("quantization_config".into(), q);
    }
    let mut out = serde_json::to_string_pretty(&v).map_err(|e| Error::OutputFile {
        path: dst_cfg.to_path_buf(),
        msg: format!("cannot serialize: {e}"),
    })?;
    out.push('\n');
    // The loader must read what we write.
    ModelConfig::from_json_str(dst_cfg, &out)?;
    Ok(out.into_bytes())
}

fn index_json(plan: &Plan) -> Vec<u8> {
    let v = json!({"metadata": {"total_size": plan.total_size()}, "weight_map": plan.weight_map()});
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s.into_bytes()
}

/// Regular files of `src` other than the checkpoint itself (tokenizer, generation config, code,
/// README, ...): copied as they are. Stray `*.safetensors` files that are not shards are not.
fn side_files(src: &Path, ckpt: &Checkpoint) -> Result<Vec<PathBuf>> {
    let shards: Vec<PathBuf> = ckpt.files().map(Path::to_path_buf).collect();
    let mut out = Vec::new();
    for ent in std::fs::read_dir(src).map_err(|e| io_err(src, "listing", e))? {
        let ent = ent.map_err(|e| io_err(src, "listing", e))?;
        let p = ent.path();
        let name = ent.file_name().to_string_lossy().into_owned();
        let skip = !p.is_file()
            || name.starts_with('.')
            || name.ends_with(".safetensors")
            || name.ends_with(".tmp")
            || [INDEX_FILE, "config.json", MANIFEST_FILE].contains(&name.as_str())
            || shards.contains(&p);
        if !skip {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Converts the checkpoint in `src` to `target` in `dst` (created if needed). Shards already
/// converted (see [`manifest`]) are skipped; every shard written is verified before it is
/// recorded; at the end the loader must open `dst` and detect `target`'s format.
pub fn convert(src: &Path, dst: &Path, target: Target) -> Result<Report> {
    if same_dir(src, dst) {
        return Err(Error::InvalidArgument(format!(
            "the output directory {} is the input directory",
            dst.display()
        )));
    }
    let (_, ckpt) = open_source(src)?;
    let plan = Plan::build(&ckpt, target)?;
    std::fs::create_dir_all(dst).map_err(|e| io_err(dst, "creating", e))?;
    let mut manifest = Manifest::load_for(dst, target.name());
    let mut report = Report::default();
    let pb = progress(plan.source_bytes());

    for shard in &plan.shards {
        pb.set_message(shard.file.clone());
        let stamp = SourceStamp::of(&shard.source)?;
        let dest = dst.join(&shard.file);
        if is_done(dst, shard, &stamp, &manifest) {
            report.skipped.push(shard.file.clone());
            pb.inc(shard.source_bytes);
            continue;
        }
        // Forget the old record first: a crash from here on leaves this shard to be redone.
        manifest.shards.remove(&shard.file);
        manifest.save(dst)?;
        let slots = shard.slots().len();
        let written = if slots == 0 {
            // Only dropped scales in this source shard: no output file.
            if dest.exists() {
                std::fs::remove_file(&dest).map_err(|e| io_err(&dest, "removing", e))?;
            }
            writer::Written {
                size: 0,
                checksum: String::new(),
            }
        } else {
            let w = write_shard(&ckpt, target, shard, &dest, &pb)?;
            report
                .verified
                .merge(&verify_shard(&ckpt, target, shard, &dest)?);
            w
        };
        tracing::info!(
            "{}: {slots} tensors, {} bytes",
            dest.display(),
            written.size
        );
        manifest.shards.insert(
            shard.file.clone(),
            ShardRecord {
                source: stamp,
                tensors: slots,
                size: written.size,
                checksum: written.checksum,
            },
        );
        manifest.save(dst)?;
        report.written.push(shard.file.clone());
    }
    pb.finish_and_clear();

    let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
        if write_if_changed(&dst.join(name), bytes)? {
            report.files_changed.push(name.to_string());
        }
        Ok(())
    };
    put(INDEX_FILE, &index_json(&plan))?;
    put(
        "config.json",
        &converted_config(&src.join("config.json"), &dst.join("config.json"), target)?,
    )?;
    for p in side_files(src, &ckpt)? {
        let bytes = std::fs::read(&p).map_err(|e| io_err(&p, "reading", e))?;
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        put(&name, &bytes)?;
    }
    if manifest.save(dst)? {
        report.files_changed.push(MANIFEST_FILE.to_string());
    }
    for shard in &plan.shards {
        let tmp = tmp_path(&dst.join(&shard.file));
        if tmp.exists() {
            std::fs::remove_file(&tmp).map_err(|e| io_err(&tmp, "removing", e))?;
        }
    }
    check_loads(dst, target)?;
    Ok(report)
}

/// The loader opens `dst` and detects `target`'s weight format.
fn check_loads(dst: &Path, target: Target) -> Result<()> {
    let cfg = ModelConfig::from_file(&dst.join("config.json"))?;
    let out = Checkpoint::open(dst)?;
    let fmt = out.check_against(&cfg)?;
    if fmt != target.weight_format() {
        return Err(Error::OutputFile {
            path: dst.to_path_buf(),
            msg: format!(
                "the loader detects {fmt:?} weights, expected {:?}",
                target.weight_format()
            ),
        });
    }
    Ok(())
}

/// `--verify-only`: checks every output shard of a finished conversion of `src` in `dst`
/// against its manifest record (size, checksum, source) and against the source tensors.
pub fn verify_only(src: &Path, dst: &Path) -> Result<Report> {
    let m = Manifest::read(dst)?;
    let target: Target = m.target.parse().map_err(|e| Error::OutputFile {
        path: dst.join(MANIFEST_FILE),
        msg: e,
    })?;
    let (_, ckpt) = open_source(src)?;
    let plan = Plan::build(&ckpt, target)?;
    let mut report = Report::default();
    let pb = progress(plan.source_bytes());
    for shard in &plan.shards {
        pb.set_message(shard.file.clone());
        let path = dst.join(&shard.file);
        let out_err = |msg: String| Error::OutputFile {
            path: path.clone(),
            msg,
        };
        let stamp = SourceStamp::of(&shard.source)?;
        let Some(rec) = m.shards.get(&shard.file) else {
            return Err(out_err(format!(
                "not recorded in {MANIFEST_FILE} (conversion unfinished; re-run convert)"
            )));
        };
        if rec.source != stamp {
            return Err(out_err(format!(
                "made from {:?}, but the source shard is now {stamp:?}",
                rec.source
            )));
        }
        if !is_done(dst, shard, &stamp, &m) {
            return Err(out_err(format!(
                "size or checksum differs from {MANIFEST_FILE} (modified or partially written)"
            )));
        }
        if !shard.jobs.is_empty() {
            report
                .verified
                .merge(&verify_shard(&ckpt, target, shard, &path)?);
        }
        pb.inc(shard.source_bytes);
        report.skipped.push(shard.file.clone());
    }
    pb.finish_and_clear();
    let index = std::fs::read(dst.join(INDEX_FILE))
        .map_err(|e| io_err(&dst.join(INDEX_FILE), "reading", e))?;
    if index != index_json(&plan) {
        return Err(Error::OutputFile {
            path: dst.join(INDEX_FILE),
            msg: "differs from the plan's weight_map / total_size".into(),
        });
    }
    check_loads(dst, target)?;
    Ok(report)
}
