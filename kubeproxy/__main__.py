"""``python -m kubeproxy``: kube-proxy's command line (the flags that matter here).

    python -m kubeproxy --master http://172.18.0.2:6443 --hostname-override worker1 \\
        --proxy-mode iptables --cluster-cidr 10.244.0.0/16 --min-sync-period 0s
    python -m kubeproxy --cleanup        # remove every KUBE- chain/jump (both backends)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys

import click

from kubecommon import cli, log

from .config import ProxyConfig, parse_duration, parse_hostport
from .proxier import MODES, make_proxier


def _duration(_ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise click.BadParameter(str(e), param=param) from e


def _hostport(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value:
        try:
            parse_hostport(value)
        except ValueError as e:
            raise click.BadParameter(str(e), param=param) from e
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@cli.api_options
@click.option("--hostname-override", default="", help="This node's name (default: the hostname).")
@click.option("--proxy-mode", type=click.Choice(sorted(MODES)), default="iptables", show_default=True)
@click.option("--cluster-cidr", default="", help="Pod CIDR; ClusterIP traffic from outside it is masqueraded.")
@click.option("--masquerade-all", is_flag=True, help="SNAT all traffic sent to a ClusterIP.")
@click.option("--min-sync-period", default="1s", show_default=True, callback=_duration,
              help="Minimum time between two syncs (e.g. 0s, 100ms, 1s).")
@click.option("--sync-period", default="30s", show_default=True, callback=_duration,
              help="Period of the full resync (rules removed by hand come back).")
@click.option("--metrics-bind-address", default="127.0.0.1:10249", show_default=True, callback=_hostport,
              help='HOST:PORT for /metrics ("" disables).')
@click.option("--healthz-bind-address", default="0.0.0.0:10256", show_default=True, callback=_hostport,
              help='HOST:PORT for /healthz ("" disables).')
@click.option("--nodeport-addresses", default="", help="Comma-separated CIDRs NodePorts answer on (default: all local addresses).")
@click.option("--iptables-backend", type=click.Choice(["legacy", "legacy-restore", "nft", "nft-restore"]), default="legacy", show_default=True,
              help="legacy: x_tables written directly (no iptables-restore); legacy-restore: iptables-legacy-restore; "
                   "nft: nf_tables written directly (iptables-nft's encoding, no iptables-nft-restore); nft-restore: iptables-nft-restore")
@click.option("--iptables-localhost-nodeports/--no-iptables-localhost-nodeports", default=False, show_default=True,
              help="Answer NodePorts on 127.0.0.1 too (sets route_localnet=1).")
@click.option("--proxy-port-range", default="", help="userspace mode: local port range FROM-TO.")
@click.option("--udp-timeout", default="250ms", show_default=True, callback=_duration,
              help="userspace mode: idle timeout of a UDP session.")
@click.option("--cleanup", is_flag=True, help="Remove all rules any mode installed, then exit.")
def main(
    master: str | None,
    kubeconfig: str | None,
    token_file: str | None,
    log_level: str,
    hostname_override: str,
    proxy_mode: str,
    cluster_cidr: str,
    masquerade_all: bool,
    min_sync_period: float,
    sync_period: float,
    metrics_bind_address: str,
    healthz_bind_address: str,
    nodeport_addresses: str,
    iptables_backend: str,
    iptables_localhost_nodeports: bool,
    proxy_port_range: str,
    udp_timeout: float,
    cleanup: bool,
) -> None:
    """kube-proxy: program this node so Service IPs and NodePorts reach ready endpoints."""
    logger = log.setup("kubeproxy", log_level)
    config = ProxyConfig(
        hostname_override=hostname_override or socket.gethostname(),
        proxy_mode=proxy_mode,
        cluster_cidr=cluster_cidr,
        masquerade_all=masquerade_all,
        min_sync_period=min_sync_period,
        sync_period=sync_period,
        metrics_bind_address=metrics_bind_address,
        healthz_bind_address=healthz_bind_address,
        nodeport_addresses=tuple(c.strip() for c in nodeport_addresses.split(",") if c.strip()),
        iptables_backend=iptables_backend,
        localhost_nodeports=iptables_localhost_nodeports,
        proxy_port_range=proxy_port_range,
        udp_timeout=udp_timeout,
    )
    if cleanup:
        ok = asyncio.run(_cleanup(config))
        sys.exit(0 if ok else 1)
    client = cli.client_from(master, kubeconfig, token_file, "kubeproxy")
    try:
        _event_loop_runner(proxy_mode)(_run(config, client))
    except KeyboardInterrupt:
        pass
    logger.info("stopped")


def _event_loop_runner(proxy_mode: str):
    """userspace mode copies every byte on the loop: run it on uvloop when installed."""
    if proxy_mode == "userspace":
        try:
            import uvloop

            return uvloop.run
        except ImportError:
            pass
    return asyncio.run


async def _cleanup(config: ProxyConfig) -> bool:
    """Like kube-proxy --cleanup: every mode's leftovers, whatever mode ran before."""
    from .iptables.cleanup import cleanup as iptables_cleanup

    ok = await iptables_cleanup()
    for mode in MODES:
        if mode == "iptables":
            continue
        try:
            proxier = make_proxier(ProxyConfig(**{**_asdict(config), "proxy_mode": mode}))
        except ImportError:
            continue
        try:
            await proxier.cleanup()
        except Exception as e:  # report, keep cleaning the rest
            click.echo(f"cleanup of {mode} mode failed: {e}", err=True)
            ok = False
    return ok


def _asdict(config: ProxyConfig) -> dict:
    return {f: getattr(config, f) for f in config.__dataclass_fields__}


async def _run(config: ProxyConfig, client) -> None:
    from .runner import Runner

    proxier = make_proxier(config)
    runner = Runner(config, client, proxier)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await runner.serve_http()
    task = asyncio.create_task(runner.run())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    stopper.cancel()
    await runner.stop()
    hook = getattr(proxier, "stop", None)
    if hook is not None:
        await hook()
    await client.close()


if __name__ == "__main__":
    main()
