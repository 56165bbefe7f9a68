"""deploy/kubernetes: every manifest validates (strictly) against the Kubernetes 1.37 schemas
that kubernetes-validate ships; the Deployment is hardened and probes /health; the ConfigMap's
config passes `messenger-bridge check-config` with the Secret's values given as the Deployment
gives them (env)."""

from __future__ import annotations

import secrets

import pytest
import yaml

from conftest import ROOT, generate_key, run, tool

K8S = ROOT / "deploy/kubernetes"
MANIFESTS = ["configmap.yaml", "secret.yaml", "deployment.yaml", "service.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((K8S / name).read_text())


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_validates_against_the_kubernetes_schema(name):
    out = run([tool("kubernetes-validate"), "--strict", "-k", "1.37.0", str(K8S / name)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "passed" in out.stdout + out.stderr


def test_schema_check_rejects_a_misspelt_field(tmp_path):
    bad = (K8S / "deployment.yaml").read_text().replace("readOnlyRootFilesystem", "readOnlyRootFileSystem")
    (tmp_path / "d.yaml").write_text(bad)
    out = run([tool("kubernetes-validate"), "--strict", "-k", "1.37.0", str(tmp_path / "d.yaml")])
    assert out.returncode != 0


def test_kustomization_lists_every_manifest():
    assert sorted(load("kustomization.yaml")["resources"]) == sorted(MANIFESTS)
    assert sorted(p.name for p in K8S.glob("*.yaml")) == sorted(MANIFESTS + ["kustomization.yaml"])


def container() -> dict:
    return load("deployment.yaml")["spec"]["template"]["spec"]["containers"][0]


def test_deployment_is_hardened():
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container()["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False


def test_probes_hit_health_on_the_appservice_port():
    c = container()
    assert c["ports"][0]["containerPort"] == 29317
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/health" and get["port"] == c["ports"][0]["name"]
    svc = load("service.yaml")
    assert svc["spec"]["ports"][0]["port"] == 29317
    assert svc["spec"]["selector"] == load("deployment.yaml")["spec"]["selector"]["matchLabels"]


def test_deployment_env_uses_only_keys_of_the_secret():
    keys = set(load("secret.yaml")["stringData"])
    used = {e["valueFrom"]["secretKeyRef"]["key"] for e in container()["env"] if "valueFrom" in e}
    assert used == keys
    names = {e["name"] for e in container()["env"]}
    assert {"MB_DATABASE_URL", "MB_DATABASE_ENCRYPTION_KEY", "MB_OAUTH_CLIENT_SECRET",
            "MB_APPSERVICE_AS_TOKEN", "MB_APPSERVICE_HS_TOKEN"} <= names


def test_configmap_config_passes_check_config_with_the_deployments_env(tmp_path, bridge_bin):
    config = tmp_path / "config.yaml"
    config.write_text(load("configmap.yaml")["data"]["config.yaml"])
    mount = next(m for m in container()["volumeMounts"] if m["name"] == "config")
    c_env = {e["name"]: e for e in container()["env"]}
    assert c_env["MB_CONFIG"]["value"] == mount["mountPath"] + "/config.yaml"
    # secret.yaml ships REPLACE_ME placeholders: give real-looking values, as an operator would.
    values = {"database-url": "postgres://bridge:pw@postgres.db.svc:5432/messenger_bridge",
              "encryption-key": generate_key(bridge_bin),
              "oauth-client-secret": secrets.token_hex(16),
              "as-token": secrets.token_urlsafe(32), "hs-token": secrets.token_urlsafe(32)}
    assert set(values) == set(load("secret.yaml")["stringData"])
    env = {"MB_CONFIG": str(config)}
    for name, e in c_env.items():
        if "valueFrom" in e:
            env[name] = values[e["valueFrom"]["secretKeyRef"]["key"]]
    out = run([bridge_bin, "check-config"], env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    # Without the Secret the same config is refused: the secrets really come from env.
    out = run([bridge_bin, "check-config"], env={"MB_CONFIG": str(config)})
    assert out.returncode != 0
    for key in ("appservice.as_token", "database.encryption_key"):
        assert key in out.stderr
