"""`netns-lab.sh bench --quick` on a small lab: every figure is in the JSON, every ratio is
its median over its baseline's, the charts are real PNG images, and nothing is left behind.

No assertion on speed: the figures are the benchmark's output, not a test's.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from lab import cleanup as lab_cleanup
from lab.bench import available_modes

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DP_METRICS = ("http_rps", "http_p50_ms", "http_p90_ms", "http_p99_ms", "conn_rps", "tcp_gbps",
              "udp_rr_per_s")  # fmt: skip
OVERLAY_PATHS = ("underlay", "handbuilt", "vxlan_pod", "vxlan_node", "hostgw_pod", "hostgw_node")
QUICK_SIZES = (100, 1000)

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, scratch_lab_config_module) -> tuple[dict, Path, str]:
    prefix, cidr = scratch_lab_config_module
    out = tmp_path_factory.mktemp("bench")
    argv = [sys.executable, "-m", "lab", "bench", "--quick", "--out", str(out),
            "--prefix", prefix, "--node-cidr", cidr,
            "--overlay-underlay", f"198.19.{(zlib.crc32(prefix.encode()) + 1) % 250}.0/24"]  # fmt: skip
    try:
        r = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    finally:
        lab_cleanup.down(prefix)  # in case the bench itself was killed
    assert r.returncode == 0, f"bench failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads((out / "bench.json").read_text()), out, prefix


@pytest.fixture(scope="module")
def scratch_lab_config_module() -> tuple[str, str]:
    """Prefix and node network of the bench's own lab: never the session lab's."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    prefix = os.environ.get("KNL_PREFIX", "knltest")[:8] + "bq"
    return prefix, f"198.19.{zlib.crc32(prefix.encode()) % 250}.0/24"


def expected_figures(modes: list[str]) -> set[str]:
    ids = set()
    for pl in ("same_node", "other_node"):
        for m in ("direct", *modes):
            ids |= {f"datapath.{pl}.{m}.{k}" for k in DP_METRICS}
    ids.add("controlplane.first_packet_no_rules")
    for m in modes:
        ids.add(f"controlplane.change_to_traffic.{m}")
        ids.add(f"controlplane.change_live_at_max.{m}")
        for n in QUICK_SIZES:
            ids |= {f"controlplane.full_sync.{m}.{n}", f"controlplane.first_packet.{m}.{n}",
                    f"controlplane.first_packet_pod_ip.{m}.{n}"}  # fmt: skip
    for kind in ("internal", "nxdomain", "forwarded", "bare_loop"):
        ids |= {f"dns.{kind}.qps", f"dns.{kind}.p50_ms", f"dns.{kind}.p99_ms"}
    ids |= {f"overlay.{p}.tcp_gbps" for p in OVERLAY_PATHS}
    return ids


def test_json_has_every_figure_and_the_machine(quick_run):
    result, _, _ = quick_run
    modes, _ = available_modes(["iptables", "userspace", "nftables"])
    assert result["modes"] == ["direct", *modes]
    assert not result["errors"]
    figs = result["figures"]
    assert expected_figures(modes) <= set(figs), sorted(expected_figures(modes) - set(figs))
    for fid, f in figs.items():
        assert f["n"] >= 1 and len(f["samples"]) == f["n"], fid
        assert all(math.isfinite(x) and x >= 0 for x in f["samples"]), fid
        assert f["min"] <= f["median"] <= f["max"], fid
        assert f["median"] == pytest.approx(statistics.median(f["samples"])), fid
        assert f["min"] == min(f["samples"]) and f["max"] == max(f["samples"]), fid
    m = result["machine"]
    assert m["cpu_model"] and m["cores"] >= 1 and m["kernel"]
    assert len(m["load_start"]) == 3 and len(m["load_end"]) == 3
    # the mode switch leaves no rule of the previous mode behind
    kernel = result["raw"]["datapath"]["kernel"]
    for node, k in kernel.get("nftables", {}).items():
        assert k["iptables_kube_svc_chains"] == 0 and k["iptables_portal_rules"] == 0, node
    for node, k in kernel.get("iptables", {}).items():
        assert "kube-proxy" not in k["nft_tables"], node


def test_ratios_match_the_raw_numbers(quick_run):
    result, _, _ = quick_run
    figs = result["figures"]
    checked = 0
    for fid, f in figs.items():
        if f["baseline"] is None:
            assert f["ratio"] == 1.0, fid
            continue
        base = figs[f["baseline"]]
        assert base["baseline"] is None, f"{fid}: baseline {f['baseline']} has a baseline itself"
        assert f["ratio"] == pytest.approx(f["median"] / base["median"], rel=1e-9), fid
        checked += 1
    assert checked >= 50
    # every proxied data-path figure is compared with the direct pod IP from the same run
    for fid, f in figs.items():
        if fid.startswith("datapath.") and ".direct." not in fid:
            pl, metric = fid.split(".")[1], fid.split(".")[3]
            assert f["baseline"] == f"datapath.{pl}.direct.{metric}", fid


def test_charts_are_valid_png_images(quick_run):
    result, out, _ = quick_run
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    assert sorted(result["charts"]) == ["controlplane.png", "datapath.png"]
    for name in result["charts"]:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400, name


def test_nothing_left_behind(quick_run):
    _, _, prefix = quick_run
    assert lab_cleanup.leftovers(prefix) == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [line for line in netns.splitlines() if line.startswith(prefix)]
