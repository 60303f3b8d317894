#!/usr/bin/env bash
# Session 9, run 3 (one H200): the MLA split kernels' staged row stores, the online-merging
# combine and the batch-sized metadata block — every gpu_mla test, gpu_model, the MLA bench
# (B = 128 rows of the issue and the small batches), the 4-layer slice with its step profile, and
# the per-instruction stall profile of the B = 1 kernels again.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r4.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_mla 200; t gpu_model 120; } > $L/tests.log 2>&1
cat $L/tests.log
DSV3_MLA_BENCH_SHAPES=1x16x4096x1,8x16x4096x1,32x16x4096x1,64x16x4096x1,1x128x4096x1,8x128x4096x1,32x128x4096x1,64x128x4096x1,128x16x4096x1,128x16x16384x1,128x16x4096x2,128x32x16384x1,128x64x16384x1,128x128x4096x1,128x128x16384x1,128x128x16384x2 \
  timeout 200 $B/mla_decode-* --bench > $L/mla.log 2>&1
grep -E "^B=|^  wgmma: |copy" $L/mla.log
timeout 60 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32 --contexts 4096 --prefill-lens 4096 > $L/e2e.log 2>&1; echo "e2e rc=$?"
grep -E "^\| (1|32|256|4096) \||breakdown" $L/e2e.log
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
DSV3_PROFILE_STEP=1 timeout 80 $NCU --profile-from-start off --clock-control none --cache-control none --print-units base --metrics gpu__time_duration.sum --csv $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 1 --graphs eager --batch-sizes 1 --contexts 4096 --prefill-lens 16 > $L/step_b1.csv 2>&1
N="$NCU --cache-control none --clock-control none --launch-skip 40 --launch-count 1"
for spec in "1x16x4096x1 mla_decode_bf16_bf16_m1 m1" "1x16x4096x1 mla_decode_combine m1comb" "1x128x4096x1 mla_decode_wgmma_bf16_bf16 wg128"; do
  set -- $spec
  DSV3_MLA_BENCH_SHAPES=$1 timeout 120 $N --section WarpStateStats --section SourceCounters --page source --print-source sass --csv -k regex:$2 $B/mla_decode-* --bench > $L/$3.source.csv 2>&1
done
tar -C $L -czf $OUT/logs.tar.gz .
