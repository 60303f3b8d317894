//! An OpenAI-compatible server for DeepSeek-V3-architecture checkpoints, with SGLang's launch flags.
//!
//! cargo run --release --example serve                       # the embedded tiny model, port 30000
//! curl -s localhost:30000/v1/chat/completions -H 'content-type: application/json' \
//!     -d '{"model":"dsv3-tiny-random","messages":[{"role":"user","content":"Hello"}],"max_tokens":16}'
//!
//! See docs/SERVING.md for every flag, endpoint and metric.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use dsv3::engine::{EngineConfig, KvCacheSize};
use dsv3::model::embedded;
use dsv3::server::launch::{self, LaunchFlags};
use dsv3::server::reasoning::ReasoningParserKind;
use dsv3::backend::Device;
use dsv3::server::{build_state, serve, ServerConfig};

#[path = "common/parallel.rs"]
mod parallel;
use parallel::ParallelArgs;

#[derive(Parser, Debug)]
#[command(about = "OpenAI-compatible server for DeepSeek-V3-architecture models (SGLang's launch flags)")]
struct Args {
    /// Checkpoint directory (config.json, safetensors, tokenizer.json). Default: the embedded
    /// tiny random DeepSeek-V3-architecture model.
    #[arg(long, alias = "model")]
    model_path: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 30000)]
    port: u16,
    /// Name clients pass as `model` (default: the model path, or dsv3-tiny-random).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Device: cpu, cuda[:N] (a build with --features cuda) or hip[:N] (--features hip). On a GPU
    /// every engine step is one batched forward over a device page pool.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    par: ParallelArgs,
    /// Expected weight format: fp8, w8a8_int8, blockwise_int8, moe_wna16 or awq. The format is
    /// detected from the checkpoint; the flag must agree with it (one-line error otherwise).
    #[arg(long)]
    quantization: Option<String>,
    /// Latent cache element type on a GPU: auto / bf16 (with the fast kernels: split-KV MLA
    /// decode, FP8 GEMMs and fused MoE) or f32 (the reference path). The CPU always uses f32.
    #[arg(long, default_value = "auto")]
    kv_cache_dtype: String,
    /// Fraction of memory for the KV cache, of what is left after loading the weights: free
    /// device memory on a GPU (default 0.85), MemAvailable on the CPU (default 0.5); capped at what
    /// --max-running-requests full-context requests use.
    #[arg(long)]
    mem_fraction_static: Option<f32>,
    /// CPU only: KV cache size in MiB (overrides --mem-fraction-static).
    #[arg(long)]
    cpu_kv_cache_mb: Option<usize>,
    /// KV cache size in token positions (overrides both of the above).
    #[arg(long)]
    max_total_tokens: Option<usize>,
    /// Positions per KV page.
    #[arg(long, default_value_t = 64)]
    page_size: usize,
    /// Most tokens computed in one step (decode tokens included); longer prompts are prefilled
    /// in chunks. -1: no limit.
    #[arg(long, default_value_t = 8192, allow_negative_numbers = true)]
    chunked_prefill_size: i64,
    /// Most requests running at once.
    #[arg(long, default_value_t = 128)]
    max_running_requests: usize,
    /// Most requests waiting for admission; more get 503.
    #[arg(long, default_value_t = 4096)]
    max_queued_requests: usize,
    /// Turn off prefix caching.
    #[arg(long)]
    disable_radix_cache: bool,
    /// Largest decode batch replayed as a captured CUDA graph on the GPU (default: none; captured
    /// on first use of each batch size 1, 2, 4, 8, 16, 24, …). The CPU ignores it.
    #[arg(long)]
    cuda_graph_max_bs: Option<usize>,
    /// SGLang compatibility: turns CUDA-graph capture on (up to --torch-compile-max-bs, default 32).
    #[arg(long)]
    enable_torch_compile: bool,
    /// SGLang compatibility: an alias of --cuda-graph-max-bs.
    #[arg(long)]
    torch_compile_max_bs: Option<usize>,
    /// Accepted and ignored: no code from the checkpoint is ever run.
    #[arg(long)]
    trust_remote_code: bool,
    /// Split <think>…</think> into reasoning_content: deepseek-r1.
    #[arg(long)]
    reasoning_parser: Option<String>,
    /// Longest prompt + completion (default: max_position_embeddings of config.json).
    #[arg(long)]
    context_length: Option<usize>,
    /// A Jinja chat template file replacing the checkpoint's.
    #[arg(long)]
    chat_template: Option<PathBuf>,
    /// Seed for requests that bring none.
    #[arg(long, default_value_t = 0)]
    random_seed: u64,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// Log filter (RUST_LOG syntax), e.g. info or dsv3=debug.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let flags = LaunchFlags {
        device: args.device.clone(),
        tp: args.par.tp,
        dp: args.par.dp,
        enable_dp_attention: args.par.enable_dp_attention,
        enable_ep_moe: args.par.enable_ep_moe,
        ep_size: args.par.ep_size,
        nnodes: args.par.nnodes,
        node_rank: args.par.node_rank,
        dist_init_addr: args.par.dist_init_addr.clone(),
        quantization: args.quantization.clone(),
        kv_cache_dtype: args.kv_cache_dtype.clone(),
    };
    launch::check(&flags)?;
    let reasoning_parser = args
        .reasoning_parser
        .as_deref()
        .map(|s| s.parse::<ReasoningParserKind>().map_err(|e| format!("--reasoning-parser: {e}")))
        .transpose()?;
    let device: Device = args.device.replace("rocm", "hip").parse().map_err(|e| format!("--device: {e}"))?;
    // CUDA graphs: --cuda-graph-max-bs, or its SGLang aliases (--enable-torch-compile alone: 32).
    let cuda_graph_max_bs = args
        .cuda_graph_max_bs
        .or(args.torch_compile_max_bs)
        .unwrap_or(if args.enable_torch_compile { 32 } else { 0 });
    if cuda_graph_max_bs > 0 && device == Device::Cpu {
        tracing::info!("--cuda-graph-max-bs / --enable-torch-compile: no effect on the CPU backend");
    }
    let default_fraction = if device == Device::Cpu { 0.5 } else { 0.85 };
    let kv_cache = match (args.max_total_tokens, args.cpu_kv_cache_mb, args.mem_fraction_static) {
        (Some(t), _, _) => KvCacheSize::Tokens(t),
        (None, Some(mb), _) if device == Device::Cpu => KvCacheSize::Bytes(mb << 20),
        (None, Some(_), _) => return Err("--cpu-kv-cache-mb: CPU only; on a GPU use --mem-fraction-static or --max-total-tokens".into()),
        (None, None, f) => KvCacheSize::MemFraction(f.unwrap_or(default_fraction)),
    };
    let chunked_prefill_size = match args.chunked_prefill_size {
        c if c < 0 => None,
        c => Some(c as usize),
    };
    let engine_cfg = EngineConfig {
        page_size: args.page_size,
        max_running_requests: args.max_running_requests,
        chunked_prefill_size,
        kv_cache,
        context_length: args.context_length,
        max_queued_requests: args.max_queued_requests,
        enable_prefix_caching: !args.disable_radix_cache,
        random_seed: args.random_seed,
        cuda_graph_max_bs: if device == Device::Cpu { 0 } else { cuda_graph_max_bs },
        gpu_options: launch::gpu_options(&flags)?,
    };
    let (dir, default_name) = match &args.model_path {
        Some(p) => (p.clone(), p.display().to_string()),
        None => (embedded::materialize().map_err(|e| e.to_string())?, embedded::EMBEDDED_MODEL_NAME.to_string()),
    };
    let server_cfg = ServerConfig {
        served_model_name: args.served_model_name.clone().unwrap_or_else(|| default_name.clone()),
        model_path: default_name,
        reasoning_parser,
        max_body_bytes: args.max_body_bytes,
    };
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            (args.host.as_str(), args.port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .ok_or(())
        })
        .map_err(|_| format!("--host {}: not an address this machine can listen on", args.host))?;
    launch::check_quantization(&flags, &dir)?;
    let t0 = std::time::Instant::now();
    let state = if args.par.tp > 1 {
        match build_tp_state(&args, &dir, &engine_cfg, server_cfg)? {
            Some(state) => state,
            None => return Ok(()), // a follower node: node 0 has stopped
        }
    } else {
        build_state(&dir, device, &engine_cfg, server_cfg, args.chat_template.as_deref()).map_err(|e| e.to_string())?
    };
    let info = state.engine.info().clone();
    let dp = match info.dp_ranks {
        1 => String::new(),
        n => format!(" (dp attention over {n} ranks: {} pages, an allocator and a prefix cache each)", info.num_pages / n),
    };
    tracing::info!(
        "loaded {} in {:.1?} on {}: context {}, KV cache {} pages × {} = {} positions ({:.1} MiB){dp}, \
         max running {}, chunked prefill {}, prefix cache {}",
        dir.display(),
        t0.elapsed(),
        info.device,
        info.context_length,
        info.num_pages,
        info.page_size,
        info.max_total_tokens,
        info.kv_bytes as f64 / (1 << 20) as f64,
        info.max_running_requests,
        info.step_token_budget,
        if info.prefix_caching { "on" } else { "off" },
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    let engine = state.engine.clone();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("binding {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!("serving `{}` on http://{local}", state.cfg.served_model_name);
        let drain_engine = engine.clone();
        let shutdown = async move {
            shutdown_signal().await;
            tracing::info!("shutting down: draining running requests");
            drain_engine.stop_accepting();
        };
        serve(listener, state, shutdown).await.map_err(|e| format!("server: {e}"))?;
        let engine2 = Arc::clone(&engine);
        tokio::task::spawn_blocking(move || engine2.shutdown(true))
            .await
            .map_err(|e| format!("engine shutdown: {e}"))?;
        tracing::info!("bye");
        Ok::<(), String>(())
    })
}

/// `--tp N`: the group over GPUs --base-gpu-id.. of this node (and the other nodes' with
/// `--nnodes`), one engine over it on node 0 (with `--enable-dp-attention`: a pool, an allocator
/// and a prefix cache per GPU); `None` on the other nodes, which only run node 0's steps
/// (engine::multinode) and return when it stops.
#[cfg(any(feature = "cuda", feature = "hip"))]
fn build_tp_state(args: &Args, dir: &std::path::Path, engine_cfg: &EngineConfig, server_cfg: ServerConfig) -> Result<Option<dsv3::server::AppState>, String> {
    use dsv3::backend::Device;
    use dsv3::dist::open_group_on;
    use dsv3::engine::{multinode, TpStepModel};
    use dsv3::model::gpu::TpModel;
    let device: Option<Device> = args.device.replace("rocm", "hip").parse().ok();
    if let Some(d @ (Device::Cuda(n) | Device::Hip(n))) = device {
        if n != 0 && n != args.par.base_gpu_id {
            return Err(format!("--device {d} with --tp {}: pick the group's first GPU with --base-gpu-id {n}", args.par.tp));
        }
    }
    // The group runs on the vendor --device names (CUDA + NCCL or HIP + RCCL); with the default
    // `--device cpu`, on this machine's GPUs (dist::device::local_vendor).
    let vendor = match device.and_then(|d| d.vendor()) {
        Some(v) => v,
        None => dsv3::dist::device::local_vendor().map_err(|e| e.to_string())?,
    };
    let group = args.par.group_config().map_err(|e| e.to_string())?;
    let timeout = group.timeout;
    // Several nodes: node 0 listens for the others' step channels from the start (they connect
    // once their model is loaded).
    let channel = match (&args.par.dist_init_addr, args.par.nnodes) {
        (Some(a), n) if n > 1 => Some(multinode::step_channel_addr(a).map_err(|e| e.to_string())?),
        _ => None,
    };
    let listener = match channel {
        Some(a) if args.par.node_rank == 0 => Some(multinode::listen(a).map_err(|e| e.to_string())?),
        _ => None,
    };
    let ar = std::sync::Arc::new(open_group_on(vendor, &group).map_err(|e| e.to_string())?);
    let (moe, attn) = args.par.splits();
    // Every rank computes as one GPU would (--kv-cache-dtype: the fast kernels, bf16 or fp8 cache).
    let model = TpModel::load_with(dir, ar, moe, attn, engine_cfg.gpu_options).map_err(|e| e.to_string())?;
    let bos = model.config().bos_token_id;
    let mut step = TpStepModel::new(model).with_cuda_graphs(engine_cfg.cuda_graph_max_bs);
    let step: Box<dyn dsv3::engine::StepModel> = match (channel, listener) {
        (Some(addr), None) => {
            // A follower node: run node 0's steps until it stops; no HTTP server here.
            let node = args.par.node_rank;
            tracing::info!("node {node}: following node 0's steps over {addr}");
            let ch = multinode::connect_to_leader(addr, node, timeout).map_err(|e| e.to_string())?;
            let steps = multinode::follow(&mut step, ch).map_err(|e| format!("node {node}: {e}"))?;
            tracing::info!("node {node}: node 0 stopped after {steps} steps");
            return Ok(None);
        }
        (_, Some(l)) => {
            let followers = multinode::accept_followers(&l, args.par.nnodes, timeout).map_err(|e| e.to_string())?;
            tracing::info!("node 0: {} other node(s) follow its steps", followers.len());
            Box::new(multinode::LeaderStepModel::new(Box::new(step), followers))
        }
        _ => Box::new(step),
    };
    dsv3::server::build_state_for(step, bos, dir, engine_cfg, server_cfg, args.chat_template.as_deref()).map(Some).map_err(|e| e.to_string())
}

#[cfg(not(any(feature = "cuda", feature = "hip")))]
fn build_tp_state(args: &Args, _dir: &std::path::Path, _engine_cfg: &EngineConfig, _server_cfg: ServerConfig) -> Result<Option<dsv3::server::AppState>, String> {
    Err(format!("--tp {}: this build of dsv3 has no GPU backend (rebuild with --features cuda or hip)", args.par.tp))
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
