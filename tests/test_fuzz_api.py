"""Issue 14's done-when: schemathesis fuzzes the OpenAPI surface of a running ``edgesam serve`` (the
reference ONNX export) and finds no server error (5xx) and no response that breaks the schema."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .helpers import free_port

pytestmark = pytest.mark.slow


def test_schemathesis_finds_no_server_errors(onnx_dir: Path, tmp_path: Path) -> None:
    st = shutil.which("schemathesis")
    if st is None:
        pytest.skip("schemathesis is not installed (pip install -e .[dev])")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "BASIC_AUTH"))}
    env.update({"EDGESAM_BATCH_TIME_BUDGET": "5", "EDGESAM_AMG_POINTS_PER_SIDE": "4"})
    cmd = [sys.executable, "-m", "edgesam_backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--onnx-dir", str(onnx_dir), "--threads", "2", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "edgesam serve did not answer /health"
                time.sleep(0.25)
        r = subprocess.run(
            [
                st,
                "run",
                f"{base}/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "40",
                "--phases",
                "examples,coverage,fuzzing",
                "--generation-deterministic",
                "--request-timeout",
                "30",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-6000:]
        assert "/predict" in out and "/setup" in out
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
