"""Parses one wrk (--latency) or h2load output for http.sh.

Prints: req/s, requests, p50 us, p99 us (nan for h2load), errors
(socket errors, non-2xx responses, failed requests)."""
import re
import sys

UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def lat(text, pct):
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    return float(m.group(1)) * UNITS[m.group(2)] if m else float("nan")


phase, path = sys.argv[1], sys.argv[2]
t = open(path).read()
if phase in ("h1", "tls_ka", "tls_hs"):
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", t).group(1))
    reqs = int(re.search(r"(\d+) requests in", t).group(1))
    errs = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", t))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    errs += int(m.group(1)) if m else 0
    print(rps, reqs, lat(t, 50), lat(t, 99), errs)
else:
    rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", t).group(1))
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", t)
    done, ok, failed, errored = (int(x) for x in m.groups())
    print(rps, ok, "nan", "nan", failed + errored)
