"""Client configuration: --master, kubeconfig (token, TLS data), resource paths."""

import base64

import pytest

from kubecommon.client import load_config, resource_path


def test_resource_paths():
    assert (
        resource_path("services", "demo", "web", "status")
        == "/api/v1/namespaces/demo/services/web/status"
    )
    assert resource_path("nodes", "ignored-for-cluster-scoped", "n1") == "/api/v1/nodes/n1"
    assert (
        resource_path("endpointslices", "demo")
        == "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices"
    )
    with pytest.raises(ValueError, match="unknown resource"):
        resource_path("deployments")


def test_names_are_url_quoted():
    assert resource_path("pods", "demo", "a/b") == "/api/v1/namespaces/demo/pods/a%2Fb"


def test_master_wins(tmp_path):
    tok = tmp_path / "tok"
    tok.write_text("s3cret\n")
    cfg = load_config("http://10.0.0.1:6443/", None, str(tok))
    assert cfg.server == "http://10.0.0.1:6443" and cfg.token == "s3cret"


def test_kubeconfig_current_context(tmp_path):
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    kc = tmp_path / "kc"
    kc.write_text(f"""
apiVersion: v1
kind: Config
current-context: lab
clusters:
- name: other
  cluster: {{server: "https://1.2.3.4"}}
- name: lab
  cluster: {{server: "https://172.18.0.2:6443/", certificate-authority-data: "{ca}"}}
contexts:
- name: lab
  context: {{cluster: lab, user: admin}}
users:
- name: admin
  user: {{token: abc}}
""")
    cfg = load_config(None, str(kc))
    assert cfg.server == "https://172.18.0.2:6443" and cfg.token == "abc"
    assert cfg.ca_file and open(cfg.ca_file, "rb").read().startswith(b"-----BEGIN")


def test_missing_server_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    with pytest.raises(ValueError, match="--master"):
        load_config(None, None)
