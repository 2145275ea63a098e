"""End to end on the ONNX export of the reference weights and ../shared/images: the example pipelines,
the resume contract (a real SIGKILL mid-run, then a re-run, compared byte for byte with an uninterrupted
run), per-image failures and max_errors, region proposals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from edgesam_backend.cli import main

from .conftest import CHECKPOINT, IMAGES, REPO
from .helpers import REFINE_AND_EXPORT_ALL

EXAMPLES = REPO / "pipelines"
ALL_IMAGES = sorted(p.name for p in IMAGES.glob("*") if p.suffix.lower() in (".jpg", ".jpeg"))


@pytest.fixture
def model_env(onnx_dir, monkeypatch):
    """The examples' ${EDGESAM_CHECKPOINT} / ${EDGESAM_ONNX_DIR} → the reference weights' export."""
    env = {"EDGESAM_CHECKPOINT": str(CHECKPOINT), "EDGESAM_ONNX_DIR": str(onnx_dir)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def run_main(args: list[str], capsys) -> tuple[int, dict, str]:
    rc = main(args)
    cap = capsys.readouterr()
    lines = [ln for ln in cap.out.splitlines() if ln.strip()]
    return rc, (json.loads(lines[-1]) if lines else {}), cap.err


def tree(root: Path) -> dict[str, bytes]:
    """Every output file below ``root`` (the store excluded) → its bytes."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".edgesam" not in p.relative_to(root).parts
    }


def image_size(name: str) -> tuple[int, int]:
    with Image.open(IMAGES / name) as im:
        return im.size


# --- the example pipelines ---------------------------------------------------------------------------


@pytest.mark.slow
def test_example_quickstart(model_env, tmp_path, monkeypatch, capsys):
    """As written: the bundled pipelines/samples/images (no EDGESAM_IMAGES)."""
    monkeypatch.delenv("EDGESAM_IMAGES", raising=False)
    out = tmp_path / "quick"
    args = [
        "run",
        str(EXAMPLES / "quickstart.yaml"),
        "--output-dir",
        str(out),
        "--set",
        "steps[prompt.grid].points_per_side=2",  # random weights: keep it cheap
        "--set",
        "steps[refine].stability_score_thresh=0.2",
    ]
    rc, summary, err = run_main(args, capsys)
    assert rc == 0, err
    n = len(list((EXAMPLES / "samples" / "images").glob("*.jpg")))
    assert summary["images"] == summary["processed"] == n and summary["failed"] == 0
    assert summary["device"] == "cpu" and summary["providers"] == ["CPUExecutionProvider"]
    assert "img/s" in err and "ETA" in err
    coco = COCO(str(out / "coco.json"))
    assert len(coco.imgs) == n and len(coco.anns) == summary["masks"] > 0
    assert len(list((out / "masks" / "instances").glob("*.png"))) == n
    assert (out / "preview" / "index.html").read_text().count('<div class="card">') == n
    first = tree(out)
    # a re-run is a no-op that rebuilds identical exports
    rc, again, _ = run_main([*args, "--quiet"], capsys)
    assert rc == 0 and again["skipped"] == n and again["processed"] == 0
    assert tree(out) == first
    # --device reaches the model block; a provider this onnxruntime lacks is refused before any work
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        rc, _, err = run_main([*args, "--quiet", "--device", "cuda:1"], capsys)
        assert rc == 2 and "model: device 'cuda:1'" in err and "onnxruntime-gpu" in err
    rc, _, err = run_main([*args, "--quiet", "--device", "gpu"], capsys)
    assert rc == 2 and "unknown device 'gpu'" in err


SAMPLES = EXAMPLES / "samples"
SAMPLE_COCO = json.loads((SAMPLES / "instances.json").read_text())
SAMPLE_NAMES = {c["id"]: c["name"] for c in SAMPLE_COCO["categories"]}


@pytest.mark.slow
def test_example_boxes_from_coco(model_env, tmp_path, monkeypatch, capsys):
    """As written: the bundled pipelines/samples/instances.json (no EDGESAM_COCO / EDGESAM_IMAGES)."""
    monkeypatch.delenv("EDGESAM_COCO", raising=False)
    monkeypatch.delenv("EDGESAM_IMAGES", raising=False)
    out = tmp_path / "boxes"
    rc, summary, err = run_main(
        ["run", str(EXAMPLES / "boxes_from_coco.yaml"), "--output-dir", str(out)], capsys
    )
    assert rc == 0, err
    n = len(SAMPLE_COCO["images"])
    assert summary["processed"] == n and summary["masks"] == len(SAMPLE_COCO["annotations"])
    coco = COCO(str(out / "coco_masks.json"))
    assert sorted(coco.imgs) == sorted(im["id"] for im in SAMPLE_COCO["images"])
    assert {c["id"]: c["name"] for c in coco.dataset["categories"]} == SAMPLE_NAMES
    ann = coco.dataset["annotations"][0]
    assert ann["area"] == int(coco.annToMask(ann).sum()) and 0 <= ann["score"] <= 1
    assert COCO(str(out / "coco_polygons.json")).dataset["annotations"]
    labels = sorted((out / "yolo" / "labels").rglob("*.txt"))  # labels/images/<name>.txt
    assert len(labels) == n
    # the per-image results say which prompt made each mask
    res = json.loads(next((out / ".edgesam" / "results").rglob("*.json")).read_text())
    kinds = {m["prompt"]["kind"] for m in res["masks"]}
    assert kinds == {"annotation"} and res["stats"]["refine_iterations"] == 1


@pytest.mark.slow
def test_example_labelstudio_preannotation(model_env, tmp_path, monkeypatch, capsys):
    """As written: the bundled images + detections (matched by file name, labelled by category name)."""
    from edgesam_backend.formats.labelstudio.rle import rle_to_mask

    for var in ("EDGESAM_DETECTIONS", "EDGESAM_IMAGES", "EDGESAM_DETECTIONS_IMAGES"):
        monkeypatch.delenv(var, raising=False)
    out = tmp_path / "ls"
    rc, summary, err = run_main(
        ["run", str(EXAMPLES / "labelstudio_preannotate.yaml"), "--output-dir", str(out)], capsys
    )
    assert rc == 0, err
    assert summary["images"] == len(SAMPLE_COCO["images"]) and summary["failed"] == 0
    tasks = json.loads((out / "labelstudio_tasks.json").read_text())
    dets = json.loads((SAMPLES / "detections.json").read_text())
    for t in tasks:
        name = t["data"]["image"].rsplit("/", 1)[-1]
        assert t["data"]["image"] == f"/data/local-files/?d=images/{name}"
        im = next(i for i in dets["images"] if i["file_name"].endswith("/" + name))
        # min_score 0.3 drops the weakest detections; mask NMS may merge doubled ones
        want = {
            SAMPLE_NAMES[d["category_id"]]
            for d in dets["annotations"]
            if d["image_id"] == im["id"] and d["score"] >= 0.3
        }
        got = {r["value"]["brushlabels"][0] for r in t["predictions"][0]["result"]}
        assert got and got <= want
        r = t["predictions"][0]["result"][0]
        assert r["to_name"] == "image" and (im["width"], im["height"]) == (
            r["original_width"],
            r["original_height"],
        )
        assert rle_to_mask(r["value"]["rle"], r["original_height"], r["original_width"]).any()


@pytest.mark.slow
def test_example_labelstudio_boxes_to_brush(model_env, tmp_path, monkeypatch, capsys):
    """As written: the bundled Label Studio export (rectangles + keypoints on local-files URLs)."""
    monkeypatch.delenv("EDGESAM_LS_EXPORT", raising=False)
    monkeypatch.delenv("EDGESAM_IMAGES", raising=False)
    tasks = json.loads((SAMPLES / "labelstudio_export.json").read_text())
    out = tmp_path / "brush"
    rc, summary, err = run_main(
        ["run", str(EXAMPLES / "labelstudio_boxes_to_brush.yaml"), "--output-dir", str(out)], capsys
    )
    assert rc == 0, err
    n_rects = sum(r["type"] == "rectanglelabels" for t in tasks for r in t["annotations"][0]["result"])
    assert summary["masks"] == n_rects  # each keypoint joined the rectangle of its label
    got = json.loads((out / "labelstudio_predictions.json").read_text())
    assert [t["meta"]["source_task_id"] for t in got] == [t["id"] for t in tasks]
    assert all(t["data"] == src["data"] for t, src in zip(got, tasks, strict=True))


# --- resume: kill -9 mid-run -------------------------------------------------------------------------

RESUME_YAML = (
    """
model:
  checkpoint: {ckpt}
  onnx_dir: {onnx}
output_dir: out
max_errors: 0
steps:
  - kind: source.folder
    path: {images}
  - kind: prompt.grid
    points_per_side: 3
  - kind: segment
    points_per_batch: 4
"""
    + REFINE_AND_EXPORT_ALL
)


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "edgesam_backend.cli", *args], env=env, **kw)


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(onnx_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ALL_IMAGES[:8]:
        shutil.copy(IMAGES / name, images / name)
    cfg = tmp_path / "p.yaml"
    cfg.write_text(textwrap.dedent(RESUME_YAML).format(ckpt=CHECKPOINT, onnx=onnx_dir, images=images))
    a, b = tmp_path / "a", tmp_path / "b"

    ref = _cli(
        ["run", str(cfg), "--output-dir", str(a), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err.decode()
    assert json.loads(out.decode().splitlines()[-1])["processed"] == 8

    proc = _cli(
        ["run", str(cfg), "--output-dir", str(b), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = b / ".edgesam" / "results"
    deadline = time.monotonic() + 300
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        done = len(list(results.rglob("*.json"))) if results.is_dir() else 0
        if done >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    stored = len(list(results.rglob("*.json")))
    assert 2 <= stored < 8
    assert not (b / "coco.json").exists()  # exports are only written at the end

    again = _cli(
        ["run", str(cfg), "--output-dir", str(b), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err.decode()
    summary = json.loads(out.decode().splitlines()[-1])
    assert summary["skipped"] >= stored and summary["skipped"] + summary["processed"] == 8
    assert summary["failed"] == 0
    # nothing lost, nothing duplicated, no temp files left; same bytes as the uninterrupted run
    assert len(list(results.rglob("*.json"))) == 8 and not list((b / ".edgesam").rglob("*.tmp"))
    ta, tb = tree(a), tree(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert ta[name] == tb[name], name
    coco = json.loads(ta["coco.json"])
    assert len(coco["images"]) == 8 and len({im["id"] for im in coco["images"]}) == 8


# --- failures and max_errors -------------------------------------------------------------------------


FAIL_YAML = """
model:
  onnx_dir: {onnx}
output_dir: out
max_errors: {max_errors}
steps:
  - kind: source.folder
    path: {images}
  - kind: prompt.grid
    points_per_side: 1
  - kind: segment
  - kind: refine
    stability_score_thresh: 0.0
  - kind: export.coco
"""


def test_failures_are_recorded_skipped_and_retried(onnx_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(IMAGES / "1.jpeg", images / "1.jpeg")
    shutil.copy(IMAGES / "2.jpeg", images / "3.jpeg")
    (images / "2.jpeg").write_bytes(b"not a jpeg")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(textwrap.dedent(FAIL_YAML).format(onnx=onnx_dir, images=images, max_errors=0))
    out = tmp_path / "o"

    rc, summary, err = run_main(["run", str(cfg), "--output-dir", str(out), "--quiet"], capsys)
    assert rc == 1 and summary["status"] == "stopped" and summary["failed"] == 1
    assert "stopped after 1 failed images (max_errors: 0)" in err and "2.jpeg" in err
    assert not (out / "coco.json").exists()
    (fail,) = json.loads(
        json.dumps([json.loads(p.read_text()) for p in (out / ".edgesam" / "failures").glob("*.json")])
    )
    assert (
        fail["file_name"] == "2.jpeg"
        and fail["stage"] == "decode"
        and "not a decodable image" in fail["error"]
    )

    cfg.write_text(textwrap.dedent(FAIL_YAML).format(onnx=onnx_dir, images=images, max_errors=1))
    rc, summary, err = run_main(["run", str(cfg), "--output-dir", str(out), "--quiet"], capsys)
    assert rc == 0 and summary["failed"] == 1 and summary["processed"] + summary["skipped"] == 2
    assert summary["failures"][0]["file_name"] == "2.jpeg"
    coco = json.loads((out / "coco.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["1.jpeg", "3.jpeg"]

    shutil.copy(IMAGES / "3.jpeg", images / "2.jpeg")  # fixed: the image is retried
    rc, summary, _ = run_main(["run", str(cfg), "--output-dir", str(out), "--quiet"], capsys)
    assert rc == 0 and summary["processed"] == 1 and summary["skipped"] == 2 and summary["failed"] == 0
    assert not list((out / ".edgesam" / "failures").glob("*.json"))
    coco = json.loads((out / "coco.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["1.jpeg", "2.jpeg", "3.jpeg"]
    assert [im["id"] for im in coco["images"]] == [1, 2, 3]


def test_config_changes_invalidate_results(onnx_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(IMAGES / "1.jpeg", images / "1.jpeg")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(textwrap.dedent(FAIL_YAML).format(onnx=onnx_dir, images=images, max_errors=0))
    out = tmp_path / "o"
    base = ["run", str(cfg), "--output-dir", str(out), "--quiet"]
    assert run_main(base, capsys)[1]["processed"] == 1
    # exports do not affect results; prompts do
    assert run_main([*base, "--set", "steps[export.coco].path=x.json"], capsys)[1]["skipped"] == 1
    assert run_main([*base, "--set", "steps[prompt.grid].points_per_side=2"], capsys)[1]["processed"] == 1
    # the image content is part of the key
    Image.open(IMAGES / "2.jpeg").save(images / "1.jpeg")
    assert run_main(base, capsys)[1]["processed"] == 1


def test_proposals_need_a_region_proposal_head(onnx_dir, tmp_path, capsys):
    cfg = tmp_path / "p.yaml"
    text = textwrap.dedent(FAIL_YAML).format(onnx=onnx_dir, images=IMAGES, max_errors=0)
    cfg.write_text(text.replace("kind: prompt.grid\n    points_per_side: 1", "kind: prompt.proposals"))
    rc = main(["run", str(cfg), "--output-dir", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert (
        rc == 2 and f"{cfg}:9:5: steps.1 (prompt.proposals): the encoder has no region proposal head" in err
    )


@pytest.fixture(scope="module")
def rpn_onnx_dir(tmp_path_factory):
    """An export whose encoder has the region proposal head (untrained, made confident everywhere)."""
    torch = pytest.importorskip("torch")
    if not CHECKPOINT.is_file():
        pytest.skip("needs the shared reference weights")
    from edgesam_backend.export.onnx import export_onnx
    from edgesam_backend.model.checkpoint import load_edge_sam

    torch.manual_seed(0)
    model = load_edge_sam(CHECKPOINT, with_rpn=True)
    with torch.no_grad():
        model.rpn_head.cls.bias.fill_(2.0)
    out = tmp_path_factory.mktemp("rpn_onnx")
    export_onnx(model, out, validate=False)
    return out


@pytest.mark.slow
def test_proposals_pipeline(rpn_onnx_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for name in ALL_IMAGES[:2]:
        shutil.copy(IMAGES / name, images / name)
    cfg = tmp_path / "p.yaml"
    text = textwrap.dedent(FAIL_YAML).format(onnx=rpn_onnx_dir, images=images, max_errors=0)
    cfg.write_text(
        text.replace("kind: prompt.grid\n    points_per_side: 1", "kind: prompt.proposals\n    top_k: 3")
    )
    rc, summary, err = run_main(["run", str(cfg), "--output-dir", str(tmp_path / "o"), "--quiet"], capsys)
    assert rc == 0, err
    assert 0 < summary["masks"] <= 6
    res = [json.loads(p.read_text()) for p in (tmp_path / "o" / ".edgesam" / "results").rglob("*.json")]
    prompts = [m["prompt"] for r in res for m in r["masks"]]
    assert all(p["kind"] == "proposal" and len(p["box"]) == 4 and 0 < p["score"] <= 1 for p in prompts)
    assert all(np.isfinite(r["masks"][0]["score"]) for r in res if r["masks"])
