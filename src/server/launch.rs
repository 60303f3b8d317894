//! SGLang launch flags that this build accepts but cannot honour yet: each gives a one-line
//! error that says what is missing, instead of being silently ignored. `--device cuda[:N]` /
//! `hip[:N]` pass where the build has that backend; `--tp N` (and `--enable-ep-moe` /
//! `--ep-size N`) pass on CUDA, one node: one process drives GPUs `base..base+N`.
//! `--enable-dp-attention` (`--dp` 1 or = `--tp`, [`dp_attention`]) is checked here; `serve` runs
//! it with an allocator and a prefix cache per rank, `examples/generate` for one sequence.
//! `--quantization` is checked here by name; whether it agrees with the checkpoint is
//! [`check_quantization`]'s job, once the model directory is known.

use crate::model::gpu::{GpuOptions, KvCacheDtype};
use crate::model::quant_method::{check_flag_for_dir, QuantMethod, QUANT_METHODS};

/// The flags of `launch_server` that select hardware, parallelism and number formats.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchFlags {
    pub device: String,
    pub tp: usize,
    pub dp: usize,
    pub enable_dp_attention: bool,
    /// `--enable-ep-moe`: routed experts split whole over the TP ranks.
    pub enable_ep_moe: bool,
    /// `--ep-size`: 1, or the TP size (experts over every rank).
    pub ep_size: usize,
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
            enable_ep_moe: false,
            ep_size: 1,
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
    if f.tp == 0 || f.dp == 0 || f.nnodes == 0 || f.ep_size == 0 {
        return Err("--tp, --dp, --ep-size and --nnodes must be at least 1".into());
    }
    if f.tp > 1 {
        if !gpu_device("cuda") {
            return Err(format!("--tp {}: tensor parallelism runs on CUDA GPUs (--device cuda, a build with --features cuda); not on {device}", f.tp));
        }
        if !cfg!(feature = "cuda") {
            return Err(format!("--tp {}: this build of dsv3 has no CUDA backend (rebuild with --features cuda)", f.tp));
        }
    }
    if f.ep_size != 1 && f.ep_size != f.tp {
        return Err(format!("--ep-size {}: expert parallelism spans the whole TP group in this build (--ep-size 1 or {})", f.ep_size, f.tp));
    }
    dp_attention(f.tp, f.dp, f.enable_dp_attention)?;
    if f.node_rank >= f.nnodes {
        return Err(format!("--node-rank {} must be less than --nnodes {}", f.node_rank, f.nnodes));
    }
    if f.nnodes > 1 {
        // Node 0 serves; the others run its steps (engine::multinode).
        if f.dist_init_addr.is_none() {
            return Err(format!("--nnodes {}: --dist-init-addr host:port (node 0's address) is required", f.nnodes));
        }
        if !f.tp.is_multiple_of(f.nnodes) || f.tp < f.nnodes {
            return Err(format!("--tp {} over --nnodes {}: every node drives --tp / --nnodes GPUs", f.tp, f.nnodes));
        }
        if f.enable_dp_attention {
            return Err("--enable-dp-attention over several nodes is not implemented (one node only)".into());
        }
    }
    if let Some(q) = &f.quantization {
        q.parse::<QuantMethod>()?;
    }
    gpu_options(f)?;
    Ok(())
}

/// Whether attention runs data-parallel over the TP ranks (`--enable-dp-attention`). As in SGLang,
/// DP attention spans the TP group: `--dp` is left at 1 (then dp = tp is implied) or equals
/// `--tp`. `--dp > 1` without it (whole-model replicas) is not implemented.
pub fn dp_attention(tp: usize, dp: usize, enable: bool) -> Result<bool, String> {
    if dp == 0 {
        return Err("--dp must be at least 1".into());
    }
    if !enable && dp > 1 {
        return Err(format!("--dp {dp} without --enable-dp-attention: data-parallel replicas of the whole model are not implemented (use --enable-dp-attention or --tp)"));
    }
    if enable && dp != 1 && dp != tp {
        return Err(format!("--dp {dp} with --enable-dp-attention: DP attention spans the TP group, so --dp must equal --tp {tp} (or stay 1)"));
    }
    Ok(enable)
}

/// What `--kv-cache-dtype` selects on a GPU: `auto` / `bf16` the bf16 latent cache with the fast
/// kernels (split-KV MLA decode, FP8 GEMMs and fused MoE on quantized activations), `fp8_e4m3` /
/// `fp8` the same kernels over the fp8 e4m3 latent cache (FlashMLA's 656-byte rows, quantized on
/// write; models with DeepSeek's 512 + 64 latent, `--page-size 64`), `f32` the reference path
/// (f32 cache and activations, the CPU's numbers to f32 rounding). The CPU always computes in f32.
/// One GPU and every rank of `--tp` alike.
pub fn gpu_options(f: &LaunchFlags) -> Result<GpuOptions, String> {
    kv_cache_options(&f.kv_cache_dtype)
}

/// [`gpu_options`] from a `--kv-cache-dtype` value alone (`examples/generate` has no other flag
/// of `launch_server`).
pub fn kv_cache_options(kv_cache_dtype: &str) -> Result<GpuOptions, String> {
    let kv = KvCacheDtype::parse(kv_cache_dtype).map_err(|_| format!("--kv-cache-dtype {kv_cache_dtype}: auto, bf16, fp8_e4m3 or f32"))?;
    Ok(match kv {
        KvCacheDtype::F32 => GpuOptions::reference(),
        KvCacheDtype::Bf16 => GpuOptions::fast(),
        KvCacheDtype::Fp8E4m3 => GpuOptions::fast_fp8_cache(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_unsupported_flags_say_why() {
        assert_eq!(check(&LaunchFlags::default()), Ok(()));
        let err = |f: LaunchFlags| check(&f).err().unwrap_or_default();
        // --tp needs a CUDA device, and a CUDA build.
        assert!(err(LaunchFlags { tp: 8, ..Default::default() }).contains("--device cuda"));
        let tp = check(&LaunchFlags { tp: 2, device: "cuda".into(), ..Default::default() });
        let ep = check(&LaunchFlags { tp: 2, ep_size: 2, enable_ep_moe: true, device: "cuda:0".into(), ..Default::default() });
        let cuda = check(&LaunchFlags { device: "cuda:0".into(), ..Default::default() });
        if cfg!(feature = "cuda") {
            assert_eq!((cuda, tp, ep), (Ok(()), Ok(()), Ok(())));
            assert!(err(LaunchFlags { tp: 4, ep_size: 2, device: "cuda".into(), ..Default::default() }).contains("--ep-size 2"));
        } else {
            for r in [cuda, tp, ep] {
                assert!(r.unwrap_err().contains("--features cuda"));
            }
        }
        assert!(err(LaunchFlags { device: "tpu".into(), ..Default::default() }).contains("unknown device"));
        for q in QUANT_METHODS {
            assert_eq!(check(&LaunchFlags { quantization: Some(q.to_string()), ..Default::default() }), Ok(()), "{q}");
        }
        assert!(err(LaunchFlags { quantization: Some("gptq".into()), ..Default::default() }).contains("--quantization gptq"));
        assert!(err(LaunchFlags { quantization: Some("w8a8_fp8".into()), ..Default::default() }).contains("per-channel FP8"));
        let kv = |d: &str| gpu_options(&LaunchFlags { kv_cache_dtype: d.into(), ..Default::default() });
        assert_eq!(gpu_options(&LaunchFlags::default()), Ok(GpuOptions::fast()));
        assert_eq!(kv("bf16"), Ok(GpuOptions::fast()));
        assert_eq!(kv("f32"), Ok(GpuOptions::reference()));
        for fp8 in ["fp8_e4m3", "fp8"] {
            assert_eq!(kv(fp8), Ok(GpuOptions::fast_fp8_cache()), "{fp8}");
            assert_eq!(check(&LaunchFlags { kv_cache_dtype: fp8.into(), ..Default::default() }), Ok(()), "{fp8}");
        }
        assert_eq!(GpuOptions::fast_fp8_cache().kv_cache, KvCacheDtype::Fp8E4m3);
        assert!(GpuOptions::fast_fp8_cache().quant_kernels);
        let e = err(LaunchFlags { kv_cache_dtype: "fp8_e5m2".into(), ..Default::default() });
        assert!(e.contains("--kv-cache-dtype fp8_e5m2") && e.contains("fp8_e4m3"), "{e}");
        let two = LaunchFlags { nnodes: 2, node_rank: 1, tp: 2, device: "cuda".into(), dist_init_addr: Some("10.0.0.1:5000".into()), ..Default::default() };
        if cfg!(feature = "cuda") {
            assert!(err(LaunchFlags { dist_init_addr: None, ..two.clone() }).contains("--dist-init-addr"));
            assert!(err(LaunchFlags { tp: 3, ..two.clone() }).contains("--tp 3 over --nnodes 2"));
            assert_eq!(check(&two), Ok(()));
            assert!(err(LaunchFlags { enable_dp_attention: true, ..two }).contains("several nodes"));
        }
        assert!(err(LaunchFlags { nnodes: 2, node_rank: 2, ..Default::default() }).contains("--node-rank 2"));
        // DP attention: --dp is 1 or --tp; plain --dp > 1 is refused.
        assert_eq!(dp_attention(2, 2, true), Ok(true));
        assert_eq!(dp_attention(4, 1, true), Ok(true));
        assert_eq!(dp_attention(4, 1, false), Ok(false));
        assert!(dp_attention(4, 2, true).unwrap_err().contains("--dp must equal --tp 4"));
        assert!(dp_attention(2, 2, false).unwrap_err().contains("without --enable-dp-attention"));
        assert!(dp_attention(2, 0, true).unwrap_err().contains("at least 1"));
        assert!(err(LaunchFlags { dp: 2, ..Default::default() }).contains("without --enable-dp-attention"));
        assert_eq!(check(&LaunchFlags { enable_dp_attention: true, ..Default::default() }), Ok(()), "DP attention over one rank is the plain model");
        let dp = LaunchFlags { tp: 2, dp: 2, enable_dp_attention: true, device: "cuda".into(), ..Default::default() };
        let dp4 = LaunchFlags { dp: 4, ..dp.clone() };
        if cfg!(feature = "cuda") {
            assert_eq!(check(&dp), Ok(()));
            assert_eq!(check(&LaunchFlags { dp: 1, ..dp.clone() }), Ok(()), "--dp 1: dp = tp implied");
            assert!(err(dp4).contains("--dp 4"));
        } else {
            assert!(err(dp).contains("--features cuda"));
        }
    }
}
