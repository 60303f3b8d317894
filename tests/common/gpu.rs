//! Helpers of the CUDA test files (tests/gpu_*.rs): one stream per embedded code variant,
//! seeded random data, uploads / downloads, NaN-poisoned outputs and the relative-error check.
//! Compiled only with the `cuda` feature (`common::gpu`).

use dsv3::backend::cuda::{device_count, CudaStream};
use dsv3::backend::registry::MODULES;
use dsv3::backend::{CodeVariant, DType, DeviceTensor, GpuStream, ImageKind, Vendor};
use dsv3::tensor::rel_error;
use proptest::prelude::ProptestConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The NVIDIA code variants this build embedded for the module of `family` (`None`: the first
/// registry module): the sm_90a cubin, the compute_80 / compute_89 PTX, the fatbin (`Auto`) and
/// NVRTC unless `DSV3_TEST_NVRTC=0`.
pub fn variants(family: Option<&str>) -> Vec<CodeVariant> {
    let m = match family {
        None => &MODULES[0],
        Some(f) => MODULES.iter().find(|m| m.family == f).unwrap_or_else(|| panic!("{f} module")),
    };
    let mut v = Vec::new();
    if m.image(Vendor::Cuda, "sm_90a", ImageKind::Cubin).is_some() {
        v.push(CodeVariant::Cubin("sm_90a".into()));
    }
    for a in ["compute_80", "compute_89"] {
        if m.image(Vendor::Cuda, a, ImageKind::Ptx).is_some() {
            v.push(CodeVariant::Ptx(a.into()));
        }
    }
    v.push(CodeVariant::Auto);
    if std::env::var("DSV3_TEST_NVRTC").map(|s| s != "0").unwrap_or(true) {
        v.push(CodeVariant::Nvrtc);
    }
    v
}

/// One stream per code variant of `family` on device 0; panics loudly when there is no CUDA device.
pub fn streams(family: Option<&str>) -> Vec<(String, CudaStream)> {
    match device_count() {
        Err(e) => panic!("no CUDA device: {e}"),
        Ok(0) => panic!("no CUDA device: the driver reports 0 devices"),
        Ok(_) => {}
    }
    variants(family)
        .into_iter()
        .map(|v| {
            let s = CudaStream::with_variant(0, v.clone()).unwrap_or_else(|e| panic!("opening cuda:0 ({v}): {e}"));
            (v.to_string(), s)
        })
        .collect()
}

/// Shared by the test threads (a stream orders each test's own work; the allocator and the
/// module table are thread-safe), so each variant's modules are loaded / JIT-compiled once.
type VariantStreams = (Option<&'static str>, Vec<(String, CudaStream)>);
static STREAMS: std::sync::OnceLock<VariantStreams> = std::sync::OnceLock::new();

/// The streams of [`streams`]`(family)`, opened once per test binary (which asks for one family).
pub fn variant_streams(family: Option<&'static str>) -> &'static [(String, CudaStream)] {
    let (opened_for, s) = STREAMS.get_or_init(|| (family, streams(family)));
    assert_eq!(*opened_for, family, "one test binary opens the streams of one module family");
    s
}

/// The streams of every code variant of the first registry module.
pub fn all_streams() -> &'static [(String, CudaStream)] {
    variant_streams(None)
}

/// Runs `f` on every variant's stream.
pub fn on_each(mut f: impl FnMut(&dyn GpuStream, &str)) {
    for (name, s) in all_streams() {
        f(s, name);
    }
}

pub fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn rand_vec(r: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(-1.0f32..1.0) * scale).collect()
}

/// The value a bf16 holds.
pub fn bf16r(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

pub fn up(s: &dyn GpuStream, shape: &[usize], v: &[f32], dtype: DType) -> DeviceTensor {
    DeviceTensor::from_f32(s, shape, v, dtype).unwrap()
}

pub fn up_i32(s: &dyn GpuStream, shape: &[usize], v: &[i32]) -> DeviceTensor {
    DeviceTensor::from_slice(s, shape, v).unwrap()
}

pub fn poisoned(s: &dyn GpuStream, dtype: DType, shape: &[usize]) -> DeviceTensor {
    DeviceTensor::poisoned(s, dtype, shape).unwrap()
}

pub fn down(s: &dyn GpuStream, t: &DeviceTensor) -> Vec<f32> {
    s.synchronize().unwrap();
    t.to_f32(s).unwrap()
}

/// Lengths equal, no NaN (an unwritten output) and relative Frobenius error at most `tol`.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().position(|x| x.is_nan()) {
        panic!("{what}: NaN at {i} (of {}; unwritten output?)", got.len());
    }
    let e = rel_error(got, want);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

/// Loads a fixture's model on cuda:0, naming the fixture when it fails.
pub fn gpu_model(dir: &std::path::Path) -> dsv3::model::gpu::GpuModel {
    dsv3::model::gpu::GpuModel::load(dir, dsv3::backend::Device::Cuda(0))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}
