//! Every generated kernel against the CPU reference (`dsv3::ops::*`), on every NVIDIA code
//! variant this build embedded: the sm_90a cubin, the compute_80 and compute_89 PTX (JIT-compiled
//! by the driver, so the A100 / L40S paths are exercised on an H200), the fatbin (`Auto`) and
//! NVRTC.
//!
//! These tests are ignored in the CPU suite (`cargo test` lists them as ignored); the GPU runner
//! passes `--include-ignored`. Run without a CUDA device they panic ("no CUDA device"): they
//! never pass silently. Shapes are drawn by proptest, values are fresh random numbers from a
//! proptest-drawn seed, outputs are poisoned (NaN) before each launch, and errors are relative
//! Frobenius norms (DESIGN §4): NaN never passes.
//!
//! `DSV3_TEST_NVRTC=0` skips the NVRTC variant (machines without libnvrtc).

mod common;

use common::gpu::*;
use dsv3::backend::cuda::{device_count, CudaStream};
use dsv3::backend::dispatch::{self, Batched, KArg, PagedCache, RopeLayout, RouteParams, SamplingParams, Strided};
use dsv3::backend::registry;
use dsv3::backend::{DType, DeviceTensor, LaunchCfg};
use dsv3::ops;
use dsv3::tensor::Tensor;
use proptest::prelude::*;
use rand::Rng;

const GPU: &str = "GPU test: run on the GPU machine with --include-ignored";

/// The values a tensor of `dtype` really holds.
fn rounded(v: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::Bf16 => v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect(),
        DType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
        _ => v.to_vec(),
    }
}

/// Tolerance on the relative Frobenius error for an output / operand dtype.
fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-5,
        _ => 1e-2,
    }
}

const FLOATS: [DType; 2] = [DType::F32, DType::Bf16];

/// A NaN-poisoned f32 output [t, heads, d].
fn out_of(s: &dyn dsv3::backend::GpuStream, t: usize, heads: usize, d: usize) -> DeviceTensor {
    poisoned(s, DType::F32, &[t, heads, d])
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn registry_modules_load_on_every_variant() {
    // Every kernel's function resolves in every variant (catches missing symbols / bad images).
    let _ = GPU;
    for (name, s) in all_streams() {
        for k in registry::KERNELS {
            s.function(k).unwrap_or_else(|e| panic!("{name}: {}: {e}", k.name));
        }
    }
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn no_device_is_reported_cleanly() {
    // On the GPU machine: a device ordinal past the last one gives a typed error, not a panic.
    let n = device_count().expect("no CUDA device");
    let e = CudaStream::new(n + 7).err().expect("an error").to_string();
    assert!(e.contains("no CUDA device"), "{e}");
}

proptest! {
    #![proptest_config(cfg(6))]

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn embedding(seed: u64, vocab in 1usize..300, hidden in 1usize..700, tokens in 1usize..40) {
        let mut r = rng(seed);
        let table = rand_vec(&mut r, vocab * hidden, 2.0);
        let ids: Vec<u32> = (0..tokens).map(|_| r.gen_range(0..vocab as u32)).collect();
        on_each(|s, v| {
            for (tt, to) in [(DType::Bf16, DType::F32), (DType::Bf16, DType::Bf16), (DType::F32, DType::F32)] {
                let tr = rounded(&table, tt);
                let want = ops::embedding::embed(&Tensor::new(vec![vocab, hidden], tr).unwrap(), &ids).unwrap();
                let dt = up(s, &[vocab, hidden], &table, tt);
                let di = DeviceTensor::from_slice(s, &[tokens], &ids).unwrap();
                let out = poisoned(s, to, &[tokens, hidden]);
                dispatch::embedding(s, &out, &dt, &di).unwrap();
                assert_close(&format!("{v} embedding {tt}->{to}"), &down(s, &out), &rounded(want.data(), to), 1e-7);
            }
        });
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn rms_norm_and_add(seed: u64, rows in 1usize..20, cols in 1usize..3000) {
        let mut r = rng(seed);
        let x = rand_vec(&mut r, rows * cols, 3.0);
        let res = rand_vec(&mut r, rows * cols, 3.0);
        let w = rand_vec(&mut r, cols, 1.5);
        let eps = 1e-6;
        on_each(|s, v| {
            for dt in FLOATS {
                let (xr, wr, rr) = (rounded(&x, dt), rounded(&w, dt), rounded(&res, dt));
                let mut want = vec![0f32; rows * cols];
                ops::norm::rms_norm(&xr, &wr, eps, &mut want);
                let (dx, dw) = (up(s, &[rows, cols], &x, dt), up(s, &[cols], &w, dt));
                let out = poisoned(s, dt, &[rows, cols]);
                dispatch::rms_norm(s, &out, &dx, &dw, eps).unwrap();
                assert_close(&format!("{v} rms_norm {dt}"), &down(s, &out), &want, tol(dt));

                let mut want_res = rr.clone();
                let mut want2 = vec![0f32; rows * cols];
                ops::norm::add_rms_norm(&mut want_res, &xr, &wr, eps, &mut want2);
                let dres = up(s, &[rows, cols], &res, dt);
                let out2 = poisoned(s, dt, &[rows, cols]);
                dispatch::add_rms_norm(s, &out2, &dres, &dx, &dw, eps).unwrap();
                assert_close(&format!("{v} add_rms_norm {dt} out"), &down(s, &out2), &want2, tol(dt));
                assert_close(&format!("{v} add_rms_norm {dt} residual"), &down(s, &dres), &want_res, if dt == DType::F32 { 1e-7 } else { 5e-3 });
            }
        });
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn rope_yarn(seed: u64, tokens in 1usize..24, heads in 1usize..9, yarn: bool) {
        let mut r = rng(seed);
        let (nope, rope_dim, max_pos) = (128usize, 64usize, 5000usize);
        let scaling = ops::rope::YarnRope::with_params(
            rope_dim,
            10000.0,
            if yarn {
                Some(dsv3::model::config::YarnScaling { factor: 40.0, original_max_position_embeddings: 4096, beta_fast: 32.0, beta_slow: 1.0, mscale: 1.0, mscale_all_dim: 1.0 })
            } else {
                None
            }
            .as_ref(),
        );
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in 0..max_pos {
            let (c, s) = scaling.cos_sin(p);
            cos.extend(c);
            sin.extend(s);
        }
        let pos: Vec<i32> = (0..tokens).map(|_| r.gen_range(0..max_pos as i32)).collect();
        let width = nope + rope_dim;
        let q = rand_vec(&mut r, tokens * heads * width, 2.0);
        on_each(|s, v| {
            for dt in FLOATS {
                let mut want = rounded(&q, dt);
                for (t, &p) in pos.iter().enumerate().take(tokens) {
                    let p = p as usize;
                    let (c, sn) = (&cos[p * 32..(p + 1) * 32], &sin[p * 32..(p + 1) * 32]);
                    for h in 0..heads {
                        let base = (t * heads + h) * width + nope;
                        ops::rope::apply_cos_sin(&mut want[base..base + rope_dim], c, sn);
                    }
                }
                let dq = up(s, &[tokens, heads, width], &q, dt);
                let (dc, ds) = (up(s, &[max_pos, 32], &cos, DType::F32), up(s, &[max_pos, 32], &sin, DType::F32));
                let dp = up_i32(s, &[tokens], &pos);
                let l = RopeLayout { heads, token_stride: heads * width, head_stride: width, offset: nope, rope_dim };
                dispatch::rope(s, &dq, &dc, &ds, &dp, l).unwrap();
                assert_close(&format!("{v} rope {dt}"), &down(s, &dq), &want, tol(dt));
            }
        });
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn silu_mul_and_cast(seed: u64, rows in 1usize..30, inter in 1usize..2100) {
        let mut r = rng(seed);
        let gu = rand_vec(&mut r, rows * 2 * inter, 4.0);
        on_each(|s, v| {
            for dt in FLOATS {
                let g = rounded(&gu, dt);
                let mut want = vec![0f32; rows * inter];
                for i in 0..rows {
                    let row = &g[i * 2 * inter..(i + 1) * 2 * inter];
                    ops::activation::silu_mul(&row[..inter], &row[inter..], &mut want[i * inter..(i + 1) * inter]);
                }
                let dg = up(s, &[rows, 2 * inter], &gu, dt);
                let out = poisoned(s, dt, &[rows, inter]);
                dispatch::silu_mul(s, &out, &dg).unwrap();
                assert_close(&format!("{v} silu_mul {dt}"), &down(s, &out), &want, tol(dt));
            }
            for (ti, to) in [(DType::F32, DType::Bf16), (DType::Bf16, DType::F32), (DType::F32, DType::F16), (DType::F16, DType::F32)] {
                let x = up(s, &[gu.len()], &gu, ti);
                let out = poisoned(s, to, &[gu.len()]);
                dispatch::cast(s, &out, &x).unwrap();
                assert_close(&format!("{v} cast {ti}->{to}"), &down(s, &out), &rounded(&rounded(&gu, ti), to), 0.0);
            }
        });
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn fp8_quant_group128(seed: u64, rows in 1usize..24, cols in 1usize..1200) {
        let mut r = rng(seed);
        let mut x = rand_vec(&mut r, rows * cols, 5.0);
        if cols > 3 { x[2] = 0.0; x[3] = -0.0; }
        let (want_q, want_s) = ops::fp8::quantize_act_per_token_group(&x, rows, cols, 128);
        on_each(|s, v| {
            for dt in FLOATS {
                let xr = rounded(&x, dt);
                let (wq, ws) = ops::fp8::quantize_act_per_token_group(&xr, rows, cols, 128);
                let dx = up(s, &[rows, cols], &x, dt);
                for f8 in [DType::E4m3fn, DType::E4m3fnuz] {
                    let q = poisoned(s, f8, &[rows, cols]);
                    let sc = poisoned(s, DType::F32, &[rows, cols.div_ceil(128)]);
                    dispatch::fp8_quant_group128(s, &q, &sc, &dx, 1e-10).unwrap();
                    s.synchronize().unwrap();
                    let qv: Vec<u8> = match f8 {
                        DType::E4m3fn => q.to_vec::<dsv3::backend::Fp8E4m3fn>(s).unwrap().into_iter().map(|b| b.0).collect(),
                        _ => q.to_vec::<dsv3::backend::Fp8E4m3fnuz>(s).unwrap().into_iter().map(|b| b.0).collect(),
                    };
                    let sv = sc.to_f32(s).unwrap();
                    // e4m3fnuz: same codes (but no -0), scales twice e4m3fn's.
                    let (expect_q, factor): (Vec<u8>, f32) = match f8 {
                        DType::E4m3fn => (wq.clone(), 1.0),
                        _ => (wq.iter().map(|&c| if c == 0x80 { 0 } else { c }).collect(), 2.0),
                    };
                    let want_sc: Vec<f32> = ws.iter().map(|x| x * factor).collect();
                    assert_close(&format!("{v} fp8 quant {dt}->{f8} scales"), &sv, &want_sc, 1e-7);
                    let bad = qv.iter().zip(&expect_q).filter(|(a, b)| a != b).count();
                    assert_eq!(bad, 0, "{v} fp8 quant {dt}->{f8}: {bad} of {} codes differ", qv.len());
                }
            }
            // Sanity: the f32 path matches the reference computed on the exact input.
            let _ = (&want_q, &want_s);
        });
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn fp8_dequant_block128(seed: u64, n in 1usize..300, k in 1usize..300) {
        let mut r = rng(seed);
        // Codes that are finite in both e4m3fn and e4m3fnuz.
        let codes: Vec<u8> = (0..n * k).map(|_| loop { let c: u8 = r.gen(); if c != 0x7f && c != 0xff && c != 0x80 { break c; } }).collect();
        let si: Vec<f32> = (0..n.div_ceil(128) * k.div_ceil(128)).map(|_| r.gen_range(1e-3f32..1.0)).collect();
        let want = ops::fp8::dequant_block_weight(&codes, n, k, &si, (128, 128));
        on_each(|s, v| {
            for f8 in [DType::E4m3fn, DType::E4m3fnuz] {
                let q = match f8 {
                    DType::E4m3fn => DeviceTensor::from_slice(s, &[n, k], &codes.iter().map(|&c| dsv3::backend::Fp8E4m3fn(c)).collect::<Vec<_>>()).unwrap(),
                    _ => DeviceTensor::from_slice(s, &[n, k], &codes.iter().map(|&c| dsv3::backend::Fp8E4m3fnuz(c)).collect::<Vec<_>>()).unwrap(),
                };
                let half_if_fnuz = if f8 == DType::E4m3fnuz { 0.5 } else { 1.0 };
                let w: Vec<f32> = want.iter().map(|x| x * half_if_fnuz).collect();
                let dsi = up(s, &[n.div_ceil(128), k.div_ceil(128)], &si, DType::F32);
                for to in [DType::Bf16, DType::F32] {
                    let out = poisoned(s, to, &[n, k]);
                    dispatch::fp8_dequant_block128(s, &out, &q, &dsi).unwrap();
                    assert_close(&format!("{v} fp8 dequant {f8}->{to}"), &down(s, &out), &rounded(&w, to), 1e-7);
                }
            }
        });
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn gemm_every_instance(seed: u64, m in 1usize..150, n in 1usize..200, k in 1usize..400) {
        let mut r = rng(seed);
        let a = rand_vec(&mut r, m * k, 1.0);
        let b = rand_vec(&mut r, n * k, 1.0);
        let c0 = rand_vec(&mut r, m * n, 1.0);
        // Float8 weights: random codes and block scales.
        let codes: Vec<u8> = (0..n * k).map(|_| loop { let c: u8 = r.gen(); if c & 0x7f != 0x7f && c != 0x80 { break c; } }).collect();
        let si: Vec<f32> = (0..n.div_ceil(128) * k.div_ceil(128)).map(|_| r.gen_range(1e-3f32..1e-2)).collect();
        let b_fp8 = ops::fp8::dequant_block_weight(&codes, n, k, &si, (128, 128));
        on_each(|s, v| {
            for kinfo in registry::KERNELS.iter().filter(|x| x.family == "gemm") {
                let ta = dtype_of(kinfo.param("TA").unwrap());
                let tb = dtype_of(kinfo.param("TB").unwrap());
                let to = dtype_of(kinfo.param("TO").unwrap());
                let ar = rounded(&a, ta);
                let (db, bref, dsc) = match tb {
                    DType::E4m3fn | DType::E4m3fnuz => {
                        let q = if tb == DType::E4m3fn {
                            DeviceTensor::from_slice(s, &[n, k], &codes.iter().map(|&c| dsv3::backend::Fp8E4m3fn(c)).collect::<Vec<_>>()).unwrap()
                        } else {
                            DeviceTensor::from_slice(s, &[n, k], &codes.iter().map(|&c| dsv3::backend::Fp8E4m3fnuz(c)).collect::<Vec<_>>()).unwrap()
                        };
                        let f = if tb == DType::E4m3fnuz { 0.5 } else { 1.0 };
                        (q, b_fp8.iter().map(|x| x * f).collect::<Vec<_>>(), Some(up(s, &[n.div_ceil(128), k.div_ceil(128)], &si, DType::F32)))
                    }
                    _ => (up(s, &[n, k], &b, tb), rounded(&b, tb), None),
                };
                let want = ops::linear::linear(&Tensor::new(vec![m, k], ar.clone()).unwrap(), &Tensor::new(vec![n, k], bref.clone()).unwrap());
                let da = up(s, &[m, k], &a, ta);
                let c = poisoned(s, to, &[m, n]);
                dispatch::gemm_kernel(s, &c, &da, &db, dsc.as_ref(), 1.0, 0.0).unwrap();
                assert_close(&format!("{v} {}", kinfo.name), &down(s, &c), &rounded(want.data(), to), tol(to));
                // alpha / beta: C = 0.5·A·Bᵀ + 2·C0.
                let c = up(s, &[m, n], &c0, to);
                let c0r = rounded(&c0, to);
                dispatch::gemm_kernel(s, &c, &da, &db, dsc.as_ref(), 0.5, 2.0).unwrap();
                let want2: Vec<f32> = want.data().iter().zip(&c0r).map(|(x, y)| 0.5 * x + 2.0 * y).collect();
                assert_close(&format!("{v} {} alpha/beta", kinfo.name), &down(s, &c), &rounded(&want2, to), tol(to));
            }
            // cuBLAS bf16 GEMM (dense linears on CUDA).
            if s.has_blas() {
                let (ar, br) = (rounded(&a, DType::Bf16), rounded(&b, DType::Bf16));
                let want = ops::linear::linear(&Tensor::new(vec![m, k], ar).unwrap(), &Tensor::new(vec![n, k], br).unwrap());
                let (da, db) = (up(s, &[m, k], &a, DType::Bf16), up(s, &[n, k], &b, DType::Bf16));
                for to in FLOATS {
                    let y = poisoned(s, to, &[m, n]);
                    dispatch::linear(s, &y, &da, &db, None).unwrap();
                    assert_close(&format!("{v} cublas bf16 -> {to}"), &down(s, &y), &rounded(want.data(), to), if to == DType::F32 { 1e-4 } else { 1e-2 });
                }
            }
        });
    }

    /// MLA's per-head products as one batched launch: a_z is head z's slice of interleaved
    /// [M, heads·lda_part] rows, b_z a contiguous [N, K] block, c_z a slice of [M, heads·ldc_part].
    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn gemm_batched_strided_heads(seed: u64, m in 1usize..70, n in 1usize..140, k in 1usize..150, heads in 1usize..6, pad in 0usize..9) {
        let mut r = rng(seed);
        let (a_part, c_part) = (k + pad, n + 2 * pad);
        let a = rand_vec(&mut r, m * heads * a_part, 1.0);
        let b = rand_vec(&mut r, heads * n * k, 1.0);
        on_each(|s, v| {
            for (ta, tb, to) in [(DType::F32, DType::F32, DType::F32), (DType::F32, DType::Bf16, DType::F32), (DType::Bf16, DType::Bf16, DType::Bf16)] {
                let (ar, br) = (rounded(&a, ta), rounded(&b, tb));
                let da = up(s, &[m, heads * a_part], &a, ta);
                let db = up(s, &[heads, n, k], &b, tb);
                let c = poisoned(s, to, &[m, heads * c_part]);
                dispatch::gemm_batched(
                    s,
                    Batched { view: Strided::at(&c, pad, heads * c_part), batch_stride: c_part },
                    Batched { view: Strided::at(&da, pad, heads * a_part), batch_stride: a_part },
                    Batched { view: Strided::rows(&db), batch_stride: n * k },
                    m, n, k - pad.min(k - 1), heads,
                ).unwrap();
                let kk = k - pad.min(k - 1);
                let got = down(s, &c);
                for z in 0..heads {
                    let az: Vec<f32> = (0..m).flat_map(|i| ar[i * heads * a_part + z * a_part + pad..][..kk].to_vec()).collect();
                    let bz: Vec<f32> = (0..n).flat_map(|j| br[(z * n + j) * k..][..kk].to_vec()).collect();
                    let want = ops::linear::linear(&Tensor::new(vec![m, kk], az).unwrap(), &Tensor::new(vec![n, kk], bz).unwrap());
                    let gz: Vec<f32> = (0..m).flat_map(|i| got[i * heads * c_part + z * c_part + pad..][..n].to_vec()).collect();
                    assert_close(&format!("{v} batched {ta}·{tb}->{to} head {z}"), &gz, &rounded(want.data(), to), tol(to));
                }
            }
        });
    }

    /// The FP8 activation rounding on the device equals the CPU's (`fake_quant_act_per_token_group`)
    /// bit for bit on f32 rows, partial last groups included.
    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn fp8_fake_quant_matches_the_cpu(seed: u64, rows in 1usize..20, cols in 1usize..400, scale in 1e-3f32..1e3) {
        let mut r = rng(seed);
        let x = rand_vec(&mut r, rows * cols, scale);
        let mut want = x.clone();
        ops::fp8::fake_quant_act_per_token_group(&mut want, rows, cols, 128);
        on_each(|s, v| {
            let dx = up(s, &[rows, cols], &x, DType::F32);
            let out = poisoned(s, DType::F32, &[rows, cols]);
            dispatch::fp8_fake_quant_group128(s, &out, &dx, ops::fp8::ACT_AMAX_EPS).unwrap();
            let got = down(s, &out);
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{v} fp8 fake quant");
        });
    }

    /// Random tensors made on the device equal the CPU mirror element by element (f32 exactly,
    /// bf16 / e4m3fn after the same round-to-nearest-even conversion).
    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn fill_uniform_matches_cpu_mirror(seed: u64, n in 1usize..5000, lo in -3.0f32..0.0, span in 0.0f32..440.0) {
        let hi = lo + span;
        let want: Vec<f32> = (0..n as u64).map(|i| ops::random::uniform(seed, i, lo, hi)).collect();
        on_each(|s, v| {
            for dt in [DType::F32, DType::Bf16] {
                let t = poisoned(s, dt, &[n]);
                dispatch::fill_uniform(s, &t, seed, lo, hi).unwrap();
                let got = down(s, &t);
                let exp = rounded(&want, dt);
                assert!(got.iter().zip(&exp).all(|(a, b)| a.to_bits() == b.to_bits()), "{v} fill_uniform {dt}");
            }
            let t = DeviceTensor::empty(s, DType::E4m3fn, &[n]).unwrap();
            dispatch::fill_uniform(s, &t, seed, lo, hi).unwrap();
            let got: Vec<u8> = t.to_vec::<dsv3::backend::Fp8E4m3fn>(s).unwrap().into_iter().map(|c| c.0).collect();
            let exp: Vec<u8> = want.iter().map(|&x| ops::fp8::f32_to_e4m3fn(x)).collect();
            assert_eq!(got, exp, "{v} fill_uniform e4m3fn");
        });
    }

    /// A window of a random tensor (a shard of a random model) holds exactly the whole tensor's
    /// values there, written at the given offset and lead stride; the rest stays untouched.
    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn fill_uniform_window_is_the_whole_tensors_slice(seed: u64, dims in (1usize..4, 1usize..40, 1usize..70), cut in (0.0f64..1.0, 0.0f64..1.0, 0.0f64..1.0, 0.0f64..1.0, 0.0f64..1.0, 0.0f64..1.0), pad in 0usize..9) {
        let (na, n, k) = dims;
        let span = |len: usize, x: f64, y: f64| {
            let (a, b) = ((x * len as f64) as usize, (y * len as f64) as usize);
            a.min(b)..a.max(b).max(a.min(b) + 1).min(len)
        };
        let (a, rows, cols) = (span(na, cut.0, cut.1), span(n, cut.2, cut.3), span(k, cut.4, cut.5));
        let width = rows.len() * cols.len() + pad;
        let len = pad + a.len() * width;
        let whole: Vec<f32> = (0..(na * n * k) as u64).map(|i| ops::random::uniform(seed, i, -2.0, 3.0)).collect();
        on_each(|s, v| {
            let t = DeviceTensor::from_f32(s, &[len], &vec![f32::NAN; len], DType::F32).unwrap();
            let w = dispatch::UniformWindow { a: a.clone(), rows: rows.clone(), cols: cols.clone(), n, k };
            dispatch::fill_uniform_window(s, &t, pad, width, &w, seed, -2.0, 3.0).unwrap();
            let got = down(s, &t);
            for (i, x) in got.iter().enumerate() {
                let inside = i >= pad && (i - pad) % width < rows.len() * cols.len();
                if !inside {
                    assert!(x.is_nan(), "{v}: element {i} outside the window was written");
                    continue;
                }
                let (ai, rc) = ((i - pad) / width, (i - pad) % width);
                let (r, c) = (rows.start + rc / cols.len(), cols.start + rc % cols.len());
                let want = whole[((a.start + ai) * n + r) * k + c];
                assert_eq!(x.to_bits(), want.to_bits(), "{v}: window {w:?} element {i}");
            }
        });
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn route_noaux_tc(seed: u64, tokens in 1usize..40, shape in prop::sample::select(vec![(16usize, 4usize, 2usize, 4usize), (64, 8, 4, 8), (256, 8, 4, 8), (32, 1, 1, 6)]), renorm: bool) {
        let (e, n_group, topk_group, top_k) = shape;
        let mut r = rng(seed);
        let logits = rand_vec(&mut r, tokens * e, 4.0);
        let bias = rand_vec(&mut r, e, 0.5);
        let p = ops::routing::RoutingParams { n_experts: e, n_group, topk_group, top_k, norm_topk_prob: renorm, routed_scaling_factor: 2.5 };
        let (mut want_ids, mut want_w) = (Vec::new(), Vec::new());
        for t in 0..tokens {
            let (ids, w) = ops::routing::route_noaux_tc(&logits[t * e..(t + 1) * e], &bias, &p);
            want_ids.extend(ids.iter().map(|&i| i as f32));
            want_w.extend(w);
        }
        on_each(|s, v| {
            let dl = up(s, &[tokens, e], &logits, DType::F32);
            let db = up(s, &[e], &bias, DType::F32);
            let ids = poisoned(s, DType::I32, &[tokens, top_k]);
            let w = poisoned(s, DType::F32, &[tokens, top_k]);
            dispatch::route_noaux_tc(s, &ids, &w, &dl, &db, RouteParams { n_group, topk_group, top_k, scaling: 2.5, renormalize: renorm }).unwrap();
            assert_eq!(down(s, &ids), want_ids, "{v} routing ids");
            assert_close(&format!("{v} routing weights"), &down(s, &w), &want_w, 1e-6);
        });
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn moe_expert_path(seed: u64, tokens in 1usize..24, experts in 1usize..9, topk in 1usize..4, hidden in 1usize..200, inter in 1usize..160) {
        let topk = topk.min(experts);
        let mut r = rng(seed);
        let x = rand_vec(&mut r, tokens * hidden, 1.0);
        let wgu = rand_vec(&mut r, experts * 2 * inter * hidden, 0.3);
        let wd = rand_vec(&mut r, experts * hidden * inter, 0.3);
        let mut ids = Vec::new();
        for _ in 0..tokens {
            let mut chosen: Vec<i32> = Vec::new();
            while chosen.len() < topk {
                let e = r.gen_range(0..experts as i32);
                if !chosen.contains(&e) { chosen.push(e); }
            }
            ids.extend(chosen);
        }
        let tw: Vec<f32> = (0..tokens * topk).map(|_| r.gen_range(0.1f32..1.0)).collect();
        on_each(|s, v| {
            for dt in FLOATS {
                let (xr, gur, dr) = (rounded(&x, dt), rounded(&wgu, dt), rounded(&wd, dt));
                // CPU reference: Σ_k w · W_down[e] (silu(W_gate[e] x) ⊙ W_up[e] x).
                let mut want = vec![0f32; tokens * hidden];
                for t in 0..tokens {
                    for j in 0..topk {
                        let e = ids[t * topk + j] as usize;
                        let xt = &xr[t * hidden..(t + 1) * hidden];
                        let gu_w = &gur[e * 2 * inter * hidden..(e + 1) * 2 * inter * hidden];
                        let mut gu = vec![0f32; 2 * inter];
                        ops::linear::linear_into(xt, gu_w, hidden, &mut gu);
                        let gu = rounded(&gu, dt);
                        let mut act = vec![0f32; inter];
                        ops::activation::silu_mul(&gu[..inter], &gu[inter..], &mut act);
                        let act = rounded(&act, dt);
                        let mut y = vec![0f32; hidden];
                        ops::linear::linear_into(&act, &dr[e * hidden * inter..(e + 1) * hidden * inter], inter, &mut y);
                        for (o, yy) in want[t * hidden..(t + 1) * hidden].iter_mut().zip(rounded(&y, dt)) {
                            *o += tw[t * topk + j] * yy;
                        }
                    }
                }
                let p = tokens * topk;
                let d_ids = up_i32(s, &[tokens, topk], &ids);
                let offs = poisoned(s, DType::I32, &[experts + 1]);
                let sorted = poisoned(s, DType::I32, &[p]);
                let p2r = poisoned(s, DType::I32, &[p]);
                dispatch::moe_align(s, &offs, &sorted, &p2r, &d_ids, experts).unwrap();
                let offv = down(s, &offs);
                assert_eq!(offv[0], 0.0);
                assert_eq!(offv[experts] as usize, p);
                for e in 0..experts {
                    let cnt = ids.iter().filter(|&&i| i as usize == e).count();
                    assert_eq!((offv[e + 1] - offv[e]) as usize, cnt, "{} expert {} count", v, e);
                }
                let dx = up(s, &[tokens, hidden], &x, dt);
                let rows = poisoned(s, dt, &[p, hidden]);
                dispatch::moe_gather(s, &rows, &dx, &sorted, &offs, topk).unwrap();
                let dgu = up(s, &[experts, 2 * inter, hidden], &wgu, dt);
                let gu = poisoned(s, dt, &[p, 2 * inter]);
                dispatch::moe_gemm(s, &gu, &rows, &dgu, None, &offs).unwrap();
                let act = poisoned(s, dt, &[p, inter]);
                dispatch::silu_mul(s, &act, &gu).unwrap();
                let dd = up(s, &[experts, hidden, inter], &wd, dt);
                let y = poisoned(s, dt, &[p, hidden]);
                dispatch::moe_gemm(s, &y, &act, &dd, None, &offs).unwrap();
                let dtw = up(s, &[tokens, topk], &tw, DType::F32);
                let out = poisoned(s, dt, &[tokens, hidden]);
                dispatch::moe_combine(s, &out, &y, &dtw, &p2r, topk, 0.0).unwrap();
                assert_close(&format!("{v} moe {dt}"), &down(s, &out), &rounded(&want, dt), if dt == DType::F32 { 1e-5 } else { 2e-2 });
            }
        });
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn mla_paged_attention(seed: u64, nseq in 1usize..5, heads in 1usize..6, page_size in prop::sample::select(vec![1usize, 16, 64]), real_dims: bool, decode: bool) {
        let (kv_lora, rope) = if real_dims { (512usize, 64usize) } else { (48, 16) };
        let dk = kv_lora + rope;
        let mut r = rng(seed);
        // Sequences: length and the chunk of query tokens at its end (1 for decode).
        let mut seqs = Vec::new();
        for _ in 0..nseq {
            let len = r.gen_range(1usize..300);
            let nq = if decode { 1 } else { r.gen_range(1..=len.min(20)) };
            seqs.push((len, nq));
        }
        let max_pages = seqs.iter().map(|(l, _)| l.div_ceil(page_size)).max().unwrap();
        let total_pages = nseq * max_pages + 3;
        // Pages handed out in a shuffled order.
        let mut pages: Vec<i32> = (0..total_pages as i32).collect();
        for i in (1..pages.len()).rev() { let j = r.gen_range(0..=i); pages.swap(i, j); }
        let mut block_table = vec![0i32; nseq * max_pages];
        for b in 0..nseq { for p in 0..max_pages { block_table[b * max_pages + p] = pages[b * max_pages + p]; } }
        let kv: Vec<Vec<f32>> = seqs.iter().map(|(l, _)| rand_vec(&mut r, l * dk, 1.0)).collect();
        let scale = 1.0 / (dk as f32).sqrt();
        let (mut q, mut token_seq, mut token_pos, mut want_plan) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (b, (len, nq)) in seqs.iter().enumerate() {
            let qb = rand_vec(&mut r, nq * heads * dk, 1.0);
            q.extend_from_slice(&qb);
            for t in 0..*nq { token_seq.push(b as i32); token_pos.push((len - nq + t) as i32); }
            want_plan.push((b, len - nq, qb));
        }
        let t_total = token_seq.len();
        // kv rows for the cache write: [sum(len), dk] with their (seq, pos).
        let (mut kv_rows, mut kv_seq, mut kv_pos) = (Vec::new(), Vec::new(), Vec::new());
        for (b, (len, _)) in seqs.iter().enumerate() {
            kv_rows.extend_from_slice(&kv[b]);
            for p in 0..*len { kv_seq.push(b as i32); kv_pos.push(p as i32); }
        }
        on_each(|s, v| {
            for (tq, tkv) in [(DType::F32, DType::F32), (DType::F32, DType::Bf16), (DType::Bf16, DType::Bf16)] {
                // CPU reference per sequence: q_lat = first kv_lora of q, q_pe the rest (nope = 0).
                let d = ops::attention::MlaDims { heads, nope: 0, rope, v: kv_lora, kv_lora };
                let mut want = Vec::new();
                for (b, start, qb) in &want_plan {
                    let qb = rounded(qb, tq);
                    let nq = qb.len() / (heads * dk);
                    let q_lat: Vec<f32> = qb.chunks(dk).flat_map(|c| c[..kv_lora].to_vec()).collect();
                    let q_pe: Vec<f32> = qb.chunks(dk).flat_map(|c| c[kv_lora..].to_vec()).collect();
                    let cache = rounded(&kv[*b][..(start + nq) * dk], tkv);
                    let (o, _) = ops::attention::mla_latent_attention(&q_lat, &q_pe, &cache, &d, *start, scale);
                    want.extend(o);
                }
                let cache = poisoned(s, tkv, &[total_pages, page_size, dk]);
                let bt = up_i32(s, &[nseq, max_pages], &block_table);
                let lens: Vec<i32> = seqs.iter().map(|(l, _)| *l as i32).collect();
                let sl = up_i32(s, &[nseq], &lens);
                let pc = PagedCache { cache: &cache, block_table: &bt, seq_lens: &sl };
                let dkv = up(s, &[kv_pos.len(), dk], &kv_rows, tkv);
                dispatch::paged_kv_write(s, &pc, &dkv, &up_i32(s, &[kv_seq.len()], &kv_seq), &up_i32(s, &[kv_pos.len()], &kv_pos)).unwrap();
                let dq = up(s, &[t_total, heads, dk], &q, tq);
                let out = poisoned(s, DType::F32, &[t_total, heads, kv_lora]);
                dispatch::mla_paged_attention(s, &out, &dq, &pc, &up_i32(s, &[t_total], &token_seq), &up_i32(s, &[t_total], &token_pos), kv_lora, scale).unwrap();
                assert_close(&format!("{v} mla {tq}/{tkv} page {page_size}"), &down(s, &out), &want, if tq == DType::F32 && tkv == DType::F32 { 1e-5 } else { 1e-4 });
            }
        });
    }

    /// `mla_paged_attention_{f32,bf16}_fp8`: the paged attention over the fp8 e4m3 latent cache
    /// (656-byte rows: 512 e4m3 values, 4 f32 group scales, 64 bf16 rope values), the prefill /
    /// mixed-step path of `--kv-cache-dtype fp8_e4m3`. The rows are quantized on the host
    /// (`ops::mla_fp8::quantize_row`, each 128-value group with its own magnitude so the four
    /// scales differ) and uploaded as bytes; unwritten slots stay 0xff (NaN codes and NaN
    /// scales), so a read past a sequence shows. Reference: the CPU attention over the
    /// dequantized rows (e4m3 · s in f32, the rope's bf16 values), which the kernel reads
    /// exactly (one f32 product each), so the tolerances of the f32 / bf16 caches apply.
    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn mla_paged_attention_fp8_cache(seed: u64, nseq in 1usize..5, heads in 1usize..6, page_size in prop::sample::select(vec![1usize, 16, 64]), decode: bool) {
        use ops::mla_fp8;
        let (kv_lora, rope) = (mla_fp8::LATENT, mla_fp8::ROPE);
        let dk = kv_lora + rope;
        let row_bytes = mla_fp8::ROW_BYTES;
        let mut r = rng(seed);
        let mut seqs = Vec::new();
        for _ in 0..nseq {
            let len = r.gen_range(1usize..300);
            let nq = if decode { 1 } else { r.gen_range(1..=len.min(20)) };
            seqs.push((len, nq));
        }
        let max_pages = seqs.iter().map(|(l, _)| l.div_ceil(page_size)).max().unwrap();
        let total_pages = nseq * max_pages + 3;
        let mut pages: Vec<i32> = (0..total_pages as i32).collect();
        for i in (1..pages.len()).rev() { let j = r.gen_range(0..=i); pages.swap(i, j); }
        let block_table: Vec<i32> = (0..nseq * max_pages).map(|i| pages[i]).collect();
        // Source rows, their bytes in the paged cache, and the dequantized rows per sequence.
        let mut cache_bytes = vec![0xffu8; total_pages * page_size * row_bytes];
        let mut deq: Vec<Vec<f32>> = Vec::new();
        for (b, (len, _)) in seqs.iter().enumerate() {
            let mut rows = Vec::with_capacity(len * dk);
            for p in 0..*len {
                let mut x = Vec::with_capacity(dk);
                for _ in 0..mla_fp8::GROUPS {
                    let mag = [0.05f32, 0.5, 1.0, 4.0][r.gen_range(0..4)];
                    x.extend((0..mla_fp8::GROUP).map(|_| r.gen_range(-1.0f32..1.0) * mag));
                }
                x.extend((0..rope).map(|_| r.gen_range(-1.0f32..1.0)));
                let bytes = mla_fp8::quantize_row(&x).unwrap();
                rows.extend(mla_fp8::dequantize_row(&bytes).unwrap());
                let slot = block_table[b * max_pages + p / page_size] as usize * page_size + p % page_size;
                cache_bytes[slot * row_bytes..(slot + 1) * row_bytes].copy_from_slice(&bytes);
            }
            deq.push(rows);
        }
        let scale = 1.0 / (dk as f32).sqrt();
        let (mut q, mut token_seq, mut token_pos, mut want_plan) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (b, (len, nq)) in seqs.iter().enumerate() {
            let qb = rand_vec(&mut r, nq * heads * dk, 1.0);
            q.extend_from_slice(&qb);
            for t in 0..*nq { token_seq.push(b as i32); token_pos.push((len - nq + t) as i32); }
            want_plan.push((b, len - nq, qb));
        }
        let t_total = token_seq.len();
        on_each(|s, v| {
            let cache = DeviceTensor::from_slice(s, &[total_pages, page_size, row_bytes], &cache_bytes).unwrap();
            let bt = up_i32(s, &[nseq, max_pages], &block_table);
            let lens: Vec<i32> = seqs.iter().map(|(l, _)| *l as i32).collect();
            let sl = up_i32(s, &[nseq], &lens);
            let pc = PagedCache { cache: &cache, block_table: &bt, seq_lens: &sl };
            let (ts, tp) = (up_i32(s, &[t_total], &token_seq), up_i32(s, &[t_total], &token_pos));
            for tq in FLOATS {
                let d = ops::attention::MlaDims { heads, nope: 0, rope, v: kv_lora, kv_lora };
                let mut want = Vec::new();
                for (b, start, qb) in &want_plan {
                    let qb = rounded(qb, tq);
                    let nq = qb.len() / (heads * dk);
                    let q_lat: Vec<f32> = qb.chunks(dk).flat_map(|c| c[..kv_lora].to_vec()).collect();
                    let q_pe: Vec<f32> = qb.chunks(dk).flat_map(|c| c[kv_lora..].to_vec()).collect();
                    let (o, _) = ops::attention::mla_latent_attention(&q_lat, &q_pe, &deq[*b][..(start + nq) * dk], &d, *start, scale);
                    want.extend(o);
                }
                let dq = up(s, &[t_total, heads, dk], &q, tq);
                let out = poisoned(s, DType::F32, &[t_total, heads, kv_lora]);
                dispatch::mla_paged_attention(s, &out, &dq, &pc, &ts, &tp, kv_lora, scale).unwrap();
                let tol = if tq == DType::F32 { 1e-5 } else { 1e-4 };
                assert_close(&format!("{v} mla {tq}/fp8 page {page_size}"), &down(s, &out), &want, tol);
                // dv below the latent width reads the first dv values of each row.
                let dv = 320;
                let part = poisoned(s, DType::F32, &[t_total, heads, dv]);
                dispatch::mla_paged_attention(s, &part, &dq, &pc, &ts, &tp, dv, scale).unwrap();
                let want_part: Vec<f32> = want.chunks(kv_lora).flat_map(|c| c[..dv].to_vec()).collect();
                assert_close(&format!("{v} mla {tq}/fp8 page {page_size} dv {dv}"), &down(s, &part), &want_part, tol);
            }
            // The fp8 rows fix the widths: q of another width, dv past 512, or a cache whose rows
            // are not 656 bytes are typed errors, not launches.
            let q48 = up(s, &[t_total, heads, 48], &vec![0.5; t_total * heads * 48], DType::F32);
            let o48 = poisoned(s, DType::F32, &[t_total, heads, 32]);
            let e = dispatch::mla_paged_attention(s, &o48, &q48, &pc, &ts, &tp, 32, scale).unwrap_err().to_string();
            assert!(e.contains("656"), "{e}");
            let dq = up(s, &[t_total, heads, dk], &q, DType::F32);
            let wide = poisoned(s, DType::F32, &[t_total, heads, dk]);
            assert!(dispatch::mla_paged_attention(s, &wide, &dq, &pc, &ts, &tp, dk, scale).is_err());
            let short = DeviceTensor::from_slice(s, &[total_pages, page_size, 576], &vec![0u8; total_pages * page_size * 576]).unwrap();
            let pc_short = PagedCache { cache: &short, block_table: &bt, seq_lens: &sl };
            assert!(dispatch::mla_paged_attention(s, &out_of(s, t_total, heads, kv_lora), &dq, &pc_short, &ts, &tp, kv_lora, scale).is_err());
        });
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn argmax_rows(seed: u64, rows in 1usize..20, cols in 1usize..140_000, ties: bool) {
        let mut r = rng(seed);
        let mut x = rand_vec(&mut r, rows * cols, 10.0);
        if ties {
            for row in x.chunks_mut(cols) {
                let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let j = r.gen_range(0..cols);
                row[j] = m; // a tie with the existing maximum: the first index must win
            }
        }
        on_each(|s, v| {
            for dt in FLOATS {
                let xr = rounded(&x, dt);
                let want: Vec<f32> = xr.chunks(cols).map(|row| ops::sampling::argmax(row) as f32).collect();
                let dx = up(s, &[rows, cols], &x, dt);
                let out = poisoned(s, DType::I32, &[rows]);
                dispatch::argmax(s, &out, None, &dx).unwrap();
                assert_eq!(down(s, &out), want, "{v} argmax {dt}");
                // With the maxima: the same indices, and the values there.
                let (out, vals) = (poisoned(s, DType::I32, &[rows]), poisoned(s, DType::F32, &[rows]));
                dispatch::argmax(s, &out, Some(&vals), &dx).unwrap();
                assert_eq!(down(s, &out), want, "{v} argmax {dt} with values");
                let want_vals: Vec<f32> = xr.chunks(cols).zip(&want).map(|(row, &i)| row[i as usize]).collect();
                assert_eq!(down(s, &vals), want_vals, "{v} argmax values {dt}");
            }
        });
    }

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn sampling_properties(seed: u64, rows in 1usize..16, cols in 2usize..5000, top_k in 0i32..50, top_p in 0.05f32..1.0, temp in 0.3f32..2.0) {
        let mut r = rng(seed);
        let x = rand_vec(&mut r, rows * cols, 3.0);
        on_each(|s, v| {
            for dt in FLOATS {
                let xr = rounded(&x, dt);
                let dx = up(s, &[rows, cols], &x, dt);
                let run = |temps: &[f32], ks: &[i32], ps: &[f32], seeds: &[u64]| -> Vec<i32> {
                    let p = SamplingParams {
                        temperature: &up(s, &[rows], temps, DType::F32),
                        top_k: &up_i32(s, &[rows], ks),
                        top_p: &up(s, &[rows], ps, DType::F32),
                        seeds: &DeviceTensor::from_slice(s, &[rows], seeds).unwrap(),
                    };
                    let out = poisoned(s, DType::I32, &[rows]);
                    dispatch::sample(s, &out, &dx, &p).unwrap();
                    s.synchronize().unwrap();
                    out.to_vec::<i32>(s).unwrap()
                };
                let seeds: Vec<u64> = (0..rows).map(|_| r.gen()).collect();
                let greedy: Vec<i32> = xr.chunks(cols).map(|row| ops::sampling::argmax(row) as i32).collect();
                // temperature 0 and top_k 1 are greedy.
                assert_eq!(run(&vec![0.0; rows], &vec![0; rows], &vec![1.0; rows], &seeds), greedy, "{v} {dt} temperature 0");
                // top_k 1 keeps every token tied with the maximum (ties are common in bf16).
                let top1 = run(&vec![temp; rows], &vec![1; rows], &vec![1.0; rows], &seeds);
                for (i, row) in xr.chunks(cols).enumerate() {
                    assert_eq!(row[top1[i] as usize], row[greedy[i] as usize], "{v} {dt} top_k 1, row {i}");
                }
                // Deterministic for a seed; inside the top-k and top-p sets.
                let a = run(&vec![temp; rows], &vec![top_k; rows], &vec![top_p; rows], &seeds);
                let b = run(&vec![temp; rows], &vec![top_k; rows], &vec![top_p; rows], &seeds);
                assert_eq!(&a, &b, "{v} {dt} same seed, same tokens");
                for (i, row) in xr.chunks(cols).enumerate() {
                    let tok = a[i];
                    assert!(tok >= 0 && (tok as usize) < cols, "{v} {dt}: token {tok} out of range");
                    let mut sorted: Vec<f32> = row.to_vec();
                    sorted.sort_by(|p, q| q.total_cmp(p));
                    let val = row[tok as usize];
                    if top_k > 0 && (top_k as usize) < cols {
                        assert!(val >= sorted[top_k as usize - 1], "{v} {dt}: token outside the top {top_k}");
                    }
                    // Nucleus on the CPU: smallest top set with mass >= top_p (in the kept top-k).
                    // The kernel sums exp in f32 in another order, so a set whose mass is within
                    // 1e-4 (relative) of the threshold may fall on either side: take the most
                    // inclusive edge the rounding allows.
                    // The top-k set includes every token tied with the k-th largest value.
                    let kk = if top_k > 0 && (top_k as usize) < cols {
                        sorted.iter().filter(|&&z| z >= sorted[top_k as usize - 1]).count()
                    } else {
                        cols
                    };
                    let m = sorted[0];
                    let probs: Vec<f64> = sorted[..kk].iter().map(|&z| (((z - m) / temp) as f64).exp()).collect();
                    let total: f64 = probs.iter().sum();
                    let mut acc = 0.0;
                    let mut edge = sorted[kk - 1];
                    for (j, p) in probs.iter().enumerate() {
                        acc += p;
                        if acc >= top_p as f64 * total * (1.0 + 1e-4) { edge = sorted[j]; break; }
                    }
                    assert!(val >= edge, "{v} {dt}: token value {val} below the top-p edge {edge}");
                }
            }
        });
    }
}

fn dtype_of(s: &str) -> DType {
    match s {
        "f32" => DType::F32,
        "bf16" => DType::Bf16,
        "f16" => DType::F16,
        "e4m3fn" => DType::E4m3fn,
        "e4m3fnuz" => DType::E4m3fnuz,
        other => panic!("dtype {other}"),
    }
}

/// The device argmax is the host's on rows with NaN, ±inf and signed zeros (the engine's greedy
/// steps rely on it: same f32 row, same token), for one row per block width and rows longer than
/// a block; the maxima are -inf where no value exceeds it. Greedy `sample` (temperature 0) too.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn argmax_matches_the_host_on_nan_and_inf_rows() {
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    let short: Vec<Vec<f32>> = vec![
        vec![nan, -inf, -inf, 1.0, 1.0],
        vec![nan, -inf, -inf, -inf, -inf],
        vec![-inf, -inf, -inf, -inf, -inf],
        vec![nan, nan, nan, nan, nan],
        vec![nan, 2.0, nan, 2.0, -inf],
        vec![-1.0, inf, -2.0, inf, nan],
        vec![-0.0, 0.0, -0.0, 0.0, -1.0],
        vec![-5.0, -3.0, -4.0, -3.0, -inf],
    ];
    // Long rows (several elements per thread): the same patterns spread over 3000 columns, the
    // interesting values at columns a thread visits late and a lower-numbered thread visits too.
    let cols = 3000;
    let long: Vec<Vec<f32>> = short
        .iter()
        .map(|r| {
            let mut row = vec![r[4]; cols];
            for (j, &x) in r[..4].iter().enumerate() {
                row[2 * cols / 3 + 300 * j + 1] = x;
                row[7 + j] = if j % 2 == 0 { r[4] } else { x };
            }
            row
        })
        .collect();
    on_each(|s, v| {
        for rows in [&short, &long] {
            let n = rows[0].len();
            let x: Vec<f32> = rows.concat();
            for dt in FLOATS {
                let xr = rounded(&x, dt);
                let want: Vec<f32> = xr.chunks(n).map(|row| ops::sampling::argmax(row) as f32).collect();
                let want_vals: Vec<f32> = xr.chunks(n).zip(&want).map(|(row, &i)| if row[i as usize] > -inf { row[i as usize] } else { -inf }).collect();
                let dx = up(s, &[rows.len(), n], &x, dt);
                let (out, vals) = (poisoned(s, DType::I32, &[rows.len()]), poisoned(s, DType::F32, &[rows.len()]));
                dispatch::argmax(s, &out, Some(&vals), &dx).unwrap();
                assert_eq!(down(s, &out), want, "{v} argmax {dt}, rows of {n}");
                assert_eq!(down(s, &vals), want_vals, "{v} argmax values {dt}, rows of {n}");
                let r = rows.len();
                let p = SamplingParams {
                    temperature: &up(s, &[r], &vec![0.0; r], DType::F32),
                    top_k: &up_i32(s, &[r], &vec![0; r]),
                    top_p: &up(s, &[r], &vec![1.0; r], DType::F32),
                    seeds: &DeviceTensor::from_slice(s, &[r], &vec![1u64; r]).unwrap(),
                };
                let greedy = poisoned(s, DType::I32, &[r]);
                dispatch::sample(s, &greedy, &dx, &p).unwrap();
                assert_eq!(down(s, &greedy), want, "{v} greedy sample {dt}, rows of {n}");
            }
        }
    });
}

/// `moe_local_ids`: the ids of an expert-parallel rank's experts shifted to 0.., every other id
/// (below, above, negative) -1.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn moe_local_ids_keep_the_ranks_experts() {
    let ids: Vec<i32> = (0..3000).map(|i| (i * 7919 % 23) - 3).collect();
    on_each(|s, v| {
        for experts in [0..8usize, 5..9, 20..23, 7..8] {
            let want: Vec<f32> = ids.iter().map(|&id| if id >= experts.start as i32 && id < experts.end as i32 { (id - experts.start as i32) as f32 } else { -1.0 }).collect();
            let local = poisoned(s, DType::I32, &[1000, 3]);
            dispatch::moe_local_ids(s, &local, &up_i32(s, &[1000, 3], &ids), experts.clone()).unwrap();
            assert_eq!(down(s, &local), want, "{v} experts {experts:?}");
        }
        assert!(dispatch::moe_local_ids(s, &poisoned(s, DType::I32, &[5]), &up_i32(s, &[6], &[0; 6]), 0..2).is_err());
    });
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn sampling_matches_softmax_distribution() {
    // 8 tokens, 20000 rows with the same logits and different seeds: frequencies ≈ softmax(x/T).
    on_each(|s, v| {
        let logits = [1.0f32, 0.5, 2.0, -1.0, 0.0, 1.5, -0.5, 0.25];
        let (rows, cols, temp) = (20000usize, 8usize, 0.8f32);
        let x: Vec<f32> = (0..rows).flat_map(|_| logits).collect();
        let dx = up(s, &[rows, cols], &x, DType::F32);
        let seeds: Vec<u64> = (0..rows as u64).map(|i| i * 7919 + 17).collect();
        let p = SamplingParams {
            temperature: &up(s, &[rows], &vec![temp; rows], DType::F32),
            top_k: &up_i32(s, &[rows], &vec![0; rows]),
            top_p: &up(s, &[rows], &vec![1.0; rows], DType::F32),
            seeds: &DeviceTensor::from_slice(s, &[rows], &seeds).unwrap(),
        };
        let out = poisoned(s, DType::I32, &[rows]);
        dispatch::sample(s, &out, &dx, &p).unwrap();
        s.synchronize().unwrap();
        let toks = out.to_vec::<i32>(s).unwrap();
        let z: Vec<f64> = logits.iter().map(|&l| ((l / temp) as f64).exp()).collect();
        let sum: f64 = z.iter().sum();
        for (i, zi) in z.iter().enumerate() {
            let f = toks.iter().filter(|&&t| t == i as i32).count() as f64 / rows as f64;
            assert!((f - zi / sum).abs() < 0.015, "{v}: token {i} frequency {f:.4} vs {:.4}", zi / sum);
        }
    });
}

#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn typed_wrapper_and_checked_launch() {
    // The generated typed wrapper and the registry-checked launch agree; bad arguments are errors.
    on_each(|s, v| {
        let (rows, cols) = (3usize, 300usize);
        let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let w: Vec<f32> = (0..cols).map(|i| 0.5 + (i % 7) as f32 / 7.0).collect();
        let mut want = vec![0f32; rows * cols];
        ops::norm::rms_norm(&x, &w, 1e-6, &mut want);
        let (dx, dw) = (up(s, &[rows, cols], &x, DType::F32), up(s, &[cols], &w, DType::F32));
        let mut out = poisoned(s, DType::F32, &[rows, cols]);
        unsafe {
            registry::launch::rms_norm_f32(
                s,
                LaunchCfg::linear(rows as u32, 256),
                out.ptr_mut::<f32>().unwrap(),
                dx.ptr::<f32>().unwrap(),
                dw.ptr::<f32>().unwrap(),
                rows as u32,
                cols as u32,
                1e-6,
            )
            .unwrap();
        }
        assert_close(&format!("{v} typed rms_norm_f32"), &down(s, &out), &want, 1e-5);
        let e = dispatch::launch_by_name(s, "rms_norm_f32", LaunchCfg::linear(1, 256), &[KArg::Out(&out), KArg::In(&dx)]).unwrap_err().to_string();
        assert!(e.contains("2 arguments given, 6 expected"), "{e}");
        let wrong = up(s, &[rows, cols], &x, DType::Bf16);
        let e = dispatch::rms_norm(s, &out, &wrong, &dw, 1e-6).unwrap_err().to_string();
        assert!(e.contains("expected bf16") || e.contains("is f32"), "{e}");
        let e = dispatch::launch_by_name(s, "rms_norm_f32", LaunchCfg::linear(1, 2048), &[KArg::Out(&out), KArg::In(&dx), KArg::In(&dw), KArg::U32(1), KArg::U32(1), KArg::F32(1e-6)]).unwrap_err().to_string();
        assert!(e.contains("threads"), "{e}");
    });
}

proptest! {
    #![proptest_config(cfg(6))]

    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn copy_2d_strided(seed: u64, rows in 1usize..40, cols in 1usize..300, pad_in in 0usize..9, pad_out in 0usize..9) {
        let mut r = rng(seed);
        let (xs, os) = (cols + pad_in, cols + pad_out);
        let x = rand_vec(&mut r, rows * xs, 2.0);
        on_each(|s, v| {
            for dt in FLOATS {
                let xr = rounded(&x, dt);
                let dx = up(s, &[rows, xs], &x, dt);
                let out = poisoned(s, dt, &[rows, os]);
                dispatch::launch_by_name(
                    s,
                    &format!("copy_2d_{dt}"),
                    LaunchCfg::linear(((rows * cols).div_ceil(256)) as u32, 256),
                    &[KArg::Out(&out), KArg::In(&dx), KArg::U32(rows as u32), KArg::U32(cols as u32), KArg::U32(os as u32), KArg::U32(xs as u32)],
                ).unwrap();
                let got = down(s, &out);
                let g: Vec<f32> = (0..rows).flat_map(|i| got[i * os..i * os + cols].to_vec()).collect();
                let w: Vec<f32> = (0..rows).flat_map(|i| xr[i * xs..i * xs + cols].to_vec()).collect();
                assert_close(&format!("{v} copy_2d {dt}"), &g, &w, 0.0);
                if pad_out > 0 {
                    // Padding is left untouched (still the poison).
                    assert!(got[cols].is_nan(), "{v} copy_2d {dt}: wrote past cols");
                }
            }
        });
    }
}

/// Runs in the CPU suite too: every registry kernel belongs to a family some GPU test file
/// tests, so a new kernel without a GPU test fails here.
#[test]
fn every_registry_kernel_is_covered() {
    let tested: &[(&str, &[&str])] = &[
        (
            "tests/gpu_kernels.rs",
            &[
                "embedding_", "rms_norm_", "add_rms_norm_", "rope_", "silu_mul_", "cast_", "copy_2d_",
                "fp8_quant_group128_", "fp8_dequant_block128_", "gemm_nt_", "route_noaux_tc", "moe_align", "moe_local_ids",
                // mla_paged_attention_{f32,bf16}_{f32,bf16} (mla_paged_attention) and
                // mla_paged_attention_{f32,bf16}_fp8 (mla_paged_attention_fp8_cache).
                "moe_gather_", "moe_gemm_", "moe_combine_", "mla_paged_attention_", "paged_kv_write_", "argmax_",
                "sample_", "fill_uniform_", "fp8_fake_quant_group128_",
            ],
        ),
        (
            "tests/gpu_fp8_gemm.rs",
            &["fp8_gemm_", "stream_gemm_e4m3fn_", "moe_align_tiles", "act_quant_group128_", "silu_mul_quant_group128_", "moe_combine_rows_"],
        ),
        ("tests/gpu_mla.rs", &["mla_decode_", "mla_cache_write_"]),
        ("tests/gpu_quant_gemm.rs", &["int8_gemm_", "stream_gemm_int8_", "stream_gemm_awq_", "int8_quant_", "int8_silu_mul_quant_", "awq_gemm_"]),
        // Needs 2 GPUs.
        ("tests/gpu_allreduce.rs", &["allreduce_"]),
    ];
    for k in registry::KERNELS {
        let covered = tested.iter().any(|(_, prefixes)| prefixes.iter().any(|p| k.name.starts_with(p)));
        assert!(covered, "kernel {} (family {}) has no GPU test", k.name, k.family);
    }
}

proptest! {
    #![proptest_config(cfg(5))]

    /// Every moe_gemm instance (including float8 weights) and every moe_combine instance.
    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn moe_gemm_and_combine_every_instance(seed: u64, experts in 1usize..6, n in 1usize..150, k in 1usize..300) {
        let mut r = rng(seed);
        let counts: Vec<usize> = (0..experts).map(|_| r.gen_range(0..70)).collect();
        let p: usize = counts.iter().sum::<usize>().max(1);
        let mut offs = vec![0i32];
        for c in &counts { offs.push(offs.last().unwrap() + *c as i32); }
        let a = rand_vec(&mut r, p * k, 1.0);
        let w = rand_vec(&mut r, experts * n * k, 0.5);
        let codes: Vec<u8> = (0..experts * n * k).map(|_| loop { let c: u8 = r.gen(); if c & 0x7f != 0x7f && c != 0x80 { break c; } }).collect();
        let sn = n.div_ceil(128) * k.div_ceil(128);
        let si: Vec<f32> = (0..experts * sn).map(|_| r.gen_range(1e-3f32..1e-2)).collect();
        on_each(|s, v| {
            let d_offs = up_i32(s, &[experts + 1], &offs);
            for kinfo in registry::KERNELS.iter().filter(|x| x.family == "moe" && x.name.starts_with("moe_gemm_")) {
                let (ta, tb, to) = (dtype_of(kinfo.param("TA").unwrap()), dtype_of(kinfo.param("TB").unwrap()), dtype_of(kinfo.param("TO").unwrap()));
                let fp8 = matches!(tb, DType::E4m3fn | DType::E4m3fnuz);
                let (dw, wref, dsc): (DeviceTensor, Vec<f32>, Option<DeviceTensor>) = if fp8 {
                    let f = if tb == DType::E4m3fnuz { 0.5 } else { 1.0 };
                    let mut wref = Vec::new();
                    for e in 0..experts {
                        let we = ops::fp8::dequant_block_weight(&codes[e * n * k..(e + 1) * n * k], n, k, &si[e * sn..(e + 1) * sn], (128, 128));
                        wref.extend(we.into_iter().map(|x| x * f));
                    }
                    let q = if tb == DType::E4m3fn {
                        DeviceTensor::from_slice(s, &[experts, n, k], &codes.iter().map(|&c| dsv3::backend::Fp8E4m3fn(c)).collect::<Vec<_>>()).unwrap()
                    } else {
                        DeviceTensor::from_slice(s, &[experts, n, k], &codes.iter().map(|&c| dsv3::backend::Fp8E4m3fnuz(c)).collect::<Vec<_>>()).unwrap()
                    };
                    (q, wref, Some(up(s, &[experts, n.div_ceil(128), k.div_ceil(128)], &si, DType::F32)))
                } else {
                    (up(s, &[experts, n, k], &w, tb), rounded(&w, tb), None)
                };
                let ar = rounded(&a, ta);
                let mut want = vec![0f32; p * n];
                for e in 0..experts {
                    for row in offs[e] as usize..offs[e + 1] as usize {
                        ops::linear::linear_into(&ar[row * k..(row + 1) * k], &wref[e * n * k..(e + 1) * n * k], k, &mut want[row * n..(row + 1) * n]);
                    }
                }
                let da = up(s, &[p, k], &a, ta);
                let c = poisoned(s, to, &[p, n]);
                dispatch::moe_gemm(s, &c, &da, &dw, dsc.as_ref(), &d_offs).unwrap();
                let valid = offs[experts] as usize * n;
                assert_close(&format!("{v} {}", kinfo.name), &down(s, &c)[..valid], &rounded(&want, to)[..valid], tol(to));
            }
            // moe_combine: tokens = p / topk rows of y with a random pair_to_row permutation.
            let topk = 2usize;
            let tokens = (p / topk).max(1);
            let hidden = n;
            let mut perm: Vec<i32> = (0..(tokens * topk) as i32).collect();
            for i in (1..perm.len()).rev() { let j = (i * 7 + 3) % (i + 1); perm.swap(i, j); }
            let yv = rand_vec(&mut rng(seed ^ 2), tokens * topk * hidden, 1.0);
            let y = &yv[..];
            let tw: Vec<f32> = (0..tokens * topk).map(|i| 0.1 + (i % 5) as f32 * 0.2).collect();
            let base = rand_vec(&mut rng(seed ^ 1), tokens * hidden, 1.0);
            for kinfo in registry::KERNELS.iter().filter(|x| x.family == "moe" && x.name.starts_with("moe_combine_")) {
                let (ty, to) = (dtype_of(kinfo.param("T").unwrap()), dtype_of(kinfo.param("TO").unwrap()));
                let yr = rounded(y, ty);
                let br = rounded(&base, to);
                let mut want = vec![0f32; tokens * hidden];
                for t in 0..tokens {
                    for j in 0..topk {
                        let row = perm[t * topk + j] as usize;
                        for d in 0..hidden { want[t * hidden + d] += tw[t * topk + j] * yr[row * hidden + d]; }
                    }
                    for d in 0..hidden { want[t * hidden + d] += br[t * hidden + d]; }
                }
                let dy = up(s, &[tokens * topk, hidden], y, ty);
                let out = up(s, &[tokens, hidden], &base, to);
                dispatch::moe_combine(s, &out, &dy, &up(s, &[tokens * topk], &tw, DType::F32), &up_i32(s, &[tokens * topk], &perm), topk, 1.0).unwrap();
                assert_close(&format!("{v} {}", kinfo.name), &down(s, &out), &rounded(&want, to), tol(to));
            }
        });
    }
}

// ---- issue 5: RMSNorm → activation quantization, fused ---------------------------------------

/// A device tensor's elements as bits (codes as bytes, floats as their f32 bits): for
/// bit-exact comparisons.
fn bits(s: &dyn dsv3::backend::GpuStream, t: &DeviceTensor) -> Vec<u32> {
    s.synchronize().unwrap();
    match t.dtype() {
        DType::E4m3fn => t.to_vec::<dsv3::backend::Fp8E4m3fn>(s).unwrap().into_iter().map(|b| b.0 as u32).collect(),
        DType::E4m3fnuz => t.to_vec::<dsv3::backend::Fp8E4m3fnuz>(s).unwrap().into_iter().map(|b| b.0 as u32).collect(),
        DType::I8 => t.to_vec::<i8>(s).unwrap().into_iter().map(|b| b as u8 as u32).collect(),
        _ => t.to_f32(s).unwrap().into_iter().map(f32::to_bits).collect(),
    }
}

#[track_caller]
fn assert_same_bits(what: &str, got: &[u32], want: &[u32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<usize> = got.iter().zip(want).enumerate().filter(|(_, (a, b))| a != b).map(|(i, _)| i).take(4).collect();
    assert!(bad.is_empty(), "{what}: {} of {} differ (first at {bad:?}: {:#x} vs {:#x})", got.iter().zip(want).filter(|(a, b)| a != b).count(), got.len(), got[bad[0]], want[bad[0]]);
}

/// Widths of the fused norm tests: DeepSeek-V3's hidden 7168, q_lora 1536, kv_lora 512, the
/// latent 576, plus widths with a partial last 128-group and one below a group.
const NORM_QUANT_COLS: [usize; 8] = [7168, 1536, 512, 576, 200, 1000, 96, 16];

proptest! {
    #![proptest_config(cfg(8))]

    /// `rms_norm_quant_*` / `add_rms_norm_quant_*` against the two-kernel path (`rms_norm` /
    /// `add_rms_norm`, then `fp8_quant_group128` or `int8_act_quant` on its output), bit-exactly:
    /// the normalized rows, the updated residual, the codes and the scales, for f32 and bf16 rows,
    /// e4m3fn / e4m3fnuz / INT8 per group / INT8 per token, with and without the T output. Odd
    /// row counts; a zero row (the amax epsilon) and a row of one large value.
    #[test]
    #[ignore = "GPU test: run on the GPU machine with --include-ignored"]
    fn rms_norm_quant_matches_norm_then_quant(seed: u64, half_rows in 0usize..12, ci in 0usize..NORM_QUANT_COLS.len(), add: bool) {
        use dsv3::backend::dispatch::ActQuant;
        use dsv3::backend::quant_gemm::{int8_act_quant, Int8Scheme};
        let (rows, cols) = (2 * half_rows + 1, NORM_QUANT_COLS[ci]);
        let mut r = rng(seed);
        let mut x = rand_vec(&mut r, rows * cols, 3.0);
        let res = rand_vec(&mut r, rows * cols, 3.0);
        let w = rand_vec(&mut r, cols, 1.5);
        if rows > 1 {
            // Row 1: zeros (x alone; with the residual added it is the residual row); row 2 (if
            // any): one dominant value, so every other code of its group is small.
            x[cols..2 * cols].iter_mut().for_each(|v| *v = 0.0);
            if rows > 2 {
                x[2 * cols + cols / 2] = 1.0e4;
            }
        }
        let eps = 1e-6;
        let kinds = [
            (ActQuant::Fp8Group128, DType::E4m3fn),
            (ActQuant::Fp8Group128, DType::E4m3fnuz),
            (ActQuant::Int8Group128, DType::I8),
            (ActQuant::Int8Token, DType::I8),
        ];
        on_each(|s, v| {
            for dt in FLOATS {
                let (dx, dw) = (up(s, &[rows, cols], &x, dt), up(s, &[cols], &w, dt));
                // The two-kernel path's normalized rows (and residual).
                let want_res = up(s, &[rows, cols], &res, dt);
                let normed = poisoned(s, dt, &[rows, cols]);
                if add {
                    dispatch::add_rms_norm(s, &normed, &want_res, &dx, &dw, eps).unwrap();
                } else {
                    dispatch::rms_norm(s, &normed, &dx, &dw, eps).unwrap();
                }
                let (want_out, want_res) = (bits(s, &normed), bits(s, &want_res));
                for (kind, qt) in kinds {
                    let sc_len = kind.scales_len(rows, cols);
                    let (wq, ws) = (poisoned(s, qt, &[rows, cols]), poisoned(s, DType::F32, &[sc_len]));
                    match kind {
                        ActQuant::Fp8Group128 => dispatch::fp8_quant_group128(s, &wq, &ws, &normed, 1e-10).unwrap(),
                        ActQuant::Int8Group128 => int8_act_quant(s, Int8Scheme::Block, &wq, &ws, &normed).unwrap(),
                        ActQuant::Int8Token => int8_act_quant(s, Int8Scheme::Channel, &wq, &ws, &normed).unwrap(),
                    }
                    let (want_q, want_s) = (bits(s, &wq), bits(s, &ws));
                    for with_out in [true, false] {
                        let what = format!("{v} {}rms_norm_quant {dt} {kind:?} {qt} [{rows}, {cols}] out {with_out}", if add { "add_" } else { "" });
                        let out = poisoned(s, dt, &[rows, cols]);
                        let (q, sc) = (poisoned(s, qt, &[rows, cols]), poisoned(s, DType::F32, &[sc_len]));
                        let dres = up(s, &[rows, cols], &res, dt);
                        let o = with_out.then_some(&out);
                        if add {
                            dispatch::add_rms_norm_quant(s, o, &dres, &dx, &dw, eps, kind, &q, &sc, 1e-10).unwrap();
                            assert_same_bits(&format!("{what}: residual"), &bits(s, &dres), &want_res);
                        } else {
                            dispatch::rms_norm_quant(s, o, &dx, &dw, eps, kind, &q, &sc, 1e-10).unwrap();
                        }
                        if with_out {
                            assert_same_bits(&format!("{what}: out"), &bits(s, &out), &want_out);
                        }
                        assert_same_bits(&format!("{what}: codes"), &bits(s, &q), &want_q);
                        assert_same_bits(&format!("{what}: scales"), &bits(s, &sc), &want_s);
                    }
                }
            }
        });
    }
}

/// The fused norm's argument checks: shapes, code types, the INT8 / FP8 pairing.
#[test]
#[ignore = "GPU test: run on the GPU machine with --include-ignored"]
fn rms_norm_quant_rejects_bad_operands() {
    use dsv3::backend::dispatch::ActQuant;
    let s: &dyn dsv3::backend::GpuStream = &all_streams()[0].1;
    let (rows, cols) = (3, 256);
    let x = up(s, &[rows, cols], &vec![1.0; rows * cols], DType::F32);
    let w = up(s, &[cols], &vec![1.0; cols], DType::F32);
    let q8 = poisoned(s, DType::E4m3fn, &[rows, cols]);
    let qi = poisoned(s, DType::I8, &[rows, cols]);
    let sc = poisoned(s, DType::F32, &[rows, 2]);
    let e = dispatch::rms_norm_quant(s, None, &x, &w, 1e-6, ActQuant::Int8Group128, &q8, &sc, 1e-10).unwrap_err().to_string();
    assert!(e.contains("codes of e4m3fn"), "{e}");
    let e = dispatch::rms_norm_quant(s, None, &x, &w, 1e-6, ActQuant::Int8Token, &qi, &sc, 1e-10).unwrap_err().to_string();
    assert!(e.contains("scales"), "{e}");
    let short = poisoned(s, DType::F32, &[cols - 1]);
    assert!(dispatch::rms_norm_quant(s, None, &x, &short, 1e-6, ActQuant::Fp8Group128, &q8, &sc, 1e-10).is_err());
    let res = poisoned(s, DType::F32, &[rows + 1, cols]);
    assert!(dispatch::add_rms_norm_quant(s, None, &res, &x, &w, 1e-6, ActQuant::Fp8Group128, &q8, &sc, 1e-10).is_err());
    dispatch::rms_norm_quant(s, None, &x, &w, 1e-6, ActQuant::Fp8Group128, &q8, &sc, 1e-10).unwrap();
    s.synchronize().unwrap();
}
