//! Converts a DeepSeek-V3-architecture checkpoint: FP8 → BF16 (DeepSeek's `fp8_cast_bf16.py`),
//! BF16 / FP8 → block INT8 or channel INT8. Resumable: re-running skips finished shards.
//!
//! cargo run --release --example convert -- --input DIR --output DIR --to bf16|int8-block|int8-channel
//! cargo run --release --example convert -- --input DIR --output DIR --verify-only

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dsv3::convert::{self, Report, Target};

#[derive(Parser, Debug)]
#[command(
    about = "Convert a DeepSeek-V3 checkpoint (FP8 → BF16, → block / channel INT8), shard by shard, verified"
)]
struct Args {
    /// Source checkpoint directory (config.json + safetensors).
    #[arg(long)]
    input: PathBuf,
    /// Output directory (created; shards already converted there are kept).
    #[arg(long)]
    output: PathBuf,
    /// Target format: bf16, int8-block or int8-channel.
    #[arg(long, required_unless_present = "verify_only")]
    to: Option<Target>,
    /// Only re-check a finished conversion in --output against --input; write nothing.
    #[arg(long)]
    verify_only: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let result = match (args.verify_only, args.to) {
        (true, _) => convert::verify_only(&args.input, &args.output),
        (false, Some(to)) => convert::convert(&args.input, &args.output, to),
        (false, None) => Err(dsv3::Error::InvalidArgument("--to is required".into())),
    };
    match result {
        Ok(r) => {
            print_report(&args, &r);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_report(args: &Args, r: &Report) {
    let out = args.output.display();
    let v = &r.verified;
    if args.verify_only {
        println!(
            "{out}: {} shards verified against {}",
            r.skipped.len(),
            args.input.display()
        );
    } else if r.nothing_to_do() {
        println!("{out}: nothing to do, all {} shards are already converted and verified (convert-manifest.json)", r.skipped.len());
        return;
    } else {
        println!(
            "{out}: wrote {} shards, kept {} already converted; updated {}",
            r.written.len(),
            r.skipped.len(),
            if r.files_changed.is_empty() {
                "no other files".to_string()
            } else {
                r.files_changed.join(", ")
            }
        );
    }
    if v.shards > 0 {
        println!(
            "verified {} shards: {} tensors re-encoded (max relative error {:.3e} in {}, worst element at {:.2} of its bound), {} copied byte for byte",
            v.shards, v.encoded, v.max_rel_error, v.worst_tensor, v.max_bound_ratio, v.copied
        );
    }
}
