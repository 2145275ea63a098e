"""Every built-in step on its own: sources, prompts, segment + refine on a synthetic decoder, exports on
synthetic results (each export's own validation included). No ONNX model needed."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from edgesam_backend.pipeline.base import ExportRun, ImageJob, MaskSet, ModelInfo, PipelineError, StepContext
from edgesam_backend.pipeline.maskops import mask_nms, rle_decode, rle_encode
from edgesam_backend.pipeline.records import Annotation, ImageItem, ImageResult, MaskRecord, Prompt
from edgesam_backend.pipeline.steps import prompts as P
from edgesam_backend.pipeline.steps import sources as S
from edgesam_backend.pipeline.steps.exports.coco import CocoExport, CocoExportConfig
from edgesam_backend.pipeline.steps.exports.labelstudio import LabelStudioExport, LabelStudioExportConfig
from edgesam_backend.pipeline.steps.exports.png import PngExport, PngExportConfig
from edgesam_backend.pipeline.steps.exports.preview import PreviewExport, PreviewExportConfig
from edgesam_backend.pipeline.steps.exports.yolo import YoloExport, YoloExportConfig
from edgesam_backend.pipeline.steps.refine import Refine, RefineConfig
from edgesam_backend.pipeline.steps.segment import Segment, SegmentConfig
from edgesam_backend.pipeline.worker import to_records
from edgesam_backend.runtime.base import ImageEmbedding
from edgesam_backend.runtime.proposals import Proposals

from .helpers import DiscPredictor


def ctx(tmp_path: Path, index: int = 0) -> StepContext:
    return StepContext(tmp_path, tmp_path / "out", index, "")


def png(path: Path, w: int = 40, h: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(path)
    return path


# --- a synthetic decoder -----------------------------------------------------------------------------


#: Token radii (low-res cells) of the pipeline tests' disc decoder: stability rises with the token.
RADII = (8.0, 16.0, 24.0, 40.0)


def fake_predictor() -> DiscPredictor:
    """Discs around each prompt (see :class:`tests.helpers.DiscPredictor`); a mask input adds 3 cells, the
    IoU outputs favour token 1 on every row."""
    return DiscPredictor(RADII, (0.2, 0.9, 0.4, 0.6), iou_jitter=False, mask_grow=3.0)


def fake_job(pred: DiscPredictor, hw=(240, 320), item: ImageItem | None = None, batch: int = 64) -> ImageJob:
    image = np.zeros((*hw, 3), np.uint8)
    item = item or ImageItem(0, 1, "a.png", "/nowhere/a.png")
    return ImageJob(item, image, pred.encode(image), pred, batch)


class ListPrompt(P.PromptStep):
    """Hands out fixed prompts (for segment tests)."""

    def __init__(self, prompts):
        super().__init__(None, StepContext(Path("."), Path("."), 1, ""))
        self._p = prompts

    def prompts(self, item, embedding):
        return list(self._p)


# --- sources -----------------------------------------------------------------------------------------


def test_folder_source_order_filters_and_output_dir(tmp_path):
    root = tmp_path / "imgs"
    for rel in (
        "a/10.jpg",
        "a/2.jpg",
        "a/1.jpg",
        "b/x.PNG",
        ".hidden/y.jpg",
        "notes.txt",
        "out/z.jpg",
        "c/skip.jpg",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    c = StepContext(tmp_path, root / "out", 0, "")

    def names(**kw):
        cfg = S.FolderConfig(path=str(root), **kw)
        return [it.file_name for it in S.FolderSource(cfg, c).items()]

    assert names(exclude=["c/*"]) == ["a/1.jpg", "a/2.jpg", "a/10.jpg", "b/x.PNG"]
    assert names(recursive=False, extensions=[".txt"]) == ["notes.txt"]
    assert names(glob="a/*.jpg", limit=2) == ["a/1.jpg", "a/2.jpg"]
    items = S.FolderSource(S.FolderConfig(path=str(root), extensions=["png"]), c).items()
    assert [(it.index, it.id, it.path) for it in items] == [(0, 1, str(root / "b/x.PNG"))]
    with pytest.raises(PipelineError, match="no images"):
        names(extensions=[".gif"])


def test_files_source(tmp_path):
    lst = tmp_path / "lists" / "files.txt"
    lst.parent.mkdir()
    lst.write_text("# images\nimg/a.jpg\n\n  img/b.jpg  # second\n/abs/c.jpg\n")
    items = S.FilesSource(S.FilesConfig(list_file=str(lst)), ctx(tmp_path)).items()
    assert [it.file_name for it in items] == ["img/a.jpg", "img/b.jpg", "/abs/c.jpg"]
    assert items[0].path == str(tmp_path / "lists" / "img" / "a.jpg")
    inline = S.FilesSource(S.FilesConfig(paths=["x/1.png"]), ctx(tmp_path)).items()
    assert inline[0].path == str(tmp_path / "x" / "1.png") and inline[0].file_name == "x/1.png"
    with pytest.raises(ValueError, match="exactly one"):
        S.FilesConfig(paths=["a"], list_file=str(lst))


def test_coco_source(tmp_path):
    doc = {
        "images": [
            {"id": 7, "file_name": "b.jpg", "width": 50, "height": 40},
            {"id": 3, "file_name": "a.jpg"},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "bbox": [10, 20, 30, 15], "category_id": 5},
            {"id": 2, "image_id": 7, "bbox": [0, 0, 5, 5], "category_id": 2, "iscrowd": 1},
            {
                "id": 3,
                "image_id": 3,
                "bbox": [1, 2, 3, 4],
                "category_id": 2,
                "keypoints": [4, 5, 2, 0, 0, 0, 6, 7, 1],
            },
        ],
        "categories": [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}],
    }
    f = tmp_path / "ann" / "coco.json"
    f.parent.mkdir()
    f.write_text(json.dumps(doc))
    src = S.CocoSource(S.CocoConfig(annotations=str(f)), ctx(tmp_path))
    items = src.items()
    assert [(it.id, it.file_name, it.width) for it in items] == [(7, "b.jpg", 50), (3, "a.jpg", None)]
    assert items[0].path == str(tmp_path / "ann" / "b.jpg")
    (a,) = items[0].annotations  # the crowd box is left out
    assert a.box == [10, 20, 40, 35] and a.label == "dog" and a.ref == 1
    (k,) = items[1].annotations
    assert k.points == [[4, 5], [6, 7]] and k.point_labels == [1, 1] and k.label == "cat"
    assert src.categories() == ["cat", "dog"] and src.category_ids() == {"cat": 2, "dog": 5}
    crowd = S.CocoSource(S.CocoConfig(annotations=str(f), include_crowd=True), ctx(tmp_path)).items()
    assert len(crowd[0].annotations) == 2


def test_labelstudio_source(tmp_path):
    root = tmp_path / "media"
    png(root / "imgs" / "a.png", 200, 100)
    png(root / "3" / "b.png", 60, 40)
    rect = {"x": 10, "y": 20, "width": 30, "height": 40, "rotation": 0, "rectanglelabels": ["car"]}
    tasks = [
        {
            "id": 11,
            "data": {"image": "/data/local-files/?d=imgs/a.png"},
            "annotations": [
                {"was_cancelled": True, "result": [{"type": "rectanglelabels", "value": {**rect, "x": 0}}]},
                {
                    "result": [
                        {
                            "id": "r1",
                            "type": "rectanglelabels",
                            "value": rect,
                            "original_width": 200,
                            "original_height": 100,
                        },
                        {
                            "id": "k1",
                            "type": "keypointlabels",
                            "value": {"x": 50, "y": 50, "keypointlabels": ["car"]},
                            "original_width": 200,
                            "original_height": 100,
                        },
                        {"type": "brushlabels", "value": {"brushlabels": ["road"]}},
                    ]
                },
            ],
        },
        {
            "id": 12,
            "data": {"image": "/data/upload/3/b.png"},
            "annotations": [
                {
                    "result": [
                        {
                            "type": "rectanglelabels",
                            "value": {
                                "x": 50,
                                "y": 0,
                                "width": 25,
                                "height": 50,
                                "rotation": 90,
                                "rectanglelabels": ["bus"],
                            },
                        }
                    ]
                }
            ],
        },
        {"id": 13, "data": {"image": "https://cdn/x/a.png"}, "annotations": []},
    ]
    f = tmp_path / "export.json"
    f.write_text(json.dumps(tasks))
    src = S.LabelStudioSource(S.LabelStudioConfig(export=str(f), images_dir=str(root)), ctx(tmp_path))
    items = src.items()
    assert [it.id for it in items] == [11, 12, 13]
    assert items[0].path == str(root / "imgs" / "a.png") and items[2].file_name == "a.png"
    box, kp = items[0].annotations
    assert box.box == pytest.approx([20, 20, 80, 60]) and box.label == "car" and box.ref == "r1"
    assert kp.points == [[100.0, 50.0]] and kp.box is None
    # no original size in the result: read from the file (60x40); rotated 90° about the top-left corner
    (rot,) = items[1].annotations
    assert items[1].width == 60 and rot.box == pytest.approx([30 - 20, 0, 30, 15])
    assert items[0].extra["ls_task"] == {"id": 11, "data": tasks[0]["data"]}
    assert src.categories() == ["car", "road", "bus"]


# --- prompts -----------------------------------------------------------------------------------------


def test_annotations_to_prompts():
    anns = [
        Annotation(box=[10, 10, 50, 50], label="a", ref=1),
        Annotation(points=[[20, 20]], point_labels=[1], label="a"),
        Annotation(points=[[90, 5]], point_labels=[1], label="a"),
        Annotation(box=[0, 0, 0.5, 30], label="a"),  # degenerate
        Annotation(box=[-20, -5, 500, 30], label="b", score=0.7),
        Annotation(box=[5, 5, 10, 10], points=[[6, 6]], point_labels=[1], label="c"),
    ]
    sep = P.annotations_to_prompts(anns, (100, 200), "annotation")
    assert [(p.box, p.points) for p in sep] == [
        ([10, 10, 50, 50], []),
        (None, [[20, 20]]),
        (None, [[90, 5]]),
        ([0, 0, 200, 30], []),
        ([5, 5, 10, 10], [[6, 6]]),
    ]
    assert sep[3].score == 0.7 and sep[0].ref == 1
    merged = P.annotations_to_prompts(anns, (100, 200), "annotation", keypoints="inside_box")
    assert merged[0].points == [[20, 20]] and merged[0].point_labels == [1]
    assert [p.points for p in merged if p.box is None] == [[[90, 5]]]
    only_b = P.annotations_to_prompts(anns, (100, 200), "annotation", keypoints="ignore", labels=["b", "c"])
    assert [p.label for p in only_b] == ["b", "c"] and only_b[1].points == []


def test_source_boxes_prompt_and_fingerprint(tmp_path):
    step = P.SourceBoxesPrompt(P.SourceBoxesConfig(), ctx(tmp_path))
    item = ImageItem(0, 1, "a", "a", annotations=[Annotation(box=[1, 1, 9, 9], label="x")])
    emb = ImageEmbedding(np.zeros((1, 256, 64, 64), np.float32), (20, 20), (1024, 1024))
    (p,) = step.prompts(item, emb)
    assert p.kind == "annotation" and p.box == [1, 1, 9, 9] and p.label == "x"
    fp = step.fingerprint(item)
    item.annotations[0].box = [1, 1, 9, 10]
    assert step.fingerprint(item) != fp


def test_detections_prompt(tmp_path):
    items = [ImageItem(0, 1, "sub/cat.jpg", "p0"), ImageItem(1, 2, "dog.jpg", "p1")]
    coco = {"images": [{"id": 100, "file_name": "cat.jpg"}], "categories": [{"id": 4, "name": "cat"}]}
    dets = [
        {"image_id": 100, "category_id": 4, "bbox": [0, 0, 10, 10], "score": 0.5},
        {
            "image_id": 100,
            "category_id": 4,
            "bbox": [1, 1, 10, 10],
            "score": 0.9,
            "keypoints": [3, 3, 2, 0, 0, 0],
        },
        {"image_id": 100, "category_id": 4, "bbox": [2, 2, 10, 10], "score": 0.1},
        {"image_id": "dog", "category_id": 4, "bbox": [0, 0, 4, 4], "score": 0.8},
        {"image_id": 555, "category_id": 4, "bbox": [0, 0, 4, 4], "score": 0.8},
    ]
    (tmp_path / "d.json").write_text(json.dumps(dets))
    (tmp_path / "c.json").write_text(json.dumps(coco))
    cfg = P.DetectionsConfig(
        file=str(tmp_path / "d.json"), images=str(tmp_path / "c.json"), min_score=0.3, top_k=5
    )
    step = P.DetectionsPrompt(cfg, ctx(tmp_path))
    step.bind(items, [])
    assert step.unmatched == 1
    d0 = items[0].extra["detections"]
    assert (
        [d["score"] for d in d0] == [0.9, 0.5] and d0[0]["points"] == [[3.0, 3.0]] and d0[0]["label"] == "cat"
    )
    assert [d["box"] for d in items[1].extra["detections"]] == [[0, 0, 4, 4]]
    emb = ImageEmbedding(np.zeros((1, 256, 64, 64), np.float32), (50, 50), (1024, 1024))
    ps = step.prompts(items[0], emb)
    assert [p.kind for p in ps] == ["detection", "detection"] and ps[0].box == [1, 1, 11, 11] and ps[0].points
    fp = step.fingerprint(items[0])
    assert fp and fp != step.fingerprint(items[1])
    # only unmatched detections: a clear error
    (tmp_path / "none.json").write_text(json.dumps([dets[-1]]))
    bad = P.DetectionsPrompt(P.DetectionsConfig(file=str(tmp_path / "none.json")), ctx(tmp_path))
    with pytest.raises(PipelineError, match="none of the 1 detections"):
        bad.bind(items, [])


def test_proposals_prompt(tmp_path):
    step = P.ProposalPrompt(P.ProposalsConfig(top_k=2, min_score=0.5, nms_thresh=None), ctx(tmp_path))
    with pytest.raises(PipelineError, match="no region proposal head"):
        step.check_model(ModelInfo(has_proposals=False, supports_mask_input=True))
    step.check_model(ModelInfo(has_proposals=True, supports_mask_input=True))
    props = Proposals(
        np.array([[0, 0, 5, 5], [1, 1, 8, 8], [2, 2, 9, 9]], np.float32),
        np.array([0.9, 0.4, 0.3], np.float32),
    )
    emb = ImageEmbedding(np.zeros((1, 256, 64, 64), np.float32), (10, 10), (1024, 1024), props)
    (p,) = step.prompts(ImageItem(0, 1, "a", "a"), emb)
    assert p.kind == "proposal" and p.box == [0, 0, 5, 5] and p.score == pytest.approx(0.9)


# --- segment -----------------------------------------------------------------------------------------


def test_segment_batches_by_prompt_shape_and_chooses_tokens(tmp_path):
    pred = fake_predictor()
    prompts = [
        Prompt("point", points=[[100, 100]], point_labels=[1], label="p"),
        Prompt("box", box=[40, 40, 120, 100], label="b"),
        Prompt("point", points=[[200, 120]], point_labels=[1]),
        Prompt("box", box=[150, 20, 300, 200]),
        Prompt("point", points=[[60, 180]], point_labels=[1]),
        Prompt("both", box=[10, 10, 90, 90], points=[[50, 50]], point_labels=[1]),
    ]
    seg = Segment(SegmentConfig(points_per_batch=2), ctx(tmp_path, 2))
    job = fake_job(pred)
    ms = seg.segment(job, ListPrompt(prompts), [])
    # groups: points (3 → 2 calls), boxes (2 → 1 call), box+point (1 call); no padding
    assert [(b, n) for b, n, _ in pred.calls] == [(2, 2), (1, 2), (2, 2), (1, 3)]
    assert job.stats["decoder_calls"] == 4 and job.stats["prompts"] == 6
    assert ms.labels == ["p", "b", None, None, None, None] and [p["kind"] for p in ms.prompts][:2] == [
        "point",
        "box",
    ]
    # point prompts: best of tokens 1-3 by stability = the widest disc; box prompts: token 0
    areas = [int(rle_decode(r).sum()) for r in ms.rles]
    assert areas[0] == areas[2] == areas[4]
    assert ms.low_res.shape == (6, 256, 256) and ms.source_prompts[1].box == [40, 40, 120, 100]
    d = np.hypot(*np.mgrid[0:256, 0:256] + 0.5 - np.array([100, 100])[:, None, None] / 320 * 1024 / 4)
    r_best = RADII[3]
    np.testing.assert_allclose(ms.low_res[0], r_best - d, atol=1e-4)
    # quality iou picks token 1 (the IoU head's favourite)
    pred2 = fake_predictor()
    ms2 = Segment(SegmentConfig(quality_score="iou"), ctx(tmp_path)).segment(
        fake_job(pred2), ListPrompt(prompts[:1]), []
    )
    assert ms2.iou[0] == pytest.approx(0.9) and int(rle_decode(ms2.rles[0]).sum()) < areas[0]
    # explicit single-mask output
    ms3 = Segment(SegmentConfig(multimask_output=False), ctx(tmp_path)).segment(
        fake_job(fake_predictor()), ListPrompt(prompts[:1]), []
    )
    assert ms3.iou[0] == pytest.approx(0.2)


def test_segment_with_no_prompts(tmp_path):
    ms = Segment(SegmentConfig(), ctx(tmp_path)).segment(fake_job(fake_predictor()), ListPrompt([]), [])
    assert len(ms) == 0 and to_records(ms) == ([], 0)


def test_grid_mode_uses_the_first_refine_step_inside_the_generator(tmp_path):
    pred = fake_predictor()
    grid = P.GridPrompt(P.GridConfig(points_per_side=3), ctx(tmp_path, 1))
    r1 = Refine(RefineConfig(stability_score_thresh=0.5, box_nms_thresh=0.99, max_masks=2), ctx(tmp_path, 3))
    r2 = Refine(RefineConfig(stability_score_thresh=0.99), ctx(tmp_path, 4))
    seg = Segment(SegmentConfig(points_per_batch=4), ctx(tmp_path, 2))
    job = fake_job(pred)
    ms = seg.segment(job, grid, [r1, r2])
    assert ms.mode == "grid" and ms.amg_owner == 3 and job.stats["prompts"] == 9
    assert all(p["kind"] == "grid" and len(p["point"]) == 2 for p in ms.prompts)
    assert len(ms) > 2
    out = r1.refine(ms, job)
    assert len(out) == 2  # filters ran in the generator; max_masks applies afterwards
    assert len(r2.refine(out, job)) == sum(out.stability >= 0.99)


# --- refine ------------------------------------------------------------------------------------------


def test_refine_iterations_feed_the_logits_back(tmp_path):
    pred = fake_predictor()
    job = fake_job(pred, batch=2)
    prompts = [Prompt("point", points=[[100, 100]], point_labels=[1]), Prompt("box", box=[40, 40, 120, 100])]
    ms = Segment(SegmentConfig(), ctx(tmp_path)).segment(job, ListPrompt(prompts), [])
    before = [int(rle_decode(r).sum()) for r in ms.rles]
    pred.calls.clear()
    out = Refine(RefineConfig(iterations=2), ctx(tmp_path, 3)).refine(ms, job)
    assert [c[2] for c in pred.calls] == [True] * 4  # 2 iterations x 2 prompt shapes, all with mask input
    after = [int(rle_decode(r).sum()) for r in out.rles]
    # refinement decodes the single-mask token (0) with the mask input: the box mask grows by the fake's
    # 3 cells; the point prompt switches from the widest multimask disc to token 0 (+3 cells)
    assert after[1] > before[1] and job.stats["refine_iterations"] == 2
    assert out.iou.tolist() == pytest.approx([0.2, 0.2])
    assert out.low_res[0].max() == pytest.approx(RADII[0] + 3.0, abs=0.8)
    with pytest.raises(PipelineError, match="mask input"):
        Refine(RefineConfig(iterations=1), ctx(tmp_path)).check_model(ModelInfo(True, False), "prompts")


def maskset(masks, stab=None, iou=None, mode="prompts") -> MaskSet:
    n = len(masks)
    return MaskSet(
        mode=mode,
        hw=masks[0].shape,
        rles=[rle_encode(m) for m in masks],
        iou=np.asarray(iou if iou is not None else [0.5] * n, np.float32),
        stability=np.asarray(stab if stab is not None else [0.9] * n, np.float32),
        prompts=[{"kind": "point", "i": i} for i in range(n)],
        labels=[None] * n,
    )


def rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_refine_small_regions_smoothing_filters_nms(tmp_path):
    job = fake_job(fake_predictor(), hw=(60, 80))
    m = rect(60, 80, 10, 40, 10, 50)
    m[20:22, 20:22] = False  # a small hole
    m[50:52, 70:72] = True  # a small island
    out = Refine(RefineConfig(min_mask_region_area=10), ctx(tmp_path)).refine(maskset([m]), job)
    np.testing.assert_array_equal(rle_decode(out.rles[0]), rect(60, 80, 10, 40, 10, 50))

    jag = rect(60, 80, 10, 40, 10, 50)
    jag[3:10, 30] = True  # a 1-pixel spike sticking out
    jag[25, 10:14] = False  # a 1-pixel crack into the side
    sm = rle_decode(Refine(RefineConfig(smooth_kernel=5), ctx(tmp_path)).refine(maskset([jag]), job).rles[0])
    assert not sm[3:8, 30].any() and sm[25, 11:14].all() and sm[15:35, 15:45].all()

    a, b, c = rect(60, 80, 0, 20, 0, 20), rect(60, 80, 0, 20, 1, 21), rect(60, 80, 30, 50, 30, 50)
    ms = maskset([a, b, c], stab=[0.8, 0.95, 0.97], iou=[0.9, 0.8, 0.3])
    filt = Refine(RefineConfig(stability_score_thresh=0.9), ctx(tmp_path)).refine(ms, job)
    assert [p["i"] for p in filt.prompts] == [1, 2] and job.stats["filtered"] == 1
    nms = Refine(RefineConfig(box_nms_thresh=0.5), ctx(tmp_path)).refine(ms, job)
    assert [p["i"] for p in nms.prompts] == [1, 2]  # prompt order kept; b outranks a
    mn = Refine(RefineConfig(mask_nms_thresh=0.5), ctx(tmp_path)).refine(ms, job)
    assert [p["i"] for p in mn.prompts] == [1, 2]
    top = Refine(RefineConfig(max_masks=1), ctx(tmp_path)).refine(ms, job)
    assert [p["i"] for p in top.prompts] == [2]
    # pred_iou_thresh applies with quality_score iou only
    ms.quality = "iou"
    q = Refine(RefineConfig(pred_iou_thresh=0.5), ctx(tmp_path)).refine(ms, job)
    assert [p["i"] for p in q.prompts] == [0, 1]


def test_mask_nms_keeps_the_best_of_duplicates():
    a, b = rect(10, 10, 0, 5, 0, 5), rect(10, 10, 0, 5, 0, 6)
    keep = mask_nms([rle_encode(a), rle_encode(b), rle_encode(~a)], [0.5, 0.9, 0.1], 0.7)
    assert keep.tolist() == [1, 2]


def test_records_drop_empty_masks_and_use_coco_boxes():
    ms = maskset([rect(10, 10, 2, 5, 3, 7), np.zeros((10, 10), bool)], stab=[0.91, 0.5])
    recs, empty = to_records(ms)
    assert empty == 1 and len(recs) == 1
    r = recs[0]
    assert r.area == 12 and r.bbox == [3.0, 2.0, 4.0, 3.0] and r.score == pytest.approx(0.91)
    assert isinstance(r.segmentation["counts"], str)


# --- exports -----------------------------------------------------------------------------------------


def synthetic_results(tmp_path: Path):
    img_a = png(tmp_path / "imgs" / "a.png", 40, 30)
    img_b = png(tmp_path / "imgs" / "sub" / "b.jpg", 20, 10)
    ring = rect(30, 40, 5, 25, 5, 35)
    ring[10:20, 15:25] = False

    def rec(m, label, score):
        rle = rle_encode(m)
        return MaskRecord(
            rle,
            int(m.sum()),
            [float(v) for v in mask_utils.toBbox(rle)],
            score,
            0.5,
            score,
            label,
            {"kind": "box"},
        )

    res_a = ImageResult("k1", "s1", 40, 30, [rec(ring, "cat", 0.9), rec(rect(30, 40, 0, 4, 0, 4), None, 0.7)])
    res_b = ImageResult("k2", "s2", 20, 10, [])
    items = [
        ImageItem(
            0, 7, "a.png", str(img_a), extra={"ls_task": {"id": 70, "data": {"image": "/data/upload/a.png"}}}
        ),
        ImageItem(1, 2, "sub/b.jpg", str(img_b)),
    ]
    run = ExportRun(tmp_path / "out", ["cat"], "abcdef0123456789", "test-run", {"cat": 17}, unlabeled=True)
    return items, [res_a, res_b], run, ring


def run_export(step, items, results, run):
    step.kind = step.kind or "export.x"
    step.begin(run)
    for it, res in zip(items, results, strict=True):
        step.add(it, res)
    return step.finish()


def test_coco_export_rle_and_polygons(tmp_path):
    items, results, run, ring = synthetic_results(tmp_path)
    out = run_export(CocoExport(CocoExportConfig(), ctx(tmp_path)), items, results, run)
    from pycocotools.coco import COCO

    coco = COCO(out["path"])
    assert sorted(coco.imgs) == [2, 7] and out["annotations"] == 2
    assert {c["name"]: c["id"] for c in coco.dataset["categories"]} == {"cat": 17, "object": 18}
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[7]))[0]
    np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), ring)
    assert ann["score"] == 0.9 and ann["category_id"] == 17 and ann["iscrowd"] == 0
    poly = run_export(
        CocoExport(CocoExportConfig(path="poly.json", polygons=True), ctx(tmp_path)), items, results, run
    )
    pc = COCO(poly["path"])
    m = pc.annToMask(pc.loadAnns(pc.getAnnIds(imgIds=[7]))[0]).astype(bool)
    assert (m & ring).sum() / (m | ring).sum() > 0.7  # outer contour only: the hole is filled


def test_coco_export_validation_catches_bad_output(tmp_path):
    from edgesam_backend.pipeline.steps.exports.coco import validate_coco_text

    doc = {
        "images": [{"id": 1, "file_name": "a", "width": 4, "height": 4}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "area": 99,
                "bbox": [0, 0, 1, 1],
                "segmentation": rle_encode(rect(4, 4, 0, 1, 0, 1)),
            }
        ],
    }
    with pytest.raises(PipelineError, match="does not validate"):
        validate_coco_text(json.dumps(doc))


def test_labelstudio_export_decodes_back(tmp_path):
    from edgesam_backend.formats.labelstudio.rle import rle_to_mask

    items, results, run, ring = synthetic_results(tmp_path)
    out = run_export(LabelStudioExport(LabelStudioExportConfig(), ctx(tmp_path)), items, results, run)
    tasks = json.loads(Path(out["path"]).read_text())
    assert out == {"path": out["path"], "tasks": 2, "regions": 2}
    t0, t1 = tasks
    assert t0["data"] == {"image": "/data/upload/a.png"} and t0["meta"]["source_task_id"] == 70
    assert t1["data"] == {"image": "/data/local-files/?d=sub/b.jpg"} and t1["predictions"][0]["result"] == []
    r = t0["predictions"][0]["result"][0]
    assert r["type"] == "brushlabels" and r["value"]["brushlabels"] == ["cat"] and r["from_name"] == "tag"
    assert r["id"] == "es0_0" and t0["predictions"][0]["model_version"] == "edgesam-abcdef012345"
    np.testing.assert_array_equal(rle_to_mask(r["value"]["rle"], 30, 40) > 0, ring)
    assert t0["predictions"][0]["result"][1]["value"]["brushlabels"] == ["object"]


class _Capture(BaseHTTPRequestHandler):
    requests: ClassVar[list] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Capture.requests.append((self.path, self.headers["Authorization"], body))
        self.send_response(201)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_labelstudio_push(tmp_path):
    _Capture.requests = []
    server = HTTPServer(("127.0.0.1", 0), _Capture)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        items, results, run, _ = synthetic_results(tmp_path)
        push = {"url": f"http://127.0.0.1:{server.server_port}", "api_key": "abc", "project": 4}
        cfg = LabelStudioExportConfig(push=push)
        out = run_export(LabelStudioExport(cfg, ctx(tmp_path)), items, results, run)
    finally:
        server.shutdown()
    assert out["push"] == {"predictions": 1, "imported_tasks": 1}
    (p1, auth1, b1), (p2, _, b2) = _Capture.requests
    assert p1 == "/api/predictions" and auth1 == "Token abc" and b1["task"] == 70 and len(b1["result"]) == 2
    assert p2 == "/api/projects/4/import" and b2[0]["data"]["image"].endswith("sub/b.jpg")
    bad = LabelStudioExportConfig(
        push={"url": "http://127.0.0.1:9", "api_key": "x", "project": 1, "timeout": 2}
    )
    with pytest.raises(PipelineError, match="cannot reach"):
        run_export(LabelStudioExport(bad, ctx(tmp_path)), items, results, run)


def test_png_export(tmp_path):
    items, results, run, ring = synthetic_results(tmp_path)
    out = run_export(PngExport(PngExportConfig(semantic=True), ctx(tmp_path)), items, results, run)
    root = Path(out["dir"])
    inst = np.asarray(Image.open(root / "instances" / "a.png"))
    assert inst.dtype == np.uint16 and inst.shape == (30, 40)
    assert set(np.unique(inst)) == {0, 1, 2} and (inst == 1).sum() == ring.sum() - (ring[0:4, 0:4]).sum()
    assert (inst[0:4, 0:4] == 2).all()  # the smaller mask is painted on top
    sem = np.asarray(Image.open(root / "semantic" / "a.png"))
    assert json.loads((root / "labels.json").read_text()) == {"0": "background", "1": "cat", "2": "object"}
    assert (sem[ring & (inst == 1)] == 1).all() and (sem[0:4, 0:4] == 2).all()
    assert not np.asarray(Image.open(root / "instances" / "sub" / "b.png")).any()


def test_yolo_export(tmp_path):
    items, results, run, _ = synthetic_results(tmp_path)
    out = run_export(YoloExport(YoloExportConfig(), ctx(tmp_path)), items, results, run)
    root = Path(out["dir"])
    lines = (root / "labels" / "a.txt").read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("0 ") and lines[1].startswith("1 ")
    vals = [float(v) for v in lines[0].split()[1:]]
    assert len(vals) >= 8 and all(0 <= v <= 1 for v in vals)
    assert (root / "labels" / "sub" / "b.txt").read_text() == ""
    assert (root / "classes.txt").read_text() == "cat\nobject\n"
    assert "names" in (root / "data.yaml").read_text() and out["instances"] == 2


def test_preview_export(tmp_path):
    items, results, run, _ = synthetic_results(tmp_path)
    out = run_export(PreviewExport(PreviewExportConfig(max_side=64), ctx(tmp_path)), items, results, run)
    page = Path(out["index"]).read_text()
    assert page.count('<div class="card">') == 2 and "2 images · 2 masks" in page
    assert "2 masks · 40×30" in page and "0 masks" in page and "cat: 1" in page
    with Image.open(Path(out["index"]).parent / "images" / "a.jpg") as im:
        assert im.size == (40, 30)


def test_exports_refuse_colliding_file_names(tmp_path):
    items, results, run, _ = synthetic_results(tmp_path)
    items[1].file_name = "a.jpg"
    results[1] = ImageResult("k2", "s2", 40, 30, [])
    with pytest.raises(PipelineError, match="would both be written"):
        run_export(PngExport(PngExportConfig(), ctx(tmp_path)), items, results, run)
