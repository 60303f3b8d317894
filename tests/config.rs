//! config.json parsing: real DeepSeek-V3 / R1 configs, transformers >= 5 configs, and one test per
//! kind of broken field, each checking that the error names that field.

use std::path::{Path, PathBuf};

use dsv3::model::config::{ModelConfig, Quantization, YarnScaling};
use dsv3::Error;
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/configs").join(name)
}

fn load(name: &str) -> ModelConfig {
    match ModelConfig::from_file(&fixture(name)) {
        Ok(c) => c,
        Err(e) => panic!("{name}: {e}"),
    }
}

fn v3_value() -> Value {
    let text = std::fs::read_to_string(fixture("deepseek-v3.json")).expect("fixture");
    serde_json::from_str(&text).expect("fixture json")
}

fn parse(v: &Value) -> dsv3::Result<ModelConfig> {
    ModelConfig::from_json_str(Path::new("/models/x/config.json"), &v.to_string())
}

/// V3/R1 softmax scale: (128 + 64)^-0.5 · m², m = 0.1·1·ln(40) + 1.
fn v3_softmax_scale() -> f64 {
    let m = 0.1 * 40f64.ln() + 1.0;
    192f64.powf(-0.5) * m * m
}

fn check_v3(c: &ModelConfig) {
    assert_eq!(c.vocab_size, 129280);
    assert_eq!(c.hidden_size, 7168);
    assert_eq!(c.intermediate_size, 18432);
    assert_eq!(c.moe_intermediate_size, 2048);
    assert_eq!(c.num_hidden_layers, 61);
    assert_eq!(c.num_nextn_predict_layers, 1);
    assert_eq!(c.num_attention_heads, 128);
    assert_eq!(c.q_lora_rank, Some(1536));
    assert_eq!(c.kv_lora_rank, 512);
    assert_eq!(c.qk_nope_head_dim, 128);
    assert_eq!(c.qk_rope_head_dim, 64);
    assert_eq!(c.v_head_dim, 128);
    assert_eq!(c.qk_head_dim(), 192);
    assert_eq!(c.n_routed_experts, 256);
    assert_eq!(c.n_shared_experts, 1);
    assert_eq!(c.num_experts_per_tok, 8);
    assert_eq!(c.n_group, 8);
    assert_eq!(c.topk_group, 4);
    assert_eq!(c.routed_scaling_factor, 2.5);
    assert!(c.norm_topk_prob);
    assert_eq!(c.first_k_dense_replace, 3);
    assert_eq!(c.moe_layer_freq, 1);
    assert_eq!(c.rms_norm_eps, 1e-6);
    assert_eq!(c.rope_theta, 10000.0);
    assert_eq!(c.max_position_embeddings, 163840);
    assert!(!c.tie_word_embeddings);
    assert_eq!(c.bos_token_id, Some(0));
    assert_eq!(c.eos_token_ids, vec![1]);
    assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
    assert_eq!(c.quantization, Some(Quantization::Fp8Block { block_n: 128, block_k: 128 }));
    assert_eq!(c.fp8_block(), Some((128, 128)));
    assert_eq!(
        c.rope_scaling,
        Some(YarnScaling {
            factor: 40.0,
            original_max_position_embeddings: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: 1.0,
            mscale_all_dim: 1.0,
        })
    );
    let y = c.rope_scaling.as_ref().expect("yarn");
    assert_eq!(y.cos_sin_mscale(), 1.0);
    let want = v3_softmax_scale();
    assert!((c.softmax_scale() as f64 - want).abs() <= 1e-7 * want, "{} vs {want}", c.softmax_scale());
    assert!(!c.is_moe_layer(0) && !c.is_moe_layer(2));
    assert!(c.is_moe_layer(3) && c.is_moe_layer(60));
    assert_eq!(c.num_moe_layers(), 58);
}

#[test]
fn deepseek_v3_config() {
    check_v3(&load("deepseek-v3.json"));
}

#[test]
fn deepseek_r1_config() {
    check_v3(&load("deepseek-r1.json"));
}

#[test]
fn transformers5_tiny_yarn_config() {
    let c = load("transformers5-tiny-yarn.json");
    assert_eq!((c.vocab_size, c.hidden_size, c.num_hidden_layers), (1024, 256, 4));
    assert_eq!((c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim), (32, 16, 32));
    assert_eq!((c.n_routed_experts, c.n_group, c.topk_group, c.num_experts_per_tok), (16, 4, 2, 4));
    assert_eq!(c.q_lora_rank, Some(96));
    assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"), "`dtype` is read as torch_dtype");
    assert_eq!(c.rope_theta, 10000.0, "rope_theta inside rope_parameters");
    let y = c.rope_scaling.as_ref().expect("yarn from rope_parameters");
    assert_eq!((y.factor, y.original_max_position_embeddings), (40.0, 4096));
    assert_eq!((y.mscale, y.mscale_all_dim), (1.0, 1.0));
    assert_eq!(c.quantization, None);
    let m = 0.1 * 40f64.ln() + 1.0;
    let want = 48f64.powf(-0.5) * m * m;
    assert!((c.softmax_scale() as f64 - want).abs() <= 1e-7 * want);
}

#[test]
fn transformers5_default_rope_config() {
    let c = load("transformers5-default.json");
    assert_eq!(c.rope_scaling, None, "rope_type default means no scaling");
    assert_eq!(c.rope_theta, 10000.0);
    assert_eq!(c.max_position_embeddings, 4096);
    assert_eq!(c.torch_dtype, None);
    let want = 192f64.powf(-0.5);
    assert!((c.softmax_scale() as f64 - want).abs() <= 1e-7 * want);
}

#[test]
fn accepted_variants_and_defaults() {
    // q_lora_rank null, eos list, bos null, unknown keys, quantization we do not load yet.
    let mut v = v3_value();
    v["q_lora_rank"] = Value::Null;
    v["eos_token_id"] = json!([1, 2]);
    v["bos_token_id"] = Value::Null;
    v["some_future_key"] = json!({"a": [1, 2, 3]});
    v["quantization_config"] = json!({"quant_method": "gptq", "bits": 4, "group_size": 128});
    let c = parse(&v).expect("variants");
    assert_eq!(c.q_lora_rank, None);
    assert_eq!(c.eos_token_ids, vec![1, 2]);
    assert_eq!(c.bos_token_id, None);
    assert_eq!(c.quantization, Some(Quantization::Unsupported("gptq".into())));
    assert_eq!(c.fp8_block(), None);

    // Per-tensor fp8 (no weight_block_size) is not the block format.
    let mut v = v3_value();
    v["quantization_config"] = json!({"quant_method": "fp8", "activation_scheme": "dynamic"});
    assert!(matches!(parse(&v).expect("fp8 per-tensor").quantization, Some(Quantization::Unsupported(_))));

    // quantization_config null, rope_scaling null.
    let mut v = v3_value();
    v["quantization_config"] = Value::Null;
    v["rope_scaling"] = Value::Null;
    let c = parse(&v).expect("nulls");
    assert_eq!(c.quantization, None);
    assert_eq!(c.rope_scaling, None);
    assert!((c.softmax_scale() as f64 - 192f64.powf(-0.5)).abs() < 1e-8);

    // Keys with documented defaults.
    let mut v = v3_value();
    let o = v.as_object_mut().expect("object");
    for k in [
        "moe_layer_freq",
        "num_nextn_predict_layers",
        "tie_word_embeddings",
        "norm_topk_prob",
        "scoring_func",
        "topk_method",
        "rms_norm_eps",
        "routed_scaling_factor",
        "bos_token_id",
        "eos_token_id",
        "torch_dtype",
    ] {
        o.remove(k);
    }
    // Yarn keys with defaults (beta_fast 32, beta_slow 1, mscale 1, mscale_all_dim 0).
    let r = o["rope_scaling"].as_object_mut().expect("rope");
    for k in ["beta_fast", "beta_slow", "mscale", "mscale_all_dim"] {
        r.remove(k);
    }
    let c = parse(&v).expect("defaults");
    assert_eq!(c.moe_layer_freq, 1);
    assert_eq!(c.num_nextn_predict_layers, 0);
    assert!(!c.tie_word_embeddings);
    assert!(c.norm_topk_prob);
    assert_eq!(c.rms_norm_eps, 1e-6);
    assert_eq!(c.routed_scaling_factor, 2.5);
    assert_eq!(c.bos_token_id, Some(0));
    assert_eq!(c.eos_token_ids, vec![1]);
    assert_eq!(c.torch_dtype, None);
    let y = c.rope_scaling.as_ref().expect("yarn");
    assert_eq!((y.beta_fast, y.beta_slow, y.mscale, y.mscale_all_dim), (32.0, 1.0, 1.0, 0.0));
    // mscale_all_dim 0: no softmax correction, and cos/sin carry m(40, 1) instead.
    assert!((c.softmax_scale() as f64 - 192f64.powf(-0.5)).abs() < 1e-8);
    assert!((y.cos_sin_mscale() - (0.1 * 40f64.ln() + 1.0)).abs() < 1e-12);

    // transformers >= 5: rope_parameters wins over rope_scaling, rope_theta inside it.
    let mut v = v3_value();
    v["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 50000.0});
    let c = parse(&v).expect("rope_parameters");
    assert_eq!(c.rope_scaling, None);
    assert_eq!(c.rope_theta, 50000.0);

    // rope_scaling written with `rope_type` (transformers 4.4x) and yarn original length defaulting
    // to max_position_embeddings.
    let mut v = v3_value();
    v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4});
    v["max_position_embeddings"] = json!(8192);
    let c = parse(&v).expect("rope_type yarn");
    let y = c.rope_scaling.expect("yarn");
    assert_eq!((y.factor, y.original_max_position_embeddings), (4.0, 8192));

    // A dense model: n_routed_experts null, no MoE keys needed.
    let mut v = v3_value();
    let o = v.as_object_mut().expect("object");
    o.insert("n_routed_experts".into(), Value::Null);
    for k in ["moe_intermediate_size", "num_experts_per_tok", "n_group", "topk_group", "n_shared_experts", "first_k_dense_replace"] {
        o.remove(k);
    }
    let c = parse(&v).expect("dense");
    assert_eq!(c.n_routed_experts, 0);
    assert_eq!(c.num_moe_layers(), 0);
}

/// Applies `edit` to the V3 config and checks that parsing fails with `Error::Config` naming `field`.
fn expect_field_error(edit: impl FnOnce(&mut Value), field: &str, msg_part: &str) {
    let mut v = v3_value();
    edit(&mut v);
    let err = match parse(&v) {
        Ok(_) => panic!("expected an error naming `{field}`"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(!text.contains('\n'), "one line: {text}");
    assert!(text.contains("/models/x/config.json"), "names the file: {text}");
    match &err {
        Error::Config { field: f, msg, .. } => {
            assert_eq!(f, field, "{text}");
            assert!(msg.contains(msg_part), "`{msg_part}` in: {text}");
        }
        other => panic!("expected Error::Config for `{field}`, got {other:?}"),
    }
    assert!(text.contains(&format!("`{field}`")), "{text}");
}

fn set(key: &'static str, val: Value) -> impl FnOnce(&mut Value) {
    move |v| v[key] = val
}

fn remove(key: &'static str) -> impl FnOnce(&mut Value) {
    move |v| {
        v.as_object_mut().expect("object").remove(key);
    }
}

#[test]
fn broken_fields_are_named() {
    expect_field_error(remove("hidden_size"), "hidden_size", "missing");
    expect_field_error(set("hidden_size", json!("7168")), "hidden_size", "expected a non-negative integer");
    expect_field_error(set("hidden_size", json!(7168.5)), "hidden_size", "integer");
    expect_field_error(set("vocab_size", json!(-5)), "vocab_size", "non-negative");
    expect_field_error(set("num_attention_heads", json!(0)), "num_attention_heads", "positive");
    expect_field_error(remove("kv_lora_rank"), "kv_lora_rank", "missing");
    expect_field_error(remove("q_lora_rank"), "q_lora_rank", "missing");
    expect_field_error(set("q_lora_rank", json!(0)), "q_lora_rank", "positive");
    expect_field_error(set("qk_rope_head_dim", json!(63)), "qk_rope_head_dim", "even");
    expect_field_error(set("qk_head_dim", json!(100)), "qk_head_dim", "192");
    expect_field_error(set("topk_group", json!(9)), "topk_group", "n_group");
    expect_field_error(set("n_group", json!(0)), "n_group", "positive");
    expect_field_error(set("n_routed_experts", json!(250)), "n_routed_experts", "divisible");
    expect_field_error(set("num_experts_per_tok", json!(300)), "num_experts_per_tok", "300");
    expect_field_error(set("num_experts_per_tok", json!(0)), "num_experts_per_tok", "found 0");
    expect_field_error(remove("moe_intermediate_size"), "moe_intermediate_size", "missing");
    expect_field_error(set("first_k_dense_replace", json!(62)), "first_k_dense_replace", "num_hidden_layers");
    expect_field_error(set("scoring_func", json!("softmax")), "scoring_func", "softmax");
    expect_field_error(set("topk_method", json!("greedy")), "topk_method", "greedy");
    expect_field_error(set("hidden_act", json!("gelu")), "hidden_act", "gelu");
    expect_field_error(set("norm_topk_prob", json!("yes")), "norm_topk_prob", "boolean");
    expect_field_error(set("rms_norm_eps", json!(-1.0)), "rms_norm_eps", "positive");
    expect_field_error(set("eos_token_id", json!("</s>")), "eos_token_id", "integer");
    expect_field_error(set("eos_token_id", json!([1, 200000])), "eos_token_id", "vocabulary");
    expect_field_error(set("torch_dtype", json!(16)), "torch_dtype", "string");
    expect_field_error(set("rope_scaling", json!(5)), "rope_scaling", "object");
    expect_field_error(
        |v| v["rope_scaling"]["type"] = json!("linear"),
        "rope_scaling.type",
        "linear",
    );
    expect_field_error(
        |v| {
            v["rope_scaling"].as_object_mut().expect("rope").remove("factor");
        },
        "rope_scaling.factor",
        "missing",
    );
    expect_field_error(|v| v["rope_scaling"]["factor"] = json!("40"), "rope_scaling.factor", "number");
    expect_field_error(|v| v["rope_scaling"]["factor"] = json!(0), "rope_scaling.factor", "positive");
    expect_field_error(
        |v| v["rope_scaling"]["original_max_position_embeddings"] = json!(4096.5),
        "rope_scaling.original_max_position_embeddings",
        "integer",
    );
    expect_field_error(
        set("rope_parameters", json!({"rope_type": "llama3", "rope_theta": 500000.0})),
        "rope_parameters.rope_type",
        "llama3",
    );
    expect_field_error(
        set("rope_parameters", json!({"rope_type": "default", "rope_theta": -1.0})),
        "rope_parameters.rope_theta",
        "positive",
    );
    expect_field_error(
        |v| v["quantization_config"]["weight_block_size"] = json!([128]),
        "quantization_config.weight_block_size",
        "two positive integers",
    );
    expect_field_error(
        |v| v["quantization_config"]["weight_block_size"] = json!([128, "128"]),
        "quantization_config.weight_block_size",
        "two positive integers",
    );
    expect_field_error(
        |v| v["quantization_config"]["weight_block_size"] = json!([0, 128]),
        "quantization_config.weight_block_size",
        "two positive integers",
    );
    expect_field_error(|v| v["quantization_config"]["fmt"] = json!("e5m2"), "quantization_config.fmt", "e5m2");
    expect_field_error(
        |v| v["quantization_config"]["activation_scheme"] = json!("static"),
        "quantization_config.activation_scheme",
        "static",
    );
    expect_field_error(
        |v| {
            v["quantization_config"].as_object_mut().expect("q").remove("quant_method");
        },
        "quantization_config.quant_method",
        "missing",
    );
    expect_field_error(set("quantization_config", json!("fp8")), "quantization_config", "object");
    expect_field_error(set("attention_bias", json!(true)), "attention_bias", "not supported");
}

#[test]
fn unreadable_or_malformed_file_is_named() {
    let missing = Path::new("/nonexistent/dir/config.json");
    let e = ModelConfig::from_file(missing).expect_err("missing file");
    assert!(e.to_string().contains("/nonexistent/dir/config.json"), "{e}");
    assert!(matches!(e, Error::ConfigFile { .. }));

    let p = Path::new("/m/config.json");
    for text in ["{\"hidden_size\": 7168,", "[1, 2, 3]", ""] {
        let e = ModelConfig::from_json_str(p, text).expect_err("malformed");
        let s = e.to_string();
        assert!(s.contains("/m/config.json") && !s.contains('\n'), "{s}");
        assert!(matches!(e, Error::ConfigFile { .. }), "{s}");
    }
}
