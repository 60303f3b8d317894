//! SGLang launch flags that this build accepts but cannot honour yet: each gives a one-line
//! error that says what is missing, instead of being silently ignored. `--device cuda[:N]` /
//! `hip[:N]` pass where the build has that backend. `--quantization` is checked here by name;
//! whether it agrees with the checkpoint is [`check_quantization`]'s job, once the model
//! directory is known.

use crate::model::quant_method::{check_flag_for_dir, QuantMethod, QUANT_METHODS};

use crate::model::gpu::GpuOptions;

/// The flags of `launch_server` that select hardware, parallelism and number formats.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchFlags {
    pub device: String,
    pub tp: usize,
    pub dp: usize,
    pub enable_dp_attention: bool,
    pub nnodes: usize,
    pub node_rank: usize,
    pub dist_init_addr: Option<String>,
    pub quantization: Option<String>,
    pub kv_cache_dtype: String,
}

impl Default for LaunchFlags {
    fn default() -> Self {
        LaunchFlags {
            device: "cpu".into(),
            tp: 1,
            dp: 1,
            enable_dp_attention: false,
            nnodes: 1,
            node_rank: 0,
            dist_init_addr: None,
            quantization: None,
            kv_cache_dtype: "auto".into(),
        }
    }
}

/// `--quantization` values this build reads (each must match the checkpoint's format).
pub const SUPPORTED_QUANTIZATION: &[&str] = QUANT_METHODS;

/// `--quantization` against the checkpoint in `dir`: `Ok` without the flag or when the flag
/// names the format the checkpoint holds; otherwise one line naming both.
pub fn check_quantization(f: &LaunchFlags, dir: &std::path::Path) -> Result<(), String> {
    match &f.quantization {
        None => Ok(()),
        Some(q) => check_flag_for_dir(q, dir).map(|_| ()).map_err(|e| e.to_string()),
    }
}

/// `Ok` when this build can serve with these flags; otherwise the reason, one line.
pub fn check(f: &LaunchFlags) -> Result<(), String> {
    let device = f.device.as_str();
    let gpu_device = |prefix: &str| device == prefix || device.starts_with(&format!("{prefix}:"));
    if device == "cpu" {
    } else if gpu_device("cuda") {
        if !cfg!(feature = "cuda") {
            return Err(format!("--device {device}: this build of dsv3 has no CUDA backend (rebuild with --features cuda)"));
        }
        device.parse::<crate::backend::Device>().map_err(|e| format!("--device {device}: {e}"))?;
    } else if gpu_device("hip") || gpu_device("rocm") {
        if !cfg!(feature = "hip") {
            return Err(format!("--device {device}: this build of dsv3 has no HIP backend (rebuild with --features hip)"));
        }
        device.replace("rocm", "hip").parse::<crate::backend::Device>().map_err(|e| format!("--device {device}: {e}"))?;
    } else {
        return Err(format!("--device {device}: unknown device (expected cpu, cuda[:N] or hip[:N])"));
    }
    if f.tp == 0 || f.dp == 0 || f.nnodes == 0 {
        return Err("--tp, --dp and --nnodes must be at least 1".into());
    }
    if f.tp > 1 {
        return Err(format!(
            "--tp {}: tensor parallelism needs the multi-GPU build, which is not available yet; this build serves with --tp 1",
            f.tp
        ));
    }
    if f.dp > 1 || f.enable_dp_attention {
        return Err("--dp / --enable-dp-attention: data-parallel attention needs the multi-GPU build, which is not available yet".into());
    }
    if f.node_rank >= f.nnodes {
        return Err(format!("--node-rank {} must be less than --nnodes {}", f.node_rank, f.nnodes));
    }
    if f.nnodes > 1 || f.dist_init_addr.is_some() {
        return Err("--nnodes / --dist-init-addr / --node-rank: multi-node serving needs the multi-GPU build, which is not available yet".into());
    }
    if let Some(q) = &f.quantization {
        q.parse::<QuantMethod>()?;
    }
    gpu_options(f)?;
    Ok(())
}

/// What `--kv-cache-dtype` selects on a GPU: `auto` / `bf16` the bf16 latent cache with the fast
/// kernels (split-KV MLA decode, FP8 GEMMs and fused MoE on quantized activations), `f32` the
/// reference path (f32 cache and activations, the CPU's numbers to f32 rounding). The CPU
/// always computes in f32.
pub fn gpu_options(f: &LaunchFlags) -> Result<GpuOptions, String> {
    match f.kv_cache_dtype.as_str() {
        "auto" | "bf16" | "bfloat16" => Ok(GpuOptions::fast()),
        "f32" | "float32" => Ok(GpuOptions::reference()),
        other => Err(format!("--kv-cache-dtype {other}: auto, bf16 or f32 (an fp8_e4m3 cache is not available yet)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_unsupported_flags_say_why() {
        assert_eq!(check(&LaunchFlags::default()), Ok(()));
        let err = |f: LaunchFlags| check(&f).err().unwrap_or_default();
        assert!(err(LaunchFlags { tp: 8, ..Default::default() }).contains("multi-GPU build"));
        let cuda = check(&LaunchFlags { device: "cuda:0".into(), ..Default::default() });
        if cfg!(feature = "cuda") {
            assert_eq!(cuda, Ok(()));
        } else {
            assert!(cuda.unwrap_err().contains("--features cuda"));
        }
        assert!(err(LaunchFlags { device: "tpu".into(), ..Default::default() }).contains("unknown device"));
        // Every quantization name the loader reads passes by name (the checkpoint decides later);
        // others are refused, naming the flag.
        for q in SUPPORTED_QUANTIZATION {
            assert_eq!(check(&LaunchFlags { quantization: Some(q.to_string()), ..Default::default() }), Ok(()), "{q}");
        }
        assert!(err(LaunchFlags { quantization: Some("gptq".into()), ..Default::default() }).contains("--quantization gptq"));
        assert!(err(LaunchFlags { quantization: Some("w8a8_fp8".into()), ..Default::default() }).contains("per-channel FP8"));
        assert!(err(LaunchFlags { kv_cache_dtype: "fp8_e4m3".into(), ..Default::default() }).contains("fp8_e4m3"));
        assert_eq!(gpu_options(&LaunchFlags::default()), Ok(GpuOptions::fast()));
        assert_eq!(gpu_options(&LaunchFlags { kv_cache_dtype: "f32".into(), ..Default::default() }), Ok(GpuOptions::reference()));
        assert!(err(LaunchFlags { nnodes: 2, node_rank: 1, ..Default::default() }).contains("multi-node"));
        assert!(err(LaunchFlags { enable_dp_attention: true, ..Default::default() }).contains("data-parallel"));
    }
}
