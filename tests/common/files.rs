//! Writing checkpoint files for loader tests: a self-removing temp dir and safetensors files
//! made from raw little-endian tensor bytes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "dsv3-test-{tag}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One tensor to write: name, dtype, shape, little-endian bytes.
pub struct T {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

pub fn t(name: &str, dtype: Dtype, shape: &[usize], bytes: Vec<u8>) -> T {
    T { name: name.to_string(), dtype, shape: shape.to_vec(), bytes }
}

/// Writes `tensors` as one safetensors file at `path`.
pub fn write_file(path: &Path, tensors: &[T]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|x| (x.name.clone(), TensorView::new(x.dtype, x.shape.clone(), &x.bytes).expect("view")))
        .collect();
    let buf = safetensors::serialize(views, None).expect("serialize");
    std::fs::write(path, buf).expect("write");
}
