#!/usr/bin/env bash
# kube-netlab: a Kubernetes cluster of network namespaces on this machine.
# Thin front over the Python CLI (lab/cli.py): find the repo, make sure the venv exists
# (scripts/setup.sh, idempotent), then hand every argument over unchanged.
#   ./netns-lab.sh up [--nodes N] [--proxy-mode iptables|userspace|nftables] [--overlay vxlan|host-gw]
#   ./netns-lab.sh demo | status | down | apply -f FILE | exec POD -- CMD | curl POD URL | ...
set -euo pipefail
ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
# setup.sh is idempotent and quick when nothing is missing (it keeps stamps), so every
# command goes through it: a fresh machine gets its packages and venv on first use.
"$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m lab "$@"
