#!/usr/bin/env bash
# Four H200s (issue 10's 4-GPU part, with session 4's kernels: MLA wgmma, INT8/FP8 v2, PDL): the
# random real-dimension slice as TP 4 / EP 4 (logits checked against one GPU) / DP attention 4.
export CARGO_MANIFEST_DIR=$PWD NCCL_NVLS_ENABLE=0
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r6.tar.xz
B=/tmp/g/bin/bench_one_batch
A="--offline --num-layers 4 --dense-layers 1 --steps 8 --batch-sizes 1,32,256 --contexts 4096 --prefill-lens 4096 --tp 4"
timeout 170 $B $A --check-tp1 > $OUT/tp4.log 2>&1; echo "tp4 rc=$?"
timeout 170 $B $A --enable-ep-moe --check-tp1 > $OUT/ep4.log 2>&1; echo "ep4 rc=$?"
timeout 170 $B $A --enable-dp-attention > $OUT/dp4.log 2>&1; echo "dp4 rc=$?"
for f in tp4 ep4 dp4; do echo "--- $f"; grep -v breakdown $OUT/$f.log | grep -E "^\||tp1|TP 1|logit|error|match" | grep -v -- "---"; done
