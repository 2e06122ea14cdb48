#!/usr/bin/env python3
"""What a function's time goes to: the frames directly beneath it and the
leaves, over the samples whose stack holds it.

    perf script -i FILE -F comm,tid,ip,sym --no-inline > S.txt
    python3 under.py S.txt 'portcullis::gate::Gate::act' [more names...]
"""
import re
import sys
from collections import Counter

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from fold import short  # noqa: E402


def stacks(path):
    out, cur = [], []
    for line in open(path):
        if not line.strip():
            if cur:
                out.append(cur)
            cur = []
            continue
        if not line.startswith(("\t", " ")):
            cur = []
            continue
        parts = line.strip().split(None, 1)
        sym = parts[1] if len(parts) > 1 else parts[0]
        cur.append(short(re.sub(r"\s+\(.*\)$", "", sym)))
    if cur:
        out.append(cur)
    return out


def under(all_stacks, name):
    total = len(all_stacks)
    child, leaf, n = Counter(), Counter(), 0
    for s in all_stacks:
        idx = [i for i, f in enumerate(s) if name in f]
        if not idx:
            continue
        n += 1
        i = max(idx)
        child[s[i - 1] if i > 0 else "(self)"] += 1
        leaf[s[0]] += 1
    print(f"== {name}: {100 * n / total:.1f}% of {total} samples")
    for f, k in child.most_common(14):
        print(f"   {100 * k / total:5.2f}%  {f}")
    print("   leaves: " + ", ".join(f"{f} {100 * k / total:.1f}%" for f, k in leaf.most_common(6)))


if __name__ == "__main__":
    st = stacks(sys.argv[1])
    for name in sys.argv[2:]:
        under(st, name)
