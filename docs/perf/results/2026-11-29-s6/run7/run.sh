#!/usr/bin/env bash
# Session 6, run 7 (one H200): small-batch MLA decode with a minimum of 2 or 4 tiles per part
# (mla_decode_metadata variant through DSV3_KERNEL_OVERRIDE_DIR): fewer, longer parts, fewer
# partials for the combine. Bench rows B = 1 / 8 (h 16 / 128) and a large batch; gpu_mla with the
# T_MIN = 2 variant for correctness.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r7.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
S=1x16x4096x1,8x16x4096x1,1x128x4096x1,8x128x4096x1,1x16x4096x2,128x16x4096x1
for v in base tmin2 tmin4; do
  o=""; [ $v != base ] && o=$PWD/.devrun/mla-$v
  DSV3_KERNEL_OVERRIDE_DIR=$o DSV3_MLA_BENCH_SHAPES=$S timeout 120 $B/mla_decode-* --bench > $L/mla-$v.log 2>&1
done
DSV3_KERNEL_OVERRIDE_DIR=$PWD/.devrun/mla-tmin2 timeout 200 $B/gpu_mla-* --include-ignored --test-threads 1 2>&1 | grep -E "test result|panicked|FAILED" > $L/tests-tmin2.log
tar -C $L -czf $OUT/logs.tar.gz .
cat $L/tests-tmin2.log
for v in base tmin2 tmin4; do echo "--- $v"; grep -E "^\| (1|8|128) \|" $L/mla-$v.log | cut -d'|' -f2-6,14,20; done
