#!/usr/bin/env bash
# Session 7, run 3 (one H200): gemm_wgs with the scale writers off the TMA thread, the conditional
# acquire and one CTA per tile where the waves are full — its tests and the decode rows; the fp8
# cache on the wgmma MLA kernel (merged, first run) — gpu_mla and the MLA table; the GEMM suites.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r3.tar.xz  # the gpu-bundle executables (bin/, kinds/), xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_fp8_gemm 200 wg2_wgs; t gpu_quant_gemm 200 wgs; } > $L/tests.log 2>&1
cat $L/tests.log
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_INT8_BENCH_WGMMA2=0
DSV3_BENCH_TOKENS=1,16,32,64 timeout 150 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1
DSV3_BENCH_TOKENS=1,16,64 timeout 150 $B/quant_gemm-* --bench > $L/quant.log 2>&1
grep -E "^(dense|moe)" $L/fp8.log | grep -v "dense-alt\|dense-mma\|moe-mma"
grep -E "^(i8blk|i8ch|moe-i8)" $L/quant.log | grep -v -- "-mma" | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'
{ t gpu_mla 200 mla_decode_wgmma_streams_present mla_decode_wgmma_fp8_heads; t gpu_mla 300 fp8; } > $L/mla_tests.log 2>&1
cat $L/mla_tests.log
DSV3_MLA_BENCH_SHAPES=128x16x4096x1,128x16x16384x1,128x16x4096x2,128x32x16384x1,128x64x16384x1,128x128x16384x1,8x16x4096x1,1x16x4096x1 timeout 150 $B/mla_decode-* --bench > $L/mla.log 2>&1; echo "mla bench rc=$?"
grep -E "^\|" $L/mla.log | head -3; grep -E "^\| (128|8|1) \|" $L/mla.log
{ t gpu_mla 300 --skip fp8; DSV3_MLA_WGMMA_FP8=1 t gpu_model 150 fp8_cache; t gpu_fp8_gemm 150 --skip wgmma --skip wg2; t gpu_quant_gemm 200 --skip wg2; t gpu_fp8_gemm 150 wg2; t gpu_quant_gemm 150 wg2; t gpu_model 150; } > $L/tests2.log 2>&1
cat $L/tests2.log
tar -C $L -czf $OUT/logs.tar.gz .
