#!/usr/bin/env bash
# Session 5, run 10 (one H200): the FP8 and INT8 / AWQ GEMM suites on the final HEAD (after the
# stream ring revert and the norm → quant merge, which shares the activation-quant formulas).
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r10.tar.xz
B=/tmp/g/bin
F='^test |test result|panicked'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
t gpu_fp8_gemm 100 --skip wgmma --skip wg2; t gpu_fp8_gemm 40 wg2; t gpu_quant_gemm 100
