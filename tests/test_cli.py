"""The `edgesam` command line: predict (both back ends), export, errors; ONNX produced on first use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgesam_backend.cli import main
from edgesam_backend.engine import EngineError, load_predictor
from edgesam_backend.runtime.image import load_image

from .conftest import CHECKPOINT, IMAGES, requires_shared

pytestmark = requires_shared
TRUCK = IMAGES / "truck.jpg"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_onnx_writes_npz_and_png(tmp_path, capsys, onnx_dir, onnx_predictor):
    npz, png = tmp_path / "p.npz", tmp_path / "p.png"
    code, out, _ = run_cli(
        capsys,
        "predict",
        TRUCK,
        "--onnx-dir",
        onnx_dir,
        "--point",
        "500,375,1",
        "--point",
        "575,750,0",
        "--num-masks",
        "4",
        "--out",
        npz,
        "--png",
        png,
    )
    assert code == 0
    summary = json.loads(out)
    with np.load(npz) as f:
        z = dict(f)
    assert z["low_res_logits"].shape == (4, 256, 256)
    assert z["logits"].shape == z["masks"].shape == (4, 1200, 1800)
    assert z["masks"].dtype == bool
    np.testing.assert_array_equal(z["masks"], z["logits"] > 0)
    best = int(np.argmax(z["stability_scores"]))
    # same numbers as calling the predictor directly with the same pixel prompt
    emb = onnx_predictor.encode(load_image(TRUCK))
    direct = onnx_predictor.predict([[500, 375], [575, 750]], [1, 0], num_multimask_outputs=4, embedding=emb)
    np.testing.assert_array_equal(z["masks"], direct.masks)
    np.testing.assert_allclose(z["stability_scores"], direct.stability_scores)
    assert summary["best"] == best and summary["num_masks"] == 4
    png_mask = np.asarray(Image.open(png)) > 0
    np.testing.assert_array_equal(png_mask, z["masks"][best])


def test_predict_torch_backend_with_box_and_mask_input(tmp_path, capsys, torch_predictor):
    """The second call differs from the first only by --mask-input: its output must be the predictor's
    answer *with* that mask (and so differ from the first call's), which fails if the mask is ignored."""
    box = [425, 600, 700, 875]
    common = ["predict", TRUCK, "--checkpoint", CHECKPOINT, "--backend", "torch", "--box", "425,600,700,875"]
    first = tmp_path / "first.npz"
    code, _, _ = run_cli(capsys, *common, "--num-masks", "1", "--out", first)
    assert code == 0
    with np.load(first) as z:
        assert z["low_res_logits"].shape == (1, 256, 256)
        np.save(tmp_path / "mask.npy", z["low_res_logits"])
        without_mask = z["low_res_logits"]
    second = tmp_path / "second.npz"
    code, _, _ = run_cli(
        capsys, *common, "--mask-input", tmp_path / "mask.npy", "--num-masks", "1", "--out", second
    )
    assert code == 0
    with np.load(second) as z:
        with_mask = z["low_res_logits"]
    emb = torch_predictor.encode(load_image(TRUCK))
    direct = torch_predictor.predict(box=box, mask_input=without_mask, num_multimask_outputs=1, embedding=emb)
    np.testing.assert_allclose(with_mask, direct.low_res_logits, rtol=0, atol=1e-4)
    no_mask = torch_predictor.predict(box=box, num_multimask_outputs=1, embedding=emb)
    np.testing.assert_allclose(without_mask, no_mask.low_res_logits, rtol=0, atol=1e-4)
    assert np.abs(with_mask - without_mask).max() > 1e-2  # the mask input changed the answer


def test_predict_backends_agree(tmp_path, capsys, onnx_dir):
    outs = {}
    for backend in ("torch", "onnx"):
        outs[backend] = tmp_path / f"{backend}.npz"
        extra = ["--onnx-dir", onnx_dir] if backend == "onnx" else []
        code, _, _ = run_cli(
            capsys,
            "predict",
            TRUCK,
            "--checkpoint",
            CHECKPOINT,
            "--backend",
            backend,
            *extra,
            "--point",
            "500,375,1",
            "--out",
            outs[backend],
        )
        assert code == 0
    with np.load(outs["torch"]) as t, np.load(outs["onnx"]) as o:
        np.testing.assert_allclose(o["logits"], t["logits"], rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--onnx-dir", "{onnx}"], "at least one --point"),
        (["--onnx-dir", "{tmp}", "--point", "1,2,1"], "lacks"),
        (
            ["--onnx-dir", "{onnx}", "--point", "1,2,1", "--mask-input", "{tmp}/missing.npy"],
            "cannot read --mask-input",
        ),
        (["--onnx-dir", "{onnx}", "--box", "50,50,10,10"], "x0 <= x1"),
        (["--checkpoint", "{tmp}/missing.pth", "--point", "1,2,1"], "checkpoint file not found"),
    ],
)
def test_predict_errors(tmp_path, capsys, onnx_dir, args, message):
    args = [a.format(onnx=onnx_dir, tmp=tmp_path) for a in args]
    code, _, err = run_cli(capsys, "predict", TRUCK, *args)
    assert code == 2
    assert err.startswith("edgesam: error: ") and message in err


def test_predict_bad_image_and_bad_point(tmp_path, capsys, onnx_dir):
    junk = tmp_path / "junk.jpg"
    junk.write_text("not an image")
    code, _, err = run_cli(capsys, "predict", junk, "--onnx-dir", onnx_dir, "--point", "1,2,1")
    assert code == 2 and "not a decodable image" in err
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(TRUCK), "--onnx-dir", str(onnx_dir), "--point", "1,2"])
    assert exc.value.code == 2
    assert "expected X,Y,LABEL" in capsys.readouterr().err


def test_export_cli(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "export", "--checkpoint", CHECKPOINT, "--out", tmp_path / "x")
    assert code == 0
    info = json.loads(out)
    assert Path(info["encoder"]).is_file() and Path(info["decoder"]).is_file()
    assert info["encoder_max_abs_diff"] <= 1e-4
    assert max(info["decoder_max_abs_diff"].values()) <= 1e-4
    assert not list((tmp_path / "x").glob(".export-*"))  # no temp dirs left behind


def test_onnx_exported_on_first_use_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESAM_HOME", str(tmp_path / "home"))
    p1 = load_predictor(CHECKPOINT)
    files = sorted((tmp_path / "home" / "onnx").glob("*/*.onnx"))
    assert [f.name for f in files] == ["decoder.onnx", "encoder.onnx"]
    mtimes = [f.stat().st_mtime_ns for f in files]
    p2 = load_predictor(CHECKPOINT)
    assert [f.stat().st_mtime_ns for f in files] == mtimes  # reused, not re-exported
    assert p1.flavour == p2.flavour == "edgesam-backend"
    with pytest.raises(EngineError, match="backend must be"):
        load_predictor(CHECKPOINT, backend="tensorrt")


def test_console_script_entry_point():
    """The installed `edgesam` script points at cli.main, and the module runs as a program."""
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "edgesam"]
    assert ep.value == "edgesam_backend.cli:main" and ep.load() is main
    out = subprocess.run(
        [sys.executable, "-m", "edgesam_backend.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "predict" in out.stdout and "export" in out.stdout
