//! Reading the fixtures in tests/fixtures and their transformers references.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub struct Reference {
    pub prompt: Vec<u32>,
    pub output: Vec<u32>,
    pub margins: Vec<f32>,
    pub logits: Vec<f32>,
    pub logits_shape: Vec<usize>,
}

/// tests/fixtures of the checkout: `$CARGO_MANIFEST_DIR` at run time (set by `cargo test` and by
/// the GPU runner, whose checkout lives elsewhere than the build's), else the build's.
pub fn fixtures_root() -> PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    root.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR"))).join("tests/fixtures")
}

/// Every fixture directory with a `reference.json`.
pub fn fixtures() -> Vec<PathBuf> {
    let root = fixtures_root();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/fixtures exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("reference.json").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 3, "expected at least three fixtures with references in {}", root.display());
    dirs
}

/// A float32 tensor of `reference.safetensors` with its shape.
pub fn reference_tensor(dir: &Path, name: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), safetensors::Dtype::F32);
    let values = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (values, t.shape().to_vec())
}

pub fn reference(dir: &Path) -> Reference {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let ids = |key: &str| -> Vec<u32> {
        json[key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
    };
    let margins = json["step_margins"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let (logits, logits_shape) = reference_tensor(dir, "logits");
    Reference { prompt: ids("prompt_token_ids"), output: ids("output_token_ids"), margins, logits, logits_shape }
}

/// Number of leading greedy tokens that agree, over the steps whose reference margin is clear
/// (past a near-tie two correct implementations may diverge). Panics on a clear disagreement.
pub fn check_greedy(dir: &Path, ours: &[u32], r: &Reference) -> usize {
    let mut compared = 0;
    for (i, (&a, &b)) in ours.iter().zip(&r.output).enumerate() {
        if r.margins[i] <= 1e-3 {
            break;
        }
        assert_eq!(a, b, "{}: greedy token {i} differs", dir.display());
        compared += 1;
    }
    assert!(compared > 0, "{}: no greedy token had a clear margin", dir.display());
    compared
}
