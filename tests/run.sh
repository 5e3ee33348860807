#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the peers the tests use,
# builds the release binary once (the end-to-end tests share it), checks
# formatting and lints, then runs every test with cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

# Peers the end-to-end tests drive (Debian packages).
apt_pkgs=()
command -v curl >/dev/null || apt_pkgs+=(curl)
command -v h2load >/dev/null || apt_pkgs+=(nghttp2-client)
command -v openssl >/dev/null || apt_pkgs+=(openssl)
command -v gtlsclient >/dev/null || apt_pkgs+=(ngtcp2-client)
command -v caddy >/dev/null || apt_pkgs+=(caddy)
command -v prometheus >/dev/null || apt_pkgs+=(prometheus)
command -v haproxy >/dev/null || apt_pkgs+=(haproxy)
command -v nft >/dev/null || apt_pkgs+=(nftables)     # sidecar.rs: meshgate capture
command -v iptables >/dev/null || apt_pkgs+=(iptables)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${apt_pkgs[@]}"
fi

# Python peers: grpcio (gRPC client and server), h2 (HTTP/2 abuse cases),
# websockets (WebSocket client and server).
python3 -c 'import grpc' 2>/dev/null || python3 -m pip install -q grpcio
python3 -c 'import grpc_health' 2>/dev/null || python3 -m pip install -q grpcio-health-checking
python3 -c 'import h2' 2>/dev/null || python3 -m pip install -q h2
python3 -c 'import websockets' 2>/dev/null || python3 -m pip install -q websockets
# aioquic (HTTP/3 client library; its example client needs wsproto), and
# the example client itself, which ships only in aioquic's source tarball.
python3 -c 'import aioquic, wsproto' 2>/dev/null || python3 -m pip install -q aioquic wsproto
# The example must come from the installed version's sdist: the client's
# internals change between releases (1.9's example calls what 1.7 lacks).
aioquic_version=$(python3 -c 'import aioquic; print(aioquic.__version__)')
if ! grep -qx "Version: $aioquic_version" tests/peers/.cache/aioquic/PKG-INFO 2>/dev/null \
  || [ ! -f tests/peers/.cache/aioquic/examples/http3_client.py ]; then
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps --no-binary :all: -d "$tmp" "aioquic==$aioquic_version"
  tar xzf "$tmp"/aioquic-*.tar.gz -C "$tmp"
  mkdir -p tests/peers/.cache
  rm -rf tests/peers/.cache/aioquic
  mv "$tmp"/aioquic-*/ tests/peers/.cache/aioquic
  rm -rf "$tmp"
fi
# JOSE tokens for the jwt_authn tests (pyjwt with cryptography), bcrypt
# hashes for basic_auth, and Envoy's generated protos (xds-protos) for the
# ext_authz servers.
python3 -c 'import jwt, cryptography' 2>/dev/null || python3 -m pip install -q 'pyjwt[crypto]'
python3 -c 'import bcrypt' 2>/dev/null || python3 -m pip install -q bcrypt
python3 -c 'import brotli, zstandard' 2>/dev/null || python3 -m pip install -q brotli zstandard
python3 -c 'import envoy.service.auth.v3.external_auth_pb2' 2>/dev/null || python3 -m pip install -q xds-protos
# The OTLP logs receiver (tests/peers/otlp_logs_peer.py): opentelemetry-proto
# (xds-protos bundles an older copy of the same modules, which also serves).
python3 -c 'import opentelemetry.proto.collector.logs.v1.logs_service_pb2' 2>/dev/null || python3 -m pip install -q opentelemetry-proto
# grpcio-tools: protoc for the grpc_json_transcoder tests' descriptor sets.
python3 -c 'import grpc_tools' 2>/dev/null || python3 -m pip install -q grpcio-tools
# Envoy resources in Envoy's YAML form (tests/peers/envoy_any.py).
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install -q pyyaml
# Dubbo consumer (dubbo-ssl-python).
python3 -c 'import dubbo_ssl' 2>/dev/null || python3 -m pip install -q dubbo-ssl-python

# Node peers: sofa-rpc-node (Bolt natively) with dubbo-remoting (Dubbo 2),
# providers and consumers of the RPC tests (tests/peers/rpc_peer.js).
command -v node >/dev/null || apt_pkgs_node=1
if [ -n "${apt_pkgs_node:-}" ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq nodejs npm
fi
# Every top-level peer package present, or (re)install from the lock file.
node -e 'const p=require("./tests/peers/package.json");const fs=require("fs");for(const d of Object.keys({...p.dependencies,...p.devDependencies})){if(!fs.existsSync("tests/peers/node_modules/"+d))process.exit(1)}' 2>/dev/null \
  || npm ci --prefix tests/peers --no-audit --no-fund --silent \
  || { sleep 5; npm ci --prefix tests/peers --no-audit --no-fund; }  # a fresh machine's first npm ci failed once (registry hiccup)

# A clean CI build writes no incremental caches: they would double the disk
# a one-shot build takes and are never read again.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

cargo build --release --locked -p meshgate
export MESHGATE_BIN="$PWD/target/release/meshgate"

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  # The end-to-end tests again against one worker: the current-thread
  # runtime that a one-CPU sidecar (or a proxy pinned to a core) gets.
  # (--workspace with a filter: the same feature set as above, no rebuild)
  MESHGATE_TEST_CONCURRENCY=1 cargo nextest run --workspace --locked --no-fail-fast \
    -E 'package(meshgate-tests)'
else
  cargo test --workspace --locked --no-fail-fast
  MESHGATE_TEST_CONCURRENCY=1 cargo test -p meshgate-tests --locked --no-fail-fast
fi
