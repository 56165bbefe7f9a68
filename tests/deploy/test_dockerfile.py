"""deploy/docker: the Dockerfiles lint clean with hadolint, parse with BuildKit's parser, and
the bridge image is what the issue asks (multi-stage, non-root runtime, /health check, /data).
The image's entrypoint is run here with the real binary (paths mapped to a temp dir)."""

from __future__ import annotations

import re
import stat

import dockerfile
import pytest
import yaml

from conftest import ROOT, run, tool

DOCKERFILES = ["deploy/docker/Dockerfile", "deploy/docker/prosody/Dockerfile",
               "deploy/docker/oauth-provider/Dockerfile"]


def stages(path: str) -> list[dict]:
    """[{name, base, commands: [(CMD, value tuple, original)]}] in file order."""
    result: list[dict] = []
    for c in dockerfile.parse_file(str(ROOT / path)):
        if c.cmd == "FROM":
            name = c.value[2] if len(c.value) == 3 and c.value[1].upper() == "AS" else None
            result.append({"name": name, "base": c.value[0], "commands": []})
        elif result:
            result[-1]["commands"].append((c.cmd, c.value, c.original))
    return result


def last(stage: dict, cmd: str):
    found = [c for c in stage["commands"] if c[0] == cmd]
    return found[-1] if found else None


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfile_lints_clean_with_hadolint(path):
    out = run([tool("hadolint"), "--config", str(ROOT / "deploy/docker/.hadolint.yaml"), str(ROOT / path)])
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_reports_a_root_runtime(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm-slim\nUSER root\nRUN cd /tmp && true\n")
    out = run([tool("hadolint"), "--config", str(ROOT / "deploy/docker/.hadolint.yaml"), str(bad)])
    assert out.returncode != 0 and "DL3002" in out.stdout


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfile_final_stage_runs_as_non_root(path):
    final = stages(path)[-1]
    user = last(final, "USER")
    assert user, f"{path}: the final stage sets no USER (it would run as root)"
    uid = user[1][0].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user[2]


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfile_copies_only_files_of_the_repository(path):
    for stage in stages(path):
        for cmd, value, original in stage["commands"]:
            if cmd == "COPY" and not any(v.startswith("--from=") for v in original.split()[1:2]):
                for src in value[:-1]:
                    if src != ".":
                        assert (ROOT / src).exists(), f"{path}: {original}"


def test_bridge_image_is_multi_stage_with_the_runtime_last():
    s = stages("deploy/docker/Dockerfile")
    assert [x["name"] for x in s] == ["builder", "demo", "runtime"]
    assert s[0]["base"].startswith("rust:${RUST_VERSION}")
    assert re.search(r"^ARG RUST_VERSION=1\.95$", (ROOT / "deploy/docker/Dockerfile").read_text(), re.M)
    build = " ".join(c[2] for c in s[0]["commands"] if c[0] == "RUN")
    assert "cargo build --release -p messenger-bridge --locked" in build
    runtime = s[-1]
    assert runtime["base"].startswith("debian:") and runtime["base"].endswith("-slim")
    # Nothing from apt in the runtime (size): the CA bundle comes from the builder.
    runs = " ".join(c[2] for c in runtime["commands"] if c[0] == "RUN")
    assert "apt-get" not in runs
    copies = [c[2] for c in runtime["commands"] if c[0] == "COPY"]
    assert any("--from=builder" in c and "/usr/local/bin/messenger-bridge" in c for c in copies)
    assert any("--from=builder" in c and "/etc/ssl/certs/ca-certificates.crt" in c for c in copies)
    # A stripped binary.
    assert "install -D -s " in build


def test_dockerfiles_need_nothing_pulled_but_their_base_images():
    # A `# syntax=` line makes BuildKit pull the Dockerfile frontend from a registry.
    for path in DOCKERFILES:
        assert "# syntax=" not in (ROOT / path).read_text(), path


def test_bridge_runtime_exposes_29317_checks_health_and_keeps_data_in_a_volume():
    runtime = stages("deploy/docker/Dockerfile")[-1]
    assert last(runtime, "EXPOSE")[1] == ("29317",)
    assert "/data" in last(runtime, "VOLUME")[2]
    health = last(runtime, "HEALTHCHECK")[2]
    # The binary's own `healthcheck` command (GET /health), so the image needs no curl.
    assert '"/usr/local/bin/messenger-bridge", "healthcheck", "127.0.0.1:29317"' in health
    assert last(runtime, "USER")[1][0] == "10001:10001"
    assert last(runtime, "ENTRYPOINT")[1] == ("/usr/local/bin/docker-entrypoint.sh",)


def test_kubernetes_runs_the_image_as_its_user():
    deployment = yaml.safe_load((ROOT / "deploy/kubernetes/deployment.yaml").read_text())
    uid = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert f"{uid}:{uid}" == last(stages("deploy/docker/Dockerfile")[-1], "USER")[1][0]


def test_build_context_ignores_local_state():
    ignore = (ROOT / "deploy/docker/Dockerfile.dockerignore").read_text().split()
    for entry in (".git", ".stack", "target", "**/node_modules"):
        assert entry in ignore


@pytest.fixture()
def entrypoint(tmp_path, bridge_bin):
    """The image's entrypoint with its absolute paths mapped into tmp_path."""
    text = (ROOT / "deploy/docker/bridge/docker-entrypoint.sh").read_text()
    data = tmp_path / "data"
    data.mkdir()
    text = (text.replace("/usr/local/bin/messenger-bridge", bridge_bin)
                .replace("/usr/share/messenger-bridge/config.example.yaml", str(ROOT / "config.example.yaml"))
                .replace("/data/", f"{data}/")
                .replace("sqlite:///data/", f"sqlite://{data}/"))
    path = tmp_path / "docker-entrypoint.sh"
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path, data


def test_entrypoint_first_start_writes_config_then_registration_then_runs(entrypoint):
    script, data = entrypoint
    # 1. No config: one is written from config.example.yaml, and the container stops.
    out = run(["sh", str(script)], cwd=data)
    assert out.returncode == 0, out.stderr
    assert "no configuration found" in out.stderr
    cfg = yaml.safe_load((data / "config.yaml").read_text())
    assert cfg["appservice"]["listen"] == "0.0.0.0:29317"
    assert cfg["appservice"]["registration"] == f"{data}/registration.yaml"
    assert cfg["database"]["url"] == f"sqlite://{data}/bridge.db"
    assert re.fullmatch(r"[\w-]+:[A-Za-z0-9+/=]+", cfg["database"]["encryption_key"])
    assert oct((data / "config.yaml").stat().st_mode & 0o777) == "0o600"
    # 2. No registration: generated, and the container stops with instructions.
    out = run(["sh", str(script)], cwd=data)
    assert out.returncode == 0, out.stderr
    assert "no registration found" in out.stderr
    reg = yaml.safe_load((data / "registration.yaml").read_text())
    assert reg["url"] == "http://0.0.0.0:29317"  # the default; set appservice.url for the homeserver
    # 3. Both there: the command runs (check-config stands for run, which needs a homeserver).
    out = run(["sh", str(script), "check-config"], cwd=data)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "the configuration is valid" in out.stdout


def test_entrypoint_init_generates_the_registration_and_a_key_file(entrypoint, tmp_path):
    script, data = entrypoint
    config = ROOT / "deploy/docker/bridge/config.yaml"
    reg = tmp_path / "registration.yaml"
    key = tmp_path / "key"
    env = {"MB_CONFIG": str(config), "MB__APPSERVICE__REGISTRATION": str(reg),
           "MB_DATABASE_ENCRYPTION_KEY_FILE": str(key)}
    out = run(["sh", str(script), "init"], env=env, cwd=data)
    assert out.returncode == 0, out.stderr
    assert reg.is_file() and key.is_file()
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    first = reg.read_text()
    out = run(["sh", str(script), "init"], env=env, cwd=data)
    assert out.returncode == 0 and reg.read_text() == first, "init must keep an existing registration"


def test_healthcheck_command_follows_the_health_endpoint(bridge_bin):
    # The image's HEALTHCHECK: exit 0 on 200 from /health, non-zero on anything else or no answer.
    import http.server
    import threading

    status = {"code": 200}

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            code = status["code"] if self.path == "/health" else 404
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b"ok" if code == 200 else b"not ready")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    addr = f"127.0.0.1:{server.server_address[1]}"
    try:
        assert run([bridge_bin, "healthcheck", addr]).returncode == 0
        status["code"] = 503
        out = run([bridge_bin, "healthcheck", addr])
        assert out.returncode != 0 and "503" in out.stderr
    finally:
        server.shutdown()
        server.server_close()
    out = run([bridge_bin, "healthcheck", addr])  # nobody listens any more
    assert out.returncode != 0 and "cannot connect" in out.stderr
