"""Run a real Label Studio 1.23.2 for end-to-end tests (recipe: shared/docs/label-studio-protocol.md §5).

Label Studio is installed from PyPI into its own virtual environment, reused across runs:
``$EDGESAM_LS_VENV`` or ``~/.cache/edgesam-tests/ls-venv`` (a marker file says the install completed).
The server runs on a free loopback port with a temporary data directory, a legacy API token, local
file serving, and the ML-backend SSRF blocks off (needed for a backend on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..helpers import free_port

LS_VERSION = "1.23.2"
LS_REQUIREMENT = f"label-studio=={LS_VERSION}"
TOKEN = "0123456789abcdef0123456789abcdef01234567"
USERNAME = "admin@example.com"
PASSWORD = "admin12345"
INSTALL_TIMEOUT_S = 480
START_TIMEOUT_S = float(os.environ.get("EDGESAM_LS_START_TIMEOUT", "240"))  # loaded CI boxes: raise it


class Unavailable(RuntimeError):
    """Label Studio could not be installed or started here (the reason names the missing external)."""


def venv_dir() -> Path:
    env = os.environ.get("EDGESAM_LS_VENV")
    return Path(env) if env else Path.home() / ".cache" / "edgesam-tests" / "ls-venv"


def _marker(venv: Path) -> Path:
    return venv / f".edgesam-ls-{LS_VERSION}-ok"


def ensure_venv() -> Path:
    """The venv with Label Studio installed (installed now if needed, under a file lock)."""
    venv = venv_dir()
    if _marker(venv).is_file() and (venv / "bin" / "label-studio").is_file():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _marker(venv).is_file():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        try:
            r = subprocess.run(
                [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", LS_REQUIREMENT],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise Unavailable(
                f"pip install {LS_REQUIREMENT} from PyPI took over {INSTALL_TIMEOUT_S} s"
            ) from None
        if r.returncode != 0:
            tail = (r.stderr or r.stdout)[-1500:]
            raise Unavailable(f"cannot pip install {LS_REQUIREMENT} from PyPI (no network?): {tail}")
        _marker(venv).touch()
    return venv


@dataclass
class LabelStudio:
    url: str
    token: str
    files_dir: Path
    process: subprocess.Popen
    log_path: Path

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Token {self.token}"},
            timeout=timeout,
        )

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@contextlib.contextmanager
def label_studio(workdir: Path) -> Iterator[LabelStudio]:
    """Start Label Studio in ``workdir`` (data + files); stop it (its PID only) on exit."""
    venv = ensure_venv()
    data_dir = workdir / "ls-data"
    files_dir = workdir / "ls-files"
    (files_dir / "images").mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_USERNAME": USERNAME,
            "LABEL_STUDIO_PASSWORD": PASSWORD,
            "LABEL_STUDIO_USER_TOKEN": TOKEN,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_dir),
            "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
            "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            "DJANGO_DB": "sqlite",
            "PYTHONUNBUFFERED": "1",
        }
    )
    log_path = workdir / "label-studio.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(venv / "bin" / "label-studio"),
                "start",
                "--no-browser",
                "--internal-host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    ls = LabelStudio(f"http://127.0.0.1:{port}", TOKEN, files_dir, proc, log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise Unavailable(f"Label Studio exited with {proc.returncode}:\n{ls.log_tail()}")
            try:
                if httpx.get(f"{ls.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"Label Studio did not answer /health within {START_TIMEOUT_S} s:\n{ls.log_tail()}"
                )
            time.sleep(0.5)
        yield ls
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
