//! Greedy generation from a DeepSeek-V3-architecture checkpoint.
//!
//! cargo run --release --example generate -- --model-path DIR --prompt-token-ids 0,17,923 \
//!     --max-new-tokens 12 --device cpu --dump-logits OUT.safetensors --output-json OUT.json
//!
//! Without `--model-path` it runs the embedded tiny model.
//!
//! Tensor parallelism (a build with --features cuda): `--device cuda --tp 2` drives GPUs 0..2
//! (`--base-gpu-id` shifts them) from this one process; `--enable-ep-moe` (or `--ep-size 2`)
//! splits the routed experts whole over the ranks. Several nodes: run it on each with
//! `--nnodes M --node-rank R --dist-init-addr HOST:PORT` (node 0's address); each node drives
//! `tp / nnodes` GPUs and all of them print the same tokens.
//!
//! `--enable-dp-attention` (one node; `--dp` 1 or equal to `--tp`): every GPU holds all attention
//! weights and attends for its own sequences (here the one prompt, on rank 0); the MoE / MLP stays
//! TP (or EP) over all GPUs.
//!
//! On a GPU, `--kv-cache-dtype` picks how the model computes, one GPU and every rank of `--tp`
//! alike, with serve's values: `f32` (the default here: the reference path, the CPU's numbers to
//! f32 rounding, for comparisons with transformers), `auto` / `bf16` (the fast kernels over a bf16
//! latent cache, what serve runs by default) or `fp8_e4m3` (the same over the fp8 cache).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use dsv3::backend::Device;
use dsv3::model::cpu::{AttentionPath, CpuModel, CpuOptions};
use dsv3::model::gpu::{GpuModel, GpuOptions};
use dsv3::model::embedded;
use dsv3::model::generate::{greedy_generate, CausalLm, Generation};
use dsv3::model::quant_method;
use dsv3::tokenizer::TextTokenizer;
use dsv3::{Error, Result};

#[path = "common/parallel.rs"]
mod parallel;
use parallel::ParallelArgs;

#[derive(Parser, Debug)]
#[command(about = "Greedy generation with dsv3 (DeepSeek-V3 architecture)")]
struct Args {
    /// Checkpoint directory (config.json + safetensors). Default: the embedded tiny model.
    #[arg(long)]
    model_path: Option<PathBuf>,
    /// Prompt as comma-separated token ids, e.g. 0,17,923.
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt")]
    prompt_token_ids: Option<Vec<u32>>,
    /// Prompt as text (needs the checkpoint's tokenizer.json).
    #[arg(long)]
    prompt: Option<String>,
    #[arg(long, default_value_t = 16)]
    max_new_tokens: usize,
    /// cpu, cuda:N (build with --features cuda) or hip:N (--features hip).
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Write the logits at every prompt position ([prompt_len, vocab] f32, tensor `logits`).
    #[arg(long)]
    dump_logits: Option<PathBuf>,
    /// Write {"prompt_token_ids": [...], "output_token_ids": [...]}.
    #[arg(long)]
    output_json: Option<PathBuf>,
    /// Keep generating after an end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Emulate the GPU's FP8 per-token-group activation quantization on the CPU.
    #[arg(long)]
    emulate_fp8_activations: bool,
    /// MLA formulation on the CPU: auto (naive prefill, absorbed decode), naive or absorbed.
    #[arg(long, value_enum, default_value_t = Attention::Auto)]
    attention: Attention,
    /// On a GPU: f32 (the reference path), auto / bf16 (fast kernels, bf16 latent cache) or
    /// fp8_e4m3 (fast kernels, fp8 latent cache); every TP rank alike.
    #[arg(long, default_value = "f32")]
    kv_cache_dtype: String,
    /// Expected weight format (fp8, w8a8_int8, blockwise_int8, moe_wna16, awq): an error when the
    /// checkpoint holds another. Without it the format is detected from the checkpoint.
    #[arg(long)]
    quantization: Option<String>,
    #[command(flatten)]
    par: ParallelArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Attention {
    Auto,
    Naive,
    Absorbed,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let dir = match &args.model_path {
        Some(p) => p.clone(),
        None => embedded::materialize()?,
    };
    if let Some(q) = &args.quantization {
        quant_method::check_flag_for_dir(q, &dir)?;
    }
    dsv3::server::launch::dp_attention(args.par.tp, args.par.dp, args.par.enable_dp_attention).map_err(Error::InvalidArgument)?;
    if args.par.enable_dp_attention && args.par.nnodes > 1 {
        return Err(Error::InvalidArgument("--enable-dp-attention runs on one node (--nnodes 1)".into()));
    }
    let gpu_opts = dsv3::server::launch::kv_cache_options(&args.kv_cache_dtype).map_err(Error::InvalidArgument)?;
    let t0 = Instant::now();
    match args.device {
        Device::Cpu => {
            let opts = CpuOptions {
                emulate_fp8_activations: args.emulate_fp8_activations,
                emulate_int8_activations: false,
                attention: match args.attention {
                    Attention::Auto => AttentionPath::Auto,
                    Attention::Naive => AttentionPath::Naive,
                    Attention::Absorbed => AttentionPath::Absorbed,
                },
            };
            let model = CpuModel::load(&dir, opts)?;
            generate(&args, &dir, &model, t0)
        }
        device if args.par.tp > 1 || args.par.nnodes > 1 => generate_tp(&args, &dir, device, gpu_opts, t0),
        device => {
            let model = GpuModel::load_with(&dir, device, gpu_opts)?;
            generate(&args, &dir, &model, t0)
        }
    }
}

/// `--tp N` (and several nodes): one process drives this node's GPUs of the group (CUDA with
/// NCCL, or HIP with RCCL, as `--device` says).
#[cfg(any(feature = "cuda", feature = "hip"))]
fn generate_tp(args: &Args, dir: &Path, device: Device, opts: GpuOptions, t0: Instant) -> Result<()> {
    use dsv3::dist::open_group_on;
    use dsv3::model::gpu::TpModel;
    match device {
        Device::Cuda(n) | Device::Hip(n) if n == 0 || n == args.par.base_gpu_id => {}
        Device::Cuda(n) | Device::Hip(n) => {
            return Err(Error::InvalidArgument(format!("--device {device} with --tp {}: pick the group's first GPU with --base-gpu-id {n}", args.par.tp)))
        }
        _ => return Err(Error::InvalidArgument(format!("--tp {}: tensor parallelism runs on GPUs (--device cuda or hip), not {device}", args.par.tp))),
    }
    if args.par.ep_size != 1 && args.par.ep_size != args.par.tp {
        return Err(Error::InvalidArgument(format!("--ep-size {}: expert parallelism spans the whole TP group (--ep-size 1 or {})", args.par.ep_size, args.par.tp)));
    }
    let vendor = device.vendor().ok_or_else(|| Error::InvalidArgument(format!("--tp {}: {device} is not a GPU", args.par.tp)))?;
    let ar = std::sync::Arc::new(open_group_on(vendor, &args.par.group_config()?)?);
    let (moe, attn) = args.par.splits();
    let model = TpModel::load_with(dir, ar, moe, attn, opts)?;
    tracing::info!("{} ({moe:?} MoE split)", model.describe());
    generate(args, dir, &model, t0)
}

#[cfg(not(any(feature = "cuda", feature = "hip")))]
fn generate_tp(args: &Args, _dir: &Path, _device: Device, _opts: GpuOptions, _t0: Instant) -> Result<()> {
    Err(Error::InvalidArgument(format!("--tp {} / --nnodes {}: this build of dsv3 has no GPU backend (rebuild with --features cuda or hip)", args.par.tp, args.par.nnodes)))
}

fn generate<M: CausalLm>(args: &Args, dir: &Path, model: &M, t0: Instant) -> Result<()> {
    tracing::info!("loaded {} on {} in {:.2?}", dir.display(), args.device, t0.elapsed());
    let tokenizer = TextTokenizer::load(dir, model.config().bos_token_id)?;
    let prompt = match (&args.prompt_token_ids, &args.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => match &tokenizer {
            Some(tok) => tok.encode(text)?,
            None => {
                return Err(Error::InvalidArgument(format!(
                    "--prompt needs {}/tokenizer.json; pass --prompt-token-ids instead",
                    dir.display()
                )))
            }
        },
        (None, None) => match &tokenizer {
            Some(tok) => tok.encode("The capital of France is")?,
            None => vec![model.config().bos_token_id.unwrap_or(0)],
        },
    };
    if prompt.is_empty() {
        return Err(Error::InvalidArgument("the prompt is empty".into()));
    }
    let t1 = Instant::now();
    let gen = greedy_generate(model, &prompt, args.max_new_tokens, !args.ignore_eos)?;
    tracing::info!(
        "{} prompt + {} generated tokens in {:.2?}",
        prompt.len(),
        gen.output_token_ids.len(),
        t1.elapsed()
    );
    report(args, &prompt, &gen, tokenizer.as_ref())
}

fn report(args: &Args, prompt: &[u32], gen: &Generation, tok: Option<&TextTokenizer>) -> Result<()> {
    if let Some(path) = &args.dump_logits {
        write_logits(path, gen)?;
    }
    let json = serde_json::json!({
        "prompt_token_ids": prompt,
        "output_token_ids": gen.output_token_ids,
    });
    if let Some(path) = &args.output_json {
        std::fs::write(path, json.to_string())
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    println!("{json}");
    if let Some(tok) = tok {
        println!("{}{}", tok.decode(prompt)?, tok.decode(&gen.output_token_ids)?);
    }
    Ok(())
}

fn write_logits(path: &Path, gen: &Generation) -> Result<()> {
    let bytes: Vec<u8> = gen.prompt_logits.data().iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        gen.prompt_logits.shape().to_vec(),
        &bytes,
    )
    .map_err(|e| Error::InvalidArgument(format!("logits tensor: {e}")))?;
    safetensors::tensor::serialize_to_file([("logits", view)], None, path)
        .map_err(|e| Error::InvalidArgument(format!("writing {}: {e}", path.display())))
}
