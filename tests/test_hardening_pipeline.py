"""Issue 14, pipeline part: unwritable output_dir, a run where every image fails, failure records that
name the file, in-flight images finishing after max_errors, duplicate YAML keys."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest

from edgesam_backend.cli import main
from edgesam_backend.pipeline.run_errors import EXIT_ALL_FAILED, EXIT_OUTPUT_DIR
from edgesam_backend.yamlconfig import ConfigError, read_yaml

from .conftest import IMAGES
from .test_pipeline_run import FAIL_YAML

# test_pipeline_run's failure pipeline with a prefetch of 4 (all four test images are read at once)
YAML = FAIL_YAML.replace("steps:\n", "executor:\n  type: local\n  prefetch: 4\nsteps:\n", 1)


def _run(cfg: Path, out: Path, capsys) -> tuple[int, dict, str]:
    rc = main(["run", str(cfg), "--output-dir", str(out), "--quiet"])
    cap = capsys.readouterr()
    lines = [ln for ln in cap.out.splitlines() if ln.strip()]
    return rc, (json.loads(lines[-1]) if lines else {}), cap.err


def _cfg(tmp_path: Path, onnx_dir: Path, images: Path, max_errors: str = "null") -> Path:
    cfg = tmp_path / "p.yaml"
    cfg.write_text(textwrap.dedent(YAML).format(onnx=onnx_dir, images=images, max_errors=max_errors))
    return cfg


def test_unwritable_output_dir_is_one_line_with_its_own_exit_code(onnx_dir, tmp_path, capsys) -> None:
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "out"
    rc, _, err = _run(_cfg(tmp_path, onnx_dir, IMAGES), out, capsys)
    assert rc == EXIT_OUTPUT_DIR and rc not in (0, 1, 2)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(out) in err and "output_dir" in err


def test_a_run_where_every_image_fails_is_a_failure(onnx_dir, tmp_path, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for n in ("a.jpg", "b.jpg"):
        (images / n).write_bytes(b"not an image")
    rc, summary, err = _run(_cfg(tmp_path, onnx_dir, images), tmp_path / "o", capsys)
    assert rc == EXIT_ALL_FAILED and summary["status"] == "failed" and summary["failed"] == 2
    assert "all 2 images failed" in err and "a.jpg" in err
    assert not (tmp_path / "o" / "coco.json").exists()
    # failure records name the file, not the bytes object
    for f in summary["failures"]:
        assert "<bytes>" not in f["error"] and "BytesIO" not in f["error"]
        assert f["file_name"] in f["error"]


def test_in_flight_images_finish_when_max_errors_is_reached(onnx_dir, tmp_path, capsys) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "0.jpg").write_bytes(b"not an image")
    good = sorted(p for p in IMAGES.glob("*.jp*g"))[:3]
    for i, p in enumerate(good):
        shutil.copy(p, images / f"{i + 1}.jpg")
    out = tmp_path / "o"
    rc, summary, _ = _run(_cfg(tmp_path, onnx_dir, images, "0"), out, capsys)
    assert rc == 1 and summary["status"] == "stopped"
    assert summary["processed"] == 3, summary  # read before the stop: finished and stored
    rc, summary, _ = _run(_cfg(tmp_path, onnx_dir, images, "null"), out, capsys)
    assert summary["skipped"] == 3 and summary["processed"] == 0


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("a: 1\nb: 2\na: 3\n", 3),
        ("steps:\n  - kind: x\n    path: 1\n    path: 2\n", 4),
        ("m: {x: 1, x: 2}\n", 1),
    ],
)
def test_duplicate_yaml_keys_are_errors_at_the_second_key(tmp_path, text, line) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=rf"{p}:{line}:\d+: duplicate key"):
        read_yaml(p)
