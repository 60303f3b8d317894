#!/usr/bin/env python3
"""Projects the full 61-layer DeepSeek-V3 decode on 8 GPUs from `bench_one_batch --offline` on a
few-layer slice on one GPU (its JSON lines: --output-file).

Method (docs/perf/e2e.md): the per-kernel-group breakdown of one eager step (CUDA events) gives
per-layer device times: attention weights part (q/kv projections, absorb, un-absorb, o_proj),
attention over the cache (`attn.mla`), norms, dense MLP, MoE (router + shared + routed experts),
embed and lm_head. The 61-layer single-GPU step is 61·(attention + norms) + 3·dense + 58·MoE +
embed + lm_head, scaled by (graph-replayed wall time / eager device time) of the measured slice.
- TP 8: weights of attention, MLP, experts and lm_head split 8 ways (their times / 8, an optimistic
  bound: smaller GEMMs run less efficiently), the latent cache replicated (attention over the cache
  unchanged), plus two all-reduces of B·7168 f32 per layer (--allreduce-us, per call).
- DP attention (8 ranks): attention of B/8 sequences with whole attention weights (the measured
  point at batch B/8), MoE / MLP over all B tokens split 8 ways, plus the same two collectives.

Usage: python3 benches/project_e2e.py e2e.jsonl [--allreduce-us 12]
"""
import json
import sys

SGLANG_8XH200 = {1: 30.0, 32: 760.0}  # tok/s, 128-in / 256-out (the reference figures)


def per_layer(p):
    b, layers = p["breakdown_ms"], p["layers"]
    dense_layers = 1 if "dense_mlp" in b else 0
    moe_layers = layers - dense_layers
    attn_w = sum(v for k, v in b.items() if k.startswith("attn.") and k != "attn.mla") / layers
    return {
        "attn_w": attn_w,
        "attn_kv": b.get("attn.mla", 0.0) / layers,
        "norm": b.get("add_norm", 0.0) / layers,
        "dense": b.get("dense_mlp", 0.0) / max(dense_layers, 1),
        "moe": sum(b.get(k, 0.0) for k in ("moe.router", "moe.shared", "moe.experts")) / max(moe_layers, 1),
        "embed": b.get("embed", 0.0),
        "lm_head": b.get("lm_head", 0.0),
        "total": b.get("total", 0.0),
    }


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__)
        return 2
    ar_us = 12.0
    if "--allreduce-us" in args:
        ar_us = float(args[args.index("--allreduce-us") + 1])
    points = [json.loads(l) for l in open(args[0]) if l.strip()]
    decode = {(p["batch"], p["context"]): p for p in points if p.get("kind") == "decode"}
    print(f"| batch | context | 1 GPU, 61 layers ms | TP 8 ms | TP 8 tok/s | DP-attn 8 ms | DP-attn 8 tok/s | SGLang 8×H200 tok/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (b, c), p in sorted(decode.items(), key=lambda x: (x[0][1], x[0][0])):
        l = per_layer(p)
        wall = p.get("graph_ms") or p.get("eager_ms")
        f = wall / l["total"] if l["total"] > 0 else 1.0
        one = f * (61 * (l["attn_w"] + l["attn_kv"] + l["norm"]) + 3 * l["dense"] + 58 * l["moe"] + l["embed"] + l["lm_head"])
        ar = 2 * 61 * ar_us / 1e3
        tp = f * (61 * (l["attn_w"] / 8 + l["attn_kv"] + l["norm"]) + (3 * l["dense"] + 58 * l["moe"] + l["lm_head"]) / 8 + l["embed"]) + ar
        small = decode.get((max(b // 8, 1), c))
        if small:
            s = per_layer(small)
            fs = (small.get("graph_ms") or small.get("eager_ms")) / s["total"] if s["total"] > 0 else 1.0
            dp = fs * 61 * (s["attn_w"] + s["attn_kv"] + s["norm"]) + s["embed"] + s["lm_head"] + f * (3 * l["dense"] + 58 * l["moe"]) / 8 + ar
            dp_s, dp_t = f"{dp:.2f}", f"{b / dp * 1e3:.0f}"
        else:
            dp_s, dp_t = "-", "-"
        ref = SGLANG_8XH200.get(b)
        print(f"| {b} | {c} | {one:.2f} | {tp:.2f} | {b / tp * 1e3:.0f} | {dp_s} | {dp_t} | {ref if ref else '-'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
