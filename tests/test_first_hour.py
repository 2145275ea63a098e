"""A new user's first hour (issue 15): the README's commands as written, useful answers to mistakes.

The sample image and pipeline inputs (``examples/``, ``pipelines/samples/``), prompts outside the image
(API, CLI, pipeline), ``--version`` / ``--help``, ``validate``'s model check and ``--set`` errors,
detections matched by file name, ``generate_from_boxes``' one mask per box, Ctrl-C during a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgesam_backend.cli import all_parsers, build_parser, main
from edgesam_backend.pipeline.base import PipelineError, StepContext
from edgesam_backend.pipeline.records import ImageItem
from edgesam_backend.pipeline.steps import prompts as P
from edgesam_backend.runtime.amg import AutomaticMaskGenerator
from edgesam_backend.runtime.base import ImageEmbedding
from edgesam_backend.runtime.prompts import PromptError, pack_prompt

from .conftest import REPO
from .helpers import DiscPredictor

EXAMPLES = REPO / "pipelines"
SAMPLES = EXAMPLES / "samples"
SAMPLE_IMAGE = REPO / "examples" / "shapes.jpg"


# --- shipped samples ---------------------------------------------------------------------------------


def test_sample_image_is_small_and_matches_the_readme():
    assert SAMPLE_IMAGE.stat().st_size < 80_000
    with Image.open(SAMPLE_IMAGE) as im:
        assert im.size == (640, 480)
    readme = (REPO / "README.md").read_text()
    assert "edgesam predict examples/shapes.jpg --point 480,253,1" in readme


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_validates_as_written(name, tmp_path, capsys, monkeypatch):
    """`edgesam validate pipelines/<each>.yaml` with no environment: the bundled samples are found."""
    for var in (
        "EDGESAM_IMAGES",
        "EDGESAM_COCO",
        "EDGESAM_DETECTIONS",
        "EDGESAM_LS_EXPORT",
        "EDGESAM_ONNX_DIR",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("EDGESAM_HOME", str(tmp_path / "empty-cache"))
    assert main(["validate", str(EXAMPLES / name)]) == 0
    cap = capsys.readouterr()
    info = json.loads(cap.out)
    assert info["valid"] is True and "files" in info["checked"]
    # an empty cache: the model is reported as not checked, with advice that fits pipelines
    assert info["model"]["checked"] is False and "model" not in info["checked"]
    for advice in ("model.checkpoint", "EDGESAM_CHECKPOINT", "--set model.checkpoint="):
        assert advice in cap.err


# --- prompts outside the image -----------------------------------------------------------------------


def test_pack_prompt_refuses_points_and_boxes_outside_the_image():
    hw = (1200, 1800)
    pack_prompt([[1800, 1200]], [1], None, hw)  # on the border: fine
    pack_prompt([[1800.5, -0.5]], [1], None, hw)  # within the 1 px tolerance
    with pytest.raises(PromptError, match=r"point \(5000, 375\) is outside the 1800x1200 image"):
        pack_prompt([[5000, 375]], [1], None, hw)
    with pytest.raises(PromptError, match="outside"):
        pack_prompt([[10, 10], [10, -30]], [1, 0], None, hw)
    with pytest.raises(PromptError, match=r"box \(0, 0, 2000, 100\) reaches outside"):
        pack_prompt(None, None, [0, 0, 2000, 100], hw)
    pack_prompt([[0, 0], [-500, -500]], [1, -1], None, hw)  # padding points are not prompts


def test_python_api_refuses_a_point_outside_the_image():
    pred = DiscPredictor()
    emb = pred.encode(np.zeros((534, 800, 3), np.uint8))
    with pytest.raises(PromptError, match="outside the 800x534 image"):
        pred.predict([[5000, 375]], [1], embedding=emb)
    assert pred.predict([[400, 267]], [1], embedding=emb).masks.shape[1:] == (534, 800)


def test_cli_predict_refuses_a_point_outside_the_image(onnx_dir, capsys):
    args = ["predict", str(SAMPLE_IMAGE), "--onnx-dir", str(onnx_dir), "--point", "5000,375,1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgesam: error: ") and "outside the 640x480 image" in err


# --- detections --------------------------------------------------------------------------------------


def _ctx(tmp_path: Path) -> StepContext:
    return StepContext(tmp_path, tmp_path / "out", 1, "")


def _folder_items() -> list[ImageItem]:
    # a folder source: ids are positions, not the detector's ids
    return [ImageItem(0, 1, "a.jpg", "a"), ImageItem(1, 2, "b.jpg", "b")]


def test_detections_with_numeric_ids_on_a_folder_need_a_mapping(tmp_path):
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9}]
    (tmp_path / "d.json").write_text(json.dumps(dets))
    step = P.DetectionsPrompt(P.DetectionsConfig(file=str(tmp_path / "d.json")), _ctx(tmp_path))
    with pytest.raises(PipelineError, match="have no ids to match it to: give `images:`"):
        step.bind(_folder_items(), [], "source.folder")
    # the mapping matches by file name (not by sorted position) and names the category
    coco = {"images": [{"id": 1, "file_name": "imgs/b.jpg"}], "categories": [{"id": 1, "name": "person"}]}
    (tmp_path / "c.json").write_text(json.dumps(coco))
    cfg = P.DetectionsConfig(file=str(tmp_path / "d.json"), images=str(tmp_path / "c.json"))
    step = P.DetectionsPrompt(cfg, _ctx(tmp_path))
    items = _folder_items()
    step.bind(items, [], "source.folder")
    assert items[0].extra["detections"] == []
    assert [d["label"] for d in items[1].extra["detections"]] == ["person"]


def test_detections_file_names_explicit_categories_and_unnamed_categories(tmp_path):
    dets = [
        {"file_name": "a.jpg", "image_id": 77, "category_id": 3, "bbox": [1, 1, 5, 5]},
        {"image_id": "b", "category_id": 3, "bbox": [2, 2, 5, 5]},
    ]
    (tmp_path / "d.json").write_text(json.dumps(dets))
    cfg = P.DetectionsConfig(file=str(tmp_path / "d.json"), categories={3: "cat"})
    items = _folder_items()
    P.DetectionsPrompt(cfg, _ctx(tmp_path)).bind(items, [], "source.folder")
    assert [d["label"] for it in items for d in it.extra["detections"]] == ["cat", "cat"]
    bare = P.DetectionsPrompt(P.DetectionsConfig(file=str(tmp_path / "d.json")), _ctx(tmp_path))
    with pytest.raises(PipelineError, match="category_id 3, which has no name"):
        bare.bind(_folder_items(), [], "source.folder")


def test_detection_boxes_outside_their_image_fail_that_image(tmp_path):
    """The issue's case: boxes of an 1800x1200 image applied to an 800x534 one."""
    dets = [{"image_id": "a.jpg", "category_id": 1, "bbox": [900, 600, 700, 500], "score": 0.9}]
    (tmp_path / "d.json").write_text(json.dumps(dets))
    cfg = P.DetectionsConfig(file=str(tmp_path / "d.json"), categories={1: "person"})
    step = P.DetectionsPrompt(cfg, _ctx(tmp_path))
    items = _folder_items()
    step.bind(items, [], "source.folder")
    emb = ImageEmbedding(np.zeros((1, 256, 64, 64), np.float32), (534, 800), (1024, 1024))
    with pytest.raises(PipelineError, match=r"does not fit a\.jpg: box .* outside the 800x534 image"):
        step.prompts(items[0], emb)
    big = ImageEmbedding(np.zeros((1, 256, 64, 64), np.float32), (1200, 1800), (1024, 1024))
    assert [p.box for p in step.prompts(items[0], big)] == [[900, 600, 1600, 1100]]


def test_bundled_detections_match_by_file_name_with_category_names(tmp_path):
    from edgesam_backend.pipeline.loader import load_pipeline
    from edgesam_backend.pipeline.runner import instantiate

    prep = instantiate(load_pipeline(EXAMPLES / "labelstudio_preannotate.yaml", check_paths=True))
    items = prep.source.items()
    prep.prompt.bind(items, prep.source.categories(), prep.source.kind)
    coco = json.loads((SAMPLES / "instances.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for it in items:
        im = next(i for i in coco["images"] if Path(i["file_name"]).name == it.file_name)
        want = [names[a["category_id"]] for a in coco["annotations"] if a["image_id"] == im["id"]]
        got = [d["label"] for d in it.extra["detections"]]
        assert sorted(got) == sorted(want) and got


# --- command line ------------------------------------------------------------------------------------


def test_version_help_defaults_and_help_text(capsys):
    from edgesam_backend import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"edgesam {__version__}"
    parser = build_parser()
    missing = [
        f"{p.prog} {a.option_strings or a.dest}"
        for p in all_parsers(parser)
        for a in p._actions
        if not a.help and a.dest != "help"
    ]
    assert missing == []
    predict = next(p for p in all_parsers(parser) if p.prog == "edgesam predict")
    text = predict.format_help()
    assert "(default: onnx)" in text and "(default: 3)" in text and "edge_sam_3x" in text


def test_weights_path_error_has_the_error_prefix(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGESAM_HOME", str(tmp_path))
    assert main(["weights", "path", "edge_sam_3x"]) == 1
    assert capsys.readouterr().err.startswith("edgesam: error: ")


def test_predict_checkpoint_defaults_to_edge_sam_3x(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGESAM_HOME", str(tmp_path))
    monkeypatch.setenv("EDGESAM_WEIGHTS_BASE_URL", "http://127.0.0.1:9")  # offline
    assert main(["predict", str(SAMPLE_IMAGE), "--point", "480,253,1"]) == 2
    err = capsys.readouterr().err
    assert "edge_sam_3x" in err and "give --checkpoint" not in err


def test_validate_no_check_paths_and_set_errors(tmp_path, capsys):
    assert main(["validate", str(EXAMPLES / "quickstart.yaml"), "--no-check-paths", "--no-check-model"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "files" not in info["checked"] and info["model"]["checked"] is False
    arg = "steps[prompt.grid].points_per_side=abc"
    assert main(["validate", str(EXAMPLES / "quickstart.yaml"), "--no-check-model", "--set", arg]) == 2
    err = capsys.readouterr().err
    assert f"--set {arg}: steps.1.points_per_side:" in err and "quickstart.yaml:" not in err


def test_validate_checks_a_model_on_disk(onnx_dir, capsys):
    args = ["validate", str(EXAMPLES / "quickstart.yaml"), "--set", f"model.onnx_dir={onnx_dir}"]
    assert main(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert "model" in info["checked"] and info["model"]["status"] == "ready"
    # a model without the proposal head cannot serve prompt.proposals: caught by validate, not the run
    args += ["--set", "steps[1]={kind: prompt.proposals}"]
    assert main(args) == 2
    assert "no region proposal head" in capsys.readouterr().err


# --- generate_from_boxes -----------------------------------------------------------------------------


def test_generate_from_boxes_keeps_one_mask_per_box_unless_filtering():
    pred = DiscPredictor()
    emb = pred.encode(np.zeros((480, 640, 3), np.uint8))
    boxes = np.array([[10, 10, 60, 60], [12, 12, 62, 62], [300, 200, 400, 300]], np.float64)
    gen = AutomaticMaskGenerator(
        pred, stability_score_thresh=0.9999, pred_iou_thresh=0.99, box_nms_thresh=0.1
    )
    records = gen.generate_from_boxes(emb, boxes)
    assert [r["prompt_index"] for r in records] == [0, 1, 2]
    assert [r["box_prompt"] for r in records] == boxes.tolist()
    assert len(gen.generate_from_boxes(emb, boxes, filter=True)) < 3  # the overlapping box is suppressed


# --- Ctrl-C ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_stops_quickly_keeps_finished_images_and_resumes(onnx_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    src = sorted((SAMPLES / "images").glob("*.jpg"))
    for i in range(30):
        (images / f"{i:02d}.jpg").write_bytes(src[i % len(src)].read_bytes() + bytes([i]))  # distinct
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "edgesam_backend.cli",
        "run",
        str(EXAMPLES / "quickstart.yaml"),
        "--output-dir",
        str(out),
        "--quiet",
        "--set",
        "steps[prompt.grid].points_per_side=4",
    ]
    env = {**os.environ, "EDGESAM_IMAGES": str(images), "EDGESAM_ONNX_DIR": str(onnx_dir)}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = out / ".edgesam" / "results"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if results.is_dir() and len(list(results.rglob("*.json"))) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before Ctrl-C"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    err = stderr.decode()
    assert proc.returncode == 130, err
    assert took < 10, took
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted:" in lines[0] and "Run the same command again" in lines[0]
    summary = json.loads(stdout.decode().splitlines()[-1])
    kept = len(list(results.rglob("*.json")))
    assert summary["status"] == "interrupted" and summary["kept"] == kept >= 1
    assert not (out / "coco.json").exists() and not list((out / ".edgesam").rglob("*.tmp"))
    again = subprocess.run(args, env=env, capture_output=True, timeout=600)
    assert again.returncode == 0, again.stderr.decode()
    final = json.loads(again.stdout.decode().splitlines()[-1])
    assert final["skipped"] >= kept and final["skipped"] + final["processed"] == 30
