#!/usr/bin/env bash
# Session 9, run 2 (one H200): where the B = 1 MLA split kernel spends its ~8 µs (run 1: loads are
# ~2 µs of it, two empty launches 1.1 µs). Nsight Compute on the bench's steady state (caches not
# flushed, clocks not locked): warp states, scheduler, instruction stats and per-SASS-instruction
# stall samples of the mma.sync split kernel (h = 16) and the wgmma one (h = 128), and the combine.
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r1.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
N="ncu --cache-control none --clock-control none --launch-skip 40 --launch-count 1"
S="--section SpeedOfLight --section LaunchStats --section WarpStateStats --section SchedulerStats --section InstructionStats --section MemoryWorkloadAnalysis"
for spec in "1x16x4096x1 mla_decode_bf16_bf16_m1 m1" "1x16x4096x1 mla_decode_combine m1comb" "1x128x4096x1 mla_decode_wgmma_bf16_bf16 wg128"; do
  set -- $spec
  DSV3_MLA_BENCH_SHAPES=$1 timeout 120 $N $S -k regex:$2 $B/mla_decode-* --bench > $L/$3.details.txt 2>&1
  DSV3_MLA_BENCH_SHAPES=$1 timeout 120 $N --section WarpStateStats --section SourceCounters --page source --print-source sass --csv -k regex:$2 $B/mla_decode-* --bench > $L/$3.source.csv 2>&1
done
for f in $L/*.details.txt; do echo "== $f"; grep -E "Duration|Elapsed Cycles|SM Active Cycles|Stall|Warp Cycles Per|Issued Warp|No Eligible|Executed Instructions  |L2 Hit|Mem Busy|Max Bandwidth" $f | head -30; done
tar -C $L -czf $OUT/logs.tar.gz .
