//! The CPU reference model against transformers on every fixture in tests/fixtures (each
//! directory with a `reference.json`): prefill logits, decode through the cache, greedy tokens.

use std::path::{Path, PathBuf};

use dsv3::model::cpu::{AttentionPath, CpuModel, CpuOptions};
use dsv3::model::generate::{greedy_generate, CausalLm};
use dsv3::tensor::rel_error;

struct Reference {
    prompt: Vec<u32>,
    output: Vec<u32>,
    margins: Vec<f32>,
    logits: Vec<f32>,
    logits_shape: Vec<usize>,
}

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/fixtures exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.json").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 3, "expected at least three fixtures with references in {}", root.display());
    dirs
}

fn reference(dir: &Path) -> Reference {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        json[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
    };
    let margins = json["step_margins"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("logits").unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let logits = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Reference { prompt: ids("prompt_token_ids"), output: ids("output_token_ids"), margins, logits, logits_shape: t.shape().to_vec() }
}

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
            let logits = model.forward(&r.prompt, &mut model.new_cache()).unwrap();
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
        let prefill = model.forward(&r.prompt, &mut model.new_cache()).unwrap();
        let mut cache = model.new_cache();
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
        let mut compared = 0;
        for (i, (&ours, &theirs)) in gen.output_token_ids.iter().zip(&r.output).enumerate() {
            // Past a near-tie the two sequences may legitimately diverge: stop comparing there.
            if r.margins[i] <= 1e-3 {
                break;
            }
            assert_eq!(ours, theirs, "{}: greedy token {i} differs", dir.display());
            compared += 1;
        }
        println!("{}: {compared}/{} greedy tokens compared", dir.display(), r.output.len());
        assert!(compared > 0, "{}: no greedy token had a clear margin", dir.display());
    }
}

#[test]
fn fp8_activation_emulation_changes_the_model_only_through_its_inputs() {
    for dir in fixtures() {
        let r = reference(&dir);
        let model = CpuModel::load(&dir, CpuOptions { emulate_fp8_activations: true, ..Default::default() }).unwrap();
        let logits = model.forward(&r.prompt, &mut model.new_cache()).unwrap();
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
