#!/usr/bin/env bash
# Four H200s: the split-vs-one-GPU logits check of the random slice, judged as the GPU test does.
export CARGO_MANIFEST_DIR=$PWD NCCL_NVLS_ENABLE=0
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r7.tar.xz
B=/tmp/g/bin/bench_one_batch
A="--offline --num-layers 4 --dense-layers 1 --steps 2 --batch-sizes 1 --contexts 1024 --prefill-lens 1024 --check-tp1"
for n in 2 4; do
  for x in "" --enable-ep-moe --enable-dp-attention; do
    echo "=== tp $n $x"; timeout 100 $B $A --tp $n $x 2>&1 | grep -E "check vs|error|Error"
  done
done
