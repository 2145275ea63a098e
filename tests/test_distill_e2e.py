"""Distillation end to end at 128 px on synthetic data: teacher-embedding cache, phase 1, phase 2,
resume, the official-layout final checkpoint in the engine, data readers, the CLI and the schemas."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgesam_backend.cli import main
from edgesam_backend.model.checkpoint import CheckpointError, check_state_dict, load_edge_sam
from edgesam_backend.training.cache import CacheError, EmbeddingCache, build_cache, cache_meta
from edgesam_backend.training.data import DistillDataset
from edgesam_backend.training.distill import FINAL_NAME, distill
from edgesam_backend.training.distill_config import (
    DataConfig,
    Phase1Config,
    Phase2Config,
)
from edgesam_backend.training.models import build_student, build_teacher
from edgesam_backend.training.phase2 import Phase2Stats, phase2_loss
from edgesam_backend.training.schemas import schemas
from edgesam_backend.training.synthetic import write_coco_dataset
from edgesam_backend.yamlconfig import ConfigError, load_yaml_model, schema_text

from .helpers import coco_data_section, free_port

REPO = Path(__file__).resolve().parents[1]
SIZE = 128


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("distill_data")
    write_coco_dataset(root / "train", 8, size=(96, 128), seed=1, max_objects=5)
    return root / "train"


def _base(data: Path, out: Path, **kw) -> dict:
    cfg = {
        "data": coco_data_section(data),
        "teacher": {"kind": "tiny", "random_init": True},
        "output_dir": str(out),
        "image_size": SIZE,
        "log_every": 0,
        "threads": 1,
    }
    cfg.update(kw)
    return cfg


def _p1(data: Path, out: Path, **kw) -> dict:
    optim = {
        "epochs": 5,
        "batch_size": 2,
        "base_lr": 0.1,
        "warmup_lr": 5e-7,
        "min_lr": 5e-6,
        "warmup_epochs": 1,
        "weight_decay": 0.01,
        "clip_grad": 5.0,
        "lr_scale_batch": 16,
    }
    return _base(data, out, optim=optim, **kw)


@pytest.fixture(scope="module")
def phase1(data, tmp_path_factory) -> tuple[Path, dict, Path]:
    root = tmp_path_factory.mktemp("phase1")
    cfg = Phase1Config.model_validate(
        _p1(data, root / "out", cache={"dir": str(root / "cache"), "shard_size": 3})
    )
    return root / "out", distill(cfg), root / "cache"


def test_phase1_loss_falls_and_checkpoint_is_official(phase1):
    out, metrics, _ = phase1
    assert metrics["steps"] == 20 and metrics["iters_per_epoch"] == 4
    assert metrics["lr_peak"] == pytest.approx(0.1 * 2 / 16)
    assert metrics["loss_last"] < 0.7 * metrics["loss_first"]
    sd = torch.load(out / FINAL_NAME, weights_only=True)
    check_state_dict(sd)  # all 821 official keys and shapes
    model = load_edge_sam(out / FINAL_NAME)
    assert sum(p.numel() for p in model.parameters()) == 9_582_112
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == list(range(1, 21))
    assert all(r["grad_norm"] >= 0 for r in logs)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["final"].endswith(FINAL_NAME)


def test_cache_manifest_resume_and_checks(phase1, data, tmp_path):
    _, _, cache_dir = phase1
    meta = cache_meta("tiny", "random-seed0", SIZE)
    cache = EmbeddingCache(cache_dir, meta)
    assert len(cache) == 8 and sorted(p.name for p in cache_dir.glob("shard_*.npy")) == [
        "shard_r0_00000.npy",
        "shard_r0_00001.npy",
        "shard_r0_00002.npy",
    ]
    ds = DistillDataset(
        DataConfig(format="coco", images=data / "images", annotations=data / "annotations.json"), SIZE
    )
    teacher = build_teacher("tiny", None, SIZE, seed=0)
    item = ds[5]
    with torch.no_grad():
        ref = teacher.image_encoder(item.image[None])[0]
    got = cache.get(item.image_id, item.sha256)
    assert got.dtype == np.float16 and got.shape == (256, 8, 8)
    torch.testing.assert_close(torch.from_numpy(got.astype(np.float32)), ref, atol=2e-3, rtol=2e-3)
    entry = cache.entries[item.image_id]
    assert entry.input_hw == (96, 128) and entry.original_hw == (96, 128) and len(entry.sha256) == 64

    # resume: lose the last shard and leave a torn manifest line → only those images are redone
    copy = tmp_path / "cache"
    shutil.copytree(cache_dir, copy)
    (copy / "shard_r0_00002.npy").unlink()
    with open(copy / "manifest_r0.jsonl", "a") as f:
        f.write('{"image_id": "9", "fi')
    c2 = EmbeddingCache(copy, meta)
    assert len(c2) == 6
    stats = build_cache(c2, teacher.image_encoder, ds, shard_size=3, log=lambda _m: None)
    assert stats["new"] == 2 and len(EmbeddingCache(copy, meta)) == 8
    np.testing.assert_array_equal(c2.get(item.image_id), got)

    with pytest.raises(CacheError, match="another teacher or size"):
        EmbeddingCache(cache_dir, cache_meta("vit_h", "sam_vit_h_4b8939.pth", 1024))
    with pytest.raises(CacheError, match="changed since it was cached"):
        cache.get(item.image_id, "0" * 64)
    with pytest.raises(CacheError, match="not in the cache"):
        cache.get("nope")


def _fixed_batch_loss(student, teacher, items, cfg, emb_t) -> float:
    total = 0.0
    for box_prob in (0.0, 1.0):
        c = cfg.model_copy(update={"box_prob": box_prob})
        with torch.no_grad():
            emb_s = student.image_encoder(torch.stack([it.image for it in items]))
            loss = phase2_loss(student, teacher, emb_s, emb_t, items, c, torch.Generator().manual_seed(0))
        total += float(loss)
    return total / 2


def test_phase2_end_to_end(phase1, data, tmp_path):
    p1_out, _, cache_dir = phase1
    optim = {
        "epochs": 4,
        "batch_size": 2,
        "base_lr": 3.2e-3,
        "warmup_lr": 0.0,
        "min_lr": 3.2e-4,
        "weight_decay": 0.05,
        "clip_grad": 0.01,
        "lr_scale_batch": 2,
    }
    raw = _base(
        data,
        tmp_path / "p2",
        optim=optim,
        cache={"dir": str(cache_dir)},
        init_from=str(p1_out / FINAL_NAME),
        max_prompts=4,
    )
    cfg = Phase2Config.model_validate(raw)
    metrics = distill(cfg)
    assert metrics["phase"] == 2 and metrics["steps"] == 16
    logs = [json.loads(line) for line in (tmp_path / "p2" / "log.jsonl").read_text().splitlines()]
    assert {r["prompt"] for r in logs} == {"box", "point"}  # one coin per batch
    assert all(r["points"] + r["dummy"] == r["prompts"] for r in logs)  # 1 point per prompt in round 2
    assert sum(r["points"] for r in logs) > 0
    assert all(r["prompts"] <= 2 * 4 for r in logs)

    # the loss on a fixed batch (both branches, fixed prompts) falls
    teacher = build_teacher("tiny", None, SIZE, seed=0).eval()
    ds = DistillDataset(cfg.data, SIZE, seed=cfg.seed)
    items = [ds[0], ds[1]]
    with torch.no_grad():
        emb_t = teacher.image_encoder(torch.stack([it.image for it in items]))
    before = build_student(SIZE)
    before.load_state_dict(torch.load(p1_out / FINAL_NAME, weights_only=True))
    after = build_student(SIZE)
    after.load_state_dict(torch.load(tmp_path / "p2" / FINAL_NAME, weights_only=True))
    # the student decoder started from the teacher's; the prompt encoder stayed frozen
    assert torch.equal(
        before.prompt_encoder.point_embeddings[0].weight, after.prompt_encoder.point_embeddings[0].weight
    )
    assert torch.equal(before.mask_decoder.iou_token.weight, teacher.mask_decoder.iou_token.weight)
    assert not torch.equal(before.mask_decoder.mask_tokens.weight, after.mask_decoder.mask_tokens.weight)
    before.train(), after.train()
    l0 = _fixed_batch_loss(before, teacher, items, cfg, emb_t)
    l1 = _fixed_batch_loss(after, teacher, items, cfg, emb_t)
    assert l1 < 0.9 * l0

    # the final checkpoint is EdgeSAM's official layout and runs in the engine
    from edgesam_backend.engine import load_predictor

    pred = load_predictor(tmp_path / "p2" / FINAL_NAME, backend="torch", threads=1)
    pred.set_image(np.zeros((64, 96, 3), np.uint8))
    out = pred.predict(point_coords=[[40, 30]], point_labels=[1], num_multimask_outputs=1)
    assert out.masks.shape == (1, 64, 96)


def test_phase2_prompt_branches(phase1, data):
    p1_out, _, _ = phase1
    teacher = build_teacher("tiny", None, SIZE, seed=0).eval()
    student = build_student(SIZE)
    student.load_state_dict(torch.load(p1_out / FINAL_NAME, weights_only=True))
    ds = DistillDataset(
        DataConfig(format="coco", images=data / "images", annotations=data / "annotations.json"), SIZE
    )
    items = [ds[2], ds[3]]
    x = torch.stack([it.image for it in items])
    with torch.no_grad():
        emb_s, emb_t = student.image_encoder(x), teacher.image_encoder(x)
    cfg = Phase2Config.model_validate(_base(data, Path("unused"), max_prompts=3))
    n = sum(min(3, len(it.boxes)) for it in items)
    for box_prob, prompt in ((1.0, "box"), (0.0, "point")):
        st = Phase2Stats()
        c = cfg.model_copy(update={"box_prob": box_prob})
        with torch.no_grad():
            loss = phase2_loss(student, teacher, emb_s, emb_t, items, c, torch.Generator().manual_seed(0), st)
        assert st.prompt == prompt and st.num_prompts == n and float(loss) > 0
        assert st.points_sampled + st.dummy_points == n  # decode_iters 2 → one refinement point each
    one = cfg.model_copy(update={"decode_iters": 1})
    st = Phase2Stats()
    with torch.no_grad():
        phase2_loss(student, teacher, emb_s, emb_t, items, one, torch.Generator().manual_seed(0), st)
    assert st.points_sampled + st.dummy_points == 0


def test_resume_reproduces_an_uninterrupted_run(data, tmp_path):
    def cfg(out: Path, **kw) -> Phase1Config:
        raw = _p1(data, out, **kw)
        raw["optim"]["epochs"] = 2
        return Phase1Config.model_validate(raw)

    full = distill(cfg(tmp_path / "a"))
    part = distill(cfg(tmp_path / "b", max_steps=3))
    assert part["steps"] == 3 and full["steps"] == 8
    rest = distill(cfg(tmp_path / "b"))
    assert rest["steps"] == 8 and rest["steps_this_run"] == 5
    a = torch.load(tmp_path / "a" / FINAL_NAME, weights_only=True)
    b = torch.load(tmp_path / "b" / FINAL_NAME, weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)
    with pytest.raises(CheckpointError, match="phase-1 checkpoint"):
        p2 = _base(data, tmp_path / "b", optim=cfg(tmp_path).optim.model_dump())
        distill(Phase2Config.model_validate(p2))


def test_slim_student_online_teacher_with_hflip(data, tmp_path):
    raw = _p1(data, tmp_path / "slim", student={"arch": "slim"}, hflip=0.5, max_steps=4, precision="bf16")
    m = distill(Phase1Config.model_validate(raw))
    assert m["steps"] == 4 and np.isfinite(m["loss_last"])
    sd = torch.load(tmp_path / "slim" / FINAL_NAME, weights_only=True)
    with pytest.raises(CheckpointError):
        check_state_dict(sd)  # slim is not the official topology
    ds = DistillDataset(
        DataConfig(format="coco", images=data / "images", annotations=data / "annotations.json"),
        SIZE,
        hflip=1.0,
    )
    plain = DistillDataset(ds.cfg, SIZE)
    a, b = ds[0], plain[0]
    assert a.flipped and torch.equal(a.image[:, :96, :128], b.image[:, :96, :128].flip(-1))
    torch.testing.assert_close(a.boxes[:, [0, 2]], 128 - b.boxes[:, [2, 0]])


def test_config_validation(data, tmp_path):
    with pytest.raises(ValueError, match="online teacher"):
        Phase1Config.model_validate(_p1(data, tmp_path, hflip=0.5, cache={"dir": str(tmp_path / "c")}))
    bad = _p1(data, tmp_path)
    bad["teacher"] = {"kind": "vit_h"}
    with pytest.raises(ValueError, match="random_init"):
        Phase1Config.model_validate(bad)
    raw = _p1(data, tmp_path)
    raw["optim"]["batch_size"] = "two"
    raw["bogus"] = 1
    path = tmp_path / "p1.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError) as exc:
        load_yaml_model(path, Phase1Config)
    msg = str(exc.value)
    assert "optim.batch_size" in msg and "bogus: unknown key" in msg and f"{path}:" in msg


def test_cli_distill_and_errors(data, tmp_path, capsys):
    raw = _p1(data, tmp_path / "cli", cache={"dir": str(tmp_path / "cache")})
    path = tmp_path / "p1.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["distill", "cache", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["cached"] == 8
    assert main(["distill", "phase1", str(path), "--max-steps", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    raw["image_size"] = 100
    path.write_text(yaml.safe_dump(raw))
    assert main(["distill", "phase1", str(path)]) == 2
    assert "image_size" in capsys.readouterr().err
    raw["image_size"] = SIZE
    raw["teacher"] = {"kind": "vit_b", "checkpoint": str(tmp_path / "sam_vit_b_01ec64.pth")}
    path.write_text(yaml.safe_dump(raw))
    assert main(["distill", "phase1", str(path)]) == 2
    assert "SAM checkpoint file not found" in capsys.readouterr().err


def test_sa1b_layout_reader(data, tmp_path):
    """SA-1B: per-image json with RLE masks, boxes and point_coords (the click is used as is)."""
    from edgesam_backend.training.data import read_sa1b

    coco = json.loads((data / "annotations.json").read_text())
    root = tmp_path / "sa1b"
    root.mkdir()
    for im in coco["images"][:3]:
        stem = f"sa_{im['id']}"
        shutil.copy(data / "images" / im["file_name"], root / f"{stem}.png")
        anns = [
            {
                "id": a["id"],
                "segmentation": a["segmentation"],
                "bbox": a["bbox"],
                "area": a["area"],
                "point_coords": [[a["bbox"][0] + 1.5, a["bbox"][1] + 2.5]],
                "predicted_iou": 0.9,
                "stability_score": 0.95,
            }
            for a in coco["annotations"]
            if a["image_id"] == im["id"]
        ]
        image = {
            "image_id": im["id"],
            "width": im["width"],
            "height": im["height"],
            "file_name": f"{stem}.png",
        }
        (root / f"{stem}.json").write_text(json.dumps({"image": image, "annotations": anns}))
    cfg = DataConfig(format="sa1b", images=root)
    assert [r.image_id for r in read_sa1b(cfg)] == ["sa_1", "sa_2", "sa_3"]
    ds = DistillDataset(cfg, SIZE)
    item = ds[1]
    rec = ds.record(1)
    scale = 128 / 128  # images are 96x128: long side already 128
    assert item.points.shape == (len(rec.annotations), 2)
    np.testing.assert_allclose(item.points[0].numpy(), np.array(rec.annotations[0].point) * scale, atol=1e-5)
    np.testing.assert_allclose(item.boxes[0].numpy(), np.array(rec.annotations[0].box), atol=1e-5)
    (root / "sa_3.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"sa_3\.json"):
        read_sa1b(cfg)


def test_schemas_in_sync():
    for name, schema in schemas().items():
        path = REPO / "schemas" / name
        assert path.is_file(), f"missing {path}; run python -m edgesam_backend.training.schemas"
        assert path.read_text() == schema_text(schema), f"{path} is stale; regenerate it"


@pytest.mark.slow
def test_export_of_distilled_checkpoint(phase1, tmp_path, capsys):
    out, _, _ = phase1
    assert main(["export", "--checkpoint", str(out / FINAL_NAME), "--out", str(tmp_path / "onnx")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["encoder_max_abs_diff"] < 1e-3 and (tmp_path / "onnx" / "decoder.onnx").is_file()


def _torchrun_two_cpu_processes(*cli_args: str) -> None:
    """``torchrun --nproc_per_node 2 -m edgesam_backend.cli ARGS`` on the CPU (Gloo), one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = str(free_port())  # for the rendezvous
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    res = subprocess.run(
        [*cmd, "-m", "edgesam_backend.cli", *cli_args], env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
def test_ddp_two_processes_gloo(data, tmp_path):
    raw = _p1(data, tmp_path / "ddp", cache={"dir": str(tmp_path / "cache"), "shard_size": 2}, device="cpu")
    raw["threads"] = 1
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(raw))
    _torchrun_two_cpu_processes("distill", "phase1", str(path), "--max-steps", "3")
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["iters_per_epoch"] == 2 and metrics["steps"] == 3
    assert metrics["lr_peak"] == pytest.approx(0.1 * 4 / 16)  # total batch 2 x 2
    assert sorted(p.name for p in (tmp_path / "cache").glob("manifest_r*.jsonl")) == [
        "manifest_r0.jsonl",
        "manifest_r1.jsonl",
    ]
    assert len(EmbeddingCache(tmp_path / "cache")) == 8
    check_state_dict(torch.load(tmp_path / "ddp" / FINAL_NAME, weights_only=True))


@pytest.mark.slow
def test_train_rpn_ddp_two_processes_gloo(data, tmp_path):
    """train-rpn through the same loop under torchrun: 2 ranks x 2 images a step, rank 0 saves."""
    raw = {
        "train_images": str(data / "images"),
        "train_annotations": str(data / "annotations.json"),
        "output_dir": str(tmp_path / "rpn"),
        "input_size": SIZE,
        "batch_size": 2,
        "warmup_steps": 1,
        "log_every": 0,
        "threads": 1,
        "device": "cpu",
    }
    path = tmp_path / "rpn.yaml"
    path.write_text(yaml.safe_dump(raw))
    _torchrun_two_cpu_processes("train-rpn", str(path), "--max-steps", "3")
    metrics = json.loads((tmp_path / "rpn" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 3
    logged = [json.loads(line) for line in (tmp_path / "rpn" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3]  # rank 0 only
    assert load_edge_sam(tmp_path / "rpn" / "edge_sam_rpn.pth").rpn_head is not None


def test_encoder_init_from_bare_repvit_or_edgesam_weights(tmp_path):
    from edgesam_backend.training.models import load_encoder_weights

    torch.manual_seed(3)
    src = build_student(SIZE)
    with torch.no_grad():
        for p in src.image_encoder.parameters():
            p.add_(torch.randn_like(p))
    bare = {k: v for k, v in src.image_encoder.state_dict().items() if k.startswith("features.")}
    bare["classifier.l.weight"] = torch.zeros(1000, 384)  # ImageNet head: skipped
    torch.save({"model": bare}, tmp_path / "repvit_m1.pth")
    dst = build_student(SIZE)
    msgs: list[str] = []
    load_encoder_weights(dst, tmp_path / "repvit_m1.pth", strict=False, log=msgs.append)
    assert torch.equal(dst.image_encoder.features[3].token_mixer[0].conv.c.weight,
                       src.image_encoder.features[3].token_mixer[0].conv.c.weight)  # fmt: skip
    assert not torch.equal(dst.image_encoder.neck[0].weight, src.image_encoder.neck[0].weight)
    assert msgs and "encoder tensors" in msgs[0]
    with pytest.raises(CheckpointError, match="do not fit"):
        load_encoder_weights(dst, tmp_path / "repvit_m1.pth", strict=True)
    torch.save(src.state_dict(), tmp_path / "edge.pth")
    load_encoder_weights(dst, tmp_path / "edge.pth", strict=True, log=msgs.append)
    assert torch.equal(dst.image_encoder.neck[0].weight, src.image_encoder.neck[0].weight)
