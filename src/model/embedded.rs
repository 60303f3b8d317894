//! The embedded default model: a tiny random DeepSeek-V3-architecture checkpoint (the
//! `tests/fixtures/tiny-bf16` fixture) compiled into the library, so that `generate` and the server
//! start with no download. It is written once to a cache directory and loaded from there like any
//! other checkpoint.

use std::path::PathBuf;

use crate::error::{Error, Result};

const FILES: &[(&str, &[u8])] = &[
    ("config.json", include_bytes!("../../tests/fixtures/tiny-bf16/config.json")),
    ("model.safetensors", include_bytes!("../../tests/fixtures/tiny-bf16/model.safetensors")),
    ("tokenizer.json", include_bytes!("../../tests/fixtures/tiny-bf16/tokenizer.json")),
    ("tokenizer_config.json", include_bytes!("../../tests/fixtures/tiny-bf16/tokenizer_config.json")),
];

/// Name shown to users for the embedded model.
pub const EMBEDDED_MODEL_NAME: &str = "dsv3-tiny-random";

/// Writes the embedded checkpoint under the cache directory (once per content) and returns its path.
pub fn materialize() -> Result<PathBuf> {
    let hash = FILES.iter().fold(0xcbf29ce484222325u64, |h, (name, bytes)| {
        fnv1a(fnv1a(h, name.as_bytes()), bytes)
    });
    let dir = cache_dir().join(format!("{EMBEDDED_MODEL_NAME}-{hash:016x}"));
    for (name, bytes) in FILES {
        let path = dir.join(name);
        if std::fs::metadata(&path).map(|m| m.len() == bytes.len() as u64).unwrap_or(false) {
            continue;
        }
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        // Write to a temporary name and rename, so a concurrent reader never sees half a file.
        let tmp = dir.join(format!("{name}.tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    Ok(dir)
}

/// `$DSV3_CACHE_DIR`, else `$XDG_CACHE_HOME/dsv3`, else `~/.cache/dsv3`, else the temp dir.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DSV3_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("dsv3");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".cache").join("dsv3");
    }
    std::env::temp_dir().join("dsv3")
}

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
