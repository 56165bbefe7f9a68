"""Shared fixtures of the deployment tests: paths, the bridge binary, the validators' venv and
the native stack's values (read from deploy/local/stack, the script the other tests run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A validator installed in this venv (tests/deploy/requirements.txt)."""
    path = VENV_BIN / name
    assert path.exists(), f"{name} is not installed in {VENV_BIN}; run tests/deploy/run"
    return str(path)


@pytest.fixture(scope="session")
def bridge_bin() -> str:
    path = os.environ.get("MESSENGER_BRIDGE_BIN") or str(ROOT / "target/debug/messenger-bridge")
    assert Path(path).is_file(), f"no bridge binary at {path}: run `cargo build -p messenger-bridge` (tests/deploy/run does)"
    return path


@pytest.fixture(scope="session")
def stack_values() -> dict[str, str]:
    """NAME=value assignments at the top of deploy/local/stack (ports, domains, server name)."""
    text = (ROOT / "deploy/local/stack").read_text()
    values = dict(re.findall(r"^([A-Z_]+)=([A-Za-z0-9._]+)$", text, re.M))
    for key in ("SYNAPSE_PORT", "BRIDGE_PORT", "OAUTH_PORT", "XMPP_PORT", "XMPP_REDIRECT_PORT",
                "MATRIX_SERVER_NAME", "MESSENGER_DOMAIN", "STANDARD_DOMAIN", "SYNAPSE_VERSION"):
        assert key in values, f"deploy/local/stack no longer sets {key}"
    return values


@pytest.fixture(scope="session")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def run(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command with a clean MB_* environment plus `env`; output captured as text."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MB_")}
    base.update(env or {})
    return subprocess.run(cmd, env=base, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def generate_key(bridge_bin: str) -> str:
    out = run([bridge_bin, "generate-key"])
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()
