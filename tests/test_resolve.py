"""The model resolver: device → providers, files/digest/capabilities, and the torch-free first run that
fetches the official ONNX files from a loopback HTTP mirror (in a subprocess where torch cannot load)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgesam_backend.engine import EngineError, load_predictor
from edgesam_backend.runtime.model_files import INT8_ENCODER_FILE, read_capabilities
from edgesam_backend.runtime.providers import (
    CPU,
    CUDA,
    OPENVINO,
    TENSORRT,
    DeviceError,
    normalise_device,
    resolve_providers,
)
from edgesam_backend.runtime.resolve import resolve_model

REPO = Path(__file__).resolve().parents[1]
REF = REPO.parent / "shared" / "reference" / "edgesam"
OFFICIAL_ENC = REF / "official_format_encoder.onnx"
OFFICIAL_DEC = REF / "official_format_decoder.onnx"

needs_reference = pytest.mark.skipif(not OFFICIAL_ENC.is_file(), reason=f"needs {REF}")


# --- device → providers --------------------------------------------------------------------------------


def test_device_mapping_with_options() -> None:
    everything = [TENSORRT, CUDA, OPENVINO, CPU]
    assert resolve_providers("cpu", [CPU]).providers == ((CPU, {}),)
    plan = resolve_providers("cuda:1", everything)
    assert plan.device == plan.chosen == "cuda:1"
    assert plan.providers == ((CUDA, {"device_id": 1}), (CPU, {}))
    assert resolve_providers("CUDA", everything).providers[0] == (CUDA, {"device_id": 0})
    trt = resolve_providers("tensorrt", everything)
    assert trt.names == [TENSORRT, CUDA, CPU] and trt.providers[0][1]["device_id"] == 0
    assert resolve_providers("openvino", everything).providers[0] == (OPENVINO, {"device_type": "CPU"})
    names, options = plan.ort_arguments()
    assert names == [CUDA, CPU] and options == [{"device_id": 1}, {}]


def test_auto_picks_the_best_available() -> None:
    assert resolve_providers("auto", [TENSORRT, CUDA, CPU]).chosen == "cuda:0"  # never TensorRT
    assert resolve_providers("auto", [OPENVINO, CPU]).chosen == "openvino"
    plan = resolve_providers("auto", [CPU])
    assert plan.device == "auto" and plan.chosen == "cpu" and plan.names == [CPU]
    # the installed onnxruntime (CPU build here) always resolves
    assert resolve_providers("auto").names[-1] == CPU


def test_missing_provider_names_the_package() -> None:
    with pytest.raises(DeviceError, match=r"onnxruntime-gpu.*\[gpu\]|\[gpu\].*onnxruntime-gpu"):
        resolve_providers("cuda", [CPU])
    with pytest.raises(DeviceError, match="onnxruntime-openvino"):
        resolve_providers("openvino", [CPU])
    with pytest.raises(DeviceError, match="TensorRT"):
        resolve_providers("tensorrt:0", [CUDA, CPU])
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        resolve_providers("gpu", [CPU])
    with pytest.raises(DeviceError):
        normalise_device("cuda:x")
    assert normalise_device(" Cuda ") == "cuda:0" and normalise_device("coreml") == "coreml"


def test_load_predictor_device_errors(onnx_dir: Path) -> None:
    pred = load_predictor(onnx_dir=onnx_dir, threads=1, device="auto")
    assert pred.providers == [CPU]
    if CUDA not in __import__("onnxruntime").get_available_providers():
        with pytest.raises(EngineError, match="onnxruntime-gpu"):
            load_predictor(onnx_dir=onnx_dir, device="cuda")


# --- files, digest, capabilities -----------------------------------------------------------------------


def test_resolved_files_digest_and_capabilities(onnx_dir: Path) -> None:
    m = resolve_model(onnx_dir=onnx_dir)
    assert (m.encoder, m.decoder) == (onnx_dir / "encoder.onnx", onnx_dir / "decoder.onnx")
    enc, dec = m.encoder.read_bytes(), m.decoder.read_bytes()
    assert m.encoder_sha256 == hashlib.sha256(enc).hexdigest()
    assert m.digest == hashlib.sha256(enc + dec).hexdigest()
    assert m.model_version == f"edgesam-{m.digest[:12]}"  # Label Studio's model_version, as before
    caps = m.capabilities
    assert caps.flavour == "edgesam-backend" and caps.supports_mask_input and not caps.has_proposals
    assert caps.upsample_mode == "bicubic" and not caps.int8
    assert m.source == "onnx_dir" and m.execution.names == [CPU]


def test_int8_and_missing_files(onnx_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match=INT8_ENCODER_FILE):
        resolve_model(onnx_dir=onnx_dir, int8=True)
    with pytest.raises(EngineError, match="lacks"):
        resolve_model(onnx_dir=tmp_path)
    with pytest.raises(EngineError, match="give a checkpoint"):
        resolve_model()


@needs_reference
def test_official_capabilities() -> None:
    caps = read_capabilities(OFFICIAL_ENC, OFFICIAL_DEC)
    assert caps.flavour == "official" and not caps.supports_mask_input and not caps.has_proposals
    assert caps.upsample_mode is None and caps.encoder_input == "image"


# --- torch-free first run --------------------------------------------------------------------------------


class _Quiet(SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:
        type(self).requests.append(self.path)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A loopback HTTP server serving ``tmp_path/mirror`` (request paths are recorded)."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = type("Handler", (_Quiet,), {"requests": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root, handler.requests
    finally:
        httpd.shutdown()
        httpd.server_close()


#: Makes ``import torch`` fail in the child, as on a core install.
_NO_TORCH = "import sys\nsys.modules['torch'] = None\n"

_CHILD = """
import json, logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from edgesam_backend.engine import load_predictor
from edgesam_backend.runtime.resolve import resolve_model
import numpy as np
m = resolve_model("edge_sam_3x")
p = load_predictor("edge_sam_3x", threads=1)
p.set_image(np.zeros((64, 96, 3), np.uint8))
pred = p.predict(np.array([[40.0, 30.0]]), np.array([1]))
torch_loaded = sys.modules.get("torch") is not None
print(json.dumps({"source": m.source, "encoder": str(m.encoder), "flavour": m.flavour,
                  "masks": list(pred.masks.shape), "torch": torch_loaded}))
"""


def _run_without_torch(tmp_path: Path, base_url: str) -> subprocess.CompletedProcess[str]:
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(_NO_TORCH)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(shim), str(REPO)]),
        "EDGESAM_HOME": str(tmp_path / "home"),
        "EDGESAM_WEIGHTS_BASE_URL": base_url + "/weights/",
    }
    return subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
    )


@needs_reference
def test_first_run_without_torch_fetches_official_onnx(tmp_path: Path, mirror) -> None:
    base, root, requests = mirror
    (root / "weights").mkdir()
    shutil.copy(OFFICIAL_ENC, root / "weights" / "edge_sam_3x_encoder.onnx")
    shutil.copy(OFFICIAL_DEC, root / "weights" / "edge_sam_3x_decoder.onnx")

    r = _run_without_torch(tmp_path, base)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["source"] == "official" and out["flavour"] == "official" and out["torch"] is False
    cached = tmp_path / "home" / "onnx" / "edge_sam_3x-official" / "edge_sam_3x_encoder.onnx"
    assert out["encoder"] == str(cached) and cached.read_bytes() == OFFICIAL_ENC.read_bytes()
    assert out["masks"] == [3, 64, 96]
    assert "bilinear encoder" in r.stderr and "without mask input" in r.stderr  # said in the log
    assert sorted(requests) == ["/weights/edge_sam_3x_decoder.onnx", "/weights/edge_sam_3x_encoder.onnx"]
    assert not any(p.name.endswith(".part") for p in cached.parent.iterdir())

    requests.clear()
    r = _run_without_torch(tmp_path, base)  # cached: no network
    assert r.returncode == 0, r.stderr[-3000:]
    assert requests == []


@needs_reference
def test_official_download_is_verified(tmp_path: Path, mirror) -> None:
    base, root, _ = mirror
    (root / "weights").mkdir()
    # the decoder served under the encoder's name fails the structure check and is not cached
    shutil.copy(OFFICIAL_DEC, root / "weights" / "edge_sam_3x_encoder.onnx")
    shutil.copy(OFFICIAL_DEC, root / "weights" / "edge_sam_3x_decoder.onnx")
    r = _run_without_torch(tmp_path, base)
    assert r.returncode != 0
    assert "is not a valid EdgeSAM ONNX encoder" in r.stderr
    d = tmp_path / "home" / "onnx" / "edge_sam_3x-official"
    assert not d.exists() or not any(d.iterdir())

    (root / "weights" / "edge_sam_3x_encoder.onnx").unlink()  # 404 → offline message with the path
    r = _run_without_torch(tmp_path, base)
    assert r.returncode != 0 and "edge_sam_3x_encoder.onnx is not in the cache" in r.stderr
    assert str(d / "edge_sam_3x_encoder.onnx") in r.stderr
