//! Checkpoint loading: happy paths (bf16/f16/f32 exact, fp8 block dequantization, shards) and
//! one test per way a download can be broken, each checking that the error names the file or
//! tensor in one line.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use dsv3::model::checkpoint::{Checkpoint, DType, WeightFormat, INDEX_FILE};
use dsv3::model::config::ModelConfig;
use dsv3::ops::fp8::{dequant_block_weight, quantize_block_weight};
use dsv3::Error;
use safetensors::Dtype;
use serde_json::json;

use common::files::{t, write_file, TempDir, T};


/// Writes shards `model-0000{i}-of-0000{n}.safetensors` and their index.
fn write_sharded(dir: &Path, shards: &[Vec<T>]) {
    let n = shards.len();
    let mut map = serde_json::Map::new();
    let mut total = 0usize;
    for (i, ts) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
        write_file(&dir.join(&file), ts);
        for x in ts {
            map.insert(x.name.clone(), json!(file));
            total += x.bytes.len();
        }
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": map});
    std::fs::write(dir.join(INDEX_FILE), index.to_string()).expect("index");
}

/// Deterministic values in [-4, 4) with varied magnitudes.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            let e = ((s >> 20) % 8) as i32 - 5;
            (u * 2.0 - 1.0) * 2f32.powi(e)
        })
        .collect()
}

fn bf16_bytes(v: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let h: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
    (h.iter().flat_map(|x| x.to_le_bytes()).collect(), h.iter().map(|x| x.to_f32()).collect())
}

fn f16_bytes(v: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
    (h.iter().flat_map(|x| x.to_le_bytes()).collect(), h.iter().map(|x| x.to_f32()).collect())
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// An fp8 weight `[n, k]` and its `_scale_inv`, quantized with `block`; returns the tensors and
/// the dequantized reference.
fn fp8_weight(name: &str, n: usize, k: usize, block: (usize, usize), seed: u64) -> (Vec<T>, Vec<f32>) {
    let w = values(n * k, seed);
    let (q, s) = quantize_block_weight(&w, n, k, block);
    let want = dequant_block_weight(&q, n, k, &s, block);
    let sshape = [n.div_ceil(block.0), k.div_ceil(block.1)];
    (
        vec![
            t(name, Dtype::F8_E4M3, &[n, k], q),
            t(&format!("{name}_scale_inv"), Dtype::F32, &sshape, f32_bytes(&s)),
        ],
        want,
    )
}

fn err_text(r: dsv3::Result<impl std::fmt::Debug>) -> (Error, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => {
            let s = e.to_string();
            assert!(!s.contains('\n'), "one line: {s}");
            (e, s)
        }
    }
}

fn open_err(dir: &Path) -> (Error, String) {
    err_text(Checkpoint::open(dir).map(|_| ()))
}

fn tiny_config(quant: Option<serde_json::Value>) -> ModelConfig {
    let mut v = json!({
        "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
        "num_attention_heads": 2, "q_lora_rank": null, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
        "qk_rope_head_dim": 4, "v_head_dim": 8, "n_routed_experts": null
    });
    if let Some(q) = quant {
        v["quantization_config"] = q;
    }
    ModelConfig::from_json_str(Path::new("config.json"), &v.to_string()).expect("tiny config")
}

fn fp8_quant_config() -> serde_json::Value {
    json!({"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]})
}

#[test]
fn single_file_float_dtypes_convert_exactly() {
    let dir = TempDir::new("single");
    let (b_bytes, b_vals) = bf16_bytes(&values(6 * 7, 1));
    let (h_bytes, h_vals) = f16_bytes(&values(5, 2));
    let f_vals = values(3 * 4, 3);
    let special = [0.0f32, -0.0, 1.0, -2.5, 65504.0, 1e-8];
    let (sb, sb_vals) = bf16_bytes(&special);
    write_file(
        &dir.path().join("model.safetensors"),
        &[
            t("a.weight", Dtype::BF16, &[6, 7], b_bytes),
            t("b.bias", Dtype::F16, &[5], h_bytes),
            t("c", Dtype::F32, &[3, 4], f32_bytes(&f_vals)),
            t("d", Dtype::BF16, &[6], sb),
            t("ids", Dtype::I32, &[2], vec![1, 0, 0, 0, 2, 0, 0, 0]),
        ],
    );
    let ck = Checkpoint::open(dir.path()).expect("open");
    assert_eq!(ck.names().collect::<Vec<_>>(), vec!["a.weight", "b.bias", "c", "d", "ids"]);
    assert!(ck.contains("a.weight") && !ck.contains("nope"));
    let info = ck.info("a.weight").expect("info");
    assert_eq!((info.dtype, info.shape.as_slice()), (DType::BF16, &[6usize, 7][..]));
    assert_eq!(info.file, dir.path().join("model.safetensors"));
    assert_eq!(ck.total_bytes(), (42 * 2 + 5 * 2 + 12 * 4 + 6 * 2 + 8) as u64);

    let a = ck.load_f32("a.weight", &[6, 7]).expect("bf16");
    assert_eq!(a.shape(), &[6, 7]);
    assert_eq!(a.data(), &b_vals[..]);
    assert_eq!(ck.load_f32("b.bias", &[5]).expect("f16").data(), &h_vals[..]);
    assert_eq!(ck.load_f32("c", &[3, 4]).expect("f32").data(), &f_vals[..]);
    let d = ck.load_f32("d", &[6]).expect("bf16 specials");
    for (x, y) in d.data().iter().zip(&sb_vals) {
        assert_eq!(x.to_bits(), y.to_bits());
    }
    let raw = ck.raw("ids").expect("raw");
    assert_eq!((raw.dtype, raw.shape.clone(), raw.bytes.len()), (DType::I32, vec![2], 8));
    assert_eq!(ck.weight_format(), WeightFormat::Bf16);
}

#[test]
fn big_bf16_tensor_converts_in_parallel_exactly() {
    let dir = TempDir::new("big");
    let n = 300 * 700; // above the parallel threshold, not a multiple of the chunk
    let (bytes, vals) = bf16_bytes(&values(n, 9));
    write_file(&dir.path().join("model.safetensors"), &[t("w", Dtype::BF16, &[300, 700], bytes)]);
    let ck = Checkpoint::open(dir.path()).expect("open");
    assert_eq!(ck.load_f32("w", &[300, 700]).expect("load").data(), &vals[..]);
}

#[test]
fn fp8_with_partial_edge_blocks_dequantizes_exactly() {
    let dir = TempDir::new("fp8");
    let (mut ts, want) = fp8_weight("layer.q_a_proj.weight", 300, 200, (128, 128), 4);
    let (ts2, want2) = fp8_weight("layer.o_proj.weight", 130, 129, (128, 128), 5);
    ts.extend(ts2);
    let (nb, nb_vals) = bf16_bytes(&values(200, 6));
    ts.push(t("layer.norm.weight", Dtype::BF16, &[200], nb));
    write_file(&dir.path().join("model.safetensors"), &ts);
    let ck = Checkpoint::open(dir.path()).expect("open");
    // Without a config: the block is inferred from the scale shapes.
    let w = ck.load_f32("layer.q_a_proj.weight", &[300, 200]).expect("fp8");
    assert_eq!(w.data(), &want[..]);
    assert_eq!(ck.load_f32("layer.o_proj.weight", &[130, 129]).expect("fp8").data(), &want2[..]);
    assert_eq!(ck.load_f32("layer.norm.weight", &[200]).expect("norm").data(), &nb_vals[..]);
    // With the config's fp8 quantization_config: same values, no warning.
    let (fmt, warns) = capture_warnings(|| ck.check_against(&tiny_config(Some(fp8_quant_config()))));
    assert_eq!(fmt.expect("check"), WeightFormat::Fp8Block { block_n: 128, block_k: 128 });
    assert!(warns.is_empty(), "{warns:?}");
    assert_eq!(ck.fp8_block(), Some((128, 128)));
    assert_eq!(ck.load_f32("layer.q_a_proj.weight", &[300, 200]).expect("fp8").data(), &want[..]);
}

#[test]
fn fp8_small_blocks_inferred_from_scale_shape() {
    let dir = TempDir::new("fp8-small");
    let (ts, want) = fp8_weight("x.down_proj.weight", 10, 12, (2, 4), 7);
    write_file(&dir.path().join("model.safetensors"), &ts);
    let ck = Checkpoint::open(dir.path()).expect("open");
    assert_eq!(ck.weight_format(), WeightFormat::Fp8Block { block_n: 2, block_k: 4 });
    assert_eq!(ck.load_f32("x.down_proj.weight", &[10, 12]).expect("fp8").data(), &want[..]);
    // No fp8 quantization_config: one warning, block kept for loading.
    let (fmt, warns) = capture_warnings(|| ck.check_against(&tiny_config(None)));
    assert_eq!(fmt.expect("check"), WeightFormat::Fp8Block { block_n: 2, block_k: 4 });
    assert_eq!(warns.len(), 1, "{warns:?}");
    // A config declaring [128, 128] blocks over these [2, 4]-block scales: error naming the scale.
    ck.set_fp8_block(None);
    let (e, s) = err_text(ck.check_against(&tiny_config(Some(fp8_quant_config()))));
    assert!(matches!(e, Error::CheckpointTensor { .. }), "{s}");
    assert!(s.contains("x.down_proj.weight_scale_inv") && s.contains("[5, 3]"), "{s}");
}

#[test]
fn sharded_checkpoint_loads_across_shards() {
    let dir = TempDir::new("sharded");
    let (w1, want1) = fp8_weight("model.layers.0.mlp.up_proj.weight", 256, 130, (128, 128), 11);
    let (eb, e_vals) = bf16_bytes(&values(64 * 32, 12));
    let (lb, l_vals) = bf16_bytes(&values(64 * 32, 13));
    write_sharded(
        dir.path(),
        &[
            vec![t("model.embed_tokens.weight", Dtype::BF16, &[64, 32], eb)],
            w1,
            vec![t("lm_head.weight", Dtype::BF16, &[64, 32], lb)],
        ],
    );
    let ck = Checkpoint::open(dir.path()).expect("open");
    assert_eq!(ck.len(), 4);
    assert_eq!(ck.files().count(), 3);
    assert_eq!(
        ck.info("lm_head.weight").expect("info").file,
        dir.path().join("model-00003-of-00003.safetensors")
    );
    assert_eq!(ck.load_f32("model.embed_tokens.weight", &[64, 32]).expect("embed").data(), &e_vals[..]);
    assert_eq!(ck.load_f32("lm_head.weight", &[64, 32]).expect("head").data(), &l_vals[..]);
    assert_eq!(ck.load_f32("model.layers.0.mlp.up_proj.weight", &[256, 130]).expect("fp8").data(), &want1[..]);
}

fn three_shards(dir: &Path) {
    let (b0, _) = bf16_bytes(&values(16, 1));
    let (b1, _) = bf16_bytes(&values(16, 2));
    let (b2, _) = bf16_bytes(&values(16, 3));
    write_sharded(
        dir,
        &[
            vec![t("a.weight", Dtype::BF16, &[4, 4], b0)],
            vec![t("b.weight", Dtype::BF16, &[4, 4], b1)],
            vec![t("c.weight", Dtype::BF16, &[4, 4], b2)],
        ],
    );
}

#[test]
fn missing_shard_names_the_file() {
    let dir = TempDir::new("missing-shard");
    three_shards(dir.path());
    let shard = dir.path().join("model-00002-of-00003.safetensors");
    std::fs::remove_file(&shard).expect("rm");
    let (e, s) = open_err(dir.path());
    assert!(matches!(&e, Error::CheckpointFile { path, .. } if *path == shard), "{s}");
    assert!(s.contains("model-00002-of-00003.safetensors") && s.contains("missing"), "{s}");
    assert!(s.contains("download may be incomplete"), "{s}");

    // Two missing: the first is named and the count given.
    std::fs::remove_file(dir.path().join("model-00003-of-00003.safetensors")).expect("rm");
    let (_, s) = open_err(dir.path());
    assert!(s.contains("model-00002-of-00003.safetensors") && s.contains("2 of 3"), "{s}");
}

#[test]
fn truncated_shard_names_the_file() {
    let dir = TempDir::new("truncated");
    three_shards(dir.path());
    let shard = dir.path().join("model-00003-of-00003.safetensors");
    let bytes = std::fs::read(&shard).expect("read");
    // Data section cut short.
    std::fs::write(&shard, &bytes[..bytes.len() - 5]).expect("write");
    let (e, s) = open_err(dir.path());
    assert!(matches!(&e, Error::CheckpointFile { path, .. } if *path == shard), "{s}");
    assert!(s.contains("model-00003-of-00003.safetensors") && s.contains("truncated"), "{s}");
    assert!(s.contains("download may be incomplete"), "{s}");
    // Header cut short.
    std::fs::write(&shard, &bytes[..20]).expect("write");
    let (_, s) = open_err(dir.path());
    assert!(s.contains("model-00003-of-00003.safetensors") && s.contains("truncated"), "{s}");
    // Shorter than the 8-byte length prefix; and an empty file.
    std::fs::write(&shard, &bytes[..3]).expect("write");
    let (_, s) = open_err(dir.path());
    assert!(s.contains("model-00003-of-00003.safetensors") && s.contains("truncated"), "{s}");
    std::fs::write(&shard, b"").expect("write");
    let (_, s) = open_err(dir.path());
    assert!(s.contains("model-00003-of-00003.safetensors") && s.contains("truncated"), "{s}");
    // Garbage header.
    let mut bad = 10u64.to_le_bytes().to_vec();
    bad.extend_from_slice(b"not json!!");
    std::fs::write(&shard, &bad).expect("write");
    let (_, s) = open_err(dir.path());
    assert!(s.contains("model-00003-of-00003.safetensors") && s.contains("header"), "{s}");
    // Trailing bytes after the data section.
    let mut long = bytes.clone();
    long.extend_from_slice(&[0; 7]);
    std::fs::write(&shard, &long).expect("write");
    let (_, s) = open_err(dir.path());
    assert!(s.contains("model-00003-of-00003.safetensors"), "{s}");
}

#[test]
fn weight_map_entry_not_in_its_shard_names_the_tensor() {
    let dir = TempDir::new("not-in-shard");
    three_shards(dir.path());
    let index_path = dir.path().join(INDEX_FILE);
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).expect("read")).expect("json");
    index["weight_map"]["model.layers.7.self_attn.o_proj.weight"] = json!("model-00002-of-00003.safetensors");
    std::fs::write(&index_path, index.to_string()).expect("write");
    let (e, s) = open_err(dir.path());
    assert!(matches!(&e, Error::CheckpointTensor { name, .. } if name == "model.layers.7.self_attn.o_proj.weight"), "{s}");
    assert!(s.contains("model-00002-of-00003.safetensors") && s.contains("download may be incomplete"), "{s}");

    // A tensor the index places in the wrong shard.
    index["weight_map"].as_object_mut().expect("map").remove("model.layers.7.self_attn.o_proj.weight");
    index["weight_map"]["a.weight"] = json!("model-00003-of-00003.safetensors");
    std::fs::write(&index_path, index.to_string()).expect("write");
    let (_, s) = open_err(dir.path());
    assert!(s.contains("`a.weight`") && s.contains("model-00003-of-00003.safetensors"), "{s}");
}

#[test]
fn malformed_index_names_the_index() {
    let dir = TempDir::new("bad-index");
    three_shards(dir.path());
    let index_path = dir.path().join(INDEX_FILE);
    for text in ["{\"weight_map\": {", "{\"metadata\": {}}", "{\"weight_map\": {\"a\": 3}}", "{\"weight_map\": {\"a\": \"../x.safetensors\"}}"] {
        std::fs::write(&index_path, text).expect("write");
        let (e, s) = open_err(dir.path());
        assert!(matches!(&e, Error::CheckpointFile { path, .. } if *path == index_path), "{s}");
        assert!(s.contains(INDEX_FILE), "{s}");
    }
}

#[test]
fn wrong_shape_dtype_and_missing_tensors_are_named() {
    let dir = TempDir::new("tensor-errors");
    let (b, _) = bf16_bytes(&values(20, 1));
    let (mut ts, _) = fp8_weight("m.kv_b_proj.weight", 20, 30, (128, 128), 2);
    ts.push(t("m.norm.weight", Dtype::BF16, &[4, 5], b));
    ts.push(t("m.ids", Dtype::I32, &[2], vec![0; 8]));
    ts.push(t("m.bias", Dtype::I8, &[3], vec![1, 2, 3]));
    ts.push(t("m.q_b_proj.weight", Dtype::F8_E4M3, &[4, 4], vec![0x38; 16]));
    ts.push(t("m.bad_proj.weight", Dtype::F8_E4M3, &[300, 4], vec![0x38; 1200]));
    ts.push(t("m.bad_proj.weight_scale_inv", Dtype::F32, &[7, 1], f32_bytes(&[1.0; 7])));
    ts.push(t("m.flat_proj.weight", Dtype::F8_E4M3, &[4], vec![0x38; 4]));
    write_file(&dir.path().join("model.safetensors"), &ts);
    let ck = Checkpoint::open(dir.path()).expect("open");

    let (e, s) = err_text(ck.load_f32("m.norm.weight", &[4, 6]));
    assert!(matches!(&e, Error::CheckpointTensor { name, .. } if name == "m.norm.weight"), "{s}");
    assert!(s.contains("expected shape [4, 6], found [4, 5]"), "{s}");
    let (_, s) = err_text(ck.load_f32("m.norm.weight", &[20]));
    assert!(s.contains("expected shape [20], found [4, 5]"), "{s}");

    let (_, s) = err_text(ck.load_f32("m.ids", &[2]));
    assert!(s.contains("`m.ids`") && s.contains("I32"), "{s}");
    let (_, s) = err_text(ck.load_f32("m.bias", &[3]));
    assert!(s.contains("`m.bias`") && s.contains("I8"), "{s}");

    let (e, s) = err_text(ck.load_f32("m.q_b_proj.weight", &[4, 4]));
    assert!(matches!(&e, Error::CheckpointTensor { name, .. } if name == "m.q_b_proj.weight"), "{s}");
    assert!(s.contains("m.q_b_proj.weight_scale_inv"), "{s}");
    assert!(s.contains("download may be incomplete"), "{s}");

    let (_, s) = err_text(ck.load_f32("m.bad_proj.weight", &[300, 4]));
    assert!(s.contains("`m.bad_proj.weight_scale_inv`") && s.contains("[7, 1]") && s.contains("[300, 4]"), "{s}");
    // With the block size known, the expected scale shape is given.
    ck.set_fp8_block(Some((128, 128)));
    let (_, s) = err_text(ck.load_f32("m.bad_proj.weight", &[300, 4]));
    assert!(s.contains("`m.bad_proj.weight_scale_inv`") && s.contains("expected shape [3, 1]") && s.contains("[7, 1]"), "{s}");
    ck.set_fp8_block(None);
    let (_, s) = err_text(ck.load_f32("m.flat_proj.weight", &[4]));
    assert!(s.contains("`m.flat_proj.weight`") && s.contains("2-D"), "{s}");

    let (e, s) = err_text(ck.load_f32("model.layers.3.mlp.gate.weight", &[8, 8]));
    assert!(matches!(&e, Error::CheckpointTensor { name, .. } if name == "model.layers.3.mlp.gate.weight"), "{s}");
    assert!(s.contains("not found") && s.contains("download may be incomplete"), "{s}");
    assert!(ck.raw("nope").is_err());

    // check_against validates every fp8 weight's scale up front and names the first bad one.
    let (_, s) = err_text(ck.check_against(&tiny_config(Some(fp8_quant_config()))));
    assert!(s.contains("m.bad_proj.weight") || s.contains("m.flat_proj.weight") || s.contains("m.q_b_proj.weight"), "{s}");
}

#[test]
fn empty_or_missing_directory_is_named() {
    let dir = TempDir::new("empty");
    let (e, s) = open_err(dir.path());
    assert!(matches!(&e, Error::CheckpointFile { path, .. } if path == dir.path()), "{s}");
    assert!(s.contains("no model.safetensors.index.json"), "{s}");
    let gone = dir.path().join("does-not-exist");
    let (_, s) = open_err(&gone);
    assert!(s.contains("does-not-exist") && s.contains("does not exist"), "{s}");
}

#[test]
fn loose_safetensors_files_without_index() {
    let dir = TempDir::new("loose");
    let (b0, v0) = bf16_bytes(&values(4, 1));
    let (b1, v1) = bf16_bytes(&values(4, 2));
    write_file(&dir.path().join("part-a.safetensors"), &[t("a", Dtype::BF16, &[4], b0)]);
    write_file(&dir.path().join("part-b.safetensors"), &[t("b", Dtype::BF16, &[4], b1)]);
    let ck = Checkpoint::open(dir.path()).expect("open");
    assert_eq!(ck.load_f32("a", &[4]).expect("a").data(), &v0[..]);
    assert_eq!(ck.load_f32("b", &[4]).expect("b").data(), &v1[..]);
}

/// Runs `f` with a subscriber that records WARN events; returns `f`'s result and the warnings.
fn capture_warnings<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut g) = self.0.lock() {
                g.extend_from_slice(b);
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    let r = tracing::subscriber::with_default(sub, f);
    let text = buf.0.lock().map(|g| String::from_utf8_lossy(&g).into_owned()).unwrap_or_default();
    (r, text.lines().filter(|l| l.contains("WARN")).map(str::to_string).collect())
}

#[test]
fn stale_fp8_quantization_config_over_bf16_weights_warns_once() {
    let dir = TempDir::new("stale");
    let (b, vals) = bf16_bytes(&values(8 * 6, 1));
    let (b2, _) = bf16_bytes(&values(8 * 6, 2));
    write_file(
        &dir.path().join("model.safetensors"),
        &[
            t("model.layers.0.self_attn.o_proj.weight", Dtype::BF16, &[8, 6], b),
            t("model.layers.0.mlp.down_proj.weight", Dtype::BF16, &[8, 6], b2),
        ],
    );
    let ck = Checkpoint::open(dir.path()).expect("open");
    let cfg = tiny_config(Some(fp8_quant_config()));
    let (fmt, warns) = capture_warnings(|| ck.check_against(&cfg));
    assert_eq!(fmt.expect("check"), WeightFormat::Bf16);
    assert_eq!(warns.len(), 1, "{warns:?}");
    assert!(warns[0].contains("BF16") && warns[0].contains("quantization_config"), "{warns:?}");
    assert_eq!(ck.fp8_block(), None, "a stale config does not set the fp8 block");
    assert_eq!(ck.load_f32("model.layers.0.self_attn.o_proj.weight", &[8, 6]).expect("load").data(), &vals[..]);
    // Same without the stale config: no warning.
    let (fmt, warns) = capture_warnings(|| ck.check_against(&tiny_config(None)));
    assert_eq!(fmt.expect("check"), WeightFormat::Bf16);
    assert!(warns.is_empty(), "{warns:?}");
    let (fmt, warns) = capture_warnings(|| ck.warn_if_stale_quantization(&cfg));
    assert_eq!(fmt, WeightFormat::Bf16);
    assert_eq!(warns.len(), 1);
}

/// The tiny checkpoints made by transformers (tests/fixtures/tiny-*): every one opens, matches its
/// config, and every tensor loads as finite f32 at its stored shape.
#[test]
fn fixture_checkpoints_load_every_tensor() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.retain(|p| {
        p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("tiny-")) && p.join("config.json").is_file()
    });
    dirs.sort();
    let mut seen = 0;
    for dir in &dirs {
        let cfg = match ModelConfig::from_file(&dir.join("config.json")) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let ck = match Checkpoint::open(dir) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let fmt = match ck.check_against(&cfg) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        };
        if cfg.fp8_block().is_some() {
            assert!(matches!(fmt, WeightFormat::Fp8Block { .. }), "{}: {fmt:?}", dir.display());
        }
        let names: Vec<String> = ck.names().map(str::to_string).collect();
        assert!(names.iter().any(|n| n == "model.embed_tokens.weight"), "{}", dir.display());
        for name in &names {
            if name.ends_with("_scale_inv") || name.ends_with(".qzeros") {
                continue;
            }
            let mut shape = ck.info(name).expect("info").shape.clone();
            // An AWQ layer loads by its Linear name as the dequantized [N, K] weight.
            let name = match name.strip_suffix(".qweight") {
                Some(base) => {
                    shape = vec![shape[1] * 8, shape[0]];
                    format!("{base}.weight")
                }
                None => name.clone(),
            };
            let name = &name;
            let t = match ck.load_f32(name, &shape) {
                Ok(t) => t,
                Err(e) => panic!("{}: {e}", dir.display()),
            };
            assert!(t.data().iter().all(|v| v.is_finite()), "{}: {name} not finite", dir.display());
        }
        seen += 1;
    }
    eprintln!("loaded {seen} fixture checkpoints: {dirs:?}");
}
