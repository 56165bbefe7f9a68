"""deploy/systemd: the unit passes `systemd-analyze verify` without a single warning, scores as
well exposed as `systemd-analyze security --offline` allows, and gives its secrets as
credentials the bridge reads through MB_<NAME>_FILE."""

from __future__ import annotations

import re
import shutil

import pytest

from conftest import ROOT, run

UNIT = ROOT / "deploy/systemd/messenger-bridge.service"
INSTALLED = "/usr/local/bin/messenger-bridge"

pytestmark = pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")


def unit_for_this_machine(tmp_path, bridge_bin, text: str | None = None):
    """The unit with ExecStart pointing at the built binary (verify checks that it exists)."""
    text = (text or UNIT.read_text()).replace(INSTALLED, bridge_bin)
    path = tmp_path / "messenger-bridge.service"
    path.write_text(text)
    return path


def test_unit_verifies_without_warnings(tmp_path, bridge_bin):
    out = run(["systemd-analyze", "verify", str(unit_for_this_machine(tmp_path, bridge_bin))], cwd=tmp_path)
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr


def test_verify_reports_a_misspelt_directive(tmp_path, bridge_bin):
    text = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict")
    out = run(["systemd-analyze", "verify", str(unit_for_this_machine(tmp_path, bridge_bin, text))], cwd=tmp_path)
    assert "Unknown key" in out.stdout + out.stderr


def test_unit_exposure_is_low(tmp_path, bridge_bin):
    out = run(["systemd-analyze", "security", "--offline=yes", str(unit_for_this_machine(tmp_path, bridge_bin))], cwd=tmp_path)
    m = re.search(r"Overall exposure level for messenger-bridge\.service: ([0-9.]+)", out.stdout)
    assert m, out.stdout + out.stderr
    assert float(m.group(1)) <= 2.0, out.stdout


def directives() -> dict[str, list[str]]:
    d: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            d.setdefault(k, []).append(v)
    return d


def test_unit_has_the_required_hardening():
    d = directives()
    for key, value in {"DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "NoNewPrivileges": "yes", "Restart": "on-failure",
                       "StateDirectory": "messenger-bridge"}.items():
        assert d.get(key) == [value], key
    assert "@system-service" in d["SystemCallFilter"]
    assert d["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert d["CapabilityBoundingSet"] == [""]


def test_credentials_reach_the_bridge_as_file_variables():
    d = directives()
    creds = {v.split(":", 1)[0] for v in d["LoadCredential"]}
    env = dict(v.split("=", 1) for v in d["Environment"])
    assert env["MB_DATABASE_ENCRYPTION_KEY_FILE"] == "%d/encryption_key"
    assert env["MB_OAUTH_CLIENT_SECRET_FILE"] == "%d/oauth_client_secret"
    assert env["MB__APPSERVICE__REGISTRATION"] == "%d/registration.yaml"
    assert {v.removeprefix("%d/") for v in env.values()} == creds
    # The example config's SQLite file is in the StateDirectory.
    assert "sqlite:///var/lib/messenger-bridge/bridge.db" in (ROOT / "config.example.yaml").read_text()
