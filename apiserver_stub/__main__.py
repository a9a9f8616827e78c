"""``python -m apiserver_stub``: the command line of the Kubernetes API server stand-in."""

from __future__ import annotations

import logging
import os
import sys

import click

from kubecommon.aio import run_until_signalled

from .server import Config, run

DEFAULT_DATA_DIR = os.path.join(
    os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"),
    "kube-netlab",
    "apiserver",
)


def _tokens(path: str | None) -> set[str]:
    """Bearer tokens: kube-apiserver's token CSV (token,user,uid,...) or one token a line."""
    if not path:
        return set()
    out = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                out.add(line.split(",", 1)[0].strip().strip('"'))
    if not out:
        raise click.BadParameter(f"{path} holds no token", param_hint="--token-file")
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--bind", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=6443,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port to listen on (plain HTTP).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Keep objects in SQLite here (created if missing); survives restarts. "
    f"[default: {DEFAULT_DATA_DIR}]",
)
@click.option(
    "--memory",
    is_flag=True,
    help="Keep everything in memory only (tests); nothing survives a restart.",
)
@click.option(
    "--service-cluster-ip-range",
    "service_cidr",
    default="10.96.0.0/12",
    show_default=True,
    help="CIDR ClusterIPs are allocated from; its first address goes to the 'kubernetes' service.",
)
@click.option(
    "--service-node-port-range",
    "node_port_range",
    default="30000-32767",
    show_default=True,
    help="Range NodePorts are allocated from.",
)
@click.option(
    "--cluster-cidr",
    default="10.244.0.0/16",
    show_default=True,
    help="Pod network; each Node gets a spec.podCIDR from it.",
)
@click.option(
    "--node-cidr-mask-size",
    default=24,
    show_default=True,
    type=click.IntRange(1, 128),
    help="Prefix length of each Node's podCIDR.",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Require a bearer token from this file (token,user,uid CSV or one token a line); others get 401.",
)
@click.option(
    "--watch-history",
    default=20000,
    show_default=True,
    type=click.IntRange(10),
    help="Events kept per resource for watches resuming from an older resourceVersion (older gets 410 Gone).",
)
@click.option(
    "--fsync/--no-fsync",
    default=False,
    show_default=True,
    help="SQLite synchronous=FULL (survive power loss) instead of NORMAL (survive process crash).",
)
@click.option(
    "--bookmark-interval",
    default=60.0,
    show_default=True,
    type=float,
    help="Seconds between BOOKMARK events on watches that allow them.",
)
@click.option(
    "--pod-termination-seconds",
    "pod_grace_cap",
    default=0.0,
    show_default=True,
    type=float,
    help="Keep deleted pods bound to a node Terminating for min(grace period, this) seconds before removing them (0: remove at once, as if the kubelet confirmed).",
)
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
def main(
    bind: str,
    port: int,
    data_dir: str | None,
    memory: bool,
    service_cidr: str,
    node_port_range: str,
    cluster_cidr: str,
    node_cidr_mask_size: int,
    token_file: str | None,
    watch_history: int,
    fsync: bool,
    bookmark_interval: float,
    pod_grace_cap: float,
    log_level: str,
) -> None:
    """A Kubernetes API server stand-in: core/v1 namespaces, nodes, pods, services,
    endpoints and discovery.k8s.io/v1 endpointslices over the real REST + watch protocol,
    with the endpoints, EndpointSlice and node-IPAM controllers built in."""
    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if memory and data_dir:
        raise click.UsageError("--memory and --data-dir exclude each other")
    try:
        lo, hi = (int(x) for x in node_port_range.split("-", 1))
    except ValueError:
        raise click.BadParameter(
            "expected LOW-HIGH", param_hint="--service-node-port-range"
        ) from None
    import ipaddress

    for flag, value in (
        ("--service-cluster-ip-range", service_cidr),
        ("--cluster-cidr", cluster_cidr),
    ):
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint=flag) from None
    cfg = Config(
        bind=bind,
        port=port,
        data_dir=None if memory else (data_dir or DEFAULT_DATA_DIR),
        service_cidr=service_cidr,
        cluster_cidr=cluster_cidr,
        node_cidr_mask=node_cidr_mask_size,
        node_port_range=(lo, hi),
        tokens=_tokens(token_file),
        history=watch_history,
        fsync=fsync,
        bookmark_interval=bookmark_interval,
        pod_grace_cap=pod_grace_cap,
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    try:
        run_until_signalled(lambda: run(cfg))
    except OSError as e:
        click.echo(f"apiserver_stub: cannot listen on {bind}:{port}: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
