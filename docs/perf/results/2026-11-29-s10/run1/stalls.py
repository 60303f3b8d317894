# Per-SASS-instruction stall samples of an `ncu --page source --print-source sass --csv` export
# (plain or .gz): the stall reasons' shares and the top instructions.
# usage: python3 stalls.py FILE.source.csv[.gz] [TOP]
import csv, gzip, sys, collections
f = sys.argv[1]; top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
text = (gzip.open(f, 'rt') if f.endswith('.gz') else open(f)).read()
lines = text.splitlines()
start = next(i for i, l in enumerate(lines) if l.startswith('"Address"'))
rows = list(csv.DictReader(lines[start:]))
stall_cols = [c for c in rows[0] if c.startswith('stall_') and 'Not Issued' not in c]
tot = collections.Counter(); per = []
for r in rows:
    try: n = int(r['Warp Stall Sampling (All Samples)'] or 0)
    except ValueError: continue
    st = {c: int(r[c] or 0) for c in stall_cols}
    tot.update(st); per.append((n, r['Address'][-5:], r['Source'].strip(), max(st, key=st.get) if n else ''))
S = sum(tot.values())
print("total samples", S)
print(" ".join(f"{k[6:]}={v*100/S:.1f}%" for k, v in tot.most_common(10)))
for n, a, src, st in sorted(per, reverse=True)[:top]:
    print(f"{n*100/S:5.1f}% {a} {st[6:]:<14} {src[:90]}")
