"""Pod status as the kubelet reports it: a pure function of what the node knows about a pod.

:class:`PodView` is a snapshot (sandbox address, process state, readiness); :func:`render`
turns it into the ``status`` the API gets: phase, podIP(s), hostIP, startTime, the four
conditions (with lastTransitionTime kept stable while a condition does not change) and one
containerStatus. No I/O here; the agent decides when to send.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .runtime import ContainerState

CONDITION_TYPES = ("PodScheduled", "Initialized", "ContainersReady", "Ready")


@dataclass(frozen=True, slots=True)
class PodView:
    pod_ip: str
    host_ip: str
    start_time: str
    container_name: str
    image: str
    restart_policy: str
    ready: bool
    running: bool
    started_ever: bool
    done: bool
    restart_count: int
    pid: int | None
    started_at: str | None
    waiting_reason: str
    exit_code: int | None
    terminated_reason: str
    finished_at: str | None
    last_exit_code: int | None
    last_started_at: str | None
    last_finished_at: str | None
    message: str = ""


def view_of(
    state: ContainerState | None,
    *,
    pod_ip: str,
    host_ip: str,
    start_time: str,
    container_name: str,
    image: str,
    restart_policy: str,
    ready: bool,
    message: str = "",
) -> PodView:
    st = state or ContainerState()
    return PodView(
        pod_ip=pod_ip,
        host_ip=host_ip,
        start_time=start_time,
        container_name=container_name,
        image=image,
        restart_policy=restart_policy,
        ready=ready and st.running,
        running=st.running,
        started_ever=st.started_at is not None,
        done=st.done,
        restart_count=st.restart_count,
        pid=st.pid,
        started_at=st.started_at,
        waiting_reason=st.waiting_reason,
        exit_code=st.exit_code,
        terminated_reason=st.terminated_reason,
        finished_at=st.finished_at,
        last_exit_code=st.last_exit_code,
        last_started_at=st.last_started_at,
        last_finished_at=st.last_finished_at,
        message=message,
    )


def phase(v: PodView) -> str:
    if v.done:
        return "Succeeded" if v.exit_code == 0 else "Failed"
    if v.started_ever:
        return "Running"
    return "Pending"


def _container_state(v: PodView) -> dict:
    if v.running:
        return {"running": {"startedAt": v.started_at}}
    if v.done or (v.exit_code is not None and not v.waiting_reason):
        return {
            "terminated": {
                "exitCode": v.exit_code if v.exit_code is not None else 0,
                "reason": v.terminated_reason or "Completed",
                "startedAt": v.started_at,
                "finishedAt": v.finished_at,
            }
        }
    w: dict = {"reason": v.waiting_reason or "ContainerCreating"}
    if v.message:
        w["message"] = v.message
    return {"waiting": w}


def render(
    v: PodView, transitions: Mapping[str, tuple[str, str]], now: str
) -> tuple[dict, dict[str, tuple[str, str]]]:
    """Return (status, transitions): transitions maps condition type -> (status, since)."""
    want = {
        "PodScheduled": True,
        "Initialized": True,
        "ContainersReady": v.ready,
        "Ready": v.ready,
    }
    new_trans: dict[str, tuple[str, str]] = {}
    conds = []
    for ctype in CONDITION_TYPES:
        s = "True" if want[ctype] else "False"
        prev = transitions.get(ctype)
        since = prev[1] if prev and prev[0] == s else now
        new_trans[ctype] = (s, since)
        c = {"type": ctype, "status": s, "lastProbeTime": None, "lastTransitionTime": since}
        if ctype in ("ContainersReady", "Ready") and not want[ctype]:
            c["reason"] = "PodCompleted" if v.done else "ContainersNotReady"
            c["message"] = f"containers with unready status: [{v.container_name}]"
        conds.append(c)
    cs: dict = {
        "name": v.container_name,
        "image": v.image or "kube-netlab/workload",
        "imageID": "",
        "ready": v.ready,
        "started": v.running,
        "restartCount": v.restart_count,
        "state": _container_state(v),
        "lastState": {},
    }
    if v.pid is not None:
        cs["containerID"] = f"knl://{v.pid}"
    if v.last_exit_code is not None and (v.running or v.restart_count):
        cs["lastState"] = {
            "terminated": {
                "exitCode": v.last_exit_code,
                "reason": "Completed" if v.last_exit_code == 0 else "Error",
                "startedAt": v.last_started_at,
                "finishedAt": v.last_finished_at,
            }
        }
    status: dict = {
        "phase": phase(v),
        "conditions": conds,
        "hostIP": v.host_ip,
        "hostIPs": [{"ip": v.host_ip}] if v.host_ip else [],
        "startTime": v.start_time,
        "containerStatuses": [cs],
        "qosClass": "BestEffort",
    }
    if v.pod_ip:
        status["podIP"] = v.pod_ip
        status["podIPs"] = [{"ip": v.pod_ip}]
    return status, new_trans
