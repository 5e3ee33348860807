#!/usr/bin/env python3
"""Generated configs for the growth figures of issue 23.

`routes N PORT BACKEND`: an HTTP listener on 127.0.0.1:PORT whose one
virtual host has N routes to one cluster (BACKEND, host:port): route i is,
by i % 10, 0 a `safe_regex` (so N/10 regex routes): `/(re{i}|rx{i})/[0-9]+`
(no literal prefix: checked for every request) for even tens,
`/re{i}/[0-9]+` (indexed by its literal prefix) for odd ones; 1-5 a prefix
`/svc{i}/`, 6-9 an exact path `/svc{i}/exact`. The last route is a
prefix `/` that the load hits, so every candidate list is walked to the
end: the request path `/hit/x` matches no other route.

`clusters N PORT`: N static clusters (`c{i}`, one endpoint each,
127.0.0.1:(20000 + i % 40000), never connected to) and one TCP listener on
127.0.0.1:PORT (tcp_proxy to c0) so the process can be seen serving.
Prints YAML on stdout.
"""

import sys


def routes(n, port, backend):
    out = [
        "listeners:",
        "  - name: routes",
        f"    address: 127.0.0.1:{port}",
        "    filter_chains:",
        "      - filters:",
        "          - name: proxy",
        "            config:",
        "              codec: auto",
        "              generate_request_id: false",
        "              route_config:",
        "                name: growth",
        "                virtual_hosts:",
        "                  - name: all",
        '                    domains: ["*"]',
        "                    routes:",
    ]
    for i in range(n - 1):
        k = i % 10
        if k == 0 and (i // 10) % 2 == 0:
            m = f"{{safe_regex: '/(re{i}|rx{i})/[0-9]+'}}"
        elif k == 0:
            m = f"{{safe_regex: '/re{i}/[0-9]+'}}"
        elif k <= 5:
            m = f"{{prefix: /svc{i}/}}"
        else:
            m = f"{{path: /svc{i}/exact}}"
        out.append(f"                      - match: {m}")
        out.append("                        route: {cluster: backend}")
    out.append("                      - match: {prefix: /}")
    out.append("                        route: {cluster: backend}")
    out += [
        "clusters:",
        "  - name: backend",
        "    protocol: http1",
        "    connect_timeout: 1s",
        f"    endpoints: [{{address: '{backend}'}}]",
    ]
    return "\n".join(out) + "\n"


def clusters(n, port):
    out = [
        "listeners:",
        "  - name: growth_l4",
        f"    address: 127.0.0.1:{port}",
        "    filter_chains:",
        "      - filters:",
        "          - name: tcp_proxy",
        "            config: {cluster: c0}",
        "clusters:",
    ]
    for i in range(n):
        out.append(f"  - name: c{i}")
        out.append("    connect_timeout: 1s")
        out.append(f"    endpoints: [{{address: '127.0.0.1:{20000 + i % 40000}'}}]")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "routes":
        sys.stdout.write(routes(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
    elif kind == "clusters":
        sys.stdout.write(clusters(int(sys.argv[2]), int(sys.argv[3])))
    else:
        sys.exit(f"unknown kind {kind}")
