#!/usr/bin/env bash
# Session 6, run 10 (one H200): final HEAD — gpu_engine, gpu_mla, gpu_kernels.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r10.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_engine 60; t gpu_mla 60; t gpu_kernels 100; } > $L/tests.log 2>&1
cp $L/tests.log $OUT/
cat $L/tests.log
