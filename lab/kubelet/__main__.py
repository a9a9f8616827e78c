"""``python -m lab.kubelet``: run the node agent inside a node namespace (or ``--cleanup``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from kubecommon import log as knl_log
from kubecommon.aio import run_until_signalled
from kubecommon.cli import api_options, client_from

from .agent import Kubelet
from .node import parse_taints
from .sandbox import join_parent_mount_ns


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@api_options
@click.option("--node-name", required=True, help="Name of the Node this kubelet registers.")
@click.option("--node-ip", required=True, help="The node's InternalIP (its eth0 address).")
@click.option(
    "--prefix",
    envvar="KNL_PREFIX",
    default="knl",
    show_default=True,
    help="Lab prefix: pod namespaces are named <prefix>-pod-<namespace>.<pod>.",
)
@click.option("--cluster-dns", default="10.96.0.10", show_default=True, help="nameserver for pods.")
@click.option(
    "--subnet-file",
    type=click.Path(dir_okay=False),
    help="flannel's subnet.env; FLANNEL_MTU from it sets the pods' MTU.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help="Where IPAM state, pid files and pod logs live "
    "[default: /run/kube-netlab/<prefix>/nodes/<node-name>].",
)
@click.option(
    "--register-with-taints",
    default="",
    help="Taints for the Node at registration, e.g. node-role.kubernetes.io/control-plane:NoSchedule.",
)
@click.option(
    "--heartbeat-interval",
    default=5.0,
    show_default=True,
    help="Seconds between Node status updates.",
)
@click.option(
    "--underlay-iface",
    default="eth0",
    show_default=True,
    help="Interface whose MTU pods get without an overlay.",
)
@click.option(
    "--cleanup",
    is_flag=True,
    help="Stop every pod of this node, remove their namespaces and cni0, then exit.",
)
def main(
    master: str | None,
    kubeconfig: str | None,
    token_file: str | None,
    log_level: str,
    node_name: str,
    node_ip: str,
    prefix: str,
    cluster_dns: str,
    subnet_file: str | None,
    state_dir: str | None,
    register_with_taints: str,
    heartbeat_interval: float,
    underlay_iface: str,
    cleanup: bool,
) -> None:
    """The kube-netlab node agent: registers the Node and runs the pods bound to it."""
    knl_log.setup("kubelet", log_level)
    logging.getLogger("pyroute2").setLevel(logging.WARNING)  # per-message debug output is costly
    if os.geteuid() != 0:
        raise click.UsageError("the kubelet creates network namespaces: run it as root")
    try:
        taints = parse_taints(register_with_taints)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--register-with-taints") from e
    join_parent_mount_ns()  # before any thread exists
    state = Path(state_dir or f"/run/kube-netlab/{prefix}/nodes/{node_name}")
    if cleanup:
        client = client_from(master or "http://127.0.0.1:1", kubeconfig, token_file, "kubelet")
    else:
        client = client_from(master, kubeconfig, token_file, "kubelet")
    kubelet = Kubelet(
        client,
        node_name=node_name,
        node_ip=node_ip,
        prefix=prefix,
        cluster_dns=cluster_dns,
        state_dir=state,
        subnet_file=Path(subnet_file) if subnet_file else None,
        taints=taints,
        heartbeat=heartbeat_interval,
        underlay_iface=underlay_iface,
    )

    run_until_signalled(kubelet.cleanup_all if cleanup else kubelet.run, closing=client)


if __name__ == "__main__":
    main()
