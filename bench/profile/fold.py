#!/usr/bin/env python3
"""Inclusive and self time per function from `perf script` output.

    perf script -i FILE -F comm,tid,sym --no-inline | python3 fold.py [--match REGEX] [--top N] [--by-thread]

Each sample's stack is read once; a function counts once per sample in which
it appears (inclusive), and the leaf frame counts as self time. Names are
shortened (generic parameters and closure suffixes dropped) so that the
monomorphised copies of one function add up.
"""
import re
import sys
from collections import Counter

def short(name):
    name = name.strip()
    name = re.sub(r"\+0x[0-9a-f]+$", "", name)
    # drop generic arguments, repeatedly (nested)
    prev = None
    while prev != name:
        prev = name
        name = re.sub(r"<[^<>]*>", "", name)
    name = name.replace("::{{closure}}", "").replace("{{closure}}", "")
    return name[:140]

def main():
    args = sys.argv[1:]
    match = None
    top = 40
    by_thread = False
    while args:
        a = args.pop(0)
        if a == "--match":
            match = re.compile(args.pop(0))
        elif a == "--top":
            top = int(args.pop(0))
        elif a == "--by-thread":
            by_thread = True
    incl, self_, threads = Counter(), Counter(), Counter()
    total = 0
    stack, head = [], None

    def flush():
        nonlocal total
        if head is None:
            return
        total += 1
        threads[head] += 1
        seen = set()
        for i, f in enumerate(stack):
            if i == 0:
                self_[f] += 1
            if f not in seen:
                seen.add(f)
                incl[f] += 1

    for line in sys.stdin:
        if not line.strip():
            flush()
            stack, head = [], None
            continue
        if not line.startswith((" ", "\t")):
            flush()
            stack = []
            head = re.sub(r"[0-9/]+\s*$", "", line.split()[0]) if line.split() else "?"
            continue
        parts = line.strip().split(None, 1)
        sym = parts[1] if len(parts) > 1 else parts[0]
        sym = re.sub(r"\s+\(.*\)$", "", sym)
        stack.append(short(sym))
    flush()
    print(f"samples: {total}")
    if by_thread:
        for t, n in threads.most_common(20):
            print(f"  thread {t:<24} {100*n/total:5.1f}%")
    print("\n-- self (leaf) --")
    for f, n in self_.most_common(top):
        if match is None or match.search(f):
            print(f"{100*n/total:6.2f}%  {f}")
    print("\n-- inclusive --")
    shown = 0
    for f, n in incl.most_common():
        if match is None or match.search(f):
            print(f"{100*n/total:6.2f}%  {f}")
            shown += 1
            if shown >= top:
                break

if __name__ == "__main__":
    main()
