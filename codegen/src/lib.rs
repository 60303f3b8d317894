//! dsv3-codegen: the kernel manifest and the per-vendor emitters.
//!
//! - [`manifest::FAMILIES`]: every kernel family as data (template source, parameter grid,
//!   target archs, argument list).
//! - [`model`]: the manifest's vocabulary and its expansion into concrete [`model::Instance`]s.
//! - [`cpp`]: per-vendor translation units (`.cu`, `.hip`) with `extern "C"` entry points that
//!   instantiate the templates, and the amalgamation that makes them self-contained for
//!   NVRTC / hiprtc.
//! - [`rust`]: the registry and typed launch wrappers that the `dsv3` crate `include!`s.
//!
//! No dependencies: it runs inside `build.rs`.

pub mod cpp;
pub mod manifest;
pub mod model;
pub mod rust;

pub use manifest::FAMILIES;
pub use model::{Elem, Family, Instance, KernelSpec, ManifestError, Pdl, Vendor};

use std::path::{Path, PathBuf};

/// One generated translation unit.
#[derive(Clone, Debug)]
pub struct TranslationUnit {
    pub family: &'static str,
    pub vendor: Vendor,
    /// `OUT/{vendor}/{family}.{cu,hip}`: includes the kernel sources (compile with -I).
    pub path: PathBuf,
    /// `OUT/{vendor}/{family}.rtc.{cu,hip}`: self-contained (for NVRTC / hiprtc).
    pub amalgamated: PathBuf,
}

/// Expands the manifest and writes every family's translation units for both vendors into
/// `out_dir/{cuda,hip}/`. `kernels_dir` is the repository's `kernels/` (its `include/` holds the
/// portability layer).
pub fn write_translation_units(out_dir: &Path, kernels_dir: &Path) -> Result<(Vec<Instance>, Vec<TranslationUnit>), String> {
    let instances = model::expand(FAMILIES).map_err(|e| e.to_string())?;
    let include_dirs = vec![kernels_dir.join("include"), kernels_dir.to_path_buf()];
    let mut tus = Vec::new();
    for vendor in Vendor::ALL {
        let dir = out_dir.join(vendor.name());
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let d = cpp::dialect(vendor);
        // A family without a kernel for this vendor (sm_90a-only code: wgmma, TMA) gets no
        // translation unit there: its source need not compile for that vendor at all.
        for fam in FAMILIES.iter().filter(|f| f.kernels.iter().any(|k| k.archs.has_vendor(vendor))) {
            let src = d.translation_unit(fam, &instances);
            let path = dir.join(format!("{}.{}", fam.name, vendor.extension()));
            write_if_changed(&path, &src)?;
            let amal = cpp::amalgamate(&src, &kernels_dir.join(fam.source), &include_dirs)?;
            let amalgamated = dir.join(format!("{}.rtc.{}", fam.name, vendor.extension()));
            write_if_changed(&amalgamated, &amal)?;
            tus.push(TranslationUnit { family: fam.name, vendor, path, amalgamated });
        }
    }
    Ok((instances, tus))
}

/// Writes a file only when its content changes (keeps the compilers' outputs fresh).
pub fn write_if_changed(path: &Path, content: &str) -> Result<(), String> {
    if std::fs::read_to_string(path).map(|c| c == content).unwrap_or(false) {
        return Ok(());
    }
    std::fs::write(path, content).map_err(|e| format!("{}: {e}", path.display()))
}

/// FNV-1a 64: a stable hash (cache keys, fingerprints) that does not depend on the Rust version.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[cfg(test)]
mod tests;
