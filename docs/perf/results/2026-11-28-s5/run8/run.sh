#!/usr/bin/env bash
# Session 5, run 8 (one H200): MLA wgmma kernel skipping the tiles past the causal frontier —
# gpu_mla / gpu_model / gpu_engine, the e2e slice (prefill), MLA decode rows unchanged.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r8.tar.xz
B=/tmp/g/bin; L=/tmp/logs8; mkdir -p $L
F='^test |test result|panicked'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_mla 150; t gpu_model 100; t gpu_engine 100; } > $L/tests.log 2>&1
cat $L/tests.log
timeout 100 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32,256 --contexts 4096 --prefill-lens 4096,16384 > $L/e2e.log 2>&1; echo "e2e rc=$?"
grep -E "^\| [0-9]|breakdown" $L/e2e.log | tail -6
DSV3_MLA_BENCH_SHAPES=128x128x16384x1,128x32x16384x1,128x16x16384x2 timeout 60 $B/mla_decode-* --bench > $L/mla.log 2>&1
grep -E "^\| 128 \|" $L/mla.log | cut -d'|' -f2-5,20-23
tar -C $L -czf $OUT/logs.tar.gz .
