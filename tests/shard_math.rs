//! The math check of tensor / expert parallelism, on the CPU: for every fixture, each rank's
//! partial output of attention (through o_proj), of the dense MLP and of the MoE, computed with
//! the CPU reference ops on the slices that `ShardPlan::slice` assigns to it, sums over the ranks
//! to the unsharded output. This is what the GPU's all-reduce relies on.

mod common;

use common::fixtures;
use dsv3::model::checkpoint::{Checkpoint, DType};
use dsv3::model::config::ModelConfig;
use dsv3::model::cpu::{CpuModel, CpuOptions};
use dsv3::model::generate::CausalLm;
use dsv3::model::shard::{MoeSplit, Shard, ShardPlan};
use dsv3::ops::attention::{mla_absorbed, MlaDims};
use dsv3::ops::linear::linear;
use dsv3::ops::moe::{route_tokens, MlpWeights, MoeWeights};
use dsv3::ops::routing::RoutingParams;
use dsv3::tensor::{rel_error, Tensor};

/// f32 sums in another order: a few ulps per add, far below 1e-5 relative.
const TOL: f64 = 1e-5;

fn rand(seed: u64, shape: &[usize]) -> Tensor {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::new(shape.to_vec(), v).unwrap()
}

fn full(ckpt: &Checkpoint, name: &str, n: usize, k: usize) -> Tensor {
    ckpt.load_f32(name, &[n, k]).unwrap_or_else(|e| panic!("{e}"))
}

/// The slice of `name` that `plan` gives its rank, cut out of the full f32 tensor.
fn part(ckpt: &Checkpoint, plan: &ShardPlan, name: &str, n: usize, k: usize) -> Option<Tensor> {
    let s = plan.slice(name, n, k)?;
    let t = full(ckpt, name, n, k);
    let mut v = Vec::with_capacity(s.rows.len() * s.cols.len());
    for r in s.rows.clone() {
        v.extend_from_slice(&t.data()[r * k + s.cols.start..r * k + s.cols.end]);
    }
    Some(Tensor::new(vec![s.rows.len(), s.cols.len()], v).unwrap())
}

fn sum(parts: &[Vec<f32>]) -> Vec<f32> {
    let mut out = vec![0f32; parts[0].len()];
    for p in parts {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

/// The MLP `prefix` ([inter, h] gate/up, [h, inter] down in the checkpoint), or `plan`'s slice of it.
fn mlp(ckpt: &Checkpoint, plan: Option<&ShardPlan>, prefix: &str, h: usize, inter: usize) -> MlpWeights {
    let get = |proj: &str, n, k| {
        let name = format!("{prefix}.{proj}.weight");
        match plan {
            Some(p) => part(ckpt, p, &name, n, k).expect("an MLP slice"),
            None => full(ckpt, &name, n, k),
        }
    };
    MlpWeights { gate: get("gate_proj", inter, h), up: get("up_proj", inter, h), down: get("down_proj", h, inter) }
}

fn plans(cfg: &ModelConfig, world: usize, moe: MoeSplit) -> Vec<ShardPlan> {
    (0..world).map(|r| ShardPlan::new(cfg, Shard::new(r, world, moe).unwrap()).unwrap()).collect()
}

/// Attention of layer 0 from its projections through o_proj: per-rank heads, summed.
fn check_attention(dir: &std::path::Path, cfg: &ModelConfig, ckpt: &Checkpoint, world: usize) {
    let (h, heads) = (cfg.hidden_size, cfg.num_attention_heads);
    let d = MlaDims { heads, nope: cfg.qk_nope_head_dim, rope: cfg.qk_rope_head_dim, v: cfg.v_head_dim, kv_lora: cfg.kv_lora_rank };
    let (t, s) = (3, 7);
    let p = "model.layers.0.self_attn";
    let (q_name, q_in) = match cfg.q_lora_rank {
        Some(r) => (format!("{p}.q_b_proj.weight"), r),
        None => (format!("{p}.q_proj.weight"), h),
    };
    let q_src = rand(1, &[t, q_in]);
    let cache = rand(2, &[s, d.latent()]);
    let kv_b_name = format!("{p}.kv_b_proj.weight");
    let o_name = format!("{p}.o_proj.weight");
    let kv_rows = heads * (d.nope + d.v);
    let attend = |q_w: &Tensor, kv_b: &Tensor, o: &Tensor, dd: &MlaDims| -> Vec<f32> {
        let q = linear(&q_src, q_w);
        let att = mla_absorbed(q.data(), cache.data(), kv_b.data(), dd, s - t, cfg.softmax_scale());
        linear(&Tensor::new(vec![t, dd.heads * dd.v], att).unwrap(), o).into_data()
    };
    let want = attend(
        &full(ckpt, &q_name, heads * d.qk(), q_in),
        &full(ckpt, &kv_b_name, kv_rows, d.kv_lora),
        &full(ckpt, &o_name, h, heads * d.v),
        &d,
    );
    let parts: Vec<Vec<f32>> = plans(cfg, world, MoeSplit::Tensor)
        .iter()
        .map(|pl| {
            let dd = MlaDims { heads: pl.heads.len(), ..d };
            attend(
                &part(ckpt, pl, &q_name, heads * d.qk(), q_in).unwrap(),
                &part(ckpt, pl, &kv_b_name, kv_rows, d.kv_lora).unwrap(),
                &part(ckpt, pl, &o_name, h, heads * d.v).unwrap(),
                &dd,
            )
        })
        .collect();
    let e = rel_error(&sum(&parts), &want);
    assert!(e <= TOL, "{}: attention over {world} ranks: rel error {e:e}", dir.display());
}

fn check_dense(dir: &std::path::Path, cfg: &ModelConfig, ckpt: &Checkpoint, world: usize) {
    let Some(i) = (0..cfg.num_hidden_layers).find(|&i| !cfg.is_moe_layer(i)) else { return };
    let (h, inter) = (cfg.hidden_size, cfg.intermediate_size);
    let prefix = format!("model.layers.{i}.mlp");
    let x = rand(3, &[5, h]);
    let want = mlp(ckpt, None, &prefix, h, inter).forward(x.data(), false);
    let parts: Vec<Vec<f32>> = plans(cfg, world, MoeSplit::Tensor)
        .iter()
        .map(|pl| mlp(ckpt, Some(pl), &prefix, h, inter).forward(x.data(), false))
        .collect();
    let e = rel_error(&sum(&parts), &want);
    assert!(e <= TOL, "{}: dense MLP over {world} ranks: rel error {e:e}", dir.display());
}

/// The MoE of the first MoE layer: TP (every expert's intermediate split) and EP (whole experts
/// per rank; pairs routed elsewhere contribute nothing on this rank), shared experts TP-split.
fn check_moe(dir: &std::path::Path, cfg: &ModelConfig, ckpt: &Checkpoint, world: usize, split: MoeSplit) {
    let Some(i) = (0..cfg.num_hidden_layers).find(|&i| cfg.is_moe_layer(i)) else { return };
    let (h, inter, e) = (cfg.hidden_size, cfg.moe_intermediate_size, cfg.n_routed_experts);
    let p = format!("model.layers.{i}.mlp");
    let shared_inter = cfg.n_shared_experts * inter;
    let router = full(ckpt, &format!("{p}.gate.weight"), e, h);
    let bias = ckpt.load_f32(&format!("{p}.gate.e_score_correction_bias"), &[e]).unwrap().into_data();
    let routing = RoutingParams::from_config(cfg);
    let x = rand(4, &[9, h]);
    let whole = MoeWeights {
        router: router.clone(),
        bias: bias.clone(),
        experts: (0..e).map(|j| mlp(ckpt, None, &format!("{p}.experts.{j}"), h, inter)).collect(),
        shared: (shared_inter > 0).then(|| mlp(ckpt, None, &format!("{p}.shared_experts"), h, shared_inter)),
        routing: routing.clone(),
    };
    let want = whole.forward(x.data(), false);
    let routes = route_tokens(x.data(), &whole);
    let parts: Vec<Vec<f32>> = plans(cfg, world, split)
        .iter()
        .map(|pl| {
            let shared = (shared_inter > 0).then(|| mlp(ckpt, Some(pl), &format!("{p}.shared_experts"), h, shared_inter));
            let mut out = match &shared {
                Some(m) => m.forward(x.data(), false),
                None => vec![0f32; x.numel()],
            };
            // The pairs of this rank's experts, each expert on its slice.
            for (t, (ids, ws)) in routes.iter().enumerate() {
                for (&id, &w) in ids.iter().zip(ws) {
                    let name = format!("{p}.experts.{id}");
                    let Some(gate) = part(ckpt, pl, &format!("{name}.gate_proj.weight"), inter, h) else { continue };
                    let m = MlpWeights {
                        gate,
                        up: part(ckpt, pl, &format!("{name}.up_proj.weight"), inter, h).unwrap(),
                        down: part(ckpt, pl, &format!("{name}.down_proj.weight"), h, inter).unwrap(),
                    };
                    let y = m.forward(&x.data()[t * h..(t + 1) * h], false);
                    for (o, v) in out[t * h..(t + 1) * h].iter_mut().zip(y) {
                        *o += w * v;
                    }
                }
            }
            out
        })
        .collect();
    let err = rel_error(&sum(&parts), &want);
    assert!(err <= TOL, "{}: MoE ({split:?}) over {world} ranks: rel error {err:e}", dir.display());
}

#[test]
fn partial_outputs_of_the_ranks_sum_to_the_unsharded_output() {
    for dir in fixtures() {
        let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let ckpt = Checkpoint::open(&dir).unwrap();
        for world in [2, 3] {
            if world > cfg.num_attention_heads {
                continue;
            }
            check_attention(&dir, &cfg, &ckpt, world);
            check_dense(&dir, &cfg, &ckpt, world);
            check_moe(&dir, &cfg, &ckpt, world, MoeSplit::Tensor);
            if cfg.n_routed_experts >= world {
                check_moe(&dir, &cfg, &ckpt, world, MoeSplit::Expert);
            }
        }
        println!("{}: attention, MLP and MoE partial sums match", dir.display());
    }
}

/// The FP8 checkpoint the GPU TP tests write (`common::fp8_aligned`): it loads, its partial sums
/// add up like the fixtures', every float8 weight's TP-2 and EP-2 slice falls on 128×128 scale-block
/// edges (what it exists for: the GPU keeps those slices in float8), and the CPU reference runs it
/// to finite logits.
#[test]
fn the_aligned_fp8_checkpoint_splits_on_block_edges() {
    let tmp = common::fp8_aligned::checkpoint();
    let dir = tmp.path();
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let ckpt = Checkpoint::open(dir).unwrap();
    ckpt.check_against(&cfg).unwrap_or_else(|e| panic!("{e}"));
    check_attention(dir, &cfg, &ckpt, 2);
    check_dense(dir, &cfg, &ckpt, 2);
    let mut fp8 = 0;
    for moe in [MoeSplit::Tensor, MoeSplit::Expert] {
        check_moe(dir, &cfg, &ckpt, 2, moe);
        for plan in plans(&cfg, 2, moe) {
            for name in ckpt.names().filter(|n| ckpt.info(n).is_some_and(|i| i.dtype == DType::F8E4M3)) {
                let shape = &ckpt.info(name).unwrap().shape;
                let Some(s) = plan.slice(name, shape[0], shape[1]) else { continue };
                assert!(common::fp8_aligned::on_block_edges(&s, shape[0], shape[1]), "{name} {shape:?}: rows {:?} columns {:?} ({moe:?})", s.rows, s.cols);
                fp8 += 1;
            }
        }
    }
    assert!(fp8 > 100, "only {fp8} float8 slices checked");
    let cpu = CpuModel::load(dir, CpuOptions::default()).unwrap();
    let logits = cpu.forward(&[0, 5, 900, 17], &mut cpu.new_cache().unwrap()).unwrap();
    assert!(logits.data().iter().all(|x| x.is_finite()), "non-finite logits");
}

#[test]
fn a_world_too_large_for_the_heads_is_one_clear_error() {
    let dir = &fixtures()[0];
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let w = cfg.num_attention_heads + 1;
    let e = ShardPlan::new(&cfg, Shard::new(0, w, MoeSplit::Tensor).unwrap()).unwrap_err().to_string();
    assert!(e.contains("num_attention_heads") && e.contains(&format!("over {w} GPUs")), "{e}");
}
