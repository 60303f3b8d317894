//! The `--quantization` launch flag (SGLang's names) and its agreement with a checkpoint.
//!
//! The weights' format is detected from `quantization_config` and the tensors
//! ([`Checkpoint::check_against`]); the flag only asserts what the user expects to serve. A flag
//! that names another format is a one-line error naming both, never a silent reinterpretation.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::checkpoint::{Checkpoint, WeightFormat};
use crate::model::config::ModelConfig;

/// A `--quantization` value this build reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantMethod {
    /// Block FP8 (DeepSeek's own checkpoints).
    Fp8,
    /// Channel INT8 (`weight_scale` [N, 1]); also block INT8 whose config says `w8a8_int8`.
    W8a8Int8,
    /// Block INT8 (`weight_scale_inv` per 128 × 128 block).
    BlockwiseInt8,
    /// AWQ 4-bit, served by the MoE WNA16 path in SGLang.
    MoeWna16,
    /// AWQ 4-bit.
    Awq,
}

/// The flag values accepted, in the order help texts list them.
pub const QUANT_METHODS: &[&str] = &["fp8", "w8a8_int8", "blockwise_int8", "moe_wna16", "awq"];

impl QuantMethod {
    pub fn name(self) -> &'static str {
        match self {
            QuantMethod::Fp8 => "fp8",
            QuantMethod::W8a8Int8 => "w8a8_int8",
            QuantMethod::BlockwiseInt8 => "blockwise_int8",
            QuantMethod::MoeWna16 => "moe_wna16",
            QuantMethod::Awq => "awq",
        }
    }

    /// Whether a checkpoint with weights `fmt`, whose config declares `declared`
    /// (`quantization_config.quant_method`), is what this flag means.
    pub fn accepts(self, fmt: WeightFormat, declared: Option<&str>) -> bool {
        match self {
            QuantMethod::Fp8 => matches!(fmt, WeightFormat::Fp8Block { .. }),
            QuantMethod::BlockwiseInt8 => matches!(fmt, WeightFormat::Int8Block { .. }),
            // Block INT8 configs written as `w8a8_int8` + `weight_block_size` (the loader reads
            // them as block INT8) are what that flag names too.
            QuantMethod::W8a8Int8 => {
                fmt == WeightFormat::Int8Channel
                    || (matches!(fmt, WeightFormat::Int8Block { .. })
                        && declared == Some("w8a8_int8"))
            }
            QuantMethod::MoeWna16 | QuantMethod::Awq => matches!(fmt, WeightFormat::Awq { .. }),
        }
    }
}

impl fmt::Display for QuantMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantMethod {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<QuantMethod, String> {
        Ok(match s {
            "fp8" => QuantMethod::Fp8,
            "w8a8_int8" => QuantMethod::W8a8Int8,
            "blockwise_int8" => QuantMethod::BlockwiseInt8,
            "moe_wna16" => QuantMethod::MoeWna16,
            "awq" => QuantMethod::Awq,
            "w8a8_fp8" => {
                return Err("--quantization w8a8_fp8: per-channel FP8 checkpoints are not supported by this build \
                            (block FP8 checkpoints, DeepSeek's own, are --quantization fp8)"
                    .into())
            }
            other => {
                return Err(format!("--quantization {other}: not supported by this build (supported: {})", QUANT_METHODS.join(", ")))
            }
        })
    }
}

/// A weight format in words, for the mismatch message.
fn describe(fmt: WeightFormat) -> String {
    match fmt {
        WeightFormat::Fp8Block { .. } => "a block-FP8 checkpoint".into(),
        WeightFormat::Int8Block { .. } => "a block-INT8 checkpoint".into(),
        WeightFormat::Int8Channel => "a channel-INT8 checkpoint".into(),
        WeightFormat::Awq { group_size } => {
            format!("an AWQ 4-bit checkpoint (group size {group_size})")
        }
        WeightFormat::Bf16 => "an unquantized BF16 checkpoint".into(),
        WeightFormat::F16 => "an unquantized F16 checkpoint".into(),
        WeightFormat::F32 => "an unquantized F32 checkpoint".into(),
        WeightFormat::Other(d) => format!("a checkpoint with {d} weights"),
    }
}

/// `quantization_config.quant_method` of `config.json` as written (the parsed config keeps only
/// its meaning, and the message should quote the file).
pub fn declared_quant_method(config_path: &Path) -> Result<Option<String>> {
    let text = std::fs::read_to_string(config_path).map_err(|e| Error::ConfigFile {
        path: config_path.to_path_buf(),
        msg: format!("cannot read: {e}"),
    })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::ConfigFile {
        path: config_path.to_path_buf(),
        msg: format!("not valid JSON: {e}"),
    })?;
    Ok(v.get("quantization_config")
        .and_then(|q| q.get("quant_method"))
        .and_then(Value::as_str)
        .map(str::to_string))
}

/// Checks `--quantization flag` against a checkpoint whose weights are `fmt` (from
/// [`Checkpoint::check_against`]) and whose config declares `declared`.
pub fn check_flag(
    flag: QuantMethod,
    dir: &Path,
    fmt: WeightFormat,
    declared: Option<&str>,
) -> Result<()> {
    if flag.accepts(fmt, declared) {
        return Ok(());
    }
    let declared_text = match declared {
        Some(m) => format!("quantization_config.quant_method = {m}"),
        None => "config.json has no quantization_config".to_string(),
    };
    let hint = match fmt {
        WeightFormat::Bf16 | WeightFormat::F16 | WeightFormat::F32 => {
            "; online quantization is not supported: convert it first (cargo run --release --example convert -- --to int8-block ...) \
             or drop --quantization"
                .to_string()
        }
        _ => String::new(),
    };
    Err(Error::QuantizationMismatch {
        flag: flag.name().to_string(),
        dir: dir.to_path_buf(),
        found: describe(fmt),
        declared: declared_text,
        hint,
    })
}

/// Opens the checkpoint in `dir` (config and shard headers, no tensor data) and checks
/// `--quantization flag` against it; returns the detected weight format.
pub fn check_flag_for_dir(flag: &str, dir: &Path) -> Result<WeightFormat> {
    let method: QuantMethod = flag.parse().map_err(Error::InvalidArgument)?;
    let config_path = dir.join("config.json");
    let cfg = ModelConfig::from_file(&config_path)?;
    let ckpt = Checkpoint::open(dir)?;
    let fmt = ckpt.check_against(&cfg)?;
    check_flag(
        method,
        dir,
        fmt,
        declared_quant_method(&config_path)?.as_deref(),
    )?;
    Ok(fmt)
}
