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

/// Largest relative error of any 128 × 128 output tile (a wrong tile cannot hide in a large
/// output); a tile's norm is floored at the output's RMS so near-zero tiles do not dominate.
pub fn max_tile_error(got: &[f32], want: &[f32], m: usize, n: usize) -> f64 {
    let rms = (want.iter().map(|&x| x as f64 * x as f64).sum::<f64>() / want.len().max(1) as f64).sqrt();
    let mut worst = 0f64;
    for r0 in (0..m).step_by(128) {
        for c0 in (0..n).step_by(128) {
            let (mut num, mut den, mut cnt) = (0f64, 0f64, 0usize);
            for r in r0..(r0 + 128).min(m) {
                for c in c0..(c0 + 128).min(n) {
                    let (g, w) = (got[r * n + c] as f64, want[r * n + c] as f64);
                    num += (g - w) * (g - w);
                    den += w * w;
                    cnt += 1;
                }
            }
            worst = worst.max((num / den.max(rms * rms * cnt as f64).max(f64::MIN_POSITIVE)).sqrt());
        }
    }
    worst
}

/// Loads a fixture's model on cuda:0, naming the fixture when it fails.
pub fn gpu_model(dir: &std::path::Path) -> dsv3::model::gpu::GpuModel {
    dsv3::model::gpu::GpuModel::load(dir, dsv3::backend::Device::Cuda(0))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Runs test `child` of this test binary as two "nodes": two processes over loopback, one GPU
/// each (NCCL without NVLink multicast), told their rank and node 0's free `127.0.0.1:port` in
/// the environment variables `rank_var` and `addr_var`. Returns whether both exited successfully
/// having printed `ok_line`, each one's stdout + stderr, and a report of both for assertions.
pub fn run_two_nodes(child: &str, rank_var: &str, addr_var: &str, ok_line: &str) -> (bool, Vec<String>, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            std::process::Command::new(&exe)
                .args(["--include-ignored", "--exact", child, "--nocapture", "--test-threads", "1"])
                .env(rank_var, rank.to_string())
                .env(addr_var, format!("127.0.0.1:{port}"))
                .env("CUDA_VISIBLE_DEVICES", rank.to_string())
                .env("NCCL_NVLS_ENABLE", "0")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let (mut ok, mut texts, mut report) = (true, Vec::new(), String::new());
    for (rank, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ok &= out.status.success() && text.contains(ok_line);
        report.push_str(&format!("--- node {rank} ({})\n{text}\n", out.status));
        texts.push(text);
    }
    (ok, texts, report)
}

/// out[m, n] = Σ_k a[m, k] · b[n, k] in f64 (rows in parallel: the full-size DeepSeek shapes are
/// tens of GFLOPs).
pub fn matmul_nt(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0f32; m * n];
    if n == 0 {
        return out;
    }
    out.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        let ar = &a[i * k..(i + 1) * k];
        for (j, o) in row.iter_mut().enumerate() {
            let br = &b[j * k..(j + 1) * k];
            *o = ar.iter().zip(br).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>() as f32;
        }
    });
    out
}

/// `topk` distinct expert ids among `e` for each of `t` tokens ([t, topk]).
pub fn distinct_ids(r: &mut StdRng, t: usize, e: usize, topk: usize) -> Vec<i32> {
    let mut ids = Vec::with_capacity(t * topk);
    for _ in 0..t {
        let mut pool: Vec<i32> = (0..e as i32).collect();
        for k in 0..topk {
            let j = r.gen_range(k..e);
            pool.swap(k, j);
            ids.push(pool[k]);
        }
    }
    ids
}
