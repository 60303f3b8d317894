//! Online serving benchmark against a running `serve` (or any OpenAI-compatible server), after
//! SGLang's `bench_serving`: random prompts of token ids, Poisson arrivals (or all at once),
//! bounded concurrency, streaming completions; prints request and token throughput and TTFT / ITL /
//! end-to-end latency (mean, median, p99), and the server's host overhead per step.
//!
//! cargo run --release --example serve &
//! cargo run --release --example bench_serving -- --num-prompts 200 --random-input-len 128 \
//!     --random-output-len 64 --request-rate inf --max-concurrency 32 --output-file bench.jsonl

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use dsv3::server::client::{connect, get_json, get_text, host_overhead, model_name, resolve, stats, stream_completion, StreamOutcome as Outcome};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Parser, Debug, Clone)]
#[command(about = "Serving benchmark: random prompts, Poisson arrivals, streaming completions")]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 30000)]
    port: u16,
    /// Model name to send (default: the first of /v1/models).
    #[arg(long)]
    model: Option<String>,
    /// Only `random` (prompts of random token ids).
    #[arg(long, default_value = "random")]
    dataset_name: String,
    #[arg(long, default_value_t = 200)]
    num_prompts: usize,
    /// Input length of the random prompts (at most; see --random-range-ratio).
    #[arg(long, alias = "random-input", default_value_t = 128)]
    random_input_len: usize,
    /// Output length (max_tokens, with ignore_eos) of the random requests.
    #[arg(long, alias = "random-output", default_value_t = 64)]
    random_output_len: usize,
    /// Lengths are drawn uniformly from [ratio · len, len].
    #[arg(long, default_value_t = 0.0)]
    random_range_ratio: f64,
    /// Requests per second (Poisson arrivals); `inf` sends them all at once.
    #[arg(long, default_value = "inf")]
    request_rate: String,
    /// Most requests in flight.
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Append a JSON line with the results.
    #[arg(long)]
    output_file: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Hide the progress bar.
    #[arg(long)]
    disable_tqdm: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    if args.dataset_name != "random" {
        return Err(format!("--dataset-name {}: only `random` is supported", args.dataset_name));
    }
    let rate: f64 = match args.request_rate.as_str() {
        "inf" => f64::INFINITY,
        r => r.parse().map_err(|_| format!("--request-rate {r}: a number or inf"))?,
    };
    if rate.is_nan() || rate <= 0.0 {
        return Err("--request-rate must be > 0".into());
    }
    let a = resolve(&args.host, args.port)?;
    drop(connect(a)?);
    let info = get_json(a, "/get_model_info").unwrap_or(Value::Null);
    let vocab = info["vocab_size"].as_u64().unwrap_or(32000) as u32;
    let ctx = info["context_length"].as_u64().unwrap_or(4096) as usize;
    let model = model_name(a, args.model.as_deref())?;
    let before = get_text(a, "/metrics").unwrap_or_default();

    // The requests: (arrival offset, prompt ids, max_tokens).
    let mut rng = StdRng::seed_from_u64(args.seed);
    let lo = |n: usize| ((n as f64 * args.random_range_ratio) as usize).clamp(1, n.max(1));
    let mut t = 0.0f64;
    let mut reqs = Vec::with_capacity(args.num_prompts);
    for _ in 0..args.num_prompts {
        let mut in_len = rng.gen_range(lo(args.random_input_len)..=args.random_input_len.max(1));
        let mut out_len = rng.gen_range(lo(args.random_output_len)..=args.random_output_len.max(1));
        if in_len + out_len > ctx {
            in_len = in_len.min(ctx.saturating_sub(2).max(1));
            out_len = out_len.min(ctx - in_len).max(1);
        }
        let prompt: Vec<u32> = (0..in_len).map(|_| rng.gen_range(2..vocab.max(3))).collect();
        if rate.is_finite() {
            let u: f64 = rng.gen_range(f64::EPSILON..1.0);
            t += -u.ln() / rate;
        }
        reqs.push((t, prompt, out_len));
    }
    println!(
        "benchmarking {model} at {a}: {} prompts, input ≤ {}, output ≤ {}, rate {}, concurrency {}",
        args.num_prompts,
        args.random_input_len,
        args.random_output_len,
        args.request_rate,
        args.max_concurrency.map_or("unbounded".to_string(), |c| c.to_string())
    );
    let pb = if args.disable_tqdm {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::new(args.num_prompts as u64);
        if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}]") {
            pb.set_style(style);
        }
        pb
    };
    let slots = Arc::new((Mutex::new(args.max_concurrency.unwrap_or(usize::MAX)), Condvar::new()));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(reqs.len());
    for (at, prompt, out_len) in reqs {
        let wait = Duration::from_secs_f64(at).saturating_sub(start.elapsed());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let (slots, pb, model) = (slots.clone(), pb.clone(), model.clone());
        handles.push(std::thread::spawn(move || {
            acquire(&slots);
            let out = stream_completion(a, &model, &prompt, out_len, false);
            release(&slots);
            pb.inc(1);
            out
        }));
    }
    let outcomes: Vec<Outcome> = handles.into_iter().map(|h| h.join().unwrap_or_default()).collect();
    let duration = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let after = get_text(a, "/metrics").unwrap_or_default();
    report(&args, &model, &outcomes, duration, &before, &after)
}

fn acquire(slots: &(Mutex<usize>, Condvar)) {
    let mut n = slots.0.lock().unwrap_or_else(|e| e.into_inner());
    while *n == 0 {
        n = slots.1.wait(n).unwrap_or_else(|e| e.into_inner());
    }
    *n -= 1;
}

fn release(slots: &(Mutex<usize>, Condvar)) {
    *slots.0.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    slots.1.notify_one();
}

fn report(args: &Args, model: &str, outs: &[Outcome], duration: f64, before: &str, after: &str) -> Result<(), String> {
    let ok: Vec<&Outcome> = outs.iter().filter(|o| o.ok).collect();
    let failed = outs.len() - ok.len();
    let input: usize = ok.iter().map(|o| o.input_len).sum();
    let output: usize = ok.iter().map(|o| o.output_len).sum();
    let (mut ttft, mut e2e): (Vec<f64>, Vec<f64>) = ok.iter().map(|o| (o.ttft * 1e3, o.e2e * 1e3)).unzip();
    let mut itl: Vec<f64> = ok.iter().flat_map(|o| o.itl.iter().map(|x| x * 1e3)).collect();
    let (t, i, e) = (stats(&mut ttft), stats(&mut itl), stats(&mut e2e));
    let (s0, c0) = host_overhead(before);
    let (s1, c1) = host_overhead(after);
    let host_us = if c1 > c0 { (s1 - s0) / (c1 - c0) * 1e6 } else { 0.0 };
    println!("============ Serving Benchmark Result ============");
    println!("{:<40} {}", "Successful requests:", ok.len());
    println!("{:<40} {}", "Failed requests:", failed);
    println!("{:<40} {:.2}", "Benchmark duration (s):", duration);
    println!("{:<40} {}", "Total input tokens:", input);
    println!("{:<40} {}", "Total generated tokens:", output);
    println!("{:<40} {:.2}", "Request throughput (req/s):", ok.len() as f64 / duration);
    println!("{:<40} {:.2}", "Input token throughput (tok/s):", input as f64 / duration);
    println!("{:<40} {:.2}", "Output token throughput (tok/s):", output as f64 / duration);
    println!("{:<40} {:.2} / {:.2} / {:.2}", "TTFT mean / median / p99 (ms):", t.0, t.1, t.2);
    println!("{:<40} {:.2} / {:.2} / {:.2}", "ITL mean / median / p99 (ms):", i.0, i.1, i.2);
    println!("{:<40} {:.2} / {:.2} / {:.2}", "E2E latency mean / median / p99 (ms):", e.0, e.1, e.2);
    println!("{:<40} {:.1}", "Server host overhead per step (us):", host_us);
    println!("==================================================");
    if let Some(first) = outs.iter().find(|o| !o.ok) {
        eprintln!("first failure: {}", first.error);
    }
    if let Some(path) = &args.output_file {
        let line = json!({
            "model": model,
            "num_prompts": args.num_prompts,
            "random_input_len": args.random_input_len,
            "random_output_len": args.random_output_len,
            "random_range_ratio": args.random_range_ratio,
            "request_rate": args.request_rate,
            "max_concurrency": args.max_concurrency,
            "completed": ok.len(),
            "failed": failed,
            "duration_s": duration,
            "total_input_tokens": input,
            "total_output_tokens": output,
            "request_throughput": ok.len() as f64 / duration,
            "input_throughput": input as f64 / duration,
            "output_throughput": output as f64 / duration,
            "mean_ttft_ms": t.0, "median_ttft_ms": t.1, "p99_ttft_ms": t.2,
            "mean_itl_ms": i.0, "median_itl_ms": i.1, "p99_itl_ms": i.2,
            "mean_e2e_latency_ms": e.0, "median_e2e_latency_ms": e.1, "p99_e2e_latency_ms": e.2,
            "server_host_overhead_per_step_us": host_us,
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(f, "{line}").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if ok.is_empty() {
        return Err("no request succeeded".into());
    }
    Ok(())
}
