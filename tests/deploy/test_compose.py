"""docker-compose.yml: valid against the Compose Specification's JSON schema, and in step with
the native stack (deploy/local/stack, deploy/local/demo): same ports, domains, accounts and
config keys. No Docker engine runs here, so nothing is started."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from conftest import ROOT, generate_key, run, tool

SERVICES = {"secrets-init", "bridge-init", "postgres", "oauth", "prosody", "synapse",
            "demo-setup", "bridge", "contact-bob", "element"}
BRIDGE_CONFIG = ROOT / "deploy/docker/bridge/config.yaml"


def check_compose_schema(path: Path):
    return run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)])


def test_compose_file_validates_against_the_compose_spec_schema():
    out = check_compose_schema(ROOT / "docker-compose.yml")
    assert out.returncode == 0, out.stdout + out.stderr


def test_schema_check_rejects_an_invalid_compose_file(tmp_path, compose):
    # The check is real: an unknown service key and a wrong type are refused.
    compose = copy.deepcopy(compose)
    compose["services"]["bridge"]["restart_policy"] = "always"
    compose["services"]["synapse"]["ports"] = "8008:8008"
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(yaml.safe_dump(compose))
    out = check_compose_schema(bad)
    assert out.returncode != 0
    assert "restart_policy" in out.stdout + out.stderr


def test_compose_runs_every_part_of_the_demo(compose):
    assert set(compose["services"]) == SERVICES
    assert compose["services"]["synapse"]["image"].startswith("matrixdotorg/synapse:")
    assert compose["services"]["postgres"]["image"].startswith("postgres:")
    assert compose["services"]["element"]["image"].startswith("vectorim/element-web:")


def test_synapse_image_is_the_native_stack_version(compose, stack_values):
    tag = compose["services"]["synapse"]["image"].split(":")[1]
    assert tag == "v" + stack_values["SYNAPSE_VERSION"]


PORT_VARIABLE = re.compile(r"^\$\{([A-Z_]+_HOST_PORT):-(\d+)\}$")


def published(compose) -> dict[str, set[int]]:
    """Default host ports by service. A host port is `${NAME_HOST_PORT:-default}` (tests/compose/run
    moves them when the native stack holds the defaults) and the default is the container's port."""
    ports: dict[str, set[int]] = {}
    for name, svc in compose["services"].items():
        for spec in svc.get("ports", []):
            host_ip, rest = spec.split(":", 1)
            host_port, container_port = rest.rsplit(":", 1)
            assert host_ip == "127.0.0.1", f"{name} publishes {spec} beyond 127.0.0.1"
            m = PORT_VARIABLE.match(host_port)
            assert m, f"{name}: host port {host_port} is not ${{NAME_HOST_PORT:-default}}"
            ports.setdefault(name, set()).add(int(m.group(2)))
            assert m.group(2) == container_port or name == "element", spec
    return ports


def test_compose_file_runs_on_debians_docker_compose_too(compose):
    # Debian 12 ships docker-compose 1.29 (no `docker compose` plugin): it refuses a top-level
    # `name` (the project name is the directory's, or -p / COMPOSE_PROJECT_NAME).
    assert set(compose) <= {"services", "volumes", "x-bridge-build", "x-demo-build"}


def test_published_ports_are_the_native_stacks_on_loopback(compose, stack_values):
    v = {k: int(stack_values[k]) for k in ("SYNAPSE_PORT", "BRIDGE_PORT", "OAUTH_PORT", "XMPP_PORT", "XMPP_REDIRECT_PORT")}
    assert published(compose) == {
        "synapse": {v["SYNAPSE_PORT"]},
        "bridge": {v["BRIDGE_PORT"]},
        "oauth": {v["OAUTH_PORT"]},
        "prosody": {v["XMPP_PORT"], v["XMPP_REDIRECT_PORT"]},
        "element": {8080},  # not in the native stack: the web client of the compose demo
    }


def test_every_mounted_file_and_build_file_exists(compose):
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (ROOT / src).exists(), f"{name} mounts missing {src}"
        build = svc.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name


def test_start_order_gives_synapse_the_registration_before_the_bridge_runs(compose):
    s = compose["services"]
    dep = lambda svc: {k: v["condition"] for k, v in s[svc].get("depends_on", {}).items()}
    assert dep("bridge-init") == {"secrets-init": "service_completed_successfully"}
    assert dep("synapse")["bridge-init"] == "service_completed_successfully"
    assert dep("bridge")["synapse"] == "service_healthy"
    assert dep("bridge")["demo-setup"] == "service_completed_successfully"
    assert dep("contact-bob")["bridge"] == "service_healthy"
    # The registration volume: written by bridge-init, read by Synapse and the bridge.
    assert "registration:/registration" in s["bridge-init"]["volumes"]
    assert "registration:/registration:ro" in s["synapse"]["volumes"]
    assert s["bridge-init"]["command"] == ["init"]
    # Every service that runs the bridge or demo image can build it (none pulls it).
    for name, svc in s.items():
        if svc.get("image", "").startswith("messenger-bridge"):
            assert "build" in svc, name


def test_bridge_config_matches_the_native_stack(stack_values, compose):
    cfg = yaml.safe_load(BRIDGE_CONFIG.read_text())
    assert cfg["homeserver"] == {"url": f"http://synapse:{stack_values['SYNAPSE_PORT']}",
                                 "server_name": stack_values["MATRIX_SERVER_NAME"]}
    assert cfg["appservice"]["listen"] == f"0.0.0.0:{stack_values['BRIDGE_PORT']}"
    assert cfg["appservice"]["url"] == f"http://bridge:{stack_values['BRIDGE_PORT']}"
    assert cfg["xmpp"]["domain"] == stack_values["MESSENGER_DOMAIN"]
    assert (cfg["xmpp"]["host"], cfg["xmpp"]["port"]) == ("prosody", int(stack_values["XMPP_PORT"]))
    port = stack_values["OAUTH_PORT"]
    assert cfg["oauth"]["token_url"] == f"http://oauth:{port}/oauth20_token.srf"
    assert cfg["oauth"]["authorize_url"] == f"http://localhost:{port}/oauth20_authorize.srf"
    assert cfg["oauth"]["client_id"] == "messenger-bridge"
    # The redirect must be one the provider registered for the bridge.
    server_js = (ROOT / "deploy/local/oauth-provider/server.js").read_text()
    assert f"'{cfg['oauth']['redirect_url']}'" in server_js
    # The same keys deploy/local/demo writes into its config.
    demo = (ROOT / "deploy/local/demo").read_text()
    block = demo[demo.index("<<YAML"):demo.index("\nYAML\n")]
    for section, keys in re.findall(r"^(\w+): \{(.*)\}$", block, re.M):
        for key in re.findall(r"(?:^|, )\"?([\w$]+)\"?:", keys):
            if not key.startswith("$"):
                assert key in cfg[section], f"{section}.{key} of deploy/local/demo is missing"


def test_demo_accounts_are_the_native_ones(compose):
    seed = "deploy/local/seed/accounts.json"
    for dockerfile in ("deploy/docker/prosody/Dockerfile", "deploy/docker/oauth-provider/Dockerfile"):
        assert f"COPY {seed} " in (ROOT / dockerfile).read_text(), dockerfile
    setup = (ROOT / "deploy/docker/demo/setup.sh").read_text()
    demo = (ROOT / "deploy/local/demo").read_text()
    for needle in ("demo\\0demopass\\0notadmin", "oauth_flow.py alice --client messenger-bridge",
                   "oauth_flow.py bob"):
        assert needle in demo and needle in setup, needle
    assert "--user @demo:localhost --jid alice@messenger.localhost" in setup


def test_compose_bridge_config_passes_check_config(tmp_path, bridge_bin, compose):
    env = compose["services"]["bridge"]["environment"]
    assert env["MB_CONFIG"] == "/config/config.yaml"
    # The secrets volume as secrets-init fills it; the registration as bridge-init writes it.
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "database_url").write_text("postgres://bridge:pw@postgres:5432/messenger_bridge\n")
    (secrets / "encryption_key").write_text(generate_key(bridge_bin) + "\n")
    (secrets / "oauth_client_secret").write_text("s3cret\n")
    reg = tmp_path / "registration.yaml"
    out = run([bridge_bin, "-c", str(BRIDGE_CONFIG), "generate-registration", "-o", str(reg)])
    assert out.returncode == 0, out.stderr
    registration = yaml.safe_load(reg.read_text())
    assert registration["url"] == "http://bridge:29317"
    assert registration["namespaces"]["users"][0]["regex"] == "@msn_.*:localhost"
    ca = tmp_path / "ca.crt"
    ca.write_text("(the demo CA; only its existence is checked)\n")
    files = {"MB_DATABASE_URL_FILE": secrets / "database_url",
             "MB_DATABASE_ENCRYPTION_KEY_FILE": secrets / "encryption_key",
             "MB_OAUTH_CLIENT_SECRET_FILE": secrets / "oauth_client_secret"}
    for key in files:
        assert env[key].startswith("/secrets/"), key
    out = run([bridge_bin, "check-config"], env={
        "MB_CONFIG": str(BRIDGE_CONFIG),
        # Container paths mapped to this machine: only these two differ.
        "MB__APPSERVICE__REGISTRATION": str(reg),
        "MB__XMPP__CA_FILE": str(ca),
        **{k: str(v) for k, v in files.items()},
    })
    assert out.returncode == 0, out.stdout + out.stderr
    assert "the configuration is valid" in out.stdout


def test_prosody_config_keeps_every_setting_of_the_native_template():
    template = (ROOT / "deploy/local/prosody/prosody.cfg.lua.in").read_text()
    ours = (ROOT / "deploy/docker/prosody/prosody.cfg.lua").read_text()
    keys = lambda text: set(re.findall(r"^\s*([a-z_]+)\s*=", text, re.M))
    # run_as_root: the container runs Prosody as its own user.
    assert keys(template) - {"run_as_root"} <= keys(ours)
    hosts = lambda text: re.findall(r'^VirtualHost "([^"]+)"', text, re.M)
    assert hosts(ours) == ["messenger.localhost", "xmpp.localhost"]
    # selfsigned.localhost is a test host of the native stack only (Prosody's own certificate).
    assert hosts(template) == ["@MESSENGER_DOMAIN@", "@STANDARD_DOMAIN@", "@SELFSIGNED_DOMAIN@"]
    for line in re.findall(r"^\s*(\"[a-z_]+\";.*)$", template, re.M):
        assert line.strip() in ours, line


def test_prosody_config_passes_prosodyctl_check(tmp_path):
    import shutil
    import pytest
    if not shutil.which("prosodyctl"):
        pytest.skip("prosodyctl is not installed (deploy/local/stack install installs it)")
    cfg = (ROOT / "deploy/docker/prosody/prosody.cfg.lua").read_text()
    cfg = (cfg.replace("/usr/local/lib/prosody-demo/modules", str(ROOT / "deploy/local/prosody/modules"))
              .replace("/usr/local/share/prosody-demo/accounts.json", str(ROOT / "deploy/local/seed/accounts.json"))
              .replace("/var/lib/prosody-demo", str(tmp_path))
              .replace('"/tls', f'"{tmp_path}'))
    (tmp_path / "data").mkdir()
    path = tmp_path / "prosody.cfg.lua"
    # As root, prosodyctl would switch to the prosody user, who cannot read pytest's tmp dir.
    path.write_text("run_as_root = true\n" + cfg)
    out = run(["prosodyctl", "--config", str(path), "check", "config"], env={"PROSODY_CLIENT_SECRET": "x"}, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "All checks passed" in out.stdout


def test_synapse_start_fills_every_placeholder_of_the_native_template():
    template = (ROOT / "deploy/local/synapse/homeserver.yaml.in").read_text()
    start = (ROOT / "deploy/docker/synapse/start.sh").read_text()
    needed = set(re.findall(r"@([A-Z_]+)@", template))
    filled = set(re.findall(r"s\|@([A-Z_]+)@\|", start))
    assert needed and needed <= filled, needed - filled
    assert "app_service_config_files" in template
    assert "@AS_REGISTRATION@|/registration/registration.yaml" in start


def test_oauth_start_gives_every_variable_the_provider_requires():
    server = (ROOT / "deploy/local/oauth-provider/server.js").read_text()
    required = set(re.findall(r"env\('([A-Z_]+)'\)", server))
    dockerfile = (ROOT / "deploy/docker/oauth-provider/Dockerfile").read_text()
    start = (ROOT / "deploy/docker/oauth-provider/start.sh").read_text()
    given = set(re.findall(r"^([A-Z_]+)=", start, re.M)) | set(re.findall(r"\b(OAUTH_[A-Z_]+)=", dockerfile))
    assert required and required <= given, required - given


def test_secrets_init_writes_what_the_services_read():
    init = (ROOT / "deploy/docker/secrets-init.sh").read_text()
    made = set(init.split("for name in ", 1)[1].split("; do", 1)[0].replace("\\\n", " ").split())
    made |= {"database_url", "encryption_key"}
    read = set()
    for path in ["docker-compose.yml", "deploy/docker/synapse/start.sh", "deploy/docker/oauth-provider/start.sh",
                 "deploy/docker/prosody/start.sh", "deploy/docker/demo/setup.sh"]:
        read |= set(re.findall(r"/secrets/([a-z_]+)", (ROOT / path).read_text()))
        read |= set(re.findall(r"secret ([a-z_]+)\)", (ROOT / path).read_text()))
    assert read and read <= made, read - made
