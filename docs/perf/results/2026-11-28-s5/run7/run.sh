#!/usr/bin/env bash
# Session 5, run 7 (2 × H200): the hip-comm branch merged on main (the communicator behind one
# CommStream trait for CUDA and HIP) — the CUDA multi-GPU tests and the all-reduce table.
export CARGO_MANIFEST_DIR=$PWD NCCL_NVLS_ENABLE=0 CUDA_VISIBLE_DEVICES=0,1
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r7.tar.xz
B=/tmp/g/bin; L=/tmp/logs7; mkdir -p $L
F='^test |test result|panicked'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_allreduce 150; t gpu_tp_fast 150; t gpu_tp 200; } > $L/tests.log 2>&1
cat $L/tests.log
timeout 90 $B/allreduce-* --bench > $L/allreduce.log 2>&1; echo "allreduce bench rc=$?"
grep -E "^\|" $L/allreduce.log | head -30
tar -C $L -czf $OUT/logs.tar.gz .
