#!/usr/bin/env bash
# Session 5, run 9 (one H200): the causal frontier in the mma.sync MLA kernel too — gpu_mla /
# gpu_model / gpu_engine; the slice's prefill with the mma.sync kernel (DSV3_MLA_WGMMA=0) and with
# the default (wgmma).
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r9.tar.xz
B=/tmp/g/bin; L=/tmp/logs9; mkdir -p $L
F='^test |test result|panicked'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_mla 150; t gpu_model 100; t gpu_engine 100; } > $L/tests.log 2>&1
cat $L/tests.log
E="--offline --num-layers 4 --dense-layers 1 --steps 4 --batch-sizes 1 --contexts 4096 --prefill-lens 4096"
DSV3_MLA_WGMMA=0 timeout 60 $B/bench_one_batch $E > $L/e2e_mma.log 2>&1; echo "mma rc=$?"
timeout 60 $B/bench_one_batch $E > $L/e2e_wgmma.log 2>&1; echo "wgmma rc=$?"
for f in mma wgmma; do grep -E "^\| 4096 \||attn.mla" $L/e2e_$f.log | tail -2 | cut -c1-200; done
tar -C $L -czf $OUT/logs.tar.gz .
