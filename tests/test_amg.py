"""Automatic mask generator ("everything mode"): geometry, NMS, mask utilities, the pipeline against a
plain-loop reference (on a synthetic decoder), and the ONNX predictor end to end (random weights, so
only mechanics and agreement with ``predict`` are checked, not semantics)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from edgesam_backend.runtime import transforms
from edgesam_backend.runtime.amg import AutomaticMaskGenerator
from edgesam_backend.runtime.boxes import box_iou, nms
from edgesam_backend.runtime.image import load_image
from edgesam_backend.runtime.masks import (
    batched_mask_to_box,
    decode_rles,
    encode_rles,
    encode_rles_transposed,
    mask_to_uncompressed_rle,
    remove_small_regions,
)

from .conftest import IMAGES
from .helpers import DiscPredictor

# pycocotools' decode trips numpy 2's __array__(copy=...) deprecation; harmless
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def synthetic_image(h: int = 480, w: int = 640) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)


def sam_bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min()), int(ys.max() - ys.min())]


# --- references written independently of the implementation -----------------------------------------


def reference_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """O(n²) greedy NMS on pycocotools' box IoU (stable order for equal scores)."""
    n = len(boxes)
    if n == 0:
        return []
    xywh = np.asarray(boxes, np.float64).copy()
    xywh[:, 2:] -= xywh[:, :2]
    ious = mask_utils.iou(xywh, xywh, [0] * n)
    keep: list[int] = []
    for i in sorted(range(n), key=lambda j: -scores[j]):
        if all(ious[i, j] <= thresh for j in keep):
            keep.append(i)
    return keep


def reference_crop_boxes(hw, n_layers, overlap_ratio):
    h, w = hw
    out = [((0, 0, w, h), 0)]
    for layer in range(1, n_layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * min(h, w) * 2 / n)
        cw = math.ceil((overlap * (n - 1) + w) / n)
        ch = math.ceil((overlap * (n - 1) + h) / n)
        for i in range(n):
            for j in range(n):
                x0, y0 = (cw - overlap) * i, (ch - overlap) * j
                out.append(((x0, y0, min(x0 + cw, w), min(y0 + ch, h)), layer))
    return out


def reference_generate(pred, image, pps, downscale, n_layers, stab_thresh, nms_thresh, crop_nms_thresh):
    """SAM's algorithm written plainly: one ``predict`` per point, per-mask loops."""
    h, w = image.shape[:2]
    results = []
    for (x0, y0, x1, y1), layer in reference_crop_boxes((h, w), n_layers, 512 / 1500):
        emb = pred.encode(image[y0:y1, x0:x1])
        ch, cw = y1 - y0, x1 - x0
        m = int(pps / downscale**layer)
        cands = []
        for gy in range(m):
            for gx in range(m):
                px, py = (gx + 0.5) / m * cw, (gy + 0.5) / m * ch
                p = pred.predict(
                    point_coords=[[px, py]], point_labels=[1], num_multimask_outputs=3, embedding=emb
                )
                for k in range(3):
                    if stab_thresh > 0 and p.stability_scores[k] < stab_thresh:
                        continue
                    mask = p.masks[k]
                    ys, xs = np.nonzero(mask)
                    box = [xs.min(), ys.min(), xs.max(), ys.max()] if len(xs) else [0, 0, 0, 0]
                    box = [box[0] + x0, box[1] + y0, box[2] + x0, box[3] + y0]
                    crop, img = (x0, y0, x1, y1), (0, 0, w, h)
                    if any(abs(box[j] - crop[j]) <= 20 and abs(box[j] - img[j]) > 20 for j in range(4)):
                        continue
                    full = np.zeros((h, w), bool)
                    full[y0:y1, x0:x1] = mask
                    cands.append(
                        {
                            "box": box,
                            "score": float(p.stability_scores[k]),
                            "point": [px + x0, py + y0],
                            "mask": full,
                            "crop": [x0, y0, x1, y1],
                        }
                    )
        keep = reference_nms(
            np.array([c["box"] for c in cands]).reshape(-1, 4), [c["score"] for c in cands], nms_thresh
        )
        results += [cands[i] for i in keep]
    if n_layers > 0 and results:
        areas = [(c["crop"][2] - c["crop"][0]) * (c["crop"][3] - c["crop"][1]) for c in results]
        keep = reference_nms(np.array([c["box"] for c in results]), [1 / a for a in areas], crop_nms_thresh)
        results = [results[i] for i in keep]
    return results


# --- geometry ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 4, 7, 32])
def test_point_grid_matches_sam_formula(n):
    g = transforms.build_point_grid(n)
    assert g.shape == (n * n, 2)
    side = (np.arange(n) + 0.5) / n  # offset 1/(2n), spacing 1/n
    np.testing.assert_allclose(g[:, 0], np.tile(side, n), atol=1e-12)  # x varies fastest
    np.testing.assert_allclose(g[:, 1], np.repeat(side, n), atol=1e-12)
    if n > 1:
        np.testing.assert_allclose(np.diff(np.unique(g[:, 0])), 1 / n, atol=1e-12)
    assert g.min() == pytest.approx(1 / (2 * n)) and g.max() == pytest.approx(1 - 1 / (2 * n))


def test_layer_point_grids():
    grids = transforms.build_all_layer_point_grids(32, 2, 2)
    assert [len(g) for g in grids] == [32**2, 16**2, 8**2]
    assert [len(g) for g in transforms.build_all_layer_point_grids(5, 2, 2)] == [
        25,
        4,
        1,
    ]  # int(5/2), int(5/4)


def test_crop_boxes_layers_0_1_2():
    boxes, layers = transforms.generate_crop_boxes((1200, 1800), 0, 512 / 1500)
    assert boxes == [[0, 0, 1800, 1200]] and layers == [0]
    boxes, layers = transforms.generate_crop_boxes((1200, 1800), 1, 512 / 1500)
    # overlap int(512/1500*1200) = 409; crop 1105 x 805; starts 0/696 and 0/396
    assert boxes[1:] == [[0, 0, 1105, 805], [0, 396, 1105, 1200], [696, 0, 1800, 805], [696, 396, 1800, 1200]]
    assert layers == [0, 1, 1, 1, 1]
    for hw in [(1200, 1800), (427, 640), (640, 427), (33, 1000)]:
        boxes, layers = transforms.generate_crop_boxes(hw, 2, 512 / 1500)
        ref = reference_crop_boxes(hw, 2, 512 / 1500)
        assert [tuple(b) for b in boxes] == [r[0] for r in ref]
        assert layers == [r[1] for r in ref] == [0] + [1] * 4 + [2] * 16
        h, w = hw
        for layer in (1, 2):
            cover = np.zeros((h, w), np.int32)
            for b, lay in zip(boxes, layers, strict=True):
                x0, y0, x1, y1 = b
                assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
                if lay == layer:
                    cover[y0:y1, x0:x1] += 1
            assert cover.min() >= 1  # each layer tiles the whole image


def test_is_box_near_crop_edge():
    crop = [100, 100, 500, 400]
    hw = (400, 1000)  # the crop's bottom edge is the image's bottom edge
    boxes = np.array(
        [
            [120, 200, 300, 300],  # 20 px from the crop's left edge -> near
            [121, 200, 300, 300],  # 21 px -> not near
            [200, 200, 300, 399],  # at the bottom, which is also the image edge -> not near
            [200, 200, 485, 300],  # 15 px from the crop's right edge -> near
            [200, 150, 300, 300],  # interior
        ]
    )
    assert transforms.is_box_near_crop_edge(boxes, crop, hw).tolist() == [True, False, False, True, False]
    assert not transforms.is_box_near_crop_edge([[0, 0, 999, 399]], [0, 0, 1000, 400], hw).any()


# --- boxes and NMS -----------------------------------------------------------------------------------


def random_boxes(rng, n, size=200):
    xy = rng.integers(0, size, (n, 2))
    wh = rng.integers(1, 80, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float64)


def test_box_iou_matches_pycocotools():
    rng = np.random.default_rng(1)
    a, b = random_boxes(rng, 30), random_boxes(rng, 20)
    ax, bx = a.copy(), b.copy()
    ax[:, 2:] -= ax[:, :2]
    bx[:, 2:] -= bx[:, :2]
    np.testing.assert_allclose(box_iou(a, b), mask_utils.iou(ax, bx, [0] * len(bx)), atol=1e-12)
    assert box_iou(np.zeros((1, 4)), np.zeros((1, 4)))[0, 0] == 0.0  # empty union


@pytest.mark.parametrize("thresh", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_matches_reference(thresh):
    rng = np.random.default_rng(int(thresh * 10))
    boxes = random_boxes(rng, 300)
    scores = np.round(rng.random(300), 1)  # many ties: equal scores keep input order
    keep = nms(boxes, scores, thresh)
    assert keep.tolist() == reference_nms(boxes, scores, thresh)
    if thresh == 1.0:
        assert len(keep) == 300
    assert nms(np.zeros((0, 4)), np.zeros(0), thresh).tolist() == []


# --- mask utilities ----------------------------------------------------------------------------------


def test_batched_mask_to_box_matches_loop():
    rng = np.random.default_rng(2)
    masks = np.zeros((2, 5, 37, 53), bool)
    for idx in np.ndindex(2, 5):
        y0, x0 = rng.integers(0, 37), rng.integers(0, 53)
        masks[idx][y0 : y0 + rng.integers(1, 20), x0 : x0 + rng.integers(1, 20)] = True
        masks[idx] |= rng.random((37, 53)) > 0.995
    masks[0, 0] = False  # empty
    masks[0, 1] = False
    masks[0, 1, 36, 52] = True  # single corner pixel
    masks[1, 4] = True  # full
    boxes = batched_mask_to_box(masks)
    assert boxes.shape == (2, 5, 4) and boxes.dtype == np.int64
    for idx in np.ndindex(2, 5):
        ys, xs = np.nonzero(masks[idx])
        expected = [xs.min(), ys.min(), xs.max(), ys.max()] if len(xs) else [0, 0, 0, 0]
        assert boxes[idx].tolist() == expected
    assert boxes[0, 1].tolist() == [52, 36, 52, 36] and boxes[1, 4].tolist() == [0, 0, 52, 36]
    assert batched_mask_to_box(np.zeros((0, 10, 10), bool)).shape == (0, 4)


def test_remove_small_regions_synthetic():
    mask = np.zeros((60, 80), bool)
    mask[10:40, 10:40] = True  # 900 px object
    mask[20:22, 20:23] = False  # 6 px hole
    mask[50:53, 60:62] = True  # 6 px island
    filled, changed = remove_small_regions(mask, 10, "holes")
    assert changed and filled[20:22, 20:23].all() and filled.sum() == mask.sum() + 6
    cleaned, changed = remove_small_regions(filled, 10, "islands")
    expected = np.zeros_like(mask)
    expected[10:40, 10:40] = True
    assert changed and np.array_equal(cleaned, expected)
    same, changed = remove_small_regions(expected, 10, "islands")
    assert not changed and np.array_equal(same, expected)
    same, changed = remove_small_regions(expected, 10, "holes")
    assert not changed and np.array_equal(same, expected)
    # every island small: the largest survives
    dots = np.zeros((20, 20), bool)
    dots[1:3, 1:3] = True
    dots[10:13, 10:13] = True
    kept, changed = remove_small_regions(dots, 100, "islands")
    assert changed and kept.sum() == 9 and kept[10:13, 10:13].all()
    with pytest.raises(ValueError, match="mode"):
        remove_small_regions(dots, 10, "both")


def test_rle_round_trips():
    rng = np.random.default_rng(3)
    masks = rng.random((4, 23, 31)) > 0.6
    masks[0] = False
    masks[1] = True
    for m in masks:
        rle = mask_to_uncompressed_rle(m)
        assert sum(rle["counts"]) == m.size and rle["size"] == [23, 31]
        assert (rle["counts"][0] == 0) == bool(m[0, 0])
        assert np.array_equal(mask_utils.decode(mask_utils.frPyObjects(rle, 23, 31)).astype(bool), m)
    rles = encode_rles(masks, (40, 50), (7, 9))  # pasted at x=7, y=9
    full = decode_rles(rles)
    assert full.shape == (4, 40, 50) and np.array_equal(full[:, 9:32, 7:38], masks)
    assert full.sum() == masks.sum()
    np.testing.assert_array_equal(mask_utils.area(rles), masks.sum(axis=(1, 2)))
    # the transposed (pycocotools-layout) entry point gives the same RLEs
    assert encode_rles_transposed(np.ascontiguousarray(masks.transpose(0, 2, 1))) == encode_rles(masks)
    assert encode_rles_transposed(np.zeros((0, 3, 2), bool)) == []


# --- the generator on the synthetic decoder ----------------------------------------------------------


@pytest.mark.parametrize(("pps", "ppb"), [(4, 5), (4, 16), (5, 64), (3, 1)])
def test_decoder_calls_per_crop(pps, ppb):
    pred = DiscPredictor()
    gen = AutomaticMaskGenerator(pred, points_per_side=pps, points_per_batch=ppb, stability_score_thresh=0.0)
    _, stats = gen.generate(synthetic_image(), return_stats=True)
    n = pps * pps
    assert stats["decoder_calls"] == math.ceil(n / ppb) == len(pred.batch_sizes)
    assert stats["prompts"] == n == sum(pred.batch_sizes) and max(pred.batch_sizes) <= ppb
    assert stats["candidates"] == 3 * n and stats["encoder_calls"] == 1
    assert gen.last_stats == stats and stats["quality_score"] == "stability"


def test_crop_layers_against_reference():
    image = synthetic_image(480, 640)
    pred = DiscPredictor()
    gen = AutomaticMaskGenerator(
        pred,
        points_per_side=6,
        points_per_batch=10,
        stability_score_thresh=0.3,
        crop_n_layers=1,
    )
    records, stats = gen.generate(image, return_stats=True)
    crops, _ = transforms.generate_crop_boxes((480, 640), 1, 512 / 1500)
    assert pred.encoded_hw == [(y1 - y0, x1 - x0) for x0, y0, x1, y1 in crops]
    assert stats["crops"] == 5 and stats["prompts"] == 36 + 4 * 36
    assert stats["decoder_calls"] == math.ceil(36 / 10) + 4 * math.ceil(36 / 10)
    assert stats["after_edge_filter"] < stats["after_quality_filter"]  # some masks touched crop edges
    assert stats["after_crop_nms"] < stats["after_box_nms"]  # duplicates across crops removed
    ref = reference_generate(DiscPredictor(), image, 6, 1, 1, 0.3, 0.7, 0.7)
    assert len(records) == len(ref) > 0
    for rec, r in zip(records, ref, strict=True):
        x0, y0, x1, y1 = r["crop"]
        assert rec["crop_box"] == [x0, y0, x1 - x0, y1 - y0]
        assert rec["bbox"] == [r["box"][0], r["box"][1], r["box"][2] - r["box"][0], r["box"][3] - r["box"][1]]
        np.testing.assert_allclose(rec["point_coords"], [r["point"]], atol=1e-6)
        assert rec["stability_score"] == pytest.approx(r["score"])
        assert np.array_equal(rec["segmentation"], r["mask"])


def test_edge_filter_in_pipeline():
    gen = AutomaticMaskGenerator(
        DiscPredictor(),
        points_per_side=6,
        points_per_batch=64,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        crop_nms_thresh=1.0,
        crop_n_layers=1,
    )
    records = gen.generate(synthetic_image(300, 400))
    assert any(r["crop_box"] != [0, 0, 400, 300] for r in records)
    for r in records:
        x, y, w, h = r["crop_box"]
        box = np.array(
            [[r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]]]
        )
        assert not transforms.is_box_near_crop_edge(box, [x, y, x + w, y + h], (300, 400))[0]
        px, py = r["point_coords"][0]
        assert x <= px <= x + w and y <= py <= y + h


def test_thresholds_filter_monotonically():
    image = synthetic_image()
    emb = DiscPredictor().encode(image)
    records_all = AutomaticMaskGenerator(
        DiscPredictor(), points_per_side=4, stability_score_thresh=0.0
    ).generate(emb)
    counts = []
    for t in [0.0, 0.2, 0.3, 0.55, 0.7, 0.8]:
        gen = AutomaticMaskGenerator(
            DiscPredictor(), points_per_side=4, stability_score_thresh=t, box_nms_thresh=1.0
        )
        records, stats = gen.generate(emb, return_stats=True)
        assert all(r["stability_score"] >= t for r in records)
        counts.append((stats["after_quality_filter"], len(records)))
    assert counts == sorted(counts, reverse=True) and counts[0][0] == 48 and counts[-1][0] == 0
    assert len({c[0] for c in counts}) >= 4  # the thresholds bite at different tokens
    # stability mode ignores pred_iou_thresh; iou mode filters on it (strictly greater) and ranks by it
    for t in (0.0, 1.0):
        gen = AutomaticMaskGenerator(
            DiscPredictor(), points_per_side=4, stability_score_thresh=0.0, pred_iou_thresh=t
        )
        assert len(gen.generate(emb)) == len(records_all)
    iou_counts = []
    for t in [0.0, 0.05, 0.38, 0.39, 0.69, 0.89, 0.95]:
        gen = AutomaticMaskGenerator(
            DiscPredictor(),
            points_per_side=4,
            stability_score_thresh=0.0,
            pred_iou_thresh=t,
            quality_score="iou",
            box_nms_thresh=1.0,
        )
        records, stats = gen.generate(emb, return_stats=True)
        assert stats["quality_score"] == "iou" and all(r["predicted_iou"] > t for r in records)
        iou_counts.append(len(records))
    assert iou_counts == sorted(iou_counts, reverse=True) and iou_counts[0] == 48 and iou_counts[-1] == 0
    assert len(set(iou_counts)) >= 5


def test_multimask_tokens():
    emb = DiscPredictor().encode(synthetic_image())
    sizes = {}
    for k in (1, 3, 4):
        gen = AutomaticMaskGenerator(
            DiscPredictor(), points_per_side=2, stability_score_thresh=0.0, box_nms_thresh=1.0, multimask=k
        )
        records, stats = gen.generate(emb, return_stats=True)
        assert stats["candidates"] == 4 * k == len(records)
        sizes[k] = sorted({r["area"] for r in records})
    # token 0 is the smallest disc; 3 = tokens 1-3; 4 = all
    assert sizes[4] == sorted(set(sizes[1]) | set(sizes[3])) and max(sizes[1]) < min(sizes[3])


def test_small_region_postprocessing():
    emb = DiscPredictor(islands=True).encode(synthetic_image())
    common = {
        "points_per_side": 3,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 1.0,
        "crop_nms_thresh": 1.0,
        "multimask": 4,
    }
    raw = AutomaticMaskGenerator(DiscPredictor(islands=True), **common).generate(emb)
    fixed, stats = AutomaticMaskGenerator(
        DiscPredictor(islands=True), min_mask_region_area=100, **common
    ).generate(emb, return_stats=True)
    n_islands = [
        cv2.connectedComponents(r["segmentation"].astype(np.uint8), connectivity=8)[0] - 1 for r in raw
    ]
    assert max(n_islands) >= 2  # the synthetic masks do have islands
    assert len(fixed) == len(raw) == stats["after_small_regions"]
    for r in fixed:
        seg = r["segmentation"]
        n_fg, _, fg_stats, _ = cv2.connectedComponentsWithStats(seg.astype(np.uint8), connectivity=8)
        assert n_fg - 1 == 1 or fg_stats[1:, cv2.CC_STAT_AREA].min() >= 100
        _, _, bg_stats, _ = cv2.connectedComponentsWithStats((~seg).astype(np.uint8), connectivity=8)
        assert (bg_stats[1:, cv2.CC_STAT_AREA] >= 100).all()  # no small holes left
        assert r["area"] == int(seg.sum()) and r["bbox"] == sam_bbox(seg)


def test_generate_from_boxes_synthetic():
    pred = DiscPredictor()
    emb = pred.encode(synthetic_image())
    rng = np.random.default_rng(4)
    boxes = random_boxes(rng, 11, size=500) + np.array([50, 50, 50, 50])
    gen = AutomaticMaskGenerator(pred, points_per_batch=4, stability_score_thresh=0.0, box_nms_thresh=1.0)
    records, stats = gen.generate_from_boxes(emb, boxes, scores=np.linspace(1, 0, 11), return_stats=True)
    assert stats["decoder_calls"] == 3 and stats["prompts"] == 11 and stats["encoder_calls"] == 0
    assert stats["candidates"] == 11 and stats["mode"] == "boxes"
    assert sorted(r["prompt_index"] for r in records) == list(range(11))
    for r in records:
        j = r["prompt_index"]
        assert r["box_prompt"] == boxes[j].tolist() and r["point_coords"] == []
        assert r["proposal_score"] == pytest.approx(1 - j / 10)
    nmsed = AutomaticMaskGenerator(pred, points_per_batch=4, stability_score_thresh=0.0).generate_from_boxes(
        emb, boxes
    )
    assert len(nmsed) <= 11
    assert gen.generate_from_boxes(emb, np.zeros((0, 4))) == [] and gen.last_stats["decoder_calls"] == 0
    with pytest.raises(ValueError, match="x0 <= x1"):
        gen.generate_from_boxes(emb, [[10, 10, 5, 20]])
    with pytest.raises(ValueError, match=r"\(K, 4\)"):
        gen.generate_from_boxes(emb, [[1, 2, 3]])
    with pytest.raises(ValueError, match="scores"):
        gen.generate_from_boxes(emb, boxes, scores=[1.0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"points_per_side": 0}, "points_per_side"),
        ({"points_per_side": 2.5}, "points_per_side"),
        ({"points_per_side": None}, "exactly one"),
        ({"point_grids": [np.full((4, 2), 0.5)]}, "exactly one"),
        ({"points_per_side": None, "point_grids": [np.full((4, 2), 1.5)]}, r"\[0, 1\]"),
        ({"points_per_side": None, "point_grids": [np.full((4, 3), 0.5)]}, r"\(N, 2\)"),
        (
            {"points_per_side": None, "point_grids": [np.full((4, 2), 0.5)], "crop_n_layers": 1},
            "one grid per",
        ),
        ({"points_per_batch": 0}, "points_per_batch"),
        ({"pred_iou_thresh": 1.5}, "pred_iou_thresh"),
        ({"stability_score_thresh": -0.1}, "stability_score_thresh"),
        ({"stability_score_thresh": float("nan")}, "stability_score_thresh"),
        ({"stability_score_offset": -1.0}, "stability_score_offset"),
        ({"box_nms_thresh": 2.0}, "box_nms_thresh"),
        ({"crop_nms_thresh": -0.5}, "crop_nms_thresh"),
        ({"crop_n_layers": -1}, "crop_n_layers"),
        ({"crop_overlap_ratio": 1.0}, "crop_overlap_ratio"),
        ({"crop_n_points_downscale_factor": 0}, "crop_n_points_downscale_factor"),
        (
            {"points_per_side": 2, "crop_n_layers": 2, "crop_n_points_downscale_factor": 2},
            "no points on crop layer",
        ),
        ({"min_mask_region_area": -5}, "min_mask_region_area"),
        ({"output_mode": "png"}, "output_mode"),
        ({"quality_score": "area"}, "quality_score"),
        ({"multimask": 2}, "multimask"),
        ({"points_per_batch": True}, "points_per_batch"),
    ],
)
def test_parameter_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AutomaticMaskGenerator(DiscPredictor(), **kwargs)


def test_input_validation():
    with pytest.raises(TypeError, match="predictor"):
        AutomaticMaskGenerator(object())
    gen = AutomaticMaskGenerator(DiscPredictor(), points_per_side=2, crop_n_layers=1)
    with pytest.raises(ValueError, match="image pixels"):
        gen.generate(DiscPredictor().encode(synthetic_image()))
    with pytest.raises(ValueError, match="RGB image"):
        gen.generate(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        gen.generate(np.zeros((10, 10, 3), np.float32))


# --- ONNX predictor end to end (random reference weights) --------------------------------------------


@pytest.fixture(scope="module")
def photo():
    return load_image(IMAGES / "1.jpeg")


@pytest.fixture(scope="module")
def photo_emb(onnx_predictor, photo):
    return onnx_predictor.encode(photo)


@pytest.fixture(scope="module")
def binary_records(onnx_predictor, photo_emb):
    gen = AutomaticMaskGenerator(
        onnx_predictor, points_per_side=3, points_per_batch=4, stability_score_thresh=0.0, box_nms_thresh=1.0
    )
    records, stats = gen.generate(photo_emb, return_stats=True)
    return records, stats


def test_onnx_grid_records_agree_with_predict(onnx_predictor, photo, photo_emb, binary_records):
    records, stats = binary_records
    h, w = photo.shape[:2]
    assert stats["decoder_calls"] == math.ceil(9 / 4) and stats["prompts"] == 9 and len(records) == 27
    grid = transforms.build_point_grid(3) * [w, h]
    preds = {}
    for rec in records:
        seg = rec["segmentation"]
        assert seg.shape == (h, w) and seg.dtype == bool
        assert rec["area"] == int(seg.sum()) and rec["bbox"] == sam_bbox(seg)
        assert rec["crop_box"] == [0, 0, w, h]
        pt = tuple(rec["point_coords"][0])
        assert np.isclose(grid, pt).all(axis=1).any()
        if pt not in preds:
            preds[pt] = onnx_predictor.predict(
                point_coords=[pt], point_labels=[1], num_multimask_outputs=3, embedding=photo_emb
            )
        p = preds[pt]
        k = int(
            np.argmin(
                np.abs(p.stability_scores - rec["stability_score"])
                + np.abs(p.iou_predictions - rec["predicted_iou"])
            )
        )
        assert rec["stability_score"] == pytest.approx(float(p.stability_scores[k]), abs=1e-6)
        # batched vs single-prompt decoding: identical up to float noise at the 0 level set
        assert np.count_nonzero(p.masks[k] != seg) <= 1e-3 * seg.size


def test_onnx_rle_outputs_decode_to_binary(onnx_predictor, photo_emb, binary_records):
    binary = [r["segmentation"] for r in binary_records[0]]
    common = {
        "points_per_side": 3,
        "points_per_batch": 4,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 1.0,
    }
    coco = AutomaticMaskGenerator(onnx_predictor, output_mode="coco_rle", **common).generate(photo_emb)
    unc = AutomaticMaskGenerator(onnx_predictor, output_mode="uncompressed_rle", **common).generate(photo_emb)
    assert len(coco) == len(unc) == len(binary)
    h, w = binary[0].shape
    for c, u, b in zip(coco, unc, binary, strict=True):
        assert isinstance(c["segmentation"]["counts"], str) and c["segmentation"]["size"] == [h, w]
        assert np.array_equal(mask_utils.decode(c["segmentation"]).astype(bool), b)
        assert np.array_equal(
            mask_utils.decode(mask_utils.frPyObjects(u["segmentation"], h, w)).astype(bool), b
        )
        assert c["area"] == u["area"] == int(b.sum()) and c["bbox"] == u["bbox"] == sam_bbox(b)


def test_onnx_thresholds_monotonic(onnx_predictor, photo_emb):
    counts = []
    for t in [0.0, 0.3, 0.5, 0.7]:
        gen = AutomaticMaskGenerator(
            onnx_predictor, points_per_side=2, stability_score_thresh=t, box_nms_thresh=1.0
        )
        records, stats = gen.generate(photo_emb, return_stats=True)
        assert all(r["stability_score"] >= t for r in records)
        counts.append(stats["after_quality_filter"])
    assert counts == sorted(counts, reverse=True) and counts[0] == 12 and counts[-1] < 12


def test_onnx_generate_from_boxes(onnx_predictor, photo_emb):
    boxes = np.array(
        [
            [20, 30, 200, 220],
            [300, 40, 600, 400],
            [0, 0, 639, 427],
            [100, 100, 140, 150],
            [250, 200, 400, 300],
            [50, 300, 300, 420],
            [400, 10, 630, 200],
        ],
        np.float64,
    )
    gen = AutomaticMaskGenerator(
        onnx_predictor, points_per_batch=3, stability_score_thresh=0.0, box_nms_thresh=1.0
    )
    records, stats = gen.generate_from_boxes(photo_emb, boxes, return_stats=True)
    assert stats["decoder_calls"] == 3 and stats["prompts"] == 7 and len(records) == 7
    for rec in records:
        p = onnx_predictor.predict(box=rec["box_prompt"], num_multimask_outputs=1, embedding=photo_emb)
        seg = rec["segmentation"]
        assert rec["stability_score"] == pytest.approx(float(p.stability_scores[0]), abs=1e-6)
        assert np.count_nonzero(p.masks[0] != seg) <= 1e-3 * seg.size
        assert rec["area"] == int(seg.sum()) and rec["bbox"] == sam_bbox(seg)
    default = AutomaticMaskGenerator(onnx_predictor, points_per_batch=3)
    few, stats = default.generate_from_boxes(photo_emb, boxes, return_stats=True)
    assert len(few) <= 7 and stats["decoder_calls"] == 3
