"""``python -m overlay``: kube-netlab's flanneld (CLI only; the work is in agent.py)."""

from __future__ import annotations

import asyncio
import logging
import sys
from ipaddress import IPv4Network

import click

from kubecommon import log as knl_log
from kubecommon.aio import run_until_signalled
from kubecommon.cli import api_options, client_from

from .agent import Agent, AgentConfig
from .kernel import OverlayError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@api_options
@click.option("--node-name", envvar="NODE_NAME", help="This node's Node object name.")
@click.option("--iface", help="Underlay interface (default: the default route's interface).")
@click.option(
    "--backend", type=click.Choice(["vxlan", "host-gw"]), default="vxlan", show_default=True
)
@click.option("--subnet-file", default="/run/flannel/subnet.env", show_default=True)
@click.option("--ip-masq", is_flag=True, help="Masquerade pod traffic leaving the cluster network.")
@click.option(
    "--cluster-cidr",
    default="10.244.0.0/16",
    show_default=True,
    help="The cluster's pod network (FLANNEL_NETWORK).",
)
@click.option("--cleanup", is_flag=True, help="Remove everything this agent installed, then exit.")
def main(
    master: str | None,
    kubeconfig: str | None,
    token_file: str | None,
    log_level: str,
    node_name: str | None,
    iface: str | None,
    backend: str,
    subnet_file: str,
    ip_masq: bool,
    cluster_cidr: str,
    cleanup: bool,
) -> None:
    """Give every pod a route to every other pod across nodes (flannel: vxlan or host-gw)."""
    log = knl_log.setup("overlay", log_level)
    # pyroute2 logs every netlink message at DEBUG: that costs more than the sync it traces
    logging.getLogger("pyroute2").setLevel(logging.INFO)
    try:
        network = IPv4Network(cluster_cidr)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--cluster-cidr") from e
    if cleanup:
        from .cleanup import cleanup as do_cleanup

        asyncio.run(do_cleanup(network, subnet_file))
        return
    if not node_name:
        raise click.UsageError("--node-name (or $NODE_NAME) is required")
    client = client_from(master, kubeconfig, token_file, "overlay")
    cfg = AgentConfig(node_name, iface, backend, subnet_file, ip_masq, network)

    try:
        if run_until_signalled(lambda: Agent(client, cfg).run(), closing=client):
            log.info("stopped; the data path stays in place (use --cleanup to remove it)")
    except OverlayError as e:
        log.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    main()
