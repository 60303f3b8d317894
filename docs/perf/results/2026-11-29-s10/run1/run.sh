#!/usr/bin/env bash
# Session 10, run 1 (one H200): the small-M wgmma GEMM (wgs) at 65-128 rows (two 64-token M tiles)
# against v2; each wgs tile on the MoE rows up to 128 rows per expert; Nsight Compute on the wgs
# kernel where it is furthest from copy (2112x7168 M = 16 / 64) and at M = 1 (7168x16384), and on
# the MLA split kernel at B = 8, h = 16.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r1.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > $L/gpu.txt
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_INT8_BENCH_WGMMA2=0
DSV3_BENCH_TOKENS=16,64,128,512 timeout 200 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1; echo "fp8 rc=$?"
grep -E "^(dense|moe)" $L/fp8.log | grep -E " (64|128|512) " 
DSV3_BENCH_TOKENS=64,128 timeout 150 $B/quant_gemm-* --bench > $L/quant.log 2>&1; echo "quant rc=$?"
grep -E "^(i8blk|i8ch|moe-i8-fused)" $L/quant.log | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'
N="ncu --cache-control none --clock-control none --launch-skip 40 --launch-count 1"
S="--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis"
for spec in "2112x7168 64 fp8_gemm_wgs wgs_2112_m64" "2112x7168 16 fp8_gemm_wgs wgs_2112_m16" "7168x16384 1 fp8_gemm_wgs wgs_7168_m1"; do
  set -- $spec
  DSV3_BENCH_SHAPES=$1 DSV3_BENCH_TOKENS=$2 timeout 150 $N $S -k regex:$3 $B/fp8_gemm-* --bench > $L/$4.details.txt 2>&1
  DSV3_BENCH_SHAPES=$1 DSV3_BENCH_TOKENS=$2 timeout 150 $N --section WarpStateStats --section SourceCounters --page source --print-source sass --csv -k regex:$3 $B/fp8_gemm-* --bench > $L/$4.source.csv 2>&1
done
for spec in "8x16x4096x1 mla_decode_bf16_bf16_m1 mla_b8"; do
  set -- $spec
  DSV3_MLA_BENCH_SHAPES=$1 timeout 120 $N $S -k regex:$2 $B/mla_decode-* --bench > $L/$3.details.txt 2>&1
  DSV3_MLA_BENCH_SHAPES=$1 timeout 120 $N --section WarpStateStats --section SourceCounters --page source --print-source sass --csv -k regex:$2 $B/mla_decode-* --bench > $L/$3.source.csv 2>&1
done
for f in $L/*.details.txt; do echo "== $f"; grep -E "Duration|Elapsed Cycles|Registers|Achieved Occ|Stall|Warp Cycles Per|No Eligible|L2 Hit|DRAM Throughput|Memory Throughput|Max Bandwidth|Grid Size" $f | head -24; done
tar -C $L -czf $OUT/logs.tar.gz .
