//! One-batch latency benchmark against a running `serve` (or any OpenAI-compatible server that
//! takes token-id prompts and `ignore_eos`), after SGLang's `bench_one_batch` /
//! `bench_one_batch_server`: `--batch-size` streaming requests of `--input-len` random token ids,
//! sent at once, each generating exactly `--output-len` tokens. Per run it prints
//!
//! - prefill: latency until every request of the batch has its first token, and
//!   batch · input_len / that latency;
//! - decode: the median time between consecutive tokens over the whole batch (one step), and
//!   batch / that time;
//! - total: latency until the last request ends, and batch · (input_len + output_len) / it.
//!
//! The first of `--runs` is a warm-up, reported separately; the summary averages the rest.
//!
//! cargo run --release --example serve &
//! cargo run --release --example bench_one_batch -- --batch-size 8 --input-len 256 --output-len 32
//!
//! `--offline` (a `--features cuda` build) runs the model in this process instead, by default a
//! DeepSeek-V3 slice with random FP8 weights: decode step time against its roofline, with a
//! per-kernel-group breakdown, and prefill throughput (offline.rs).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use clap::Parser;
use dsv3::server::client::{connect, get_json, model_name, resolve, stream_completion, StreamOutcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Parser, Debug, Clone)]
#[command(about = "One-batch benchmark: prefill and decode latency and throughput of a running server")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 30000)]
    port: u16,
    /// Model name to send (default: the first of /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// Requests sent at once.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Prompt length in (random) token ids.
    #[arg(long, default_value_t = 1024)]
    input_len: usize,
    /// Tokens generated per request (max_tokens with ignore_eos).
    #[arg(long, default_value_t = 16)]
    output_len: usize,
    /// Runs; the first is a warm-up, reported separately.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Append a JSON line per run.
    #[arg(long)]
    output_file: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Offline mode (a --features cuda build): run the model in this process, no server; see
    /// offline.rs. Decode points over --batch-sizes × --contexts, prefill over --prefill-lens.
    #[arg(long)]
    offline: bool,
    /// Offline: a checkpoint directory (default: a DeepSeek-V3 slice with random FP8 weights).
    #[arg(long)]
    model_path: Option<PathBuf>,
    /// Offline, random model: decoder layers of the DeepSeek-V3 slice.
    #[arg(long, default_value_t = 4)]
    num_layers: usize,
    /// Offline, random model: how many of them are dense (the rest MoE).
    #[arg(long, default_value_t = 1)]
    dense_layers: usize,
    #[arg(long, default_value = "cuda:0")]
    device: String,
    /// Offline: latent cache format, bf16, fp8_e4m3 (656-byte rows) or f32.
    #[arg(long, default_value = "bf16")]
    kv_cache_dtype: String,
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64,128,256")]
    batch_sizes: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1024,4096")]
    contexts: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1024,4096,16384")]
    prefill_lens: Vec<usize>,
    /// Offline: timed decode steps per point (after 2 warm-up steps).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Offline: eager, graph or both.
    #[arg(long, default_value = "both")]
    graphs: String,
    /// Offline, random model: tensor-parallel size (one process drives GPUs 0..N; see
    /// offline_tp.rs).
    #[arg(long, alias = "tp-size", default_value_t = 1)]
    tp: usize,
    /// Offline, --tp > 1: routed experts split whole over the ranks (expert parallelism).
    #[arg(long)]
    enable_ep_moe: bool,
    /// Offline, --tp > 1: data-parallel attention (every rank holds all heads and attends for
    /// its own sequences; FFN split over the ranks).
    #[arg(long)]
    enable_dp_attention: bool,
    /// Offline, --tp > 1: first compare the split model's prompt logits with the same random
    /// model on GPU 0 alone.
    #[arg(long)]
    check_tp1: bool,
}

/// One run's figures (seconds, tokens/s).
#[derive(Clone, Debug, Default)]
struct RunResult {
    prefill_latency: f64,
    prefill_throughput: f64,
    decode_step_latency: f64,
    decode_throughput: f64,
    total_latency: f64,
    overall_throughput: f64,
    output_throughput: f64,
    output_tokens: usize,
}

#[cfg(feature = "cuda")]
mod offline;
#[cfg(feature = "cuda")]
mod offline_tp;

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.offline { run_offline(&args) } else { run(args) };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(feature = "cuda")]
fn run_offline(a: &Args) -> Result<(), String> {
    let (eager, graphs) = match a.graphs.as_str() {
        "both" => (true, true),
        "eager" => (true, false),
        "graph" => (false, true),
        other => return Err(format!("--graphs {other}: eager, graph or both")),
    };
    let args = offline::OfflineArgs {
        model_path: a.model_path.clone(),
        num_layers: a.num_layers,
        dense_layers: a.dense_layers,
        device: a.device.clone(),
        kv_cache_dtype: a.kv_cache_dtype.clone(),
        batch_sizes: a.batch_sizes.clone(),
        contexts: a.contexts.clone(),
        prefill_lens: a.prefill_lens.clone(),
        steps: a.steps.max(1),
        graphs,
        eager,
        seed: a.seed,
        output_file: a.output_file.clone(),
    };
    if a.tp > 1 {
        if a.model_path.is_some() {
            return Err("--offline --tp N runs the random DeepSeek-V3 slice (no --model-path): use examples/generate --tp N for a checkpoint".into());
        }
        let split = offline_tp::Split { tp: a.tp, ep: a.enable_ep_moe, dp_attention: a.enable_dp_attention, check_tp1: a.check_tp1 };
        return offline_tp::run(&args, &split);
    }
    if a.enable_ep_moe || a.enable_dp_attention || a.check_tp1 {
        return Err("--enable-ep-moe, --enable-dp-attention and --check-tp1 need --tp > 1".into());
    }
    offline::run(&args)
}

#[cfg(not(feature = "cuda"))]
fn run_offline(_: &Args) -> Result<(), String> {
    Err("--offline runs the model in this process: rebuild with --features cuda".into())
}

fn run(args: Args) -> Result<(), String> {
    if args.batch_size == 0 || args.input_len == 0 || args.output_len == 0 || args.runs == 0 {
        return Err("--batch-size, --input-len, --output-len and --runs must be at least 1".into());
    }
    let a = resolve(&args.host, args.port)?;
    drop(connect(a)?);
    let info = get_json(a, "/get_model_info").unwrap_or(Value::Null);
    let vocab = info["vocab_size"].as_u64().unwrap_or(32000) as u32;
    if let Some(ctx) = info["context_length"].as_u64() {
        if (args.input_len + args.output_len) as u64 > ctx {
            return Err(format!(
                "--input-len {} + --output-len {} exceeds the model's context length {ctx}",
                args.input_len, args.output_len
            ));
        }
    }
    let model = model_name(a, args.model.as_deref())?;
    println!(
        "bench_one_batch: {model} at {a}, batch {}, input {}, output {}, {} run(s) (first = warm-up)",
        args.batch_size, args.input_len, args.output_len, args.runs
    );
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut measured = Vec::new();
    for r in 0..args.runs {
        let warmup = r == 0 && args.runs > 1;
        // Fresh random prompts every run, so the prefix cache does not shorten later prefills.
        let prompts: Vec<Vec<u32>> = (0..args.batch_size)
            .map(|_| (0..args.input_len).map(|_| rng.gen_range(2..vocab.max(3))).collect())
            .collect();
        let res = one_batch(a, &model, prompts, &args)?;
        let label = if warmup { "warm-up".to_string() } else { format!("run {r}") };
        print_run(&label, &res);
        if let Some(path) = &args.output_file {
            append(path, &args, &model, r, warmup, &res)?;
        }
        if !warmup {
            measured.push(res);
        }
    }
    if measured.len() > 1 {
        let n = measured.len() as f64;
        let mean = |f: fn(&RunResult) -> f64| measured.iter().map(f).sum::<f64>() / n;
        let avg = RunResult {
            prefill_latency: mean(|r| r.prefill_latency),
            prefill_throughput: mean(|r| r.prefill_throughput),
            decode_step_latency: mean(|r| r.decode_step_latency),
            decode_throughput: mean(|r| r.decode_throughput),
            total_latency: mean(|r| r.total_latency),
            overall_throughput: mean(|r| r.overall_throughput),
            output_throughput: mean(|r| r.output_throughput),
            output_tokens: measured.iter().map(|r| r.output_tokens).sum::<usize>() / measured.len(),
        };
        print_run(&format!("mean of {} runs", measured.len()), &avg);
    }
    Ok(())
}

/// Sends the batch at once (all threads released by one barrier) and times it.
fn one_batch(a: SocketAddr, model: &str, prompts: Vec<Vec<u32>>, args: &Args) -> Result<RunResult, String> {
    let batch = prompts.len();
    let gate = Arc::new(Barrier::new(batch + 1));
    let handles: Vec<_> = prompts
        .into_iter()
        .map(|p| {
            let (gate, model, out_len) = (gate.clone(), model.to_string(), args.output_len);
            std::thread::spawn(move || {
                gate.wait();
                stream_completion(a, &model, &p, out_len, true)
            })
        })
        .collect();
    let start = Instant::now();
    gate.wait();
    let outs: Vec<StreamOutcome> = handles.into_iter().map(|h| h.join().unwrap_or_default()).collect();
    if let Some(bad) = outs.iter().find(|o| !o.ok) {
        let failed = outs.iter().filter(|o| !o.ok).count();
        return Err(format!("{failed} of {batch} requests failed; first: {}", bad.error));
    }
    let since = |t: Option<Instant>| t.map_or(0.0, |t| t.duration_since(start).as_secs_f64());
    let prefill = outs.iter().map(|o| since(o.first_token_at)).fold(0.0, f64::max);
    let total = outs.iter().map(|o| since(o.done_at)).fold(0.0, f64::max);
    let mut itl: Vec<f64> = outs.iter().flat_map(|o| o.itl.iter().copied()).collect();
    itl.sort_by(|x, y| x.total_cmp(y));
    let step = if itl.is_empty() { 0.0 } else { itl[itl.len() / 2] };
    let output_tokens: usize = outs.iter().map(|o| o.output_len).sum();
    if outs.iter().any(|o| o.itl.len() + 1 != o.output_len) {
        eprintln!("warning: some token events arrived coalesced; the decode step time is over fewer intervals");
    }
    let short: Vec<usize> = outs.iter().map(|o| o.output_len).filter(|&n| n != args.output_len).collect();
    if !short.is_empty() {
        eprintln!(
            "warning: {} request(s) generated other than {} tokens (e.g. {}); throughputs use the real counts",
            short.len(),
            args.output_len,
            short[0]
        );
    }
    let rate = |n: f64, t: f64| if t > 0.0 { n / t } else { 0.0 };
    Ok(RunResult {
        prefill_latency: prefill,
        prefill_throughput: rate((batch * args.input_len) as f64, prefill),
        decode_step_latency: step,
        decode_throughput: rate(batch as f64, step),
        total_latency: total,
        overall_throughput: rate((batch * args.input_len + output_tokens) as f64, total),
        output_throughput: rate(output_tokens as f64, total),
        output_tokens,
    })
}

fn print_run(label: &str, r: &RunResult) {
    println!("---- {label}");
    println!("Prefill. latency: {:.5} s, throughput: {:>10.2} token/s", r.prefill_latency, r.prefill_throughput);
    println!("Decode.  median latency: {:.5} s, median throughput: {:>10.2} token/s", r.decode_step_latency, r.decode_throughput);
    println!(
        "Total.   latency: {:.5} s, throughput: {:>10.2} token/s (output {:.2} token/s, {} tokens)",
        r.total_latency, r.overall_throughput, r.output_throughput, r.output_tokens
    );
}

fn append(path: &PathBuf, args: &Args, model: &str, run: usize, warmup: bool, r: &RunResult) -> Result<(), String> {
    let line = json!({
        "model": model,
        "run": run,
        "warmup": warmup,
        "batch_size": args.batch_size,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "prefill_latency": r.prefill_latency,
        "prefill_throughput": r.prefill_throughput,
        "median_decode_latency": r.decode_step_latency,
        "median_decode_throughput": r.decode_throughput,
        "total_latency": r.total_latency,
        "overall_throughput": r.overall_throughput,
        "output_throughput": r.output_throughput,
        "output_tokens": r.output_tokens,
    });
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{line}").map_err(|e| format!("{}: {e}", path.display()))
}
