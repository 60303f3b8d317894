#!/usr/bin/env bash
# Session 9, run 4 (one H200, final): the combine's part groups bounded by their last part, the
# staged copy unrolled, channel INT8's wgs rule from K = 2048 — every gpu_mla / gpu_model /
# gpu_quant_gemm test, the MLA bench (with the split kernel alone and two empty launches:
# variants nocomb / empty of this source, /tmp/mla_variants2.py), the quant rows, the slice.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r5.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_mla 200; t gpu_model 120; t gpu_quant_gemm 150; } > $L/tests.log 2>&1
cat $L/tests.log
export DSV3_MLA_BENCH_SHAPES=1x16x4096x1,8x16x4096x1,32x16x4096x1,64x16x4096x1,1x128x4096x1,8x128x4096x1,32x128x4096x1,64x128x4096x1,128x16x4096x1,128x16x16384x1,128x16x4096x2,128x32x16384x1,128x64x16384x1,128x128x4096x1,128x128x16384x1,128x128x16384x2
timeout 200 $B/mla_decode-* --bench > $L/mla.log 2>&1
grep -E "^B=|^  wgmma: |copy" $L/mla.log
export DSV3_MLA_BENCH_SHAPES=1x16x4096x1,8x16x4096x1,32x16x4096x1,64x16x4096x1,1x128x4096x1,8x128x4096x1,32x128x4096x1,64x128x4096x1
for v in nocomb empty; do
  DSV3_KERNEL_OVERRIDE_DIR=$PWD/.devrun/mlav/$v timeout 100 $B/mla_decode-* --bench > $L/mla-$v.log 2>&1
  echo "== $v"; grep -E "^B=|^  wgmma: " $L/mla-$v.log
done
unset DSV3_MLA_BENCH_SHAPES
DSV3_BENCH_TOKENS=1,16,64 timeout 150 $B/quant_gemm-* --bench > $L/quant.log 2>&1
grep -E "^(i8ch|i8ch-[a-z]+) " $L/quant.log | awk '{print $1, $2, $3, $4, $5, $6, $7, $8}'
timeout 90 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32,256 --contexts 4096 --prefill-lens 4096 > $L/e2e.log 2>&1; echo "e2e rc=$?"
grep -E "^\| (1|32|256|4096) \||breakdown" $L/e2e.log
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
DSV3_PROFILE_STEP=1 timeout 80 $NCU --profile-from-start off --clock-control none --cache-control none --print-units base --metrics gpu__time_duration.sum --csv $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 1 --graphs eager --batch-sizes 1 --contexts 4096 --prefill-lens 16 > $L/step_b1.csv 2>&1
tar -C $L -czf $OUT/logs.tar.gz .
