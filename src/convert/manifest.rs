//! `convert-manifest.json` in the output directory: for each output shard, the source shard it
//! was made from (name, size, mtime) and the size and checksum of what was written and verified.
//! A shard whose record matches both its source and the file on disk is skipped on a re-run;
//! anything else (missing, partially written, from another source or target) is redone.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

use super::writer::write_if_changed;

pub const MANIFEST_FILE: &str = "convert-manifest.json";
/// Bumped when the converter's output for the same input changes.
pub const CONVERTER_VERSION: u32 = 1;

/// Identifies a source shard without reading it (as `make` does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStamp {
    pub file: String,
    pub size: u64,
    pub mtime_ns: u64,
}

impl SourceStamp {
    pub fn of(path: &Path) -> Result<SourceStamp> {
        let err = |e: std::io::Error| Error::CheckpointFile {
            path: path.to_path_buf(),
            msg: format!("cannot stat: {e}"),
        };
        let meta = std::fs::metadata(path).map_err(err)?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(SourceStamp {
            file,
            size: meta.len(),
            mtime_ns,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub source: SourceStamp,
    /// Tensors written (0: the source shard held only dropped scales, and no file is written).
    pub tensors: usize,
    pub size: u64,
    pub checksum: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub converter_version: u32,
    pub target: String,
    pub shards: BTreeMap<String, ShardRecord>,
}

impl Manifest {
    pub fn new(target: &str) -> Manifest {
        Manifest {
            converter_version: CONVERTER_VERSION,
            target: target.to_string(),
            shards: BTreeMap::new(),
        }
    }

    /// The manifest in `dir` if there is one for this converter version and target; a missing,
    /// unreadable or foreign one gives an empty manifest (everything is redone) and a log line.
    pub fn load_for(dir: &Path, target: &str) -> Manifest {
        let path = dir.join(MANIFEST_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Manifest::new(target);
        };
        match serde_json::from_str::<Manifest>(&text) {
            Ok(m) if m.converter_version == CONVERTER_VERSION && m.target == target => m,
            Ok(m) => {
                tracing::info!(
                    "{}: made by converter v{} for --to {}; converting everything again for --to {target}",
                    path.display(),
                    m.converter_version,
                    m.target
                );
                Manifest::new(target)
            }
            Err(e) => {
                tracing::warn!(
                    "{}: unreadable ({e}); converting everything again",
                    path.display()
                );
                Manifest::new(target)
            }
        }
    }

    /// Reads the manifest in `dir` as it is (for `--verify-only`).
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let err = |msg: String| Error::OutputFile {
            path: path.clone(),
            msg,
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| err(format!("cannot read: {e} (not a converted checkpoint?)")))?;
        serde_json::from_str(&text).map_err(|e| err(format!("invalid: {e}")))
    }

    /// Writes it atomically (only when it changed).
    pub fn save(&self, dir: &Path) -> Result<bool> {
        let mut text = serde_json::to_string_pretty(self).map_err(|e| Error::OutputFile {
            path: dir.join(MANIFEST_FILE),
            msg: format!("cannot serialize: {e}"),
        })?;
        text.push('\n');
        write_if_changed(&dir.join(MANIFEST_FILE), text.as_bytes())
    }
}
