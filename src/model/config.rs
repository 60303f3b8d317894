//! `config.json` of DeepSeek-V3-architecture checkpoints (V3, R1, V2-Lite-style `q_lora_rank: null`),
//! as written by DeepSeek (`rope_scaling`) and by transformers >= 5 (`rope_parameters`).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// YaRN rope scaling (DeepSeek-V3 uses factor 40 over an original 4096 positions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct YarnScaling {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub mscale: f64,
    pub mscale_all_dim: f64,
}

/// Weight quantization declared by `quantization_config`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Quantization {
    /// float8_e4m3fn weights with `weight_scale_inv` per `[block_n, block_k]` block, dynamic
    /// per-token-group activation quantization.
    Fp8Block { block_n: usize, block_k: usize },
    /// int8 weights with `weight_scale_inv` f32 per `[block_n, block_k]` block (Meituan's block
    /// INT8: `w8a8_int8` / `blockwise_int8` with `weight_block_size`).
    Int8Block { block_n: usize, block_k: usize },
    /// int8 weights with `weight_scale` f32 `[N, 1]` per output channel (`w8a8_int8` without
    /// `weight_block_size`).
    Int8Channel,
    /// AWQ (`awq` / `moe_wna16`): `qweight` / `qzeros` int32 packed along the output dim, `scales`
    /// f16 per `group_size` input channels; modules whose name contains one of
    /// `modules_to_not_convert` stay unquantized.
    Awq { bits: usize, group_size: usize, modules_to_not_convert: Vec<String> },
    /// A method this crate does not load yet; carries the `quant_method` string.
    Unsupported(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Dense MLP intermediate size (first `first_k_dense_replace` layers).
    pub intermediate_size: usize,
    pub moe_intermediate_size: usize,
    pub num_hidden_layers: usize,
    /// Number of MTP layers stored after the decoder layers (`model.layers.{num_hidden_layers}.*`).
    pub num_nextn_predict_layers: usize,
    pub num_attention_heads: usize,
    /// `None` for checkpoints without the q low-rank projection (q_proj directly).
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub num_experts_per_tok: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub routed_scaling_factor: f32,
    pub norm_topk_prob: bool,
    pub first_k_dense_replace: usize,
    pub moe_layer_freq: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<YarnScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` / `dtype` as written ("bfloat16", ...), if present.
    pub torch_dtype: Option<String>,
    pub quantization: Option<Quantization>,
}

impl ModelConfig {
    /// Whether decoder layer `i` uses the MoE (otherwise the dense MLP).
    #[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; MSRV is 1.80
    pub fn is_moe_layer(&self, i: usize) -> bool {
        self.n_routed_experts > 0
            && i >= self.first_k_dense_replace
            && i % self.moe_layer_freq.max(1) == 0
    }

    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Attention softmax scale: head_dim^-0.5, times mscale² under YaRN
    /// (m = 0.1·mscale_all_dim·ln(factor) + 1).
    pub fn softmax_scale(&self) -> f32 {
        let mut scale = (self.qk_head_dim() as f64).powf(-0.5);
        if let Some(y) = &self.rope_scaling {
            if y.mscale_all_dim != 0.0 && y.factor > 1.0 {
                let m = 0.1 * y.mscale_all_dim * y.factor.ln() + 1.0;
                scale *= m * m;
            }
        }
        scale as f32
    }
}

impl YarnScaling {
    /// YaRN's magnitude correction m(factor, x) = 0.1·x·ln(factor) + 1, and 1 when factor ≤ 1
    /// (DeepSeek's `yarn_get_mscale`).
    pub fn get_mscale(factor: f64, x: f64) -> f64 {
        if factor <= 1.0 {
            1.0
        } else {
            0.1 * x * factor.ln() + 1.0
        }
    }

    /// Factor applied to the cached cos/sin: m(factor, mscale) / m(factor, mscale_all_dim).
    /// It is exactly 1 for DeepSeek-V3/R1 (mscale == mscale_all_dim == 1). DeepSeek's modeling code
    /// and transformers agree on this value for every config we accept (with transformers' own
    /// defaults, a missing `mscale_all_dim` gives m(factor, 1) in both).
    pub fn cos_sin_mscale(&self) -> f64 {
        Self::get_mscale(self.factor, self.mscale) / Self::get_mscale(self.factor, self.mscale_all_dim)
    }
}

/// Defaults applied when a key is absent. Unless noted they are transformers'
/// `DeepseekV3Config` defaults. Fields that fix the model's topology (sizes, head dims, expert
/// counts, groups) have no default: a 7168-wide default silently applied to a tiny model would be
/// worse than an error naming the missing field.
pub mod defaults {
    /// transformers: `moe_layer_freq` is not a DeepseekV3Config argument; DeepSeek's own config
    /// class defaults it to 1 (every layer after `first_k_dense_replace` is MoE).
    pub const MOE_LAYER_FREQ: usize = 1;
    /// No MTP layer unless the config says so (DeepSeek's own class defaults to 1, but a
    /// checkpoint without the key carries no MTP weights).
    pub const NUM_NEXTN_PREDICT_LAYERS: usize = 0;
    pub const TIE_WORD_EMBEDDINGS: bool = false;
    pub const NORM_TOPK_PROB: bool = true;
    pub const ROUTED_SCALING_FACTOR: f32 = 2.5;
    pub const RMS_NORM_EPS: f32 = 1e-6;
    pub const ROPE_THETA: f64 = 10000.0;
    pub const MAX_POSITION_EMBEDDINGS: usize = 4096;
    pub const BOS_TOKEN_ID: u32 = 0;
    pub const EOS_TOKEN_ID: u32 = 1;
    pub const SCORING_FUNC: &str = "sigmoid";
    pub const TOPK_METHOD: &str = "noaux_tc";
    pub const HIDDEN_ACT: &str = "silu";
    /// YaRN keys (transformers' `_compute_yarn_parameters` / DeepSeek's `yarn_get_mscale` defaults).
    pub const YARN_BETA_FAST: f64 = 32.0;
    pub const YARN_BETA_SLOW: f64 = 1.0;
    pub const YARN_MSCALE: f64 = 1.0;
    pub const YARN_MSCALE_ALL_DIM: f64 = 0.0;
    /// FP8 block size when `weight_block_size` is absent is NOT defaulted: a fp8 config without
    /// it is per-tensor FP8, reported as `Quantization::Unsupported`.
    pub const FP8_MAX: f32 = 448.0;
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_u64() || n.is_i64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        let cut: String = s.chars().take(37).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// A JSON object being read, with the path of the file and the key prefix for error messages.
struct Obj<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Obj<'a> {
    fn field(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn err(&self, key: &str, msg: impl Into<String>) -> Error {
        Error::Config { path: self.path.to_path_buf(), field: self.field(key), msg: msg.into() }
    }

    /// The value of `key`; `None` when absent or null.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn usize_of(&self, key: &str, v: &Value) -> Result<usize> {
        if let Some(u) = v.as_u64() {
            return usize::try_from(u).map_err(|_| self.err(key, format!("{u} is too large")));
        }
        if let Some(i) = v.as_i64() {
            return Err(self.err(key, format!("must be a non-negative integer, found {i}")));
        }
        if let Some(f) = v.as_f64() {
            if f.fract() == 0.0 && (0.0..9.0e15).contains(&f) {
                return Ok(f as usize);
            }
            return Err(self.err(key, format!("expected a non-negative integer, found {f}")));
        }
        Err(self.err(key, format!("expected a non-negative integer, found {} {}", json_type(v), short(v))))
    }

    fn usize_req(&self, key: &str) -> Result<usize> {
        match self.map.get(key) {
            None => Err(self.err(key, "missing (required)")),
            Some(Value::Null) => Err(self.err(key, "is null; expected a non-negative integer")),
            Some(v) => self.usize_of(key, v),
        }
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|v| self.usize_of(key, v)).transpose()
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        Ok(self.usize_opt(key)?.unwrap_or(default))
    }

    fn f64_of(&self, key: &str, v: &Value) -> Result<f64> {
        match v.as_f64() {
            Some(f) if f.is_finite() => Ok(f),
            _ => Err(self.err(key, format!("expected a number, found {} {}", json_type(v), short(v)))),
        }
    }

    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|v| self.f64_of(key, v)).transpose()
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        Ok(self.f64_opt(key)?.unwrap_or(default))
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.err(key, format!("expected a boolean, found {} {}", json_type(v), short(v)))),
        }
    }

    fn str_opt(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.err(key, format!("expected a string, found {} {}", json_type(v), short(v)))),
        }
    }

    fn obj_opt(&self, key: &str) -> Result<Option<Obj<'a>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => {
                Ok(Some(Obj { path: self.path, map, prefix: format!("{}{key}.", self.prefix) }))
            }
            Some(v) => Err(self.err(key, format!("expected an object, found {} {}", json_type(v), short(v)))),
        }
    }

    /// A token id list: an integer, a list of integers, or null (empty).
    fn token_ids(&self, key: &str, default: &[u32]) -> Result<Vec<u32>> {
        let one = |v: &Value| -> Result<u32> {
            let u = self.usize_of(key, v)?;
            u32::try_from(u).map_err(|_| self.err(key, format!("token id {u} does not fit in u32")))
        };
        match self.map.get(key) {
            None => Ok(default.to_vec()),
            Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(one).collect(),
            Some(v) => Ok(vec![one(v)?]),
        }
    }
}

impl ModelConfig {
    /// Reads and validates `config.json`. Every failure is one error naming the file and field.
    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
            path: path.to_path_buf(),
            msg: format!("cannot read: {e}"),
        })?;
        Self::from_json_str(path, &text)
    }

    /// Parses and validates the text of a `config.json`; `path_for_errors` only names the file in
    /// errors. Accepts DeepSeek's own configs (`rope_scaling`) and transformers >= 5 configs
    /// (`rope_parameters`, `dtype`); unknown keys are ignored. See [`defaults`] for absent keys.
    pub fn from_json_str(path_for_errors: &Path, text: &str) -> Result<ModelConfig> {
        let path = path_for_errors;
        let value: Value = serde_json::from_str(text).map_err(|e| Error::ConfigFile {
            path: path.to_path_buf(),
            msg: format!("not valid JSON: {e}"),
        })?;
        let Value::Object(map) = &value else {
            return Err(Error::ConfigFile {
                path: path.to_path_buf(),
                msg: format!("expected a JSON object at the top level, found {}", json_type(&value)),
            });
        };
        let o = Obj { path, map, prefix: String::new() };

        // Activation: only SiLU (every DeepSeek-V2/V3 checkpoint).
        if let Some(act) = o.str_opt("hidden_act")? {
            if act != defaults::HIDDEN_ACT {
                return Err(o.err("hidden_act", format!("`{act}` is not supported; only `silu`")));
            }
        }
        if o.bool_or("attention_bias", false)? {
            return Err(o.err("attention_bias", "true is not supported (DeepSeek-V3 has no attention biases)"));
        }
        let scoring = o.str_opt("scoring_func")?.unwrap_or(defaults::SCORING_FUNC);
        if scoring != "sigmoid" {
            return Err(o.err("scoring_func", format!("`{scoring}` is not supported; only `sigmoid`")));
        }
        let topk_method = o.str_opt("topk_method")?.unwrap_or(defaults::TOPK_METHOD);
        if topk_method != "noaux_tc" {
            return Err(o.err("topk_method", format!("`{topk_method}` is not supported; only `noaux_tc`")));
        }

        // q_lora_rank must be present; null means "no q low-rank projection".
        let q_lora_rank = match map.get("q_lora_rank") {
            None => return Err(o.err("q_lora_rank", "missing (required; null when the model has no q low-rank projection)")),
            Some(_) => o.usize_opt("q_lora_rank")?,
        };

        // MoE topology: `n_routed_experts` null or 0 means a dense model (every layer dense MLP).
        let n_routed_experts = match map.get("n_routed_experts") {
            None => return Err(o.err("n_routed_experts", "missing (required; null for a dense model)")),
            Some(_) => o.usize_opt("n_routed_experts")?.unwrap_or(0),
        };
        let moe = n_routed_experts > 0;
        let moe_req = |key: &str| -> Result<usize> {
            if moe {
                o.usize_req(key)
            } else {
                o.usize_or(key, 0)
            }
        };
        let moe_intermediate_size = moe_req("moe_intermediate_size")?;
        let num_experts_per_tok = moe_req("num_experts_per_tok")?;
        let n_group = if moe { o.usize_req("n_group")? } else { o.usize_or("n_group", 1)? };
        let topk_group = if moe { o.usize_req("topk_group")? } else { o.usize_or("topk_group", 1)? };
        let n_shared_experts = match map.get("n_shared_experts") {
            None if moe => return Err(o.err("n_shared_experts", "missing (required; null or 0 for none)")),
            _ => o.usize_opt("n_shared_experts")?.unwrap_or(0),
        };
        let first_k_dense_replace = moe_req("first_k_dense_replace")?;

        // RoPE: transformers >= 5 `rope_parameters` (rope_theta inside), else DeepSeek's
        // `rope_scaling` + top-level `rope_theta`.
        let rope_obj = match o.obj_opt("rope_parameters")? {
            Some(r) => Some(r),
            None => o.obj_opt("rope_scaling")?,
        };
        let mut rope_theta = o.f64_or("rope_theta", defaults::ROPE_THETA)?;
        let max_position_embeddings =
            o.usize_or("max_position_embeddings", defaults::MAX_POSITION_EMBEDDINGS)?;
        let mut rope_scaling = None;
        if let Some(r) = &rope_obj {
            if let Some(t) = r.f64_opt("rope_theta")? {
                rope_theta = t;
            }
            let (type_key, rope_type) = match r.str_opt("rope_type")? {
                Some(t) => ("rope_type", Some(t)),
                None => ("type", r.str_opt("type")?),
            };
            match rope_type {
                Some("yarn") => {
                    let factor = match r.f64_opt("factor")? {
                        Some(f) => f,
                        None => return Err(r.err("factor", "missing (required for yarn)")),
                    };
                    if factor <= 0.0 {
                        return Err(r.err("factor", format!("must be positive, found {factor}")));
                    }
                    let original = r
                        .usize_opt("original_max_position_embeddings")?
                        .unwrap_or(max_position_embeddings);
                    if original == 0 {
                        return Err(r.err("original_max_position_embeddings", "must be positive"));
                    }
                    let y = YarnScaling {
                        factor,
                        original_max_position_embeddings: original,
                        beta_fast: r.f64_or("beta_fast", defaults::YARN_BETA_FAST)?,
                        beta_slow: r.f64_or("beta_slow", defaults::YARN_BETA_SLOW)?,
                        mscale: r.f64_or("mscale", defaults::YARN_MSCALE)?,
                        mscale_all_dim: r.f64_or("mscale_all_dim", defaults::YARN_MSCALE_ALL_DIM)?,
                    };
                    if y.beta_fast <= 0.0 || y.beta_slow <= 0.0 {
                        let key = if y.beta_fast <= 0.0 { "beta_fast" } else { "beta_slow" };
                        return Err(r.err(key, "must be positive"));
                    }
                    rope_scaling = Some(y);
                }
                Some("default") => {}
                Some(other) => {
                    return Err(r.err(
                        type_key,
                        format!("`{other}` is not supported; only `yarn` or `default`"),
                    ))
                }
                None => return Err(r.err("rope_type", "missing (expected `yarn` or `default`)")),
            }
        }
        if rope_theta <= 0.0 {
            let field = if rope_obj.as_ref().is_some_and(|r| r.map.contains_key("rope_theta")) {
                rope_obj.as_ref().map(|r| r.field("rope_theta")).unwrap_or_default()
            } else {
                "rope_theta".to_string()
            };
            return Err(Error::Config {
                path: path.to_path_buf(),
                field,
                msg: format!("must be positive, found {rope_theta}"),
            });
        }

        let quantization = match o.obj_opt("quantization_config")? {
            None => None,
            Some(q) => Some(parse_quantization(&q)?),
        };

        let torch_dtype = match o.str_opt("torch_dtype")? {
            Some(s) => Some(s.to_string()),
            None => o.str_opt("dtype")?.map(str::to_string),
        };

        let bos_token_id = match map.get("bos_token_id") {
            None => Some(defaults::BOS_TOKEN_ID),
            Some(_) => o.token_ids("bos_token_id", &[])?.first().copied(),
        };

        let rms_norm_eps = o.f64_or("rms_norm_eps", defaults::RMS_NORM_EPS as f64)?;
        let routed_scaling_factor =
            o.f64_or("routed_scaling_factor", defaults::ROUTED_SCALING_FACTOR as f64)?;

        let cfg = ModelConfig {
            vocab_size: o.usize_req("vocab_size")?,
            hidden_size: o.usize_req("hidden_size")?,
            intermediate_size: o.usize_req("intermediate_size")?,
            moe_intermediate_size,
            num_hidden_layers: o.usize_req("num_hidden_layers")?,
            num_nextn_predict_layers: o
                .usize_or("num_nextn_predict_layers", defaults::NUM_NEXTN_PREDICT_LAYERS)?,
            num_attention_heads: o.usize_req("num_attention_heads")?,
            q_lora_rank,
            kv_lora_rank: o.usize_req("kv_lora_rank")?,
            qk_nope_head_dim: o.usize_req("qk_nope_head_dim")?,
            qk_rope_head_dim: o.usize_req("qk_rope_head_dim")?,
            v_head_dim: o.usize_req("v_head_dim")?,
            n_routed_experts,
            n_shared_experts,
            num_experts_per_tok,
            n_group,
            topk_group,
            routed_scaling_factor: routed_scaling_factor as f32,
            norm_topk_prob: o.bool_or("norm_topk_prob", defaults::NORM_TOPK_PROB)?,
            first_k_dense_replace,
            moe_layer_freq: o.usize_or("moe_layer_freq", defaults::MOE_LAYER_FREQ)?,
            rms_norm_eps: rms_norm_eps as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: o.bool_or("tie_word_embeddings", defaults::TIE_WORD_EMBEDDINGS)?,
            bos_token_id,
            eos_token_ids: o.token_ids("eos_token_id", &[defaults::EOS_TOKEN_ID])?,
            torch_dtype,
            quantization,
        };

        // Keys that transformers >= 5 derives and writes: they must agree with the sizes.
        if let Some(h) = o.usize_opt("qk_head_dim")? {
            if h != cfg.qk_head_dim() {
                return Err(o.err(
                    "qk_head_dim",
                    format!("{h} != qk_nope_head_dim + qk_rope_head_dim = {}", cfg.qk_head_dim()),
                ));
            }
        }
        // `head_dim` is not checked: transformers versions disagree on what they store there.
        if let Some(kv) = o.usize_opt("num_key_value_heads")? {
            if kv == 0 {
                return Err(o.err("num_key_value_heads", "must be positive"));
            }
        }

        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Checks the values for consistency; the error names the offending field.
    /// `from_json_str` calls it; call it on configs built in code, too.
    #[allow(clippy::manual_is_multiple_of)] // is_multiple_of needs Rust 1.87; MSRV is 1.80
    pub fn validate(&self, path: &Path) -> Result<()> {
        let err = |field: &str, msg: String| Error::Config {
            path: path.to_path_buf(),
            field: field.to_string(),
            msg,
        };
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("kv_lora_rank", self.kv_lora_rank),
            ("qk_nope_head_dim", self.qk_nope_head_dim),
            ("qk_rope_head_dim", self.qk_rope_head_dim),
            ("v_head_dim", self.v_head_dim),
            ("moe_layer_freq", self.moe_layer_freq),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(err(field, "must be positive, found 0".into()));
            }
        }
        if self.q_lora_rank == Some(0) {
            return Err(err("q_lora_rank", "must be positive or null, found 0".into()));
        }
        if self.qk_rope_head_dim % 2 != 0 {
            return Err(err(
                "qk_rope_head_dim",
                format!("must be even (RoPE rotates pairs), found {}", self.qk_rope_head_dim),
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return Err(err("rms_norm_eps", format!("must be positive, found {}", self.rms_norm_eps)));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(err("rope_theta", format!("must be positive, found {}", self.rope_theta)));
        }
        if self.vocab_size > u32::MAX as usize {
            return Err(err("vocab_size", format!("{} does not fit token ids in u32", self.vocab_size)));
        }
        for &id in &self.eos_token_ids {
            if id as usize >= self.vocab_size {
                return Err(err("eos_token_id", format!("{id} is outside the vocabulary ({})", self.vocab_size)));
            }
        }
        if let Some(id) = self.bos_token_id {
            if id as usize >= self.vocab_size {
                return Err(err("bos_token_id", format!("{id} is outside the vocabulary ({})", self.vocab_size)));
            }
        }
        if self.n_routed_experts > 0 {
            let e = self.n_routed_experts;
            if self.moe_intermediate_size == 0 {
                return Err(err("moe_intermediate_size", "must be positive, found 0".into()));
            }
            if self.n_group == 0 {
                return Err(err("n_group", "must be positive, found 0".into()));
            }
            if e % self.n_group != 0 {
                return Err(err(
                    "n_routed_experts",
                    format!("{e} is not divisible by n_group = {}", self.n_group),
                ));
            }
            if self.topk_group == 0 || self.topk_group > self.n_group {
                return Err(err(
                    "topk_group",
                    format!("must be in 1..=n_group ({}), found {}", self.n_group, self.topk_group),
                ));
            }
            let reachable = self.topk_group * (e / self.n_group);
            if self.num_experts_per_tok == 0 || self.num_experts_per_tok > reachable {
                return Err(err(
                    "num_experts_per_tok",
                    format!(
                        "must be in 1..={reachable} (topk_group {} × {} experts per group of {e}), found {}",
                        self.topk_group,
                        e / self.n_group,
                        self.num_experts_per_tok
                    ),
                ));
            }
            // Routing needs each group's top-2 sum.
            if e / self.n_group < 2 && self.n_group > 1 {
                return Err(err(
                    "n_group",
                    format!("{} groups of {e} experts leave fewer than 2 experts per group", self.n_group),
                ));
            }
            if self.first_k_dense_replace > self.num_hidden_layers {
                return Err(err(
                    "first_k_dense_replace",
                    format!("{} exceeds num_hidden_layers = {}", self.first_k_dense_replace, self.num_hidden_layers),
                ));
            }
            if !(self.routed_scaling_factor.is_finite() && self.routed_scaling_factor > 0.0) {
                return Err(err(
                    "routed_scaling_factor",
                    format!("must be positive, found {}", self.routed_scaling_factor),
                ));
            }
        }
        if let Some(y) = &self.rope_scaling {
            if !(y.factor > 0.0 && y.factor.is_finite()) {
                return Err(err("rope_scaling.factor", format!("must be positive, found {}", y.factor)));
            }
        }
        if let Some(Quantization::Fp8Block { block_n, block_k } | Quantization::Int8Block { block_n, block_k }) =
            &self.quantization
        {
            if *block_n == 0 || *block_k == 0 {
                return Err(err(
                    "quantization_config.weight_block_size",
                    format!("must be positive, found [{block_n}, {block_k}]"),
                ));
            }
        }
        Ok(())
    }

    /// The FP8 weight block `(block_n, block_k)` declared by `quantization_config`, if any.
    pub fn fp8_block(&self) -> Option<(usize, usize)> {
        match &self.quantization {
            Some(Quantization::Fp8Block { block_n, block_k }) => Some((*block_n, *block_k)),
            _ => None,
        }
    }

    /// The INT8 weight block `(block_n, block_k)` declared by `quantization_config`, if any.
    pub fn int8_block(&self) -> Option<(usize, usize)> {
        match &self.quantization {
            Some(Quantization::Int8Block { block_n, block_k }) => Some((*block_n, *block_k)),
            _ => None,
        }
    }

    /// Number of decoder layers that use the MoE.
    pub fn num_moe_layers(&self) -> usize {
        (0..self.num_hidden_layers).filter(|&i| self.is_moe_layer(i)).count()
    }
}

fn parse_quantization(q: &Obj<'_>) -> Result<Quantization> {
    let method = match q.str_opt("quant_method")? {
        Some(m) => m,
        None => return Err(q.err("quant_method", "missing (required in quantization_config)")),
    };
    match method {
        "fp8" => {}
        "w8a8_int8" | "blockwise_int8" | "int8" => {
            return Ok(match q.get("weight_block_size") {
                None | Some(Value::Null) => Quantization::Int8Channel,
                Some(v) => {
                    let (block_n, block_k) = parse_block(q, v)?;
                    Quantization::Int8Block { block_n, block_k }
                }
            })
        }
        "awq" | "moe_wna16" => {
            let bits = q.usize_opt("bits")?.or(q.usize_opt("w_bit")?).unwrap_or(4);
            if bits != 4 {
                return Err(q.err("bits", format!("{bits}-bit AWQ is not supported; only 4")));
            }
            let group_size = match q.get("group_size").or(q.get("q_group_size")) {
                Some(v) => v.as_u64().filter(|&g| g > 0).and_then(|g| usize::try_from(g).ok()).ok_or_else(|| {
                    q.err("group_size", format!("expected a positive integer (64 or 128), found {}", short(v)))
                })?,
                None => return Err(q.err("group_size", "missing (required for AWQ)")),
            };
            let modules_to_not_convert = match q.get("modules_to_not_convert") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| q.err("modules_to_not_convert", "expected a list of module names"))?,
                Some(v) => {
                    return Err(q.err("modules_to_not_convert", format!("expected a list of module names, found {}", short(v))))
                }
            };
            return Ok(Quantization::Awq { bits, group_size, modules_to_not_convert });
        }
        _ => return Ok(Quantization::Unsupported(method.to_string())),
    }
    if let Some(fmt) = q.str_opt("fmt")? {
        if fmt != "e4m3" {
            return Err(q.err("fmt", format!("`{fmt}` is not supported; only `e4m3`")));
        }
    }
    if let Some(a) = q.str_opt("activation_scheme")? {
        if a != "dynamic" {
            return Err(q.err("activation_scheme", format!("`{a}` is not supported; only `dynamic`")));
        }
    }
    let Some(v) = q.get("weight_block_size") else {
        // Per-tensor FP8 (no blocks): not a format this crate loads.
        return Ok(Quantization::Unsupported("fp8 (per-tensor, no weight_block_size)".to_string()));
    };
    let (block_n, block_k) = parse_block(q, v)?;
    Ok(Quantization::Fp8Block { block_n, block_k })
}

fn parse_block(q: &Obj<'_>, v: &Value) -> Result<(usize, usize)> {
    let bad = || {
        q.err(
            "weight_block_size",
            format!("expected two positive integers like [128, 128], found {}", short(v)),
        )
    };
    let Value::Array(items) = v else { return Err(bad()) };
    if items.len() != 2 {
        return Err(bad());
    }
    let n = items[0].as_u64().filter(|&x| x > 0).ok_or_else(bad)?;
    let k = items[1].as_u64().filter(|&x| x > 0).ok_or_else(bad)?;
    let (Ok(block_n), Ok(block_k)) = (usize::try_from(n), usize::try_from(k)) else { return Err(bad()) };
    Ok((block_n, block_k))
}
