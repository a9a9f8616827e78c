"""``python -m clusterdns``: the cluster DNS server's command line (CoreDNS-like flags)."""

from __future__ import annotations

import asyncio
import os

import click

from kubecommon.cli import api_options
from kubecommon.log import setup

from .forward import parse_upstream
from .server import Config, supervise


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@api_options
@click.option("--listen", default="0.0.0.0", show_default=True, help="Address to serve DNS on.")
@click.option(
    "--port",
    default=53,
    show_default=True,
    type=int,
    help="UDP and TCP port (0: any free port, logged).",
)
@click.option(
    "--zone",
    "zones",
    multiple=True,
    default=("cluster.local",),
    show_default=True,
    help="Cluster domain(s) we are authoritative for (repeatable).",
)
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    metavar="IP[:PORT]",
    help="Server to forward other names to (repeatable). None: REFUSED.",
)
@click.option(
    "--pods",
    type=click.Choice(["insecure", "verified", "disabled"]),
    default="insecure",
    show_default=True,
    help="a-b-c-d.<ns>.pod.<zone> records, as CoreDNS's `pods` option.",
)
@click.option("--ttl", default=5, show_default=True, type=click.IntRange(0, 3600))
@click.option(
    "--workers",
    default=os.cpu_count() or 1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="SO_REUSEPORT worker processes.",
)
@click.option("--health-port", default=8080, show_default=True, type=int, help="/health (0: off)")
@click.option("--ready-port", default=8181, show_default=True, type=int, help="/ready (0: off)")
@click.option("--metrics-port", default=9153, show_default=True, type=int, help="/metrics (0: off)")
@click.option(
    "--dns-service",
    default="kube-system/kube-dns",
    show_default=True,
    help="Service whose cluster IP answers ns.dns.<zone>.",
)
def main(
    master,
    kubeconfig,
    token_file,
    log_level,
    listen,
    port,
    zones,
    upstreams,
    pods,
    ttl,
    workers,
    health_port,
    ready_port,
    metrics_port,
    dns_service,
) -> None:
    """Cluster DNS: the Kubernetes DNS specification for the cluster zone, forwarding the rest."""
    setup("clusterdns", log_level)
    if not master and not kubeconfig and not os.environ.get("KUBECONFIG"):
        raise click.UsageError("no API server: pass --master URL or --kubeconfig FILE")
    try:
        ups = tuple(parse_upstream(u) for u in upstreams)
    except ValueError as e:
        raise click.BadParameter(f"--upstream: {e}") from e
    cfg = Config(
        master=master,
        kubeconfig=kubeconfig,
        token_file=token_file,
        listen=listen,
        port=port,
        zones=tuple(z.strip(".").lower() for z in zones),
        upstreams=ups,
        pods=pods,
        ttl=ttl,
        workers=workers,
        health_port=health_port,
        ready_port=ready_port,
        metrics_port=metrics_port,
        dns_service=dns_service,
        log_level=log_level,
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(supervise(cfg))


if __name__ == "__main__":
    main()
