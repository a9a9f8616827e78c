"""Run UserspaceProxier without an API server, from a JSON file (tests and the benchmark).

    python -m kubeproxy.userspace.harness --spec FILE --node-ip IP [--mode userspace|iptables]
        [--proxy-port-range A-B]
        [--udp-timeout 0.25] [--ready-file F]

FILE: {"services": [{"namespace": "ns", "name": "svc", "port_name": "", "protocol": "TCP",
        "cluster_ip": "10.96.0.10", "port": 80, "node_port": 0, "affinity_timeout": 0,
        "endpoints": [["10.0.0.2", 8080, true], ...]}]}   (the bool is "ready", default true)
SIGHUP re-reads FILE and syncs; SIGTERM/SIGINT stop and remove the rules (``--cleanup``).
Runs on uvloop, as a production process should.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path

import click

from kubecommon.model import Endpoint, ServicePortInfo, ServicePortName

from ..config import ProxyConfig
from .proxier import UserspaceProxier

log = logging.getLogger("kubeproxy")


def load_spec(path: str) -> tuple[dict, dict]:
    spec = json.loads(Path(path).read_text())
    services: dict[ServicePortName, ServicePortInfo] = {}
    endpoints: dict[ServicePortName, tuple[Endpoint, ...]] = {}
    for s in spec.get("services", []):
        proto = s.get("protocol", "TCP")
        spn = ServicePortName(
            s.get("namespace", "default"), s["name"], s.get("port_name", ""), proto
        )
        services[spn] = ServicePortInfo(
            name=spn,
            cluster_ip=s["cluster_ip"],
            port=int(s["port"]),
            protocol=proto,
            target_port=int(s.get("target_port", s["port"])),
            node_port=int(s.get("node_port", 0)),
            type="NodePort" if s.get("node_port") else "ClusterIP",
            session_affinity_timeout=int(s.get("affinity_timeout", 0)),
            external_ips=tuple(s.get("external_ips", ())),
        )
        endpoints[spn] = tuple(
            Endpoint(ip=e[0], port=int(e[1]), ready=bool(e[2]) if len(e) > 2 else True)
            for e in s.get("endpoints", [])
        )
    return services, endpoints


async def _main(spec: str, config: ProxyConfig, node_ip: str, ready_file: str) -> None:
    if config.proxy_mode == "userspace":
        proxier = UserspaceProxier(config, node_ip=node_ip, clean_other_modes=False)
    else:  # another mode, for comparisons (kubeproxy.bench-style runs without an API)
        from ..proxier import make_proxier

        proxier = make_proxier(config)
    await proxier.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    generation = 0
    try:
        while True:
            await proxier.sync(*load_spec(spec))
            generation += 1
            if ready_file:
                Path(ready_file).write_text(f"{generation}\n")
            reload.clear()
            waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(reload.wait())}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if stop.is_set():
                break
    finally:
        await proxier.cleanup()


@click.command()
@click.option("--spec", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--mode", default="userspace", type=click.Choice(["userspace", "iptables"]))
@click.option("--node-ip", default="")
@click.option("--proxy-port-range", default="")
@click.option("--udp-timeout", default=0.25, type=float)
@click.option("--ready-file", default="")
@click.option("-v", "--verbose", is_flag=True)
def main(
    spec: str,
    mode: str,
    node_ip: str,
    proxy_port_range: str,
    udp_timeout: float,
    ready_file: str,
    verbose: bool,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    config = ProxyConfig(
        proxy_mode=mode,
        proxy_port_range=proxy_port_range,
        udp_timeout=udp_timeout,
        masquerade_all=True,  # iptables mode: replies of same-bridge pods come back via the node
        min_sync_period=0.0,
    )
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    runner(_main(spec, config, node_ip, ready_file))


if __name__ == "__main__":
    main()
