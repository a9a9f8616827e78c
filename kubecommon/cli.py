"""Flags every agent shares: where the API is (``--master`` / ``--kubeconfig``) and logging."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from .client import ApiClient, ClusterConfig, load_config


def api_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add --master, --kubeconfig, --token-file and --log-level to a click command."""

    @click.option(
        "--master",
        envvar="KNL_MASTER",
        help="API server URL, e.g. http://172.18.0.2:6443 (overrides --kubeconfig).",
    )
    @click.option(
        "--kubeconfig",
        envvar="KUBECONFIG",
        type=click.Path(dir_okay=False),
        help="kubeconfig file (server, token, certificates), as for a real cluster.",
    )
    @click.option(
        "--token-file",
        type=click.Path(exists=True, dir_okay=False),
        help="File holding a bearer token.",
    )
    @click.option(
        "--log-level",
        default="INFO",
        show_default=True,
        type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    )
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def config_from(
    master: str | None, kubeconfig: str | None, token_file: str | None
) -> ClusterConfig:
    try:
        return load_config(master, kubeconfig, token_file)
    except (ValueError, OSError) as e:
        raise click.UsageError(str(e)) from e


def client_from(
    master: str | None, kubeconfig: str | None, token_file: str | None, agent: str
) -> ApiClient:
    return ApiClient(config_from(master, kubeconfig, token_file), user_agent=f"kube-netlab/{agent}")
