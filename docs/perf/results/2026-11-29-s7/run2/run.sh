#!/usr/bin/env bash
# Session 7, run 2 (one H200): gemm_wgs with two partial sets in flight, the deferred split-K
# hand-off, two CTAs per SM at 16 tokens and the weight boxes issued before the PDL wait — its GPU
# tests and the FP8 / INT8 suites, the decode rows (M <= 64, MoE <= 128 tokens), ncu of the
# 16-token kernel at M = 1, the 4-layer slice's decode.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r2.tar.xz  # the gpu-bundle executables (bin/, kinds/), xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
F='^test |test result|panicked|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_fp8_gemm 200 wg2_wgs; t gpu_quant_gemm 200 wgs; } > $L/tests.log 2>&1
cat $L/tests.log
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_INT8_BENCH_WGMMA2=0
DSV3_BENCH_TOKENS=1,16,32,64,128 timeout 150 $B/fp8_gemm-* --bench > $L/fp8.log 2>&1
DSV3_BENCH_TOKENS=1,16,64,128 timeout 150 $B/quant_gemm-* --bench > $L/quant.log 2>&1
grep -E "^(dense|moe)" $L/fp8.log | grep -v "dense-alt\|dense-mma\|moe-mma"
grep -E "^(i8blk|i8ch|moe-i8)" $L/quant.log | grep -v -- "-mma" | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'
for sh in 2112x7168 32768x512; do
  DSV3_BENCH_TOKENS=1 DSV3_BENCH_SHAPES=$sh timeout 100 $NCU --clock-control none --set full -k regex:wgs --launch-skip 5 -c 1 -o $L/wgs_$sh -f $B/fp8_gemm-* --bench > $L/wgs_$sh.run.log 2>&1
  $NCU -i $L/wgs_$sh.ncu-rep --page details > $L/wgs_$sh.details.txt 2>&1
  $NCU -i $L/wgs_$sh.ncu-rep --page raw --csv > $L/wgs_$sh.raw.csv 2>&1
  $NCU -i $L/wgs_$sh.ncu-rep --page source --csv --print-source sass > $L/wgs_$sh.sass.csv 2>&1
  grep -E "Duration|Registers|Grid Size|Block Size|Achieved Occupancy|Theoretical Occupancy|Mem Busy|Max Bandwidth|DRAM Throughput|Issue Slots" $L/wgs_$sh.details.txt | head -14
done
{ t gpu_fp8_gemm 150 --skip wgmma --skip wg2; t gpu_quant_gemm 200 --skip wg2; t gpu_fp8_gemm 150 wg2; t gpu_quant_gemm 150 wg2; t gpu_model 150; } > $L/tests2.log 2>&1
cat $L/tests2.log
timeout 100 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32,256 --contexts 4096 --prefill-lens 4096 > $L/e2e.log 2>&1; echo "e2e rc=$?"
tar -C $L -czf $OUT/logs.tar.gz .
grep -E "^\| (1|32|256) \|" $L/e2e.log
