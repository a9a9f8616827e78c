"""Userspace portal rules: golden iptables-restore text, jump repair and cleanup input."""

from kubecommon.model import ServicePortName
from kubeproxy.userspace.apply import cleanup_text, jump_fixes, merge
from kubeproxy.userspace.render import Portal, render

WEB = Portal(
    ServicePortName("default", "web", "http"), "TCP", "10.96.0.20", 80, 40001, node_port=30080
)
DNS = Portal(
    ServicePortName("kube-system", "kube-dns", "dns"),
    "UDP",
    "10.96.0.10",
    53,
    40002,
    external_ips=("192.0.2.5",),
)

GOLDEN = """\
*nat
:KUBE-PORTALS-CONTAINER - [0:0]
:KUBE-PORTALS-HOST - [0:0]
:KUBE-NODEPORT-CONTAINER - [0:0]
:KUBE-NODEPORT-HOST - [0:0]
-A KUBE-PORTALS-CONTAINER -m comment --comment default/web:http -p tcp -m tcp --dport 80 -d 10.96.0.20/32 -j REDIRECT --to-ports 40001
-A KUBE-PORTALS-CONTAINER -m comment --comment kube-system/kube-dns:dns -p udp -m udp --dport 53 -d 10.96.0.10/32 -j REDIRECT --to-ports 40002
-A KUBE-PORTALS-CONTAINER -m comment --comment kube-system/kube-dns:dns -p udp -m udp --dport 53 -d 192.0.2.5/32 -j REDIRECT --to-ports 40002
-A KUBE-PORTALS-HOST -m comment --comment default/web:http -p tcp -m tcp --dport 80 -d 10.96.0.20/32 -j DNAT --to-destination 172.18.0.3:40001
-A KUBE-PORTALS-HOST -m comment --comment kube-system/kube-dns:dns -p udp -m udp --dport 53 -d 10.96.0.10/32 -j DNAT --to-destination 172.18.0.3:40002
-A KUBE-PORTALS-HOST -m comment --comment kube-system/kube-dns:dns -p udp -m udp --dport 53 -d 192.0.2.5/32 -m addrtype --dst-type LOCAL -j DNAT --to-destination 172.18.0.3:40002
-A KUBE-NODEPORT-CONTAINER -m comment --comment default/web:http -p tcp -m tcp --dport 30080 -j REDIRECT --to-ports 40001
-A KUBE-NODEPORT-HOST -m comment --comment default/web:http -p tcp -m tcp --dport 30080 -j DNAT --to-destination 172.18.0.3:40001
COMMIT
*filter
:KUBE-NODEPORT-NON-LOCAL - [0:0]
-A KUBE-NODEPORT-NON-LOCAL -m comment --comment default/web:http -p tcp -m tcp --dport 40001 -m state --state NEW -j ACCEPT
-A KUBE-NODEPORT-NON-LOCAL -m comment --comment kube-system/kube-dns:dns -p udp -m udp --dport 40002 -m state --state NEW -j ACCEPT
COMMIT
"""


def test_golden_rules():
    assert render([DNS, WEB], "172.18.0.3") == GOLDEN


def test_render_is_deterministic_and_empty_state_still_declares_chains():
    assert render([WEB, DNS], "172.18.0.3") == render([DNS, WEB], "172.18.0.3")
    empty = render([], "172.18.0.3")
    assert ":KUBE-PORTALS-CONTAINER - [0:0]" in empty and "-A KUBE-" not in empty


def test_unnamed_port_comment_has_no_colon():
    p = Portal(ServicePortName("ns", "svc", ""), "TCP", "10.96.0.1", 443, 40003)
    assert "--comment ns/svc -p tcp" in render([p], "10.0.0.1")


SAVED_NONE = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -j OTHER
COMMIT
*filter
:INPUT ACCEPT [0:0]
COMMIT
"""


def test_missing_jumps_are_added_first_or_last():
    fixes = jump_fixes(SAVED_NONE)
    assert fixes["nat"][0].startswith("-I PREROUTING 1 ") and fixes["nat"][0].endswith(
        "-j KUBE-PORTALS-CONTAINER"
    )
    assert any(
        f.startswith("-A PREROUTING ") and f.endswith("KUBE-NODEPORT-CONTAINER")
        for f in fixes["nat"]
    )
    assert fixes["filter"][0].startswith("-I INPUT 1 ")
    text = merge(render([WEB], "10.0.0.1"), fixes)
    nat = text.split("*filter")[0]
    assert nat.index("-I PREROUTING 1") < nat.index("COMMIT")


def test_present_jumps_are_left_alone_and_misplaced_first_jump_is_moved():
    saved = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-PORTALS-CONTAINER - [0:0]
-A PREROUTING -m comment --comment "x y" -j KUBE-PORTALS-CONTAINER
-A PREROUTING -m addrtype --dst-type LOCAL -j KUBE-NODEPORT-CONTAINER
-A OUTPUT -j OTHER
-A OUTPUT -j KUBE-PORTALS-HOST
-A OUTPUT -m addrtype --dst-type LOCAL -j KUBE-NODEPORT-HOST
COMMIT
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j KUBE-NODEPORT-NON-LOCAL
COMMIT
"""
    fixes = jump_fixes(saved)
    assert "filter" not in fixes
    assert fixes["nat"] == [
        "-D OUTPUT -j KUBE-PORTALS-HOST",
        fixes["nat"][1],
    ]
    assert fixes["nat"][1].startswith("-I OUTPUT 1 ")


def test_cleanup_removes_jumps_and_chains_only_ours():
    saved = """*nat
:PREROUTING ACCEPT [0:0]
:KUBE-PORTALS-CONTAINER - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "a b" -j KUBE-PORTALS-CONTAINER
-A PREROUTING -j KUBE-SERVICES
COMMIT
*filter
:INPUT ACCEPT [0:0]
:KUBE-NODEPORT-NON-LOCAL - [0:0]
-A INPUT -j KUBE-NODEPORT-NON-LOCAL
COMMIT
"""
    text = cleanup_text(saved)
    assert '-D PREROUTING -m comment --comment "a b" -j KUBE-PORTALS-CONTAINER' in text
    assert "-X KUBE-PORTALS-CONTAINER" in text and "-X KUBE-NODEPORT-NON-LOCAL" in text
    assert "KUBE-SERVICES" not in text
    assert cleanup_text("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n") == ""


def test_start_removes_iptables_mode_leftovers_but_not_others():
    from kubeproxy.userspace.apply import is_iptables_mode

    saved = """*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-ABC - [0:0]
:KUBE-PORTALS-CONTAINER - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -j KUBE-PORTALS-CONTAINER
-A KUBE-SERVICES -j KUBE-SVC-ABC
COMMIT
"""
    text = cleanup_text(saved, is_iptables_mode)
    assert "-X KUBE-SERVICES" in text and "-X KUBE-SVC-ABC" in text
    assert (
        '-D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in text
    )
    assert "PORTALS" not in text and "CANARY" not in text
