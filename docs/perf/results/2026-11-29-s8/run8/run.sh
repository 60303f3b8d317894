#!/usr/bin/env bash
# Session 8, run 8 (one H200): the norm kernels at 1024 threads per row — gpu_kernels, gpu_model,
# the 4-layer slice and one decode step's kernel times (B = 1).
export CARGO_MANIFEST_DIR=$PWD
mkdir -p /tmp/g && tar -C /tmp/g -xJf .devrun/r8.tar.xz
B=/tmp/g/bin; L=/tmp/logs; mkdir -p $L
F='^test |test result|panicked|error'
t() { local n=$1 to=$2; shift 2
  echo "=== $n $*"; timeout $to $B/$n-* --include-ignored --test-threads 1 "$@" 2>&1 | grep -E "$F" | grep -v " ok$" | head -30; }
{ t gpu_kernels 100; t gpu_model 60; } > $L/tests.log 2>&1
cat $L/tests.log
timeout 60 $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 10 --batch-sizes 1,32 --contexts 4096 --prefill-lens 4096 > $L/e2e.log 2>&1; echo "e2e rc=$?"
grep -E "^\| (1|32|256|4096) \||breakdown" $L/e2e.log
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
DSV3_PROFILE_STEP=1 timeout 60 $NCU --profile-from-start off --clock-control none --cache-control none --print-units base --metrics gpu__time_duration.sum --csv $B/bench_one_batch --offline --num-layers 4 --dense-layers 1 --steps 1 --graphs eager --batch-sizes 1 --contexts 4096 --prefill-lens 16 > $L/step_b1.csv 2>&1
python3 - $L/step_b1.csv <<'PY' | tee $L/step_b1.md
import csv, sys, collections
rows = list(csv.reader(open(sys.argv[1])))
start = next(i for i, r in enumerate(rows) if r and r[0] == 'ID')
h = rows[start]; k = h.index('Kernel Name'); v = h.index('Metric Value'); u = h.index('Metric Unit')
agg = collections.defaultdict(lambda: [0, 0.0]); tot = 0.0
for r in rows[start + 1:]:
    if len(r) <= v: continue
    try: x = float(r[v].replace(',', ''))
    except ValueError: continue
    us = x / 1e3 if r[u].startswith('n') else x
    name = r[k].split('(')[0].strip()[:60]
    agg[name][0] += 1; agg[name][1] += us; tot += us
print(f"{sys.argv[1]}: {sum(a[0] for a in agg.values())} kernels, {tot:.1f} us")
for name, (n, us) in sorted(agg.items(), key=lambda x: -x[1][1])[:20]:
    print(f"{us:9.1f} us {n:4d}x {name}")
PY
rm -f $L/*.csv
tar -C $L -czf $OUT/logs.tar.gz .
