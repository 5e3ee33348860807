#!/usr/bin/env python3
"""Atomic read-modify-write instructions per request, from a callgrind dump
taken with --dump-instr=yes (icount.sh with ATOMICS=1).

Every `lock`-prefixed or `xchg` instruction of the binary is found with
objdump; the dump gives how often each ran. On this VM such an instruction
costs 5 ns alone and far more after a burst of stores (it drains the store
buffer): in perf profiles of the HTTP/1.1 proxy path about a quarter of the
user time sits on them, and nginx, single-threaded C, runs none per request.

usage: atomics.py BINARY CALLGRIND_OUT REQUESTS [TOP]
"""
import collections
import re
import subprocess
import sys


def lock_sites(binary):
    """Address -> (function, instruction) of every atomic RMW instruction."""
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", "-C", binary],
        capture_output=True, text=True, check=True,
    ).stdout
    sites, fn = {}, None
    for line in out.splitlines():
        m = re.match(r"^([0-9a-f]+) <(.*)>:$", line)
        if m:
            fn = m.group(2)
            continue
        m = re.match(r"^\s*([0-9a-f]+):\s+((lock |xchg).*)$", line)
        if m:
            sites[int(m.group(1), 16)] = (fn, m.group(2).strip())
    return sites


def executed(dump, sites):
    """Address -> times executed, for the addresses in `sites`."""
    counts = collections.Counter()
    pos = 0
    after_calls = False
    with open(dump) as f:
        for line in f:
            if line.startswith("calls="):
                after_calls = True
                continue
            m = re.match(r"^(0x[0-9a-f]+|[+-]\d+|\*)\s", line)
            if not m:
                continue
            tok = line.split()
            a = tok[0]
            if a.startswith("0x"):
                pos = int(a, 16)
            elif a[0] in "+-":
                pos += int(a)
            if after_calls:
                # The line after calls= is the call's inclusive cost.
                after_calls = False
                continue
            if pos in sites and len(tok) > 2:
                counts[pos] += int(tok[2])
    return counts


def main():
    binary, dump, reqs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 25
    sites = lock_sites(binary)
    counts = executed(dump, sites)
    by_fn = collections.Counter()
    for a, c in counts.items():
        by_fn[sites[a][0]] += c
    print(f"atomic instructions per request: {sum(counts.values()) / reqs:.1f}")
    for fn, c in by_fn.most_common(top):
        print(f"{c / reqs:7.2f}  {fn[:140]}")


if __name__ == "__main__":
    main()
