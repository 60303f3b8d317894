//! Streaming safetensors writer: the header is written first (every tensor's dtype and shape is
//! known from the plan), then tensors one at a time, so a shard never has to be held in memory.
//! It writes to `<name>.tmp` and renames on [`ShardWriter::finish`]: a crash leaves a `.tmp`,
//! never a final file that looks complete.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::model::checkpoint::DType;

/// One tensor of a shard's layout, in data order.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl Slot {
    /// Bytes of data (every dtype the converter writes has a whole number of bytes).
    pub fn nbytes(&self) -> usize {
        let width = match self.dtype {
            DType::Bool | DType::U8 | DType::I8 | DType::F8E4M3 | DType::F8E5M2 | DType::F8E8M0 => {
                1
            }
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::I64 | DType::U64 | DType::F64 => 8,
            DType::Other(_) => 0,
        };
        self.shape.iter().product::<usize>() * width
    }
}

fn out_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::OutputFile {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The temporary name a shard is written under.
pub fn tmp_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// The safetensors header for `slots` (offsets in slot order), padded with spaces to a multiple
/// of 8 bytes as the safetensors library writes it.
fn header(slots: &[Slot]) -> Vec<u8> {
    let mut map = Map::new();
    map.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut off = 0usize;
    for s in slots {
        let end = off + s.nbytes();
        map.insert(
            s.name.clone(),
            json!({"dtype": s.dtype.name(), "shape": s.shape, "data_offsets": [off, end]}),
        );
        off = end;
    }
    let mut h = Value::Object(map).to_string().into_bytes();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    h
}

/// Size and checksum of a finished shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub size: u64,
    pub checksum: String,
}

pub struct ShardWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    dest: PathBuf,
    slots: Vec<Slot>,
    next: usize,
    sum: Checksum,
    size: u64,
}

impl ShardWriter {
    /// Creates `dest.tmp` (replacing a stale one) and writes the header for `slots`.
    pub fn create(dest: &Path, slots: Vec<Slot>) -> Result<ShardWriter> {
        let tmp = tmp_path(dest);
        let file = File::create(&tmp).map_err(|e| out_err(&tmp, format!("cannot create: {e}")))?;
        let mut w = ShardWriter {
            out: BufWriter::with_capacity(8 << 20, file),
            tmp,
            dest: dest.to_path_buf(),
            slots,
            next: 0,
            sum: Checksum::new(),
            size: 0,
        };
        let h = header(&w.slots);
        w.put(&(h.len() as u64).to_le_bytes())?;
        w.put(&h)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| out_err(&self.tmp, format!("write failed: {e}")))?;
        self.sum.update(bytes);
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Writes the next tensor's data; it must be the next slot, with exactly its byte count.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let Some(slot) = self.slots.get(self.next) else {
            return Err(out_err(
                &self.tmp,
                format!("tensor `{name}` written after the last planned one"),
            ));
        };
        if slot.name != name || slot.nbytes() != bytes.len() {
            return Err(out_err(
                &self.tmp,
                format!(
                    "expected `{}` ({} bytes) next, got `{name}` ({} bytes)",
                    slot.name,
                    slot.nbytes(),
                    bytes.len()
                ),
            ));
        }
        self.next += 1;
        self.put(bytes)
    }

    /// Flushes, syncs and renames the `.tmp` to its final name.
    pub fn finish(self) -> Result<Written> {
        if self.next != self.slots.len() {
            return Err(out_err(
                &self.tmp,
                format!("only {} of {} tensors written", self.next, self.slots.len()),
            ));
        }
        let ShardWriter {
            out,
            tmp,
            dest,
            sum,
            size,
            ..
        } = self;
        let file = out
            .into_inner()
            .map_err(|e| out_err(&tmp, format!("write failed: {}", e.error())))?;
        file.sync_all()
            .map_err(|e| out_err(&tmp, format!("sync failed: {e}")))?;
        drop(file);
        std::fs::rename(&tmp, &dest).map_err(|e| {
            out_err(
                &dest,
                format!("cannot rename {} into place: {e}", tmp.display()),
            )
        })?;
        Ok(Written {
            size,
            checksum: sum.finish(),
        })
    }
}

/// Writes `bytes` to `path` (through a `.tmp` and a rename) unless the file already holds exactly
/// them, so that re-running leaves finished files and their mtimes alone. Returns whether it wrote.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| out_err(&tmp, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        out_err(
            path,
            format!("cannot rename {} into place: {e}", tmp.display()),
        )
    })?;
    Ok(true)
}

/// A cheap 64-bit checksum: FNV-1a over little-endian 64-bit words (the tail zero-padded), plus
/// the length. Not cryptographic; it catches truncated, partially written and corrupted shards at
/// several GB/s, without a hashing dependency.
pub struct Checksum {
    h: u64,
    len: u64,
    pending: [u8; 8],
    npending: usize,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

impl Checksum {
    pub fn new() -> Checksum {
        Checksum {
            h: FNV_OFFSET,
            len: 0,
            pending: [0; 8],
            npending: 0,
        }
    }

    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(FNV_PRIME);
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if self.npending > 0 {
            let take = (8 - self.npending).min(bytes.len());
            self.pending[self.npending..self.npending + take].copy_from_slice(&bytes[..take]);
            self.npending += take;
            bytes = &bytes[take..];
            if self.npending < 8 {
                return;
            }
            let w = u64::from_le_bytes(self.pending);
            self.word(w);
            self.npending = 0;
        }
        let mut words = bytes.chunks_exact(8);
        for c in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.word(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.npending = rest.len();
    }

    pub fn finish(mut self) -> String {
        if self.npending > 0 {
            let mut b = [0u8; 8];
            b[..self.npending].copy_from_slice(&self.pending[..self.npending]);
            self.word(u64::from_le_bytes(b));
        }
        let len = self.len;
        self.word(len);
        format!("fnv1a64w:{:016x}", self.h)
    }
}

/// Size and checksum of a file on disk (read in 8 MiB chunks).
pub fn checksum_file(path: &Path) -> Result<Written> {
    let mut f = File::open(path).map_err(|e| out_err(path, format!("cannot open: {e}")))?;
    let mut sum = Checksum::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| out_err(path, format!("read failed: {e}")))?;
        if n == 0 {
            break;
        }
        sum.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Written {
        size,
        checksum: sum.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_does_not_depend_on_how_the_bytes_are_split() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut whole = Checksum::new();
        whole.update(&data);
        let whole = whole.finish();
        for split in [1usize, 3, 7, 8, 9, 500, 999] {
            let mut parts = Checksum::new();
            for c in data.chunks(split) {
                parts.update(c);
            }
            assert_eq!(parts.finish(), whole, "split {split}");
        }
        // One flipped bit, or a trailing zero byte, changes it.
        let mut flipped = data.clone();
        flipped[500] ^= 1;
        let mut c = Checksum::new();
        c.update(&flipped);
        assert_ne!(c.finish(), whole);
        let mut c = Checksum::new();
        c.update(&data);
        c.update(&[0]);
        assert_ne!(c.finish(), whole);
    }
}
