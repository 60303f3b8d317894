#!/usr/bin/env bash
# Session 8, run 9 (one H200): the norm block by rows (1024 threads below one row per SM, 256
# above) — gpu_kernels' norm cases, gpu_model, the 4-layer slice at B = 1 and a 4096-token prefill.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r9.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_kernels 60 norm; t gpu_model 60; } > $L/tests.log 2>&1
cat $L/tests.log
timeout 50 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1 --contexts 4096 --prefill-lens 4096 > $L/e2e.log 2>&1; echo "e2e rc=$?"
grep -E "^\| (1|32|256|4096) \||breakdown" $L/e2e.log
tar -C $L -czf $OUT/logs.tar.gz .
