#!/usr/bin/env bash
# Session 8, run 7 (one H200, run 6's executables): longer shortest ranges (DSV3_WGS_MIN_RANGE 12 /
# 16) on the dense and MoE decode rows with the wgs tests on 16, and Nsight Compute on the
# residual-add norm of a B = 1 decode step (21 µs for one row).
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r6.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0
for r in 12 16; do
  DSV3_WGS_MIN_RANGE=$r DSV3_BENCH_TOKENS=16,64 timeout 80 $B/fp8_gemm-* --bench > $L/fp8_r$r.log 2>&1
  echo "=== min range $r"; grep -E "^(dense|moe) " $L/fp8_r$r.log | awk '{print $1, $2, $3, $4, $5, $6, $NF}'
done
F='^test |test result|panicked|error'
for n in gpu_fp8_gemm gpu_quant_gemm; do echo "=== $n wgs, min range 16"; DSV3_WGS_MIN_RANGE=16 timeout 100 $B/$n-* --include-ignored --test-threads 1 wgs 2>&1 | grep -E "$F" | grep -v " ok$" | head; done
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
DSV3_PROFILE_STEP=1 timeout 90 $NCU --profile-from-start off --set full -k regex:add_rms_norm_quant -c 1 -o /tmp/norm -f $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 1 --graphs eager --batch-sizes 1 --contexts 4096 --prefill-lens 16 > $L/norm.run.log 2>&1
$NCU -i /tmp/norm.ncu-rep --page details > $L/norm.details.txt 2>&1
$NCU -i /tmp/norm.ncu-rep --page source --csv --print-source sass > /tmp/norm.sass.csv 2>&1
grep -E "Duration|DRAM Throughput|Issue Slots Busy|Grid Size|Block Size|Registers Per|Elapsed Cycles|SM Frequency" $L/norm.details.txt | head -10
python3 - /tmp/norm.sass.csv <<'PY' | tee $L/norm_stalls.txt
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
h = rows[1]; i_src = h.index('Source'); i_s = h.index('Warp Stall Sampling (All Samples)')
d = sorted(((int(r[i_s] or 0), r[i_src][:80]) for r in rows[2:] if len(r) > i_s), reverse=True)
tot = sum(x[0] for x in d) or 1
for c, src in d[:12]: print(f"{100*c/tot:5.1f}% {src}")
PY
tar -C $L -czf $OUT/logs.tar.gz .
