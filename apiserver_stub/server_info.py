"""What the stub reports about itself (``/version``): the Kubernetes release it mimics."""

from __future__ import annotations

K8S_VERSION = "v1.32.0"

VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-kube-netlab",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
