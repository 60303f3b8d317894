#!/usr/bin/env bash
# One H200: v2 pair (2-CTA cluster) FP8 GEMM tests + bench; MLA B=1 kernel durations (ncu).
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r1.tar.xz
B=/tmp/g/bin
timeout 200 $B/gpu_fp8_gemm-* --include-ignored --test-threads 1 wg2 2>&1 | grep -E "^test |test result|panicked|error" | head -40 > $OUT/t_wg2.log
cat $OUT/t_wg2.log
DSV3_FP8_BENCH_WGMMA=0 timeout 240 $B/fp8_gemm-* --bench > $OUT/fp8_bench.log 2>&1
grep -E "4096|wg2|copy" $OUT/fp8_bench.log | head -60
DSV3_MLA_BENCH_SHAPES=1x16x4096x1,8x16x4096x1,1x128x4096x1 timeout 100 $B/mla_decode-* --bench > $OUT/mla_small.log 2>&1
grep -E "^\||B=" $OUT/mla_small.log | head -20
DSV3_MLA_BENCH_SHAPES=1x16x4096x1 timeout 120 ncu --clock-control none -k regex:mla_decode -c 30 --metrics gpu__time_duration.sum --csv $B/mla_decode-* --bench > $OUT/ncu_mla.csv 2> $OUT/ncu_mla.err
grep -E "mla_decode" $OUT/ncu_mla.csv | awk -F'","' '{print $5, $(NF)}' | head -30
