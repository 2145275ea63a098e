"""Coverage-driven everything mode: nested levels, point placement on constructed masks (holes get
points, covered areas none), the prompt budget, proposals before points, batch independence, and the
predictor's in-call decode chunking."""

from __future__ import annotations

import numpy as np
import pytest

from edgesam_backend.runtime.amg import AutomaticMaskGenerator
from edgesam_backend.runtime.amg.coverage import CoverageMap, nested_levels, spread
from edgesam_backend.runtime.base import BasePredictor, ImageEmbedding
from edgesam_backend.runtime.masks import stability_score
from edgesam_backend.runtime.proposals import Proposals

from .helpers import DiscPredictor

H = W = 512  # image; model frame is 2x, low-res frame is H / 2


class ObjectPredictor(BasePredictor):
    """Decoder over constructed objects, each an ``(H, W)`` bool mask of the 512x512 image.

    A point (or a box's centre) on an object returns that object's mask as confident logits (+8 / -8:
    stability 1) on every token; a point on the background returns a faint 2-cell blob (+0.5 / -0.5:
    stability 0). Records every decoded prompt: ``points`` (original-frame (x, y) of the first point
    or box centre) and ``kinds`` ("point" / "box"), in decoding order."""

    def __init__(self, objects: list[np.ndarray]) -> None:
        super().__init__()
        # low-res frame: 512 px image → 1024 model frame → 256 cells, one cell = 2x2 pixels
        self.low = [m[::2, ::2] for m in objects]
        self.points: list[tuple[float, float]] = []
        self.kinds: list[str] = []

    def _encode_tensor(self, x):
        return np.zeros((1, 256, 64, 64), np.float32)

    def _decode(self, embeddings, coords, labels, mask_input):
        b = coords.shape[0]
        low = np.full((b, 4, 256, 256), -8.0, np.float32)
        for i in range(b):
            is_box = bool((labels[i] == 2).any())
            xy = coords[i, :2].mean(axis=0) if is_box else coords[i, 0]
            x, y = (float(v) / 2.0 for v in xy)  # model frame → original pixels
            self.points.append((x, y))
            self.kinds.append("box" if is_box else "point")
            r, c = min(int(y // 2), 255), min(int(x // 2), 255)
            hit = [m for m in self.low if m[r, c]]
            if hit:
                low[i, :] = np.where(hit[0], 8.0, -8.0)
            else:
                low[i, :] = -0.5
                low[i, :, max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2] = 0.5
        iou = np.full((b, 4), 0.9, np.float32)
        return low, iou, stability_score(low)


def ring_objects() -> tuple[np.ndarray, np.ndarray]:
    """One object: the left 3/4 of the image minus a square hole at its centre; and the hole."""
    obj = np.zeros((H, W), bool)
    obj[:, : 3 * W // 4] = True
    hole = np.zeros((H, W), bool)
    hole[160:352, 96:288] = True
    obj &= ~hole
    return obj, hole


def test_nested_levels_partition_the_grid():
    levels = nested_levels(32, 3)
    assert [len(v) for v in levels] == [64, 256 - 64, 1024 - 256]
    allidx = np.concatenate(levels)
    assert np.array_equal(np.sort(allidx), np.arange(1024))
    # level 0: every 4th row and column, near the cell centres (rows/cols 2, 6, ..., 30)
    rows, cols = np.divmod(levels[0], 32)
    assert set(rows.tolist()) == set(cols.tolist()) == set(range(2, 32, 4))
    assert nested_levels(5, 1)[0].tolist() == list(range(25))
    with pytest.raises(ValueError):
        nested_levels(8, 0)


def test_spread_keeps_order_and_budget():
    idx = np.arange(100, 200)
    got = spread(idx, 7)
    assert got.size == 7 and got[0] == 100 and got[-1] == 199 and np.all(np.diff(got) > 0)
    assert spread(idx, 500) is idx and spread(idx, 0).size == 0


def test_coverage_map_cells():
    cov = CoverageMap((H, W))
    m = np.zeros((256, 256), np.float32) - 1
    m[:128, :64] = 1  # original pixels x < 128, y < 256
    cov.add(m)
    pts = np.array([[10.0, 10.0], [127.0, 255.0], [129.0, 10.0], [10.0, 300.0]])
    assert cov.is_covered(pts).tolist() == [True, True, False, False]
    assert cov.fraction() == pytest.approx(128 * 64 / 256**2)


def test_holes_get_points_covered_areas_none():
    obj, hole = ring_objects()
    pred = ObjectPredictor([obj])
    gen = AutomaticMaskGenerator(pred, points_per_side=32, strategy="coverage", points_per_batch=16)
    records, st = gen.generate(np.zeros((H, W, 3), np.uint8), return_stats=True)
    pts = np.array(pred.points)
    assert len(pts) == st["prompts"] == sum(st["level_prompts"]) < 1024
    level0 = 64
    later = pts[level0:]
    on_obj = obj[later[:, 1].astype(int), later[:, 0].astype(int)]
    assert not on_obj.any(), "a point was placed on an area the accepted mask already covers"
    # every grid point in the hole and in the uncovered right quarter was prompted
    grid = (np.arange(32) + 0.5) / 32 * W
    gx, gy = np.meshgrid(grid, grid)
    free = ~obj[gy.astype(int), gx.astype(int)]
    want = {(round(x, 3), round(y, 3)) for x, y in zip(gx[free], gy[free], strict=True)}
    got = {(round(x, 3), round(y, 3)) for x, y in pts}
    assert want <= got
    in_hole = hole[later[:, 1].astype(int), later[:, 0].astype(int)]
    assert in_hole.sum() >= 30
    # the object's mask is found (from a level-0 point); the background blobs are not kept
    assert len(records) == 1 and np.array_equal(records[0]["segmentation"], obj)


def test_coverage_outputs_do_not_depend_on_points_per_batch():
    obj, hole = ring_objects()
    small, big = hole.copy(), np.zeros((H, W), bool)
    big[380:500, 400:500] = True
    out = []
    for batch in (5, 64):
        pred = ObjectPredictor([obj, small, big])
        recs, st = AutomaticMaskGenerator(pred, strategy="coverage", points_per_batch=batch).generate(
            np.zeros((H, W, 3), np.uint8), return_stats=True
        )
        out.append((pred.points, [r["bbox"] for r in recs], st["level_prompts"]))
    assert out[0] == out[1]
    assert len(out[0][1]) == 3


@pytest.mark.parametrize("strategy", ["grid", "coverage"])
def test_budget_is_honoured(strategy):
    pred = ObjectPredictor([])  # nothing is ever accepted: coverage would prompt the whole grid
    gen = AutomaticMaskGenerator(pred, strategy=strategy, max_prompts=37, points_per_batch=16)
    _, st = gen.generate(np.zeros((H, W, 3), np.uint8), return_stats=True)
    assert st["prompts"] == len(pred.points) == 37
    # evenly spread over the grid (or the first level), not the first rows
    ys = np.array(pred.points)[:, 1]
    assert ys.min() < H / 4 and ys.max() > 3 * H / 4


def test_coverage_without_acceptance_is_the_grid():
    """Nothing accepted: coverage prompts exactly the grid's points (never more)."""
    pred_c, pred_g = ObjectPredictor([]), ObjectPredictor([])
    AutomaticMaskGenerator(pred_c, points_per_side=16, strategy="coverage").generate(
        np.zeros((H, W, 3), np.uint8)
    )
    AutomaticMaskGenerator(pred_g, points_per_side=16).generate(np.zeros((H, W, 3), np.uint8))
    assert len(pred_c.points) == 256 and set(pred_c.points) == set(pred_g.points)


def test_proposals_first_then_points_where_nothing_was_found():
    obj = np.zeros((H, W), bool)
    obj[50:300, 40:400] = True
    pred = ObjectPredictor([obj])
    emb = pred.encode(np.zeros((H, W, 3), np.uint8))
    props = Proposals(np.array([[40, 50, 400, 300]], np.float32), np.array([0.9], np.float32))
    emb = ImageEmbedding(emb.embeddings, emb.original_hw, emb.input_hw, props)
    gen = AutomaticMaskGenerator(pred, strategy="coverage", points_per_side=16)
    records, st = gen.generate(emb, return_stats=True)
    assert pred.kinds[0] == "box" and set(pred.kinds[1:]) == {"point"}
    assert st["proposal_prompts"] == 1 and st["prompts"] == 1 + sum(st["level_prompts"])
    pts = np.array(pred.points[1:])
    assert not obj[pts[:, 1].astype(int), pts[:, 0].astype(int)].any()
    assert len(records) == 1 and records[0]["point_coords"] == []
    # proposal_top_k=0: proposals ignored, points only (level 0 then finds the object)
    pred.points.clear(), pred.kinds.clear()
    AutomaticMaskGenerator(pred, strategy="coverage", points_per_side=16, proposal_top_k=0).generate(emb)
    assert set(pred.kinds) == {"point"}


def test_coverage_rejects_bad_arguments():
    pred = DiscPredictor()
    with pytest.raises(ValueError, match="strategy"):
        AutomaticMaskGenerator(pred, strategy="dense")
    with pytest.raises(ValueError, match="max_prompts"):
        AutomaticMaskGenerator(pred, strategy="coverage", max_prompts=0)
    with pytest.raises(ValueError, match="square"):
        AutomaticMaskGenerator(
            pred, points_per_side=None, point_grids=[np.full((5, 2), 0.5)], strategy="coverage"
        )


def test_decode_is_chunked_inside_the_call():
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 1024, (20, 2, 2)).astype(np.float32)
    labels = np.tile(np.array([1.0, -1.0], np.float32), (20, 1))
    whole = DiscPredictor(iou_jitter=False)  # jitter depends on the row within a call
    emb = whole.encode(np.zeros((64, 64, 3), np.uint8))
    ref = whole.decode(coords, labels, None, emb)
    chunked = DiscPredictor(iou_jitter=False)
    chunked.max_decode_batch = 8
    got = chunked.decode(coords, labels, None, emb)
    assert chunked.batch_sizes == [8, 8, 4] and whole.batch_sizes == [20]
    assert np.array_equal(got.low_res_logits, ref.low_res_logits)
    assert np.array_equal(got.stability_scores, ref.stability_scores)
    assert np.array_equal(got.iou_predictions, ref.iou_predictions)


def test_label_studio_batch_uses_coverage_by_default():
    from edgesam_backend.labelstudio import batch as ls_batch
    from edgesam_backend.labelstudio.projects import ProjectState, parse_extra
    from edgesam_backend.labelstudio.settings import Settings

    obj, hole = ring_objects()
    settings = Settings(amg_points_per_side=16, amg_max_prompts=40)
    assert settings.amg_strategy == "coverage"
    pred = ObjectPredictor([obj, hole])
    emb = pred.encode(np.zeros((H, W, 3), np.uint8))
    records = ls_batch.automatic_masks(pred, settings, emb)
    assert len(pred.points) <= 40 and len(records) == 2
    want = ObjectPredictor([obj, hole])
    AutomaticMaskGenerator(want, points_per_side=16, strategy="coverage", max_prompts=40).generate(emb)
    assert pred.points == want.points
    # a project switches back to the full grid through extra_params
    state = ProjectState(extra=parse_extra({"strategy": "grid", "max_prompts": 1000}))
    pred.points.clear()
    ls_batch.automatic_masks(pred, settings, emb, state)
    assert len(pred.points) == 256
