//! The CPU reference model against transformers on every fixture in tests/fixtures (each
//! directory with a `reference.json`): prefill logits, decode through the cache, greedy tokens.

mod common;

use std::path::Path;

use common::{check_greedy, fixtures, reference};

use dsv3::model::cpu::{AttentionPath, CpuModel, CpuOptions};
use dsv3::model::generate::{greedy_generate, CausalLm};
use dsv3::tensor::rel_error;

fn load(dir: &Path, attention: AttentionPath) -> CpuModel {
    CpuModel::load(dir, CpuOptions { attention, ..Default::default() })
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

#[test]
fn prefill_logits_match_transformers() {
    for dir in fixtures() {
        let r = reference(&dir);
        for path in [AttentionPath::Naive, AttentionPath::Absorbed] {
            let model = load(&dir, path);
            let logits = model.forward(&r.prompt, &mut model.new_cache().unwrap()).unwrap();
            assert_eq!(logits.shape(), r.logits_shape.as_slice(), "{}", dir.display());
            let err = rel_error(logits.data(), &r.logits);
            println!("{} ({path:?}): prefill rel error {err:.2e}", dir.display());
            assert!(err <= 1e-4, "{} ({path:?}): prefill logits rel error {err:.3e} > 1e-4", dir.display());
        }
    }
}

#[test]
fn decode_through_cache_equals_prefill() {
    for dir in fixtures() {
        let r = reference(&dir);
        let model = load(&dir, AttentionPath::Auto);
        let prefill = model.forward(&r.prompt, &mut model.new_cache().unwrap()).unwrap();
        let mut cache = model.new_cache().unwrap();
        let mut stepwise = Vec::new();
        for &tok in &r.prompt {
            stepwise.extend_from_slice(model.forward(&[tok], &mut cache).unwrap().data());
        }
        assert_eq!(cache.len(), r.prompt.len());
        let err = rel_error(&stepwise, prefill.data());
        println!("{}: decode vs prefill rel error {err:.2e}", dir.display());
        assert!(err <= 1e-5, "{}: token-by-token decode vs prefill rel error {err:.3e} > 1e-5", dir.display());
    }
}

#[test]
fn greedy_tokens_match_where_the_margin_is_clear() {
    for dir in fixtures() {
        let r = reference(&dir);
        let model = load(&dir, AttentionPath::Auto);
        let gen = greedy_generate(&model, &r.prompt, r.output.len(), false).unwrap();
        let compared = check_greedy(&dir, &gen.output_token_ids, &r);
        println!("{}: {compared}/{} greedy tokens compared", dir.display(), r.output.len());
    }
}

#[test]
fn fp8_activation_emulation_changes_the_model_only_through_its_inputs() {
    for dir in fixtures() {
        let r = reference(&dir);
        let model = CpuModel::load(&dir, CpuOptions { emulate_fp8_activations: true, ..Default::default() }).unwrap();
        let logits = model.forward(&r.prompt, &mut model.new_cache().unwrap()).unwrap();
        let err = rel_error(logits.data(), &r.logits);
        println!("{}: fp8-emulated rel error vs unquantized reference {err:.2e}", dir.display());
        assert!(logits.data().iter().all(|v| v.is_finite()), "{}: non-finite logits", dir.display());
        assert!(err > 1e-6, "{}: emulation had no effect", dir.display());
    }
}

/// A linear layer under emulation equals the plain layer applied to the explicitly quantized and
/// dequantized input (per token, per 128-channel group, e4m3fn).
#[test]
fn fp8_activation_emulation_quantizes_linear_inputs_per_token_group() {
    use dsv3::ops::fp8::{e4m3fn_to_f32, quantize_act_per_token_group};
    use dsv3::ops::linear::linear;
    use dsv3::ops::moe::linear_act;
    use dsv3::Tensor;
    let (rows, k, n) = (3, 300, 17);
    let x: Vec<f32> = (0..rows * k).map(|i| ((i * 7919 % 1000) as f32 / 250.0 - 2.0) * (1 + i % 5) as f32).collect();
    let w: Vec<f32> = (0..n * k).map(|i| (i * 104729 % 997) as f32 / 997.0 - 0.5).collect();
    let w = Tensor::new(vec![n, k], w).unwrap();
    let (q, scales) = quantize_act_per_token_group(&x, rows, k, 128);
    let groups = k.div_ceil(128);
    let deq: Vec<f32> = q
        .iter()
        .enumerate()
        .map(|(i, &c)| e4m3fn_to_f32(c) * scales[(i / k) * groups + (i % k) / 128])
        .collect();
    let expected = linear(&Tensor::new(vec![rows, k], deq).unwrap(), &w);
    let got = linear_act(&x, &w, true);
    assert_eq!(got, expected.data());
    assert_ne!(got, linear_act(&x, &w, false));
}

/// The FP8 fixture carries transformers logits computed with e4m3 per-token-group activation
/// quantization on every FP8 linear: the emulation must reproduce them.
#[test]
fn fp8_emulation_matches_the_quantized_activation_reference() {
    let dir = common::fixtures_root().join("tiny-fp8-sharded");
    let r = reference(&dir);
    let (expected, shape) = common::reference_tensor(&dir, "logits_fp8_act");
    let model = CpuModel::load(&dir, CpuOptions { emulate_fp8_activations: true, ..Default::default() }).unwrap();
    let logits = model.forward(&r.prompt, &mut model.new_cache().unwrap()).unwrap();
    assert_eq!(logits.shape(), shape.as_slice());
    let err = rel_error(logits.data(), &expected);
    println!("fp8 emulation vs quantized-activation reference: rel error {err:.2e}");
    assert!(err <= 1e-4, "rel error {err:.3e}");
}

/// Under INT8 emulation a linear layer equals the plain layer on the input quantized and
/// dequantized as the INT8 kernels do (per token and 128-channel group, or per token).
#[test]
fn int8_activation_emulation_quantizes_linear_inputs_as_the_kernels() {
    use dsv3::ops::int8::{dequant_act_int8, quantize_act_int8_per_token, quantize_act_int8_per_token_group};
    use dsv3::ops::linear::linear;
    use dsv3::ops::moe::{linear_act, ActQuant};
    use dsv3::Tensor;
    let (rows, k, n) = (3, 300, 17);
    let x: Vec<f32> = (0..rows * k).map(|i| ((i * 7919 % 1000) as f32 / 250.0 - 2.0) * (1 + i % 5) as f32).collect();
    let w = Tensor::new(vec![n, k], (0..n * k).map(|i| (i * 104729 % 997) as f32 / 997.0 - 0.5).collect()).unwrap();
    let (q, s) = quantize_act_int8_per_token_group(&x, rows, k, 128);
    let group = linear(&Tensor::new(vec![rows, k], dequant_act_int8(&q, &s, rows, k, 128)).unwrap(), &w);
    let (q, s) = quantize_act_int8_per_token(&x, rows, k);
    let token = linear(&Tensor::new(vec![rows, k], dequant_act_int8(&q, &s, rows, k, k)).unwrap(), &w);
    assert_eq!(linear_act(&x, &w, ActQuant::Int8Group128), group.data());
    assert_eq!(linear_act(&x, &w, ActQuant::Int8Token), token.data());
    assert_ne!(group.data(), token.data());
    assert_ne!(linear_act(&x, &w, ActQuant::Int8Token), linear_act(&x, &w, ActQuant::None));
}

/// `emulate_int8_activations` quantizes the INT8 checkpoints' linear inputs (a small change of
/// the logits: 127 levels per group or token) and leaves other formats alone.
#[test]
fn int8_emulation_applies_to_int8_checkpoints_only() {
    let logits = |dir: &std::path::Path, int8: bool| {
        let r = reference(dir);
        let m = CpuModel::load(dir, CpuOptions { emulate_int8_activations: int8, ..Default::default() }).unwrap();
        (m.forward(&r.prompt, &mut m.new_cache().unwrap()).unwrap().into_data(), r.logits)
    };
    for name in ["tiny-int8-block", "tiny-int8-channel"] {
        let dir = common::fixtures_root().join(name);
        let ((plain, want), (emulated, _)) = (logits(&dir, false), logits(&dir, true));
        let (err_plain, err) = (rel_error(&plain, &want), rel_error(&emulated, &want));
        println!("{name}: int8-emulated rel error vs unquantized reference {err:.2e} (plain {err_plain:.2e})");
        assert!(emulated.iter().all(|v| v.is_finite()), "{name}: non-finite logits");
        assert!(rel_error(&emulated, &plain) > 1e-6, "{name}: emulation had no effect");
        assert!(err <= 5e-2, "{name}: int8-emulated rel error {err:.3e}");
    }
    for name in ["tiny-bf16", "tiny-awq"] {
        let dir = common::fixtures_root().join(name);
        assert_eq!(logits(&dir, true).0, logits(&dir, false).0, "{name}: INT8 emulation changed a non-INT8 checkpoint");
    }
}
