//! INT8 (block / channel) and AWQ 4-bit weights: AWQ nibble order and pack/unpack round trips,
//! exact dequantization through `Checkpoint::load_f32`, `quantization_config` parsing, and the
//! one-line errors when the config and the tensors disagree.

mod common;

use std::path::Path;

use dsv3::model::checkpoint::{
    awq_pack, awq_unpack, dequant_awq, dequant_int8_block, dequant_int8_channel, Checkpoint, WeightFormat,
};
use dsv3::model::config::{ModelConfig, Quantization};
use proptest::prelude::*;
use safetensors::Dtype;
use serde_json::json;

use common::files::{t, write_file, TempDir, T};

/// Writes `tensors` as the single-file checkpoint of `dir`.
fn write_ckpt(dir: &Path, tensors: &[T]) {
    write_file(&dir.join("model.safetensors"), tensors);
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Deterministic pseudo-random u64 stream.
fn lcg(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        s >> 16
    }
}

fn int8_values(n: usize, seed: u64) -> Vec<i8> {
    let mut r = lcg(seed);
    (0..n).map(|_| ((r() % 255) as i32 - 127) as i8).collect()
}

fn scales(n: usize, seed: u64) -> Vec<f32> {
    let mut r = lcg(seed);
    (0..n).map(|_| (1 + r() % 1000) as f32 * 2f32.powi((r() % 12) as i32 - 16)).collect()
}

fn config(quant: Option<serde_json::Value>) -> ModelConfig {
    let mut v = json!({
        "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
        "num_attention_heads": 2, "q_lora_rank": null, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
        "qk_rope_head_dim": 4, "v_head_dim": 8, "n_routed_experts": null
    });
    if let Some(q) = quant {
        v["quantization_config"] = q;
    }
    ModelConfig::from_json_str(Path::new("config.json"), &v.to_string()).expect("config")
}

fn one_line_err<V: std::fmt::Debug>(r: dsv3::Result<V>) -> String {
    let s = r.expect_err("expected an error").to_string();
    assert!(!s.contains('\n'), "one line: {s}");
    s
}

// ---------------------------------------------------------------------------------------------
// AWQ packing
// ---------------------------------------------------------------------------------------------

#[test]
fn awq_nibble_order_is_0_4_1_5_2_6_3_7() {
    // Column j sits in nibble [0,4,1,5,2,6,3,7][j]: columns 0..8 holding 0..8 pack to nibbles
    // (low first) 0,2,4,6,1,3,5,7.
    assert_eq!(awq_pack(&[0, 1, 2, 3, 4, 5, 6, 7]), vec![0x7531_6420]);
    assert_eq!(awq_unpack(&[0x7531_6420]), vec![0, 1, 2, 3, 4, 5, 6, 7]);
    // One column at a time.
    for (j, nib) in [0u32, 4, 1, 5, 2, 6, 3, 7].into_iter().enumerate() {
        let mut v = [0u8; 8];
        v[j] = 0xF;
        assert_eq!(awq_pack(&v), vec![0xFu32 << (4 * nib)], "column {j}");
    }
}

proptest! {
    #[test]
    fn awq_pack_unpack_round_trips(vals in prop::collection::vec(0u8..16, 0..40usize).prop_map(|mut v| { v.truncate(v.len() / 8 * 8); v })) {
        prop_assert_eq!(awq_unpack(&awq_pack(&vals)), vals);
    }

    #[test]
    fn awq_unpack_pack_round_trips(words in prop::collection::vec(any::<u32>(), 0..8)) {
        prop_assert_eq!(awq_pack(&awq_unpack(&words)), words);
    }

    /// `dequant_awq` against the formula applied to unpacked values, for any shapes and groups.
    #[test]
    fn awq_dequant_matches_formula(n8 in 1usize..4, groups in 1usize..4, g in prop::sample::select(vec![1usize, 2, 8, 16]), seed in any::<u64>()) {
        let (n, k) = (n8 * 8, groups * g);
        let mut r = lcg(seed);
        let q: Vec<u8> = (0..k * n).map(|_| (r() % 16) as u8).collect();
        let z: Vec<u8> = (0..groups * n).map(|_| (r() % 16) as u8).collect();
        let s = scales(groups * n, seed ^ 7);
        let w = dequant_awq(&awq_pack(&q), &awq_pack(&z), &s, n, k, g);
        for nn in 0..n {
            for kk in 0..k {
                let gi = kk / g;
                let want = (f32::from(q[kk * n + nn]) - f32::from(z[gi * n + nn])) * s[gi * n + nn];
                prop_assert_eq!(w[nn * k + kk].to_bits(), want.to_bits());
            }
        }
    }

    /// Block INT8 with partial edge blocks: every element is exactly q · s of its block.
    #[test]
    fn int8_block_dequant_is_exact(n in 1usize..300, k in 1usize..300, bn in prop::sample::select(vec![32usize, 128]), seed in any::<u64>()) {
        let q = int8_values(n * k, seed);
        let (sn, sk) = (n.div_ceil(bn), k.div_ceil(bn));
        let s = scales(sn * sk, seed ^ 1);
        let bytes: Vec<u8> = q.iter().map(|&x| x as u8).collect();
        let w = dequant_int8_block(&bytes, n, k, &s, (bn, bn));
        for r in 0..n {
            for c in 0..k {
                prop_assert_eq!(w[r * k + c].to_bits(), (f32::from(q[r * k + c]) * s[(r / bn) * sk + c / bn]).to_bits());
            }
        }
    }

    #[test]
    fn int8_channel_dequant_is_exact(n in 1usize..64, k in 1usize..64, seed in any::<u64>()) {
        let q = int8_values(n * k, seed);
        let s = scales(n, seed ^ 2);
        let bytes: Vec<u8> = q.iter().map(|&x| x as u8).collect();
        let w = dequant_int8_channel(&bytes, n, k, &s);
        for r in 0..n {
            for c in 0..k {
                prop_assert_eq!(w[r * k + c].to_bits(), (f32::from(q[r * k + c]) * s[r]).to_bits());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Through the checkpoint loader
// ---------------------------------------------------------------------------------------------

const W: &str = "model.layers.0.mlp.down_proj.weight";

fn int8_block_tensors(n: usize, k: usize) -> (Vec<T>, Vec<f32>) {
    let q = int8_values(n * k, 11);
    let s = scales(n.div_ceil(128) * k.div_ceil(128), 12);
    let bytes: Vec<u8> = q.iter().map(|&x| x as u8).collect();
    let want = dequant_int8_block(&bytes, n, k, &s, (128, 128));
    let ts = vec![
        t(W, Dtype::I8, &[n, k], bytes),
        t(&format!("{W}_scale_inv"), Dtype::F32, &[n.div_ceil(128), k.div_ceil(128)], f32_bytes(&s)),
    ];
    (ts, want)
}

fn int8_channel_tensors(n: usize, k: usize) -> (Vec<T>, Vec<f32>) {
    let q = int8_values(n * k, 21);
    let s = scales(n, 22);
    let bytes: Vec<u8> = q.iter().map(|&x| x as u8).collect();
    let want = dequant_int8_channel(&bytes, n, k, &s);
    let ts = vec![t(W, Dtype::I8, &[n, k], bytes), t(&format!("{W}_scale"), Dtype::F32, &[n, 1], f32_bytes(&s))];
    (ts, want)
}

/// AWQ layer `model.layers.0.mlp.down_proj` for a Linear weight [n, k] in groups of g.
fn awq_tensors(n: usize, k: usize, g: usize) -> (Vec<T>, Vec<f32>) {
    let base = W.strip_suffix(".weight").unwrap();
    let mut r = lcg(31);
    let q: Vec<u8> = (0..k * n).map(|_| (r() % 16) as u8).collect();
    let z: Vec<u8> = (0..(k / g) * n).map(|_| (r() % 16) as u8).collect();
    let s16: Vec<half::f16> = scales((k / g) * n, 32).iter().map(|&x| half::f16::from_f32(x)).collect();
    let s: Vec<f32> = s16.iter().map(|x| x.to_f32()).collect();
    let mut want = vec![0f32; n * k];
    for nn in 0..n {
        for kk in 0..k {
            let i = (kk / g) * n + nn;
            want[nn * k + kk] = (f32::from(q[kk * n + nn]) - f32::from(z[i])) * s[i];
        }
    }
    let ts = vec![
        t(&format!("{base}.qweight"), Dtype::I32, &[k, n / 8], u32_bytes(&awq_pack(&q))),
        t(&format!("{base}.qzeros"), Dtype::I32, &[k / g, n / 8], u32_bytes(&awq_pack(&z))),
        t(&format!("{base}.scales"), Dtype::F16, &[k / g, n], s16.iter().flat_map(|x| x.to_le_bytes()).collect()),
    ];
    (ts, want)
}

fn open(tag: &str, ts: &[T]) -> (TempDir, Checkpoint) {
    let d = TempDir::new(tag);
    write_ckpt(d.path(), ts);
    let c = Checkpoint::open(d.path()).expect("open");
    (d, c)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn int8_block_loads_exactly_with_and_without_config() {
    let (n, k) = (200, 300); // partial edge blocks both ways
    let (ts, want) = int8_block_tensors(n, k);
    let (_d, c) = open("i8b", &ts);
    assert_eq!(bits(c.load_f32(W, &[n, k]).unwrap().data()), bits(&want), "inferred blocks");
    let cfg = config(Some(json!({"activation_scheme": "dynamic", "quant_method": "w8a8_int8", "weight_block_size": [128, 128]})));
    assert_eq!(cfg.quantization, Some(Quantization::Int8Block { block_n: 128, block_k: 128 }));
    assert_eq!(c.check_against(&cfg).unwrap(), WeightFormat::Int8Block { block_n: 128, block_k: 128 });
    assert_eq!(bits(c.load_f32(W, &[n, k]).unwrap().data()), bits(&want), "declared blocks");
}

#[test]
fn int8_channel_loads_exactly() {
    let (n, k) = (40, 24);
    let (ts, want) = int8_channel_tensors(n, k);
    let (_d, c) = open("i8c", &ts);
    assert_eq!(bits(c.load_f32(W, &[n, k]).unwrap().data()), bits(&want));
    let cfg = config(Some(json!({"activation_scheme": "dynamic", "quant_method": "w8a8_int8"})));
    assert_eq!(cfg.quantization, Some(Quantization::Int8Channel));
    assert_eq!(c.check_against(&cfg).unwrap(), WeightFormat::Int8Channel);
    assert_eq!(bits(c.load_f32(W, &[n, k]).unwrap().data()), bits(&want));
}

#[test]
fn awq_loads_exactly_as_the_transposed_linear_weight() {
    for (method, g) in [("awq", 16usize), ("moe_wna16", 8)] {
        let (n, k) = (24, 32);
        let (ts, want) = awq_tensors(n, k, g);
        let (_d, c) = open("awq", &ts);
        // Group size inferred from the shapes, then declared.
        assert_eq!(bits(c.load_f32(W, &[n, k]).unwrap().data()), bits(&want), "{method} inferred");
        let cfg = config(Some(json!({"quant_method": method, "bits": 4, "group_size": g, "zero_point": true})));
        assert_eq!(cfg.quantization, Some(Quantization::Awq { bits: 4, group_size: g, modules_to_not_convert: vec![] }));
        assert_eq!(c.check_against(&cfg).unwrap(), WeightFormat::Awq { group_size: g });
        assert_eq!(bits(c.load_f32(W, &[n, k]).unwrap().data()), bits(&want), "{method} declared");
    }
}

#[test]
fn awq_modules_to_not_convert_are_honoured() {
    // The skipped layer stored as bf16 `.weight` loads as bf16 next to an AWQ layer.
    let (n, k) = (24, 32);
    let (mut ts, _) = awq_tensors(n, k, 16);
    let plain: Vec<f32> = (0..16 * 8).map(|i| i as f32 * 0.25).collect();
    let bf: Vec<u8> = plain.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
    ts.push(t("model.layers.0.self_attn.o_proj.weight", Dtype::BF16, &[16, 8], bf));
    let (_d, c) = open("awq-skip", &ts);
    let cfg = config(Some(json!({"quant_method": "awq", "bits": 4, "group_size": 16,
                                  "modules_to_not_convert": ["self_attn.o_proj"]})));
    c.check_against(&cfg).unwrap();
    assert_eq!(c.load_f32("model.layers.0.self_attn.o_proj.weight", &[16, 8]).unwrap().data(), plain.as_slice());
    // The quantized layer listed in modules_to_not_convert: error naming its qweight.
    let cfg = config(Some(json!({"quant_method": "awq", "bits": 4, "group_size": 16,
                                  "modules_to_not_convert": ["mlp.down_proj"]})));
    let e = one_line_err(c.check_against(&cfg));
    assert!(e.contains("model.layers.0.mlp.down_proj.qweight") && e.contains("modules_to_not_convert"), "{e}");
}

#[test]
fn config_and_tensors_disagree_one_line_errors_naming_the_tensor() {
    let block_cfg = json!({"quant_method": "w8a8_int8", "weight_block_size": [128, 128]});
    let chan_cfg = json!({"quant_method": "w8a8_int8"});
    let awq_cfg = json!({"quant_method": "awq", "bits": 4, "group_size": 16});
    let fp8_cfg = json!({"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]});

    let (ts, _) = int8_block_tensors(64, 64);
    let (_d, c) = open("dis-b", &ts);
    for (q, what) in [(&chan_cfg, "channel INT8"), (&awq_cfg, "AWQ"), (&fp8_cfg, "fp8")] {
        let e = one_line_err(c.check_against(&config(Some(q.clone()))));
        assert!(e.contains(W) && e.contains(what), "{e}");
    }

    let (ts, _) = int8_channel_tensors(64, 64);
    let (_d, c) = open("dis-c", &ts);
    for (q, what) in [(&block_cfg, "block INT8"), (&awq_cfg, "AWQ")] {
        let e = one_line_err(c.check_against(&config(Some(q.clone()))));
        assert!(e.contains(W) && e.contains(what), "{e}");
    }

    let (ts, _) = awq_tensors(24, 32, 16);
    let (_d, c) = open("dis-a", &ts);
    for (q, what) in [(&block_cfg, "block INT8"), (&chan_cfg, "channel INT8")] {
        let e = one_line_err(c.check_against(&config(Some(q.clone()))));
        assert!(e.contains("down_proj.qweight") && e.contains(what), "{e}");
    }
    // Declared group size that does not match the scales.
    let e = one_line_err(c.check_against(&config(Some(json!({"quant_method": "awq", "bits": 4, "group_size": 8})))));
    assert!(e.contains("down_proj.scales"), "{e}");
}

#[test]
fn broken_int8_and_awq_tensors_are_one_line_errors() {
    // int8 without any scale.
    let (n, k) = (16, 16);
    let (_d, c) = open("noscale", &[t(W, Dtype::I8, &[n, k], vec![1; n * k])]);
    let e = one_line_err(c.load_f32(W, &[n, k]));
    assert!(e.contains(W) && e.contains("scale"), "{e}");
    // Channel scale of the wrong shape.
    let (_d, c) = open("badscale", &[
        t(W, Dtype::I8, &[n, k], vec![1; n * k]),
        t(&format!("{W}_scale"), Dtype::F32, &[n + 1, 1], f32_bytes(&vec![1.0; n + 1])),
    ]);
    let e = one_line_err(c.load_f32(W, &[n, k]));
    assert!(e.contains("weight_scale") && e.contains("[16, 1]"), "{e}");
    // AWQ without qzeros.
    let (mut ts, _) = awq_tensors(24, 32, 16);
    ts.retain(|x| !x.name.ends_with(".qzeros"));
    let (_d, c) = open("noqz", &ts);
    let e = one_line_err(c.load_f32(W, &[24, 32]));
    assert!(e.contains("down_proj.qzeros") && e.contains("missing"), "{e}");
}

#[test]
fn quantization_config_parsing() {
    let q = |v: serde_json::Value| config(Some(v)).quantization.unwrap();
    assert_eq!(q(json!({"quant_method": "blockwise_int8", "weight_block_size": [64, 128]})), Quantization::Int8Block { block_n: 64, block_k: 128 });
    assert_eq!(q(json!({"quant_method": "w8a8_int8", "weight_block_size": null})), Quantization::Int8Channel);
    assert_eq!(
        q(json!({"quant_method": "moe_wna16", "bits": 4, "group_size": 64, "modules_to_not_convert": ["model.layers.61"]})),
        Quantization::Awq { bits: 4, group_size: 64, modules_to_not_convert: vec!["model.layers.61".into()] }
    );
    let bad = |v: serde_json::Value| {
        let mut c = json!({
            "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
            "num_attention_heads": 2, "q_lora_rank": null, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
            "qk_rope_head_dim": 4, "v_head_dim": 8, "n_routed_experts": null
        });
        c["quantization_config"] = v;
        one_line_err(ModelConfig::from_json_str(Path::new("config.json"), &c.to_string()))
    };
    assert!(bad(json!({"quant_method": "awq", "bits": 8, "group_size": 128})).contains("bits"));
    assert!(bad(json!({"quant_method": "awq", "bits": 4})).contains("group_size"));
    assert!(bad(json!({"quant_method": "w8a8_int8", "weight_block_size": [128]})).contains("weight_block_size"));
}

// ---------------------------------------------------------------------------------------------
// --quantization against the committed fixtures
// ---------------------------------------------------------------------------------------------

#[test]
fn quantization_flag_must_name_the_checkpoints_format() {
    use dsv3::model::quant_method::{check_flag_for_dir, QUANT_METHODS};
    use dsv3::server::launch::{check_quantization, LaunchFlags};
    // fixture → (flags it accepts, what the mismatch message says it holds, its quant_method).
    let cases: [(&str, &[&str], &str, &str); 5] = [
        ("tiny-fp8-sharded", &["fp8"], "a block-FP8 checkpoint", "quantization_config.quant_method = fp8"),
        // Its config says `w8a8_int8` + weight_block_size (read as block INT8): both names fit.
        ("tiny-int8-block", &["blockwise_int8", "w8a8_int8"], "a block-INT8 checkpoint", "quantization_config.quant_method = w8a8_int8"),
        ("tiny-int8-channel", &["w8a8_int8"], "a channel-INT8 checkpoint", "quantization_config.quant_method = w8a8_int8"),
        ("tiny-awq", &["awq", "moe_wna16"], "an AWQ 4-bit checkpoint", "quantization_config.quant_method = awq"),
        ("tiny-bf16", &[], "an unquantized BF16 checkpoint", "config.json has no quantization_config"),
    ];
    for (name, accepted, holds, declared) in cases {
        let dir = common::fixtures_root().join(name);
        for &flag in QUANT_METHODS {
            let launch = LaunchFlags { quantization: Some(flag.to_string()), ..Default::default() };
            if accepted.contains(&flag) {
                check_flag_for_dir(flag, &dir).unwrap_or_else(|e| panic!("{name} --quantization {flag}: {e}"));
                assert_eq!(check_quantization(&launch, &dir), Ok(()), "{name} {flag}");
                continue;
            }
            let e = one_line_err(check_flag_for_dir(flag, &dir));
            let want = format!("--quantization {flag} but {} holds {holds}", dir.display());
            assert!(e.starts_with(&want) && e.contains(declared), "{name} {flag}: {e}");
            assert_eq!(check_quantization(&launch, &dir), Err(e), "{name} {flag}");
        }
        // No flag: nothing to check.
        assert_eq!(check_quantization(&LaunchFlags::default(), &dir), Ok(()), "{name}");
    }
    let e = one_line_err(check_flag_for_dir("fp8", &common::fixtures_root().join("tiny-bf16")));
    assert!(e.contains("online quantization is not supported"), "{e}");
    let e = one_line_err(check_flag_for_dir("gptq", &common::fixtures_root().join("tiny-bf16")));
    assert!(e.contains("--quantization gptq") && e.contains("moe_wna16"), "{e}");
}
