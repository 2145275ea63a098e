"""The one decode path: ``BasePredictor.decode`` / ``predict_selected`` / ``iter_masks`` against
``predict`` on the reference weights, and its users (pipeline ``segment``/``refine``, the Label Studio
backend's interactive and batch masks) against ``predict`` / the generator."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from edgesam_backend.labelstudio import batch as ls_batch
from edgesam_backend.labelstudio import interactive
from edgesam_backend.labelstudio.settings import Settings
from edgesam_backend.pipeline.base import ImageJob
from edgesam_backend.pipeline.records import ImageItem, Prompt
from edgesam_backend.pipeline.steps.segment import decode_prompts, upscale_to_rles
from edgesam_backend.runtime.amg import AutomaticMaskGenerator
from edgesam_backend.runtime.decode import candidate_tokens
from edgesam_backend.runtime.image import load_image
from edgesam_backend.runtime.masks import batched_mask_to_box, stability_score
from edgesam_backend.runtime.prompts import pack_prompt
from edgesam_backend.runtime.quality import quality_keep, rle_boxes

from .conftest import IMAGES

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

#: (select, num_multimask_outputs) → the index predict(num_multimask_outputs=k) result it must equal.
MODES = [("single", None, 1), ("stability", None, 3), ("iou", None, 3), ("all", None, 4), ("all", 3, 3)]


@pytest.fixture(scope="module")
def image_emb(onnx_predictor):
    img = load_image(IMAGES / "1.jpeg")
    return img, onnx_predictor.encode(img)


def _prompts(n: int = 6):
    rng = np.random.default_rng(7)
    for i in range(n):
        pts = rng.uniform([0, 0], [640, 428], size=(1 + i % 2, 2))
        labels = np.ones(len(pts), np.int64)
        labels[1:] = 0
        yield pts, labels, (np.array([40.5, 30.25, 420.0, 300.75]) if i % 3 == 2 else None)


def _expected_index(pred, select: str) -> list[int]:
    if select in ("stability", "iou"):
        return [pred.best(select)]
    return list(range(len(pred.iou_predictions)))


@pytest.mark.parametrize(("select", "k", "predict_k"), MODES)
def test_decode_equals_predict_for_each_select_mode(onnx_predictor, image_emb, select, k, predict_k):
    _, emb = image_emb
    for pts, labels, box in _prompts():
        pred = onnx_predictor.predict(pts, labels, box, num_multimask_outputs=predict_k, embedding=emb)
        c, lab = pack_prompt(pts, labels, box, emb.original_hw)
        d = onnx_predictor.decode(c, lab, None, emb, select=select, num_multimask_outputs=k)
        idx = _expected_index(pred, select)
        assert d.low_res_logits.shape[:2] == (1, len(idx))
        assert np.array_equal(d.low_res_logits[0], pred.low_res_logits[idx])
        assert np.array_equal(d.iou_predictions[0], pred.iou_predictions[idx])
        assert np.array_equal(d.stability_scores[0], pred.stability_scores[idx])
        want_tokens = np.arange(4)[candidate_tokens("all", predict_k)][idx]
        assert np.array_equal(d.tokens[0], want_tokens)
        masks = onnx_predictor.upscale_masks(d.low_res_logits[0], emb)
        assert np.array_equal(masks, pred.masks[idx])  # lazy upscaling is bit-identical


def test_batched_decode_equals_one_prompt_at_a_time(onnx_predictor, image_emb):
    _, emb = image_emb
    packed = [pack_prompt(p, lab, None, emb.original_hw) for p, lab, _ in _prompts(6) if len(p) == 1]
    coords = np.concatenate([c for c, _ in packed])
    labels = np.concatenate([lab for _, lab in packed])
    d = onnx_predictor.decode(coords, labels, None, emb, select="stability")
    for j, (c, lab) in enumerate(packed):
        one = onnx_predictor.decode(c, lab, None, emb, select="stability")
        np.testing.assert_allclose(d.low_res_logits[j], one.low_res_logits[0], atol=1e-4)
        assert d.tokens[j, 0] == one.tokens[0, 0]


def test_predict_selected_and_chunked_masks(onnx_predictor, image_emb):
    _, emb = image_emb
    for pts, labels, box in _prompts():
        pred = onnx_predictor.predict(pts, labels, box, num_multimask_outputs=3, embedding=emb)
        for kind in ("stability", "iou"):
            sel = onnx_predictor.predict_selected(pts, labels, box, select=kind, embedding=emb)
            b = pred.best(kind)
            assert np.array_equal(sel.masks[0], pred.masks[b])
            assert sel.scores(kind)[0] == pred.scores(kind)[b]
        # one mask per chunk: the chunk budget bounds memory, never the result
        chunks = list(onnx_predictor.iter_masks(pred.low_res_logits, emb, chunk_bytes=1))
        assert [c.shape[0] for c in chunks] == [1, 1, 1]
        assert np.array_equal(np.concatenate(chunks), pred.masks)


def test_stability_offset_is_recomputed_before_choosing(onnx_predictor, image_emb):
    _, emb = image_emb
    for pts, labels, box in _prompts():
        pred = onnx_predictor.predict(pts, labels, box, num_multimask_outputs=3, embedding=emb)
        st = stability_score(pred.low_res_logits, 0.0, 2.5)
        c, lab = pack_prompt(pts, labels, box, emb.original_hw)
        d = onnx_predictor.decode(c, lab, None, emb, select="stability", stability_offset=2.5)
        b = int(np.argmax(st))
        assert d.stability_scores[0, 0] == st[b]
        assert np.array_equal(d.low_res_logits[0, 0], pred.low_res_logits[b])


def test_bad_select_arguments(onnx_predictor, image_emb):
    _, emb = image_emb
    c, lab = pack_prompt([[10.0, 10.0]], [1], None, emb.original_hw)
    with pytest.raises(ValueError, match="select must be one of"):
        onnx_predictor.decode(c, lab, None, emb, select="best")
    with pytest.raises(ValueError, match="token 0"):
        onnx_predictor.decode(c, lab, None, emb, select="single", num_multimask_outputs=3)
    with pytest.raises(ValueError, match="1, 3 or 4"):
        onnx_predictor.decode(c, lab, None, emb, select="all", num_multimask_outputs=2)


# --- users of the decode path -------------------------------------------------------------------------


def _job(onnx_predictor, image_emb, batch: int = 4) -> ImageJob:
    img, emb = image_emb
    return ImageJob(ImageItem(0, 1, "1.jpeg", str(IMAGES / "1.jpeg")), img, emb, onnx_predictor, batch)


@pytest.mark.parametrize(("multimask", "quality"), [(None, "stability"), (True, "iou"), (False, "stability")])
def test_segment_decode_prompts_equal_predict(onnx_predictor, image_emb, multimask, quality):
    _, emb = image_emb
    prompts = [
        Prompt(
            "point", box=None if box is None else box.tolist(), points=p.tolist(), point_labels=lab.tolist()
        )
        for p, lab, box in _prompts(7)
    ]
    job = _job(onnx_predictor, image_emb, batch=1)  # batch 1: exactly predict's decoder call
    low, iou, stab = decode_prompts(job, prompts, 1, multimask, quality)
    rles = upscale_to_rles(low, job)
    for i, p in enumerate(prompts):
        multi = multimask if multimask is not None else p.box is None
        pred = onnx_predictor.predict(
            p.points, p.point_labels, p.box, num_multimask_outputs=3 if multi else 1, embedding=emb
        )
        b = pred.best(quality) if multi else 0
        assert np.array_equal(low[i], pred.low_res_logits[b])
        assert iou[i] == pred.iou_predictions[b] and stab[i] == pred.stability_scores[b]
        assert np.array_equal(mask_utils.decode(rles[i]).astype(bool), pred.masks[b])


def test_refine_iteration_equals_predict_with_mask_input(onnx_predictor, image_emb):
    _, emb = image_emb
    prompts = [Prompt("point", points=p.tolist(), point_labels=lab.tolist()) for p, lab, _ in _prompts(4)]
    job = _job(onnx_predictor, image_emb, batch=1)  # batch 1: exactly predict's decoder call
    low, _, _ = decode_prompts(job, prompts, 1, None, "stability")
    low2, iou2, stab2 = decode_prompts(job, prompts, 1, False, "stability", mask_input=low)
    for i, p in enumerate(prompts):
        pred = onnx_predictor.predict(
            p.points, p.point_labels, None, mask_input=low[i][None], num_multimask_outputs=1, embedding=emb
        )
        assert np.array_equal(low2[i], pred.low_res_logits[0])
        assert iou2[i] == pred.iou_predictions[0] and stab2[i] == pred.stability_scores[0]


def test_label_studio_interactive_mask_is_predict(onnx_predictor, image_emb):
    _, emb = image_emb
    for pts, labels, box in _prompts():
        k, kind = interactive.choose_mask("auto", len(pts), box is not None)
        mask, score, _ = interactive.predict_mask(onnx_predictor, emb, pts, labels, box, k, kind)
        pred = onnx_predictor.predict(pts, labels, box, num_multimask_outputs=k, embedding=emb)
        b = 0 if kind is None else pred.best(kind)
        assert np.array_equal(mask, pred.masks[b]) and score == float(pred.stability_scores[b])


def test_label_studio_batch_truncates_then_decodes(onnx_predictor, image_emb):
    _, emb = image_emb
    settings = Settings(
        amg_strategy="grid",
        amg_points_per_side=4,
        amg_stability_score_thresh=0.0,
        amg_pred_iou_thresh=0.0,
        amg_box_nms_thresh=1.0,
        batch_max_regions=3,
    )
    records = ls_batch.automatic_masks(onnx_predictor, settings, emb)
    want = AutomaticMaskGenerator(
        onnx_predictor, points_per_side=4, stability_score_thresh=0.0, pred_iou_thresh=0.0, box_nms_thresh=1.0
    ).generate(emb)
    assert len(want) > 3 and len(records) == 3
    for a, b in zip(records, want[:3], strict=True):
        assert a["segmentation"].dtype == bool and np.array_equal(a["segmentation"], b["segmentation"])
        assert a["stability_score"] == b["stability_score"]


# --- quality helpers ------------------------------------------------------------------------------------


def test_rle_boxes_use_the_generator_convention():
    rng = np.random.default_rng(0)
    masks = rng.random((6, 30, 40)) > 0.97
    masks[0] = False  # empty mask → [0, 0, 0, 0]
    masks[1] = False
    masks[1, 5, 7] = True  # one pixel → x0 == x1
    rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
    assert np.array_equal(rle_boxes(rles), batched_mask_to_box(masks))


def test_quality_keep_rules():
    iou = np.array([0.9, 0.5, 0.95])
    st = np.array([0.96, 0.99, 0.90])
    assert quality_keep(iou, st, "stability", 0.88, 0.95).tolist() == [True, True, False]  # iou ignored
    assert quality_keep(iou, st, "iou", 0.88, 0.95).tolist() == [True, False, False]
    assert quality_keep(iou, st, "iou", None, 0.0).all()  # 0 / None disable a test
