"""Structure of the Dockerfile and docker-compose.yml (no docker engine here): stages, healthchecks,
volumes, environment wiring, ports; ``docker compose config`` / ``docker-compose config`` when a
client is installed (neither needs an engine)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from edgesam_backend.labelstudio.settings import Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"


def _stages() -> dict[str, str]:
    """Dockerfile stage name → its text."""
    text = DOCKERFILE.read_text()
    parts = re.split(r"^FROM\s+", text, flags=re.M)[1:]
    out = {}
    for p in parts:
        m = re.match(r"\S+\s+AS\s+(\S+)", p, flags=re.I)
        assert m, f"every stage is named: FROM ... AS <name> ({p[:60]!r})"
        out[m.group(1)] = p
    return out


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def test_dockerfile_stages() -> None:
    stages = _stages()
    assert list(stages) == ["build", "export", "serve"]  # serve last: the default target
    assert "torch" in stages["export"] and "edgesam export" in stages["export"]
    serve = stages["serve"]
    # serve installs the wheel only (no torch) and checks that torch did not come along
    assert "find_spec('torch') is not None" in serve
    assert not re.search(r"pip install[^\n]*torch", serve)
    assert "COPY --from=build /wheels" in serve and "COPY --from=build /wheels" in stages["export"]
    assert "EXPOSE 9090" in serve and "HEALTHCHECK" in serve and "/health" in serve
    assert 'CMD ["edgesam", "serve"]' in serve
    assert re.search(r"^USER\s+\w+", serve, flags=re.M), "serve runs as a non-root user"
    for var in ("PORT=9090", "MODEL_DIR=/models", "WORKERS=", "THREADS=", "LOG_LEVEL="):
        assert var in serve


def test_compose_services_and_targets(compose: dict) -> None:
    services = compose["services"]
    assert set(services) == {"label-studio", "edgesam", "edgesam-export"}
    assert services["label-studio"]["image"].startswith("heartexlabs/label-studio:")
    stages = _stages()
    assert services["edgesam"]["build"]["target"] == "serve" in stages
    assert services["edgesam-export"]["build"]["target"] == "export" in stages
    dep = services["edgesam"]["depends_on"]
    assert dep["edgesam-export"]["condition"] == "service_completed_successfully"


def test_compose_healthchecks_ports_volumes(compose: dict) -> None:
    s = compose["services"]
    for name, port in (("label-studio", "8080"), ("edgesam", "9090")):
        hc = s[name]["healthcheck"]
        assert "/health" in " ".join(hc["test"]) and port in " ".join(hc["test"])
        assert hc["interval"] and hc["retries"] >= 1
        assert any(str(p).endswith(f":{port}") for p in s[name]["ports"])
    assert set(compose["volumes"]) == {"ls-data", "ls-files", "edgesam-models"}
    assert "edgesam-models:/models" in s["edgesam-export"]["volumes"]
    assert "edgesam-models:/models:ro" in s["edgesam"]["volumes"]
    assert "ls-data:/label-studio/data" in s["label-studio"]["volumes"]
    # the local-files root is shared, at the same path, so the backend reads files from disk
    ls_root = _env(s["label-studio"])["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]
    assert f"ls-files:{ls_root}" in s["label-studio"]["volumes"]
    assert f"ls-files:{ls_root}:ro" in s["edgesam"]["volumes"]
    assert _env(s["edgesam"])["LOCAL_FILES_DOCUMENT_ROOT"] == ls_root


def test_compose_env_wiring(compose: dict) -> None:
    s = compose["services"]
    ls_env, be_env = _env(s["label-studio"]), _env(s["edgesam"])
    # the backend finds Label Studio by its service name and container port
    assert be_env["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    # one key: Label Studio's admin legacy token == the backend's API key
    assert ls_env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert ls_env["LABEL_STUDIO_USER_TOKEN"].startswith("${LABEL_STUDIO_API_KEY")
    assert be_env["LABEL_STUDIO_API_KEY"].startswith("${LABEL_STUDIO_API_KEY")
    assert ls_env["LABEL_STUDIO_ML_BLOCK_LOCAL_IP"] == "false"
    for var in ("MODEL_DIR", "LOG_LEVEL", "WORKERS", "THREADS", "BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        assert var in be_env, var
    # the backend's environment is understood by its settings (compose defaults substituted)
    resolved = {
        k: re.sub(r"\$\{[A-Z_]+(?::[-?]([^}]*))?\}", lambda m: m.group(1) or "", v) for k, v in be_env.items()
    }
    resolved["LABEL_STUDIO_API_KEY"] = "0123456789abcdef"
    settings = Settings.from_env(resolved)
    assert settings.label_studio_url == "http://label-studio:8080" and settings.port == 9090
    assert str(settings.model_dir) == "/models" and settings.basic_auth is None
    export_env = _env(s["edgesam-export"])
    assert export_env["EDGESAM_ONNX_DIR"].startswith("/models") and export_env["EDGESAM_HOME"].startswith(
        "/models"
    )


def test_compose_config_with_a_docker_client(tmp_path: Path) -> None:
    env = {**os.environ, "LABEL_STUDIO_API_KEY": "0123456789abcdef"}
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0
    ):
        cmd = ["docker", "compose", "-f", str(COMPOSE), "config", "-q"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose", "-f", str(COMPOSE), "config", "-q"]
    else:
        pytest.skip("no docker compose client installed (the structure is checked by the other tests)")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    env.pop("LABEL_STUDIO_API_KEY")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert r.returncode != 0 and "LABEL_STUDIO_API_KEY" in (r.stderr + r.stdout)
