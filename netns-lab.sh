#!/usr/bin/env bash
# kube-netlab: a Kubernetes cluster of network namespaces on this machine.
# Thin front over the Python CLI (lab/cli.py): find the repo, make sure the venv exists
# (scripts/setup.sh, idempotent), then hand every argument over unchanged.
#   ./netns-lab.sh up [--nodes N] [--proxy-mode iptables|userspace] [--overlay vxlan|host-gw]
#   ./netns-lab.sh demo | status | down | apply -f FILE | exec POD -- CMD | curl POD URL | ...
set -euo pipefail
ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
if [[ ! -x "$ROOT/.venv/bin/python" ]]; then
  "$ROOT/scripts/setup.sh"
fi
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m lab "$@"
