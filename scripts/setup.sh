#!/usr/bin/env bash
# Install what kube-netlab needs on a Debian 12 machine, idempotently: Debian packages
# (iproute2, iptables, nftables, conntrack, the benchmark tools) and a Python venv at .venv
# with the project installed in editable mode. Quick when nothing is missing: it keeps a
# stamp of what it installed and only redoes a step whose inputs changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
STAMP_DIR="$VENV/.stamps"

# Debian packages the lab, the agents, the tests and the benchmarks call.
APT_PACKAGES=(
  iproute2 iptables nftables conntrack kmod procps psmisc
  python3 python3-venv python3-dev gcc
  curl dnsutils iperf3 wrk dnsperf nginx-light libnginx-mod-stream
)

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

if [[ $EUID -ne 0 ]]; then
  echo "setup: run as root (the lab creates network namespaces and installs Debian packages)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps package scripts from starting services (nginx) on the host.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

PY="${KNL_PYTHON:-}"
if [[ -z "$PY" ]]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY="$(command -v "$cand")"; break
    fi
  done
fi
[[ -n "$PY" ]] || { echo "setup: need Python >= 3.11 with venv" >&2; exit 1; }

if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating venv $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
mkdir -p "$STAMP_DIR"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [[ "$(cat "$STAMP_DIR/pip" 2>/dev/null)" != "$want" ]]; then
  say "installing Python packages into $VENV"
  log="$STAMP_DIR/pip.log"
  # compat mode: a plain path entry for the repo root, so packages added later import too
  if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
         "$VENV/bin/python" -m pip install -q -e "$ROOT[test,bench]" --config-settings editable_mode=compat; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "setup: pip install failed (log above, kept in $log)" >&2
    exit 1
  fi
  echo "$want" >"$STAMP_DIR/pip"
fi
