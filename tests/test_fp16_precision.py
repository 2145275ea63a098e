"""The precision choice of the one model resolver (fp32 / fp16 / int8 / auto), exercised on the CPU:
onnxruntime runs the float16 graphs there too (by up-casting), so the fp16 pair written by
``edgesam export --fp16`` is resolved, loaded and compared with fp32 here; ``auto`` on a GPU is checked
with a stand-in provider list (no session is built for it)."""

from __future__ import annotations

import json
import logging
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgesam_backend.cli import main
from edgesam_backend.engine import EngineError, load_predictor
from edgesam_backend.runtime import providers as providers_mod
from edgesam_backend.runtime import resolve as resolve_mod
from edgesam_backend.runtime.image import load_image
from edgesam_backend.runtime.model_files import FP16_DECODER_FILE, FP16_ENCODER_FILE
from edgesam_backend.runtime.providers import CPU, CUDA, OPENVINO, TENSORRT
from edgesam_backend.runtime.resolve import resolve_model

from .conftest import IMAGES

TRUCK = IMAGES / "truck.jpg"


def _fp16_copy(src: Path, dst: Path) -> Path:
    """``dst`` with the fp32 pair of ``src`` plus its fp16 pair (``edgesam export --fp16``'s converter)."""
    from edgesam_backend.export.fp16 import export_fp16

    dst.mkdir(parents=True, exist_ok=True)
    for n in ("encoder.onnx", "decoder.onnx"):
        shutil.copy(src / n, dst / n)
    export_fp16(dst / "encoder.onnx", dst / "decoder.onnx")
    return dst


@pytest.fixture(scope="module")
def ref_fp16_dir(onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference weights' export with its fp16 pair next to it."""
    return _fp16_copy(onnx_dir, tmp_path_factory.mktemp("ref16"))


@pytest.fixture(scope="module")
def small_fp16_dir(small_edgesam, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 64-px random model's export with its fp16 pair (cheap to run)."""
    return _fp16_copy(small_edgesam[1], tmp_path_factory.mktemp("small16"))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.fixture
def gpu_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The resolver sees an onnxruntime with CUDA, TensorRT and OpenVINO (plans only; no session)."""
    real = providers_mod.resolve_providers
    have = [TENSORRT, CUDA, OPENVINO, CPU]
    monkeypatch.setattr(resolve_mod, "resolve_providers", lambda device: real(device, have))


# --- the resolver and load_predictor -----------------------------------------------------------------


def test_fp16_resolves_to_the_fp16_files_and_agrees_with_fp32(ref_fp16_dir: Path) -> None:
    m = resolve_model(onnx_dir=ref_fp16_dir, precision="fp16")
    assert (m.encoder.name, m.decoder.name) == (FP16_ENCODER_FILE, FP16_DECODER_FILE)
    assert m.precision == m.capabilities.precision == "fp16" and not m.int8
    fp32_model = resolve_model(onnx_dir=ref_fp16_dir, precision="fp32")
    assert fp32_model.precision == "fp32" and m.digest != fp32_model.digest  # its own model_version

    p16 = load_predictor(onnx_dir=ref_fp16_dir, threads=2, precision="fp16")
    p32 = load_predictor(onnx_dir=ref_fp16_dir, threads=2)  # auto on the CPU: fp32
    assert p16.encoder_path.name == FP16_ENCODER_FILE and p16.decoder_path.name == FP16_DECODER_FILE
    assert (p16.precision, p32.precision) == ("fp16", "fp32")
    assert p32.encoder_path.name == "encoder.onnx"
    image = load_image(TRUCK)
    e16, e32 = p16.encode(image), p32.encode(image)
    h, w = image.shape[:2]
    prompts = [
        {"point_coords": [[w * 0.5, h * 0.5]], "point_labels": [1]},
        {"point_coords": [[w * 0.3, h * 0.6], [w * 0.7, h * 0.4]], "point_labels": [1, 0]},
        {"box": [w * 0.2, h * 0.3, w * 0.8, h * 0.8]},
    ]
    ious = []
    for pr in prompts:
        pts = np.array(pr["point_coords"], np.float64) if "point_coords" in pr else None
        labels = np.array(pr["point_labels"]) if "point_labels" in pr else None
        a = p16.predict(pts, labels, pr.get("box"), embedding=e16)
        b = p32.predict(pts, labels, pr.get("box"), embedding=e32)
        ious += [_iou(x, y) for x, y in zip(a.masks, b.masks, strict=True)]
    assert min(ious) >= 0.9 and float(np.mean(ious)) >= 0.95, ious


def test_auto_precision_picks_fp32_on_cpu_and_fp16_on_gpu(
    ref_fp16_dir: Path, onnx_dir: Path, gpu_providers: None
) -> None:
    assert resolve_model(onnx_dir=ref_fp16_dir).precision == "fp32"  # cpu
    assert resolve_model(onnx_dir=ref_fp16_dir, device="openvino").precision == "fp32"
    cuda = resolve_model(onnx_dir=ref_fp16_dir, device="cuda")
    assert cuda.precision == "fp16" and cuda.encoder.name == FP16_ENCODER_FILE
    assert resolve_model(onnx_dir=ref_fp16_dir, device="tensorrt:0").precision == "fp16"
    assert resolve_model(onnx_dir=ref_fp16_dir, device="auto").precision == "fp16"  # auto → cuda:0
    assert resolve_model(onnx_dir=ref_fp16_dir, device="cuda", precision="fp32").precision == "fp32"
    # no fp16 files next to the fp32 ones: auto stays fp32 on the GPU
    assert resolve_model(onnx_dir=onnx_dir, device="cuda").precision == "fp32"


def test_fp16_missing_files_and_bad_combinations(onnx_dir: Path) -> None:
    with pytest.raises(EngineError, match=r"encoder\.fp16\.onnx.*edgesam export .*--fp16"):
        resolve_model(onnx_dir=onnx_dir, precision="fp16")
    with pytest.raises(EngineError, match="conflict"):
        resolve_model(onnx_dir=onnx_dir, int8=True, precision="fp16")
    with pytest.raises(EngineError, match="unknown precision 'half'"):
        resolve_model(onnx_dir=onnx_dir, precision="half")
    with pytest.raises(EngineError, match="backend='onnx'"):
        load_predictor("edge_sam", backend="torch", precision="fp16")


# --- the configuration surfaces ----------------------------------------------------------------------


def test_settings_and_pipeline_config_take_a_precision(tmp_path: Path) -> None:
    from edgesam_backend.cli.serve import OPTION_ENV
    from edgesam_backend.labelstudio.settings import Settings, SettingsError
    from edgesam_backend.pipeline.config import ModelConfig

    assert Settings.from_env({}).precision == "auto"
    assert Settings.from_env({"EDGESAM_PRECISION": "fp16"}).precision == "fp16"
    with pytest.raises(SettingsError, match="EDGESAM_PRECISION"):
        Settings.from_env({"EDGESAM_PRECISION": "fp8"})
    assert OPTION_ENV["precision"] == "EDGESAM_PRECISION"
    assert ModelConfig(onnx_dir=str(tmp_path)).precision == "auto"
    assert ModelConfig(onnx_dir=str(tmp_path), precision="fp16").precision == "fp16"
    with pytest.raises(ValueError, match="conflict"):
        ModelConfig(onnx_dir=str(tmp_path), int8=True, precision="fp32")


def test_health_shows_the_precision(small_fp16_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from edgesam_backend.labelstudio.app import create_app
    from edgesam_backend.labelstudio.settings import Settings

    app = create_app(Settings(onnx_dir=small_fp16_dir, precision="fp16", intra_op_threads=1))
    with TestClient(app) as client:
        body = client.get("/health").json()
    assert body["precision"] == "fp16" and body["providers"] == [CPU]


RUN_YAML = """
model:
  onnx_dir: {onnx}
output_dir: {out}
steps:
  - kind: source.folder
    path: {images}
  - kind: prompt.grid
    points_per_side: 1
  - kind: segment
  - kind: export.coco
"""


def test_run_logs_device_providers_and_precision_once(
    small_fp16_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(TRUCK, images / "truck.jpg")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(textwrap.dedent(RUN_YAML).format(onnx=small_fp16_dir, out=tmp_path / "o", images=images))
    caplog.set_level(logging.INFO, logger="edgesam_backend.pipeline")
    rc = main(["run", str(cfg), "--quiet", "--precision", "fp16", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    summary = json.loads(out.out.strip().splitlines()[-1])
    assert (summary["device"], summary["providers"], summary["precision"]) == ("cpu", [CPU], "fp16")
    lines = [r.getMessage() for r in caplog.records if r.name == "edgesam_backend.pipeline"]
    model_lines = [ln for ln in lines if "providers" in ln]
    assert len(model_lines) == 1, lines
    assert "device cpu" in model_lines[0] and CPU in model_lines[0] and "precision fp16" in model_lines[0]
    assert FP16_ENCODER_FILE in model_lines[0]


def test_cli_logging_prints_the_model_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Without logging configured by the process, ``edgesam run``'s INFO lines reach stderr."""
    from edgesam_backend.cli.pipeline import cli_logging

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # as in a plain `edgesam run` process (pytest installs its own)
    try:
        with cli_logging(quiet=False):
            logging.getLogger("edgesam_backend.pipeline").info("model x: device cpu, precision fp32")
        with cli_logging(quiet=True):
            logging.getLogger("edgesam_backend.pipeline").info("hidden with --quiet")
    finally:
        root.handlers[:] = saved
    err = capsys.readouterr().err
    assert "edgesam: model x: device cpu, precision fp32" in err and "hidden" not in err


# --- edgesam export --fp16 and edgesam predict --precision -------------------------------------------


def test_export_fp16_cli_then_predict_with_it(small_edgesam, tmp_path: Path, capsys) -> None:
    ckpt, _ = small_edgesam
    out = tmp_path / "x"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--fp16", "--no-validate"]) == 0
    info = json.loads(capsys.readouterr().out)
    fp16 = info["fp16"]
    assert Path(fp16["encoder"]) == out / FP16_ENCODER_FILE
    assert Path(fp16["decoder"]) == out / FP16_DECODER_FILE
    assert fp16["agreement_images"] == "one synthetic image" and isinstance(fp16["recommended"], bool)
    assert 0.0 <= fp16["agreement"]["mean_iou"] <= 1.0 and fp16["recommended"] == fp16["agreement"]["passes"]
    from edgesam_backend.export.metadata import read_metadata

    meta = read_metadata(out / FP16_ENCODER_FILE)
    assert meta["edgesam.precision"] == "fp16" and "edgesam.fp16.mean_iou" in meta

    base = ["predict", str(TRUCK), "--onnx-dir", str(out), "--point", "100,100,1", "--threads", "1"]
    assert main([*base, "--precision", "fp16"]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "fp16"
    assert main(base) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "fp32"  # auto on the CPU
    for name in (FP16_ENCODER_FILE, FP16_DECODER_FILE):
        (out / name).unlink()
    assert main([*base, "--precision", "fp16"]) == 2
    assert "edgesam export" in capsys.readouterr().err
