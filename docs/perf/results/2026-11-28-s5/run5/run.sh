#!/usr/bin/env bash
# Session 5, run 5 (one H200): MLA wgmma K tiles by TMA; fused RMSNorm → quant; the revert of the
# 8-bit streaming ring — GPU tests, the MLA table, FP8 decode rows, the e2e slice.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r5.tar.xz
B=/tmp/g/bin; L=/tmp/logs5; mkdir -p $L
F='^test |test result|panicked'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_mla 200; t gpu_kernels 200; t gpu_model 150; t gpu_engine 150; } > $L/tests.log 2>&1
cat $L/tests.log
timeout 100 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32,256 --contexts 4096 --prefill-lens 4096 > $L/e2e.log 2>&1; echo "e2e rc=$?"
DSV3_BENCH_TOKENS=1,16 DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 timeout 60 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1; echo "fp8 rc=$?"
timeout 200 $B/mla_decode-* --bench > $L/mla.log 2>&1; echo "mla rc=$?"
tar -C $L -czf $OUT/logs.tar.gz .
grep -E "^\| (1|8|32|64|128) \|" $L/mla.log | cut -d'|' -f2-5,7-10,20-23 | head -40
grep -E "^dense " $L/fp8.log | awk '$3 == 1 {print $2, $3, $4, $5, $NF}'
grep -E "^\| [0-9]" $L/e2e.log | head -8
