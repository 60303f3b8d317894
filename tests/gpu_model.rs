//! The whole model on the GPU against the CPU reference and transformers, on every fixture.
//!
//! GPU tests: ignored in the CPU suite, run on the GPU machine with `--include-ignored`; without
//! a CUDA device they fail loudly.

mod common;

use common::gpu::gpu_model;
use common::{check_greedy, fixtures, reference};
use dsv3::model::cpu::{CpuModel, CpuOptions};
use dsv3::backend::{DType, Device};
use dsv3::model::generate::{greedy_generate, CausalLm};
use dsv3::model::gpu::{deepseek_v3_slice, BatchSeq, GpuModel, GpuOptions, LogitRows, PAGE_SIZE};
use dsv3::tensor::rel_error;

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn gpu_prefill_and_decode_match_the_cpu_reference() {
    for dir in fixtures() {
        let r = reference(&dir);
        let cpu = CpuModel::load(&dir, CpuOptions::default()).unwrap();
        let cpu_logits = cpu.forward(&r.prompt, &mut cpu.new_cache().unwrap()).unwrap();
        let gpu = gpu_model(&dir);
        let prefill = gpu.forward(&r.prompt, &mut gpu.new_cache().unwrap()).unwrap();
        let err_cpu = rel_error(prefill.data(), cpu_logits.data());
        let err_ref = rel_error(prefill.data(), &r.logits);
        // Token by token through the paged cache.
        let mut cache = gpu.new_cache().unwrap();
        let mut stepwise = Vec::new();
        for &tok in &r.prompt {
            stepwise.extend_from_slice(gpu.forward(&[tok], &mut cache).unwrap().data());
        }
        let err_decode = rel_error(&stepwise, cpu_logits.data());
        println!(
            "{}: gpu prefill vs cpu {err_cpu:.2e}, vs transformers {err_ref:.2e}, gpu decode vs cpu {err_decode:.2e}",
            dir.display()
        );
        assert!(err_cpu <= 2e-2, "{}: prefill rel error {err_cpu:.3e}", dir.display());
        assert!(err_decode <= 2e-2, "{}: decode rel error {err_decode:.3e}", dir.display());
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn gpu_greedy_tokens_match_the_reference() {
    for dir in fixtures() {
        let r = reference(&dir);
        let gpu = gpu_model(&dir);
        let gen = greedy_generate(&gpu, &r.prompt, r.output.len(), false).unwrap();
        let compared = check_greedy(&dir, &gen.output_token_ids, &r);
        println!("{}: {compared}/{} greedy tokens agree", dir.display(), r.output.len());
    }
}

/// The fast options (bf16 latent cache with the split-KV decode kernel, FP8 GEMMs on quantized
/// activations, cuBLAS for bf16 weights) against the CPU reference that quantizes the FP8 GEMMs'
/// activations the same way: what remains is bf16 rounding (cache rows, GEMM outputs, the
/// attention's query), about 2⁻⁹ relative per rounding, a few per layer, compounded over the
/// fixtures' 2–4 layers.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn fast_options_track_the_cpu_reference_with_fp8_activations() {
    for dir in fixtures() {
        let r = reference(&dir);
        let cpu = CpuModel::load(&dir, CpuOptions { emulate_fp8_activations: true, ..Default::default() }).unwrap();
        let cpu_logits = cpu.forward(&r.prompt, &mut cpu.new_cache().unwrap()).unwrap();
        let gpu = GpuModel::load_with(&dir, Device::Cuda(0), GpuOptions::fast()).unwrap();
        let prefill = gpu.forward(&r.prompt, &mut gpu.new_cache().unwrap()).unwrap();
        let mut cache = gpu.new_cache().unwrap();
        let mut stepwise = Vec::new();
        for &tok in &r.prompt {
            stepwise.extend_from_slice(gpu.forward(&[tok], &mut cache).unwrap().data());
        }
        let (err_prefill, err_decode) = (rel_error(prefill.data(), cpu_logits.data()), rel_error(&stepwise, cpu_logits.data()));
        println!("{}: fast prefill vs cpu(fp8 act) {err_prefill:.2e}, fast decode {err_decode:.2e}", dir.display());
        assert!(err_prefill <= 3e-2, "{}: fast prefill rel error {err_prefill:.3e}", dir.display());
        assert!(err_decode <= 3e-2, "{}: fast decode rel error {err_decode:.3e}", dir.display());
    }
}

/// A DeepSeek-V3-like model small enough for a test but with the real MLA widths (512 + 64, so
/// decode runs the split-KV kernel) and 128-multiple expert widths (so the MoE runs fused), with
/// random weights made on the device. Three views of the same draws:
/// - reference: f32 cache, simple GEMMs — exact to f32 rounding;
/// - bf16 cache + split-KV decode, simple GEMMs: differs by bf16 rounding of cache rows, W_uk /
///   W_uv and the query (≈ 2⁻⁹ each);
/// - fast: adds the e4m3 activation quantization of every FP8 GEMM (3 mantissa bits: up to 2⁻⁴
///   relative per element, averaging down over K), so only a loose bound applies there.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn fast_paths_on_real_mla_widths_track_the_reference() {
    let mut cfg = deepseek_v3_slice(3, 1).unwrap();
    cfg.hidden_size = 1024;
    cfg.intermediate_size = 1536;
    cfg.moe_intermediate_size = 256;
    cfg.num_attention_heads = 16;
    cfg.q_lora_rank = Some(384);
    cfg.n_routed_experts = 32;
    cfg.n_group = 4;
    cfg.topk_group = 2;
    cfg.num_experts_per_tok = 4;
    cfg.vocab_size = 4096;
    cfg.max_position_embeddings = 4096;
    let load = |opts| GpuModel::random(cfg.clone(), Device::Cuda(0), opts, 11).unwrap();
    let reference = load(GpuOptions::reference());
    let bf16_cache = load(GpuOptions { kv_cache: DType::Bf16, quant_kernels: false });
    let fast = load(GpuOptions::fast());
    // Three sequences of different lengths: a prefill each, then 6 batched decode steps.
    let prompts: Vec<Vec<u32>> = [70usize, 129, 5].iter().enumerate().map(|(i, &n)| (0..n as u32).map(|t| (t * 37 + i as u32 * 11) % 4096).collect()).collect();
    let run = |m: &GpuModel| -> Vec<f32> {
        let per_seq = 4;
        let mut pool = m.new_page_pool(3 * per_seq, PAGE_SIZE).unwrap();
        // Pages in a permuted order.
        let tables: Vec<Vec<u32>> = (0..3u32).map(|i| (0..per_seq as u32).map(|p| (p * 3 + (2 - i)) % (3 * per_seq as u32)).collect()).collect();
        let mut out = Vec::new();
        let mut lens: Vec<usize> = prompts.iter().map(|p| p.len()).collect();
        for (i, p) in prompts.iter().enumerate() {
            let seq = BatchSeq { tokens: p, start: 0, block_table: &tables[i], logits: LogitRows::Last };
            out.extend(m.forward_batch(&mut pool, &[seq]).unwrap().concat());
        }
        for step in 0..6u32 {
            let toks: Vec<u32> = (0..3u32).map(|i| (step * 101 + i * 7) % 4096).collect();
            let seqs: Vec<BatchSeq> = (0..3).map(|i| BatchSeq { tokens: &toks[i..i + 1], start: lens[i], block_table: &tables[i], logits: LogitRows::Last }).collect();
            out.extend(m.forward_batch(&mut pool, &seqs).unwrap().concat());
            lens.iter_mut().for_each(|l| *l += 1);
        }
        out
    };
    let (want, got_cache, got_fast) = (run(&reference), run(&bf16_cache), run(&fast));
    let (err_cache, err_fast) = (rel_error(&got_cache, &want), rel_error(&got_fast, &want));
    println!("real MLA widths: bf16 cache + split-KV decode vs reference {err_cache:.2e}; fast (fp8 activations) {err_fast:.2e}");
    assert!(want.iter().all(|x| x.is_finite()));
    assert!(err_cache <= 2e-2, "bf16 cache + split-KV decode: rel error {err_cache:.3e}");
    assert!(err_fast <= 1.5e-1, "fast: rel error {err_fast:.3e}");
}
