//! Offline mode (`--offline`, a `--features cuda` build): no server. The model runs in this
//! process, either a checkpoint (`--model-path`) or a DeepSeek-V3 slice with random FP8 weights
//! made on the GPU (`--random-model`, `--num-layers`, `--dense-layers`; the router biases balanced
//! first). For every batch × context it times decode steps (wall clock per step, after warm-up;
//! eager and replayed CUDA graphs), profiles one eager step per kernel group (CUDA events), and
//! prints the roofline: the bytes the step must read over the device-to-device copy bandwidth
//! measured in the same run. Prefill lengths are timed in one eager forward each, with their
//! FLOPs. One JSON object per point goes to `--output-file`.
//!
//! Roofline bytes of a decode step of B sequences at context C (DESIGN.md's formats):
//! - per layer: the attention weights (q_a, q_b, kv_a, o_proj: float8 + block scales; W_uk, W_uv
//!   in f32 next to the f32 cache, bf16 otherwise), the dense MLP or, for an MoE layer, the
//!   router (f32), the shared expert and every routed expert the step's tokens hit (counted from
//!   the step's routing), all float8;
//! - the latent cache: B · C · (bytes of a cached row) per layer: (kv_lora + rope) · element size
//!   for f32 / bf16, 656 for the fp8 e4m3 rows (`--kv-cache-dtype fp8_e4m3`: 512 e4m3 values,
//!   4 f32 scales, 64 bf16 rope values);
//! - the lm_head (bf16), read whole each step.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use dsv3::backend::{DType, Device, DeviceTensor, GpuStream};
use dsv3::model::config::ModelConfig;
use dsv3::model::gpu::{deepseek_v3_slice, BatchSeq, GpuModel, GpuOptions, KvCacheDtype, LogitRows, RoutingBalance, PAGE_SIZE};
use dsv3::ops::random::mix64;
use serde_json::{json, Value};

/// What the offline mode measures.
pub struct OfflineArgs {
    pub model_path: Option<PathBuf>,
    pub num_layers: usize,
    pub dense_layers: usize,
    pub device: String,
    pub kv_cache_dtype: String,
    pub batch_sizes: Vec<usize>,
    pub contexts: Vec<usize>,
    pub prefill_lens: Vec<usize>,
    pub steps: usize,
    pub graphs: bool,
    pub eager: bool,
    pub seed: u64,
    pub output_file: Option<PathBuf>,
}

pub fn run(a: &OfflineArgs) -> Result<(), String> {
    let e = |x: dsv3::Error| x.to_string();
    let device: Device = a.device.parse().map_err(|x| format!("--device: {x}"))?;
    let kv = KvCacheDtype::parse(&a.kv_cache_dtype).map_err(|_| format!("--kv-cache-dtype {}: bf16, fp8_e4m3 or f32", a.kv_cache_dtype))?;
    let opts = GpuOptions { kv_cache: kv, ..GpuOptions::fast() };
    let t0 = Instant::now();
    let mut model = match &a.model_path {
        Some(dir) => GpuModel::load_with(dir, device, opts).map_err(e)?,
        None => {
            let cfg = deepseek_v3_slice(a.num_layers, a.dense_layers).map_err(e)?;
            let mut m = GpuModel::random(cfg, device, opts, a.seed).map_err(e)?;
            report_balance(&m.balance_routing(4096, 6, a.seed).map_err(e)?);
            m
        }
    };
    eprintln!("model ready in {:.1?}: {} layers on {}", t0.elapsed(), model.config().num_hidden_layers, model.device());
    let copy_gbps = copy_bandwidth(model.stream()).map_err(e)?;
    eprintln!("device-to-device copy: {:.0} GB/s (read + write)", copy_gbps);
    let mut emit = json_lines(a.output_file.as_deref())?;
    emit(json!({"kind": "ceiling", "copy_gbps": copy_gbps, "layers": model.config().num_hidden_layers, "kv_cache": kv.to_string()}))?;
    println!("| batch | context | eager ms | graph ms | graph + device argmax ms | roofline ms | graph / roofline | argmax / roofline | weights MB | KV MB | experts hit / MoE layer |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &c in &a.contexts {
        for &b in &a.batch_sizes {
            match decode_point(&mut model, a, b, c, copy_gbps) {
                Ok(v) => emit(v)?,
                Err(x) => eprintln!("batch {b} context {c}: {x}"),
            }
        }
    }
    println!();
    println!("| prefill tokens | ms | TFLOPS | tokens/s |");
    println!("|---:|---:|---:|---:|");
    for &l in &a.prefill_lens {
        match prefill_point(&model, a, l) {
            Ok(v) => emit(v)?,
            Err(x) => eprintln!("prefill {l}: {x}"),
        }
    }
    Ok(())
}

/// Appends one JSON object per call to `path` (nothing without a path).
pub(crate) fn json_lines(path: Option<&std::path::Path>) -> Result<impl FnMut(Value) -> Result<(), String>, String> {
    let mut out = path.map(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).map_err(|x| format!("{}: {x}", p.display()))).transpose()?;
    Ok(move |v: Value| -> Result<(), String> {
        if let Some(f) = out.as_mut() {
            writeln!(f, "{v}").map_err(|x| x.to_string())?;
        }
        Ok(())
    })
}

/// The router balance of a random model, on stderr.
pub(crate) fn report_balance(bal: &RoutingBalance) {
    eprintln!(
        "routing balanced over 4096 random tokens: max/mean expert load per MoE layer {:?} -> {:?}, idle experts {:?}",
        round2(&bal.max_over_mean_before),
        round2(&bal.max_over_mean_after),
        bal.idle_after
    );
}

fn round2(v: &[f64]) -> Vec<f64> {
    v.iter().map(|x| (x * 100.0).round() / 100.0).collect()
}

/// Device-to-device copy bandwidth, (read + write) bytes per second, of 1 GiB buffers.
pub(crate) fn copy_bandwidth(s: &dyn GpuStream) -> dsv3::Result<f64> {
    let n = 1usize << 30;
    let (src, dst) = (DeviceTensor::empty(s, DType::U8, &[n])?, DeviceTensor::empty(s, DType::U8, &[n])?);
    unsafe { s.copy_dtod(dst.raw(), src.raw(), n)? };
    let reps = 10;
    let start = s.record_event()?;
    for _ in 0..reps {
        unsafe { s.copy_dtod(dst.raw(), src.raw(), n)? };
    }
    let ms = s.record_event()?.ms_since(start.as_ref())? as f64;
    Ok(2.0 * (n * reps) as f64 / (ms * 1e-3) / 1e9)
}

/// Bytes a decode step reads, by part (see the module docs).
struct StepBytes {
    weights: f64,
    kv: f64,
}

fn fp8_bytes(n: usize, k: usize) -> f64 {
    (n * k + 4 * n.div_ceil(128) * k.div_ceil(128)) as f64
}

/// `kv`: the cache format (its row bytes for the latent, its W_uk / W_uv element type).
fn step_bytes(c: &ModelConfig, kv: KvCacheDtype, batch: usize, context: usize, experts_hit: &[usize]) -> StepBytes {
    let (h, heads) = (c.hidden_size, c.num_attention_heads);
    let (nope, rope, v, lora) = (c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank);
    let q = match c.q_lora_rank {
        Some(r) => fp8_bytes(r, h) + fp8_bytes(heads * (nope + rope), r),
        None => fp8_bytes(heads * (nope + rope), h),
    };
    let attn = q + fp8_bytes(lora + rope, h) + fp8_bytes(h, heads * v) + (heads * lora * (nope + v) * kv.absorb_dtype().size()) as f64;
    let mut weights = (c.vocab_size * h * 2) as f64;
    let mut moe_i = 0;
    for i in 0..c.num_hidden_layers {
        weights += attn;
        if c.is_moe_layer(i) {
            let inter = c.moe_intermediate_size;
            let expert = 2.0 * fp8_bytes(inter, h) + fp8_bytes(h, inter);
            let shared = c.n_shared_experts as f64 * expert;
            weights += (c.n_routed_experts * h * 4) as f64 + shared + experts_hit.get(moe_i).copied().unwrap_or(c.n_routed_experts) as f64 * expert;
            moe_i += 1;
        } else {
            weights += 2.0 * fp8_bytes(c.intermediate_size, h) + fp8_bytes(h, c.intermediate_size);
        }
    }
    let kv = (c.num_hidden_layers * batch * context * kv.row_bytes(lora + rope)) as f64;
    StepBytes { weights, kv }
}

pub(crate) fn random_ids(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    (0..n as u64).map(|i| (mix64(seed ^ mix64(i)) % vocab as u64) as u32).collect()
}

fn decode_point(model: &mut GpuModel, a: &OfflineArgs, b: usize, context: usize, copy_gbps: f64) -> Result<Value, String> {
    let e = |x: dsv3::Error| x.to_string();
    let cfg = model.config().clone();
    let per_seq = (context + a.steps + 8).div_ceil(PAGE_SIZE);
    let pages = b * per_seq + 1;
    let need = pages * PAGE_SIZE * model.cache_row_bytes() * cfg.num_hidden_layers;
    let (free, _) = model.mem_info().map_err(e)?;
    if need + (4usize << 30) > free {
        return Err(format!("skipped: the cache needs {:.1} GiB, {:.1} GiB free", need as f64 / 1073741824.0, free as f64 / 1073741824.0));
    }
    let mut pool = model.new_page_pool(pages, PAGE_SIZE).map_err(e)?;
    model.fill_pool_random(&pool, a.seed ^ 0x5eed).map_err(e)?;
    let pad_page = (pages - 1) as u32;
    let tables: Vec<Vec<u32>> = (0..b).map(|i| ((i * per_seq) as u32..((i + 1) * per_seq) as u32).collect()).collect();
    let ids = random_ids(a.seed ^ (b as u64), b, cfg.vocab_size);
    let seqs = |step: usize| -> Vec<BatchSeq<'_>> {
        (0..b).map(|i| BatchSeq { tokens: std::slice::from_ref(&ids[i]), start: context + step, block_table: &tables[i], logits: LogitRows::Last }).collect()
    };
    // Routing of one step (experts hit per MoE layer), then the per-kernel-group profile.
    let hit = model.experts_hit(&mut pool, &seqs(0)).map_err(e)?;
    let profile = model.profile_batch(&mut pool, &seqs(0)).map_err(e)?;
    if std::env::var("DSV3_PROFILE_STEP").is_ok_and(|v| v == "1") {
        profiled_step(&mut || model.forward_batch(&mut pool, &seqs(0)).map(drop)).map_err(e)?;
    }
    let time = |f: &mut dyn FnMut(usize) -> dsv3::Result<()>| -> dsv3::Result<f64> {
        for w in 0..2 {
            f(w)?;
        }
        let t = Instant::now();
        for s in 0..a.steps {
            f(s)?;
        }
        Ok(t.elapsed().as_secs_f64() * 1e3 / a.steps as f64)
    };
    let eager_ms = if a.eager { Some(time(&mut |s| model.forward_batch(&mut pool, &seqs(s)).map(drop)).map_err(e)?) } else { None };
    // Graph replays, with the logits to the host (the engine's sampler) and with a device argmax
    // returning token ids only (greedy sampling on the device).
    let (graph_ms, greedy_ms) = if a.graphs {
        let g = model.capture_decode_graph(&mut pool, b, pad_page).map_err(e)?;
        let logits = time(&mut |s| model.forward_decode_graph(&g, &mut pool, &seqs(s)).map(drop)).map_err(e)?;
        let greedy = time(&mut |s| model.greedy_decode_graph(&g, &mut pool, &seqs(s)).map(drop)).map_err(e)?;
        (Some(logits), Some(greedy))
    } else {
        (None, None)
    };
    let bytes = step_bytes(&cfg, model.options().kv_cache, b, context, &hit);
    let roof_ms = (bytes.weights + bytes.kv) / (copy_gbps * 1e9) * 1e3;
    let best = graph_ms.or(eager_ms).unwrap_or(f64::NAN);
    let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
    println!(
        "| {b} | {context} | {} | {} | {} | {roof_ms:.3} | {:.2} | {:.2} | {:.0} | {:.0} | {:.1} |",
        f(eager_ms),
        f(graph_ms),
        f(greedy_ms),
        best / roof_ms,
        greedy_ms.unwrap_or(f64::NAN) / roof_ms,
        bytes.weights / 1e6,
        bytes.kv / 1e6,
        hit.iter().sum::<usize>() as f64 / hit.len().max(1) as f64
    );
    let breakdown: serde_json::Map<String, Value> = profile.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    eprintln!("  breakdown (eager, ms): {}", profile.iter().map(|(k, v)| format!("{k} {v:.3}")).collect::<Vec<_>>().join(", "));
    Ok(json!({
        "kind": "decode", "batch": b, "context": context, "eager_ms": eager_ms, "graph_ms": graph_ms, "greedy_graph_ms": greedy_ms,
        "roofline_ms": roof_ms, "weight_bytes": bytes.weights, "kv_bytes": bytes.kv, "experts_hit": hit,
        "breakdown_ms": breakdown, "copy_gbps": copy_gbps, "layers": cfg.num_hidden_layers,
    }))
}

/// FLOPs of a prefill of `l` tokens: 2 · (weights each token meets) · l, plus the absorbed
/// attention's 2 · H · (l²/2) · (576 + 512) per layer (causal: half the square).
/// `DSV3_PROFILE_STEP=1`: one eager decode step between `cuProfilerStart` / `cuProfilerStop`, for
/// `ncu --profile-from-start off` (every kernel of one step with its device time; the GPU
/// machine has no Nsight Systems).
fn profiled_step(step: &mut dyn FnMut() -> dsv3::Result<()>) -> dsv3::Result<()> {
    let check = |r: cudarc::driver::sys::CUresult, what: &str| match r {
        cudarc::driver::sys::CUresult::CUDA_SUCCESS => Ok(()),
        r => Err(dsv3::Error::Backend { backend: "cuda", msg: format!("{what}: {r:?}") }),
    };
    check(unsafe { cudarc::driver::sys::cuProfilerStart() }, "cuProfilerStart")?;
    let r = step();
    check(unsafe { cudarc::driver::sys::cuProfilerStop() }, "cuProfilerStop")?;
    r
}

pub(crate) fn prefill_flops(c: &ModelConfig, l: usize) -> f64 {
    let (h, heads) = (c.hidden_size, c.num_attention_heads);
    let (nope, rope, v, lora) = (c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank);
    let q = match c.q_lora_rank {
        Some(r) => r * h + heads * (nope + rope) * r,
        None => heads * (nope + rope) * h,
    };
    let attn_w = q + (lora + rope) * h + h * heads * v + heads * lora * (nope + v);
    let mut per_token = 0usize;
    for i in 0..c.num_hidden_layers {
        per_token += attn_w;
        per_token += if c.is_moe_layer(i) {
            3 * c.moe_intermediate_size * h * (c.num_experts_per_tok + c.n_shared_experts) + c.n_routed_experts * h
        } else {
            3 * c.intermediate_size * h
        };
    }
    let attn = c.num_hidden_layers as f64 * 2.0 * heads as f64 * (l as f64 * l as f64 / 2.0) * (lora + rope + lora) as f64;
    2.0 * per_token as f64 * l as f64 + attn
}

fn prefill_point(model: &GpuModel, a: &OfflineArgs, l: usize) -> Result<Value, String> {
    let e = |x: dsv3::Error| x.to_string();
    let pages = l.div_ceil(PAGE_SIZE);
    let mut pool = model.new_page_pool(pages, PAGE_SIZE).map_err(e)?;
    let table: Vec<u32> = (0..pages as u32).collect();
    let ids = random_ids(a.seed ^ l as u64, l, model.config().vocab_size);
    let seq = [BatchSeq { tokens: &ids, start: 0, block_table: &table, logits: LogitRows::Last }];
    // The profiled run doubles as the warm-up (kernel loading, allocator); then the timed one.
    let profile = model.profile_batch(&mut pool, &seq).map_err(e)?;
    let t = Instant::now();
    model.forward_batch(&mut pool, &seq).map_err(e)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let flops = prefill_flops(model.config(), l);
    println!("| {l} | {ms:.1} | {:.0} | {:.0} |", flops / (ms * 1e-3) / 1e12, l as f64 / (ms * 1e-3));
    eprintln!("  breakdown (eager, ms): {}", profile.iter().map(|(k, v)| format!("{k} {v:.2}")).collect::<Vec<_>>().join(", "));
    let breakdown: serde_json::Map<String, Value> = profile.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    Ok(json!({"kind": "prefill", "tokens": l, "ms": ms, "flops": flops, "breakdown_ms": breakdown}))
}
