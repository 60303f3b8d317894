#!/usr/bin/env bash
# Session 6, run 1 (one H200): Nsight Compute profiles of the kernels that miss their targets —
# FP8 v2 GEMM at M = 4096 (long and short K), cuBLASLt's block-scaled kernel on the same shape,
# the fused MoE TP-8 pipeline at 4096 tokens (every launch), the FP8 / AWQ streaming decode GEMMs
# at M = 1, the MLA wgmma kernel (h = 128 compute-bound, h = 16 memory-bound) and B = 1.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r1.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
echo "ncu: $NCU"; $NCU --version | tail -1
# prof NAME KERNEL_REGEX SKIP COUNT SET -- command...
prof() { local n=$1 re=$2 skip=$3 cnt=$4 set=$5; shift 6
  timeout 240 $NCU --clock-control none --set $set -k "regex:$re" --launch-skip $skip -c $cnt -o $L/$n -f "$@" > $L/$n.run.log 2>&1
  echo "$n rc=$?"
  $NCU -i $L/$n.ncu-rep --page details > $L/$n.details.txt 2>&1
  [ $set = full ] && $NCU -i $L/$n.ncu-rep --page source --csv --print-source sass > $L/$n.sass.csv 2>&1
  $NCU -i $L/$n.ncu-rep --page raw --csv > $L/$n.raw.csv 2>&1
}
F8="$B/fp8_gemm-* --bench"; Q8="$B/quant_gemm-* --bench"; ML="$B/mla_decode-* --bench"
export DSV3_FP8_BENCH_WGMMA=0 DSV3_FP8_BENCH_WGMMA2=0
DSV3_BENCH_TOKENS=4096 DSV3_BENCH_SHAPES=7168x16384 prof fp8_long wgmma2 5 1 full -- $F8
DSV3_BENCH_TOKENS=4096 DSV3_BENCH_SHAPES=32768x512 prof fp8_short wgmma2 5 1 full -- $F8
DSV3_BENCH_TOKENS=4096 DSV3_BENCH_SHAPES=TP8 prof moe_tp8 . 0 16 basic -- $F8
DSV3_BENCH_TOKENS=4096 DSV3_BENCH_SHAPES=EP8 prof moe_ep8 . 0 16 basic -- $F8
DSV3_BENCH_TOKENS=1 DSV3_BENCH_SHAPES=7168x16384 prof fp8_m1 stream 5 1 full -- $F8
DSV3_BENCH_TOKENS=1 DSV3_BENCH_SHAPES=7168x16384 prof awq_m1 awq 5 1 full -- $Q8
DSV3_MLA_BENCH_SHAPES=128x128x16384x1 prof mla_h128 mla_decode_wgmma 2 1 full -- $ML
DSV3_MLA_BENCH_SHAPES=128x16x16384x1 prof mla_h16 mla_decode_wgmma 2 1 full -- $ML
DSV3_MLA_BENCH_SHAPES=1x16x4096x1 prof mla_b1 mla 0 12 basic -- $ML
cat > /tmp/cublas.py <<'PY'
import sys; sys.path.insert(0, 'benches')
import torch, fp8_baselines as fb
m, n, k = 4096, 7168, 16384
pad4, _ = fb.check_recipe()
a, w = fb.fp8_rand((m, k)), fb.fp8_rand((n, k))
sa, sb = fb.scales_a(m, k), fb.scales_b(n, k, pad4)
for _ in range(8): fb.scaled_mm(a, w, sa, sb)
torch.cuda.synchronize()
PY
prof cublas_long 'gemm|sm90|cutlass|Kernel' 4 1 full -- python3 /tmp/cublas.py
tar -C $L -czf $OUT/logs.tar.gz .
for n in fp8_long fp8_short fp8_m1 awq_m1 mla_h128 mla_h16 cublas_long; do
  echo "=== $n"; grep -E "^  [a-zA-Z].*(Duration|Throughput|Registers|Shared Memory Config|Block Size|Grid Size|Issue Slots Busy|Executed Ipc A|SM Busy|Warp Cycles Per Issued|Achieved Occupancy|L1/TEX Hit|L2 Hit|Mem Busy|Max Bandwidth|  Pipe)" $L/$n.details.txt | head -40
  grep -E "^  *[A-Za-z]+ *\(" $L/$n.run.log | head -3
done
for n in moe_tp8 moe_ep8 mla_b1; do echo "=== $n"; grep -E "^  [a-z_0-9]+.*\(|Duration" $L/$n.details.txt | paste - - | awk '{print $1, $(NF-1), $NF}' | head -20; done
