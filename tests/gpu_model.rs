//! The whole model on the GPU against the CPU reference and transformers, on every fixture.
//!
//! GPU tests: ignored in the CPU suite, run on the GPU machine with `--include-ignored`; without
//! a CUDA device they fail loudly.

mod common;

use common::gpu::gpu_model;
use common::{check_greedy, fixtures, reference};
use dsv3::model::cpu::{CpuModel, CpuOptions};
use dsv3::model::generate::{greedy_generate, CausalLm};
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
