#!/usr/bin/env bash
# Session 7, run 6 (one H200): Nsight Compute on the small-M wgmma entries where they miss most —
# FP8 wgs64 at M = 64 on 2112x7168 (split-K atomics?), AWQ wgs16 at M = 16 on 7168x16384 (0.31 of
# copy) — duration, DRAM throughput, issue and the top stall locations.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r5.tar.xz  # the gpu-bundle executables (bin/, kinds/), xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0 DSV3_INT8_BENCH_WGMMA2=0
prof() { local n=$1 re=$2; shift 2
  timeout 150 $NCU --clock-control none --set full -k regex:$re --launch-skip 5 -c 1 -o $L/$n -f "$@" > $L/$n.run.log 2>&1
  $NCU -i $L/$n.ncu-rep --page details > $L/$n.details.txt 2>&1
  $NCU -i $L/$n.ncu-rep --page source --csv --print-source sass > $L/$n.sass.csv 2>&1
  echo "=== $n"; grep -E "Duration|DRAM Throughput|Issue Slots Busy|Registers Per|Grid Size|Achieved Occupancy|L2 Hit|Compute \(SM\) Throughput" $L/$n.details.txt | head -10
  python3 - $L/$n.sass.csv <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
h = rows[1]; i_src = h.index('Source'); i_s = h.index('Warp Stall Sampling (All Samples)')
d = sorted(((int(r[i_s] or 0), r[i_src][:70]) for r in rows[2:] if len(r) > i_s), reverse=True)
tot = sum(x[0] for x in d) or 1
for c, src in d[:8]: print(f"{100*c/tot:5.1f}% {src}")
PY
}
DSV3_BENCH_TOKENS=64 DSV3_BENCH_SHAPES=2112x7168 prof fp8_wgs64_m64 fp8_gemm_wgs $B/fp8_gemm-* --bench
DSV3_BENCH_TOKENS=16 DSV3_BENCH_SHAPES=7168x16384 prof awq_wgs16_m16 awq_gemm_wgs $B/quant_gemm-* --bench
rm -f $L/*.ncu-rep
tar -C $L -czf $OUT/logs.tar.gz .
