"""Summary tables of http.sh's results.tsv: medians per proxy and phase, and
meshgate/peer ratios."""
import csv
import math
import statistics
import sys

rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
hz = float(sys.argv[2])
pcpu, lcpu = sys.argv[3], sys.argv[4]


def med(xs):
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else float("nan")


def stats(phase, name):
    rs = [r for r in rows if r["phase"] == phase and r["name"] == name]
    if not rs:
        return None
    cpu = [int(r["cpu_ticks"]) / hz for r in rs]
    rps = [float(r["rps"]) for r in rs]
    return {
        "n": len(rs),
        "rps": med(rps),
        "min": min(rps),
        "max": max(rps),
        "p50": med([float(r["p50_us"]) for r in rs]),
        "p99": med([float(r["p99_us"]) for r in rs]),
        "us_per_req": med([1e6 * c / int(r["requests"]) for c, r in zip(cpu, rs)]),
        "util": med([c / float(r["wall_s"]) for c, r in zip(cpu, rs)]),
        "load": med([int(r["load_cpu_pct"]) for r in rs]),
        "errors": sum(int(r["errors"]) for r in rs),
    }


def fmt(x, spec):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


TITLES = {
    "h1": "HTTP/1.1 keep-alive: wrk -t1 -c50 --latency",
    "h2": "HTTP/2 (h2c) in, HTTP/1.1 out: h2load -c10 -m10",
    "tls_ka": "HTTPS keep-alive (TLS 1.3, ECDSA P-256): wrk -t1 -c50 --latency",
    "tls_hs": "HTTPS, one full TLS handshake per request (Connection: close): wrk -t1 -c50",
}
names = ["direct", "meshgate", "nginx", "haproxy"]
for phase in ["h1", "h2", "tls_ka", "tls_hs"]:
    S = {n: stats(phase, n) for n in names}
    S = {n: s for n, s in S.items() if s}
    if not S:
        continue
    n_runs = next(iter(S.values()))["n"]
    print()
    print(f"{TITLES[phase]}, medians of {n_runs} runs (proxy on CPU {pcpu}, load + backend on CPU {lcpu})")
    print()
    print("|          |   req/s |   min-max     | p50 us | p99 us | CPU us/req | CPU0 % | CPU1 % | errors |")
    print("|----------|--------:|---------------|-------:|-------:|-----------:|-------:|-------:|-------:|")
    for n, s in S.items():
        d = n == "direct"
        print(
            f"| {n:<8} | {s['rps']:7.0f} | {s['min']:5.0f}-{s['max']:<7.0f} | {fmt(s['p50'], '6.0f'):>6} "
            f"| {fmt(s['p99'], '6.0f'):>6} | {'-' if d else format(s['us_per_req'], '.1f'):>10} "
            f"| {'-' if d else format(100 * s['util'], '.0f'):>6} | {s['load']:6.0f} | {s['errors']:6d} |"
        )
    print()
    m = S.get("meshgate")
    if m:
        print("| ratio            | req/s | CPU us/req | p99 |")
        print("|------------------|------:|-----------:|----:|")
        for peer in ["nginx", "haproxy"]:
            p = S.get(peer)
            if p:
                p99 = m["p99"] / p["p99"] if p["p99"] and not math.isnan(p["p99"]) else float("nan")
                print(
                    f"| meshgate/{peer:<7} | {m['rps'] / p['rps']:5.2f} | {m['us_per_req'] / p['us_per_req']:10.2f} "
                    f"| {fmt(p99, '.2f'):>3} |"
                )
        print()
print("CPU us/req = the proxy's CPU time (utime+stime, all threads) / requests served; lower is better.")
print("req/s > 1 and CPU us/req, p99 < 1 in the ratios: meshgate better.")
