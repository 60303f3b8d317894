#!/usr/bin/env bash
# Session 5, run 2 (one H200): the one-partial-set v2 consumer and the AWQ cp.async ring — GPU
# tests; FP8 M = 4096 rows with SM clock / power sampled (v2 as built, and without promotion);
# quant GEMM table (AWQ rows); MLA with and without the K-tile reloads; cuBLASLt baselines.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r2.tar.xz
B=/tmp/g/bin; E=$PWD/.devrun/exp2; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
smi() { nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader,nounits -lms 100 > $L/smi-$1.csv & echo $!; }
{
  t gpu_fp8_gemm 150 wg2; t gpu_quant_gemm 200; t gpu_fp8_gemm 200 --skip wgmma --skip wg2; t gpu_model 150
} > $L/tests.log 2>&1
for v in built nopromo; do
  o=""; [ $v = nopromo ] && o=$E/fp8-nopromo
  p=$(smi fp8-$v)
  DSV3_KERNEL_OVERRIDE_DIR=$o DSV3_BENCH_TOKENS=4096 DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 timeout 60 $B/fp8_gemm-* --bench > $L/fp8-$v.log 2>&1
  kill $p
done
DSV3_INT8_BENCH_WGMMA2=0 timeout 150 $B/quant_gemm-* --bench > $L/quant.log 2>&1; echo "quant rc=$?" >> $L/tests.log
for v in built noload; do
  o=""; [ $v = noload ] && o=$E/mla-noload
  DSV3_KERNEL_OVERRIDE_DIR=$o DSV3_MLA_BENCH_SHAPES=128x128x4096x1,128x128x16384x1,128x32x16384x1,128x16x16384x2 timeout 60 $B/mla_decode-* --bench > $L/mla-$v.log 2>&1
done
timeout 60 python3 benches/fp8_baselines.py > $L/baselines.log 2>&1
tar -C $L -czf $OUT/logs.tar.gz .
cat $L/tests.log
for v in built nopromo; do grep -E "^(dense|moe) " $L/fp8-$v.log | awk -v v=$v '{print v, $2, $3, $4, $6, $7}'
  awk -F, '$2 > 300 {c+=$1; p+=$2; n++} END {if (n) printf "'$v' under load: %d samples, mean SM clock %.0f MHz, mean power %.0f W\n", n, c/n, p/n}' $L/smi-fp8-$v.csv; done
grep -E "^(awq|moe-awq|i8blk|i8ch|moe-i8)" $L/quant.log | awk '{print $1, $2, $3, $4, $5, $NF}'
for v in built noload; do echo "--- mla $v"; grep -E "^\| 128 \|" $L/mla-$v.log | cut -d'|' -f2-5,20-22; done
grep -E " 4096 " $L/baselines.log
