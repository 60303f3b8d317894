//! Run-time compilation of the embedded kernel sources with NVRTC (used when the build had no
//! nvcc, or when [`CodeVariant::Nvrtc`](crate::backend::CodeVariant) is asked for). The PTX is
//! cached on disk in `$DSV3_CACHE_DIR` (default `~/.cache/dsv3`), keyed by a hash of the source,
//! the target arch, the options and the NVRTC version.

use super::super::backend_err;
use super::super::types::ModuleInfo;
use crate::error::Result;
use std::path::PathBuf;

const B: &str = "cuda";

fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for p in parts {
        for b in *p {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// `$DSV3_CACHE_DIR`, else `$XDG_CACHE_HOME/dsv3`, else `~/.cache/dsv3`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DSV3_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("dsv3"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/dsv3"))
}

fn nvrtc_version() -> Result<(i32, i32)> {
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(backend_err(B, "NVRTC (libnvrtc) not found: needed to compile kernels at run time (this build embedded no compiled kernels for this variant)"));
    }
    let (mut a, mut b) = (0, 0);
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut a, &mut b) };
    Ok((a, b))
}

/// PTX of `module` for compute capability `cc`.
pub fn compile(module: &ModuleInfo, cc: (i32, i32)) -> Result<Vec<u8>> {
    let src = module
        .cuda_source
        .ok_or_else(|| backend_err(B, format!("module {}: no CUDA source embedded (build with --features cuda)", module.family)))?;
    let ver = nvrtc_version()?;
    let arch = format!("compute_{}{}", cc.0, cc.1);
    let opts = vec![format!("--gpu-architecture={arch}"), "-std=c++17".to_string(), "-default-device".to_string(), "-lineinfo".to_string()];
    let key = fnv1a64(&[src.as_bytes(), arch.as_bytes(), opts.join(" ").as_bytes(), format!("{ver:?}").as_bytes()]);
    let file = cache_dir().map(|d| d.join(format!("nvrtc-{}-{arch}-{key:016x}.ptx", module.family)));
    if let Some(f) = &file {
        if let Ok(bytes) = std::fs::read(f) {
            return Ok(bytes);
        }
    }
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(
        src,
        cudarc::nvrtc::CompileOptions { options: opts, name: Some(format!("{}.cu", module.family)), ..Default::default() },
    )
    .map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            backend_err(B, format!("NVRTC compiling {} for {arch}:\n{}", module.family, log.to_string_lossy()))
        }
        other => backend_err(B, format!("NVRTC compiling {} for {arch}: {other:?}", module.family)),
    })?;
    let text = ptx.to_src().into_bytes();
    if let Some(f) = &file {
        // Best effort: a read-only home only costs a recompilation next time.
        if let Some(d) = f.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &text).is_ok() {
            let _ = std::fs::rename(&tmp, f);
        }
    }
    Ok(text)
}
