"""Prompt steps: where the decoder's prompts come from.

* ``prompt.grid``: SAM's everything mode — a point grid over the image and over crop layers, or with
  ``strategy: coverage`` the grid's nested levels only where masks are still missing; the segment step
  runs the automatic mask generator (:mod:`edgesam_backend.runtime.amg`);
* ``prompt.proposals``: boxes from the region proposal head (an encoder exported from a checkpoint with
  ``rpn_head`` weights, e.g. from ``edgesam train-rpn``);
* ``prompt.source_boxes``: the source's own boxes (COCO, Label Studio rectangles) and keypoints;
* ``prompt.detections``: boxes (and keypoints) from a detector's COCO results json.
"""

from __future__ import annotations

import json
import logging
import posixpath
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ...runtime import transforms
from ...runtime.base import ImageEmbedding
from ...runtime.prompts import PromptError, check_inside
from ..base import ModelInfo, PipelineError, PromptStep, StepConfig
from ..records import Annotation, ImageItem, Prompt, canonical_json, sha256_text
from ..types import Fraction, InputFile, NonNegativeInt, PositiveInt

log = logging.getLogger("edgesam_backend.pipeline")

# --- prompt.grid -------------------------------------------------------------------------------------


class GridConfig(StepConfig):
    """SAM's everything mode (names and defaults of ``SamAutomaticMaskGenerator``), or the
    coverage-driven mode (``strategy: coverage``: the grid in nested levels, each level only where the
    accepted masks leave the image uncovered; region proposals first when the model has the head)."""

    strategy: Literal["grid", "coverage"] = Field(
        "grid",
        description="grid: every grid point (SAM); coverage: a coarse grid first, then denser points only "
        "where accepted masks leave the image uncovered (proposals first when the model has the head)",
    )
    max_prompts: PositiveInt | None = Field(
        None, description="budget of decoder prompts per image (null: none); levels are thinned evenly"
    )
    coverage_levels: PositiveInt = Field(
        3, description="coverage: nested levels of the grid (3: every 4th, every 2nd, every point)"
    )
    coverage_stability_thresh: Fraction = Field(
        0.95, description="coverage: a kept mask with at least this stability covers its area"
    )
    proposal_top_k: NonNegativeInt = Field(
        100, description="coverage: region proposals decoded first when the model has the head (0: never)"
    )
    points_per_side: PositiveInt = Field(32, description="grid points per image side (layer 0)")
    crop_n_layers: NonNegativeInt = Field(0, description="extra crop layers (layer i has (2**i)**2 crops)")
    crop_nms_thresh: Fraction = Field(0.7, description="box IoU threshold of the NMS across crops")
    crop_overlap_ratio: float = Field(512 / 1500, ge=0.0, lt=1.0, description="overlap of layer-1 crops")
    crop_n_points_downscale_factor: PositiveInt = Field(1, description="points per side shrink per layer")


class GridPrompt(PromptStep):
    Config = GridConfig
    mode = "grid"

    def grid_options(self) -> dict[str, Any]:
        c: GridConfig = self.config
        return {
            "strategy": c.strategy,
            "max_prompts": c.max_prompts,
            "coverage_levels": c.coverage_levels,
            "coverage_stability_thresh": c.coverage_stability_thresh,
            "proposal_top_k": c.proposal_top_k,
            "points_per_side": c.points_per_side,
            "crop_n_layers": c.crop_n_layers,
            "crop_nms_thresh": c.crop_nms_thresh,
            "crop_overlap_ratio": c.crop_overlap_ratio,
            "crop_n_points_downscale_factor": c.crop_n_points_downscale_factor,
        }


# --- prompt.proposals --------------------------------------------------------------------------------


class ProposalsConfig(StepConfig):
    """One box prompt per region proposal (class-agnostic)."""

    top_k: PositiveInt = Field(100, description="proposals per image (best first, after NMS)")
    nms_thresh: Fraction | None = Field(0.7, description="box IoU threshold of the proposal NMS (null: none)")
    min_score: Fraction = Field(0.0, description="drop proposals scoring below this (decoded from 0.05)")


class ProposalPrompt(PromptStep):
    Config = ProposalsConfig

    def check_model(self, info: ModelInfo) -> None:
        if not info.has_proposals:
            raise self.error(
                "the encoder has no region proposal head: set model.checkpoint to a checkpoint with "
                "rpn_head weights (`edgesam train-rpn` writes one) so that its ONNX export emits proposals"
            )

    def prompts(self, item: ImageItem, embedding: ImageEmbedding) -> list[Prompt]:
        c: ProposalsConfig = self.config
        if embedding.proposals is None:
            raise PipelineError("the encoder returned no proposals for this image")
        top = embedding.proposals.top(c.top_k, c.nms_thresh)
        return [
            Prompt(kind="proposal", box=[float(v) for v in b], score=float(s))
            for b, s in zip(top.boxes, top.scores, strict=True)
            if s >= c.min_score
        ]


# --- shared: annotations → prompts -------------------------------------------------------------------


def _valid_box(box: list[float] | None, hw: tuple[int, int], min_size: float) -> list[float] | None:
    if box is None:
        return None
    b = transforms.clip_boxes(np.asarray(box, dtype=np.float64), hw)
    if b[2] - b[0] < min_size or b[3] - b[1] < min_size:
        return None
    return b.tolist()


def annotations_to_prompts(
    anns: list[Annotation],
    hw: tuple[int, int],
    kind: str,
    *,
    keypoints: str = "separate",
    labels: list[str] | None = None,
    min_box_size: float = 1.0,
) -> list[Prompt]:
    """Boxes and keypoints → prompts, in annotation order.

    ``keypoints``: ``separate`` (a points-only prompt per keypoint annotation), ``inside_box`` (positive
    points join the first box of the same label that contains them; others stay separate), ``ignore``.
    """
    wanted = set(labels) if labels is not None else None
    prompts: list[Prompt] = []
    loose: list[Annotation] = []
    for a in anns:
        if wanted is not None and a.label not in wanted:
            continue
        has_points = bool(a.points) and keypoints != "ignore"
        box = _valid_box(a.box, hw, min_box_size)
        if a.box is not None and box is None and not has_points:
            continue  # degenerate or outside the image
        if box is None and a.box is None and not has_points:
            continue
        if box is None and has_points and keypoints == "inside_box":
            loose.append(a)
            continue
        pts = a.points if has_points else []
        pl = a.point_labels if has_points else []
        prompts.append(
            Prompt(kind, box=box, points=pts, point_labels=pl, label=a.label, score=a.score, ref=a.ref)
        )
    for a in loose:
        target = None
        for p in prompts:
            if p.box is None or p.label != a.label:
                continue
            x0, y0, x1, y1 = p.box
            if all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in a.points):
                target = p
                break
        if target is not None:
            target.points = [*target.points, *a.points]
            target.point_labels = [*target.point_labels, *a.point_labels]
        else:
            prompts.append(
                Prompt(
                    kind,
                    points=a.points,
                    point_labels=a.point_labels,
                    label=a.label,
                    score=a.score,
                    ref=a.ref,
                )
            )
    # keypoint coordinates outside the image are clipped (a prompt is still meaningful at the border)
    h, w = hw
    for p in prompts:
        if p.points:
            p.points = [
                [min(max(float(x), 0.0), float(w)), min(max(float(y), 0.0), float(h))] for x, y in p.points
            ]
    return prompts


# --- prompt.source_boxes -----------------------------------------------------------------------------


class SourceBoxesConfig(StepConfig):
    """Prompts from the source's annotations (``source.coco``, ``source.labelstudio``)."""

    labels: list[str] | None = Field(None, description="only annotations with these labels (default: all)")
    keypoints: Literal["separate", "inside_box", "ignore"] = Field(
        "separate", description="keypoints: own prompts, join the enclosing box of their label, or ignored"
    )
    min_box_size: float = Field(1.0, ge=0.0, description="drop boxes narrower/shorter than this (pixels)")


class SourceBoxesPrompt(PromptStep):
    Config = SourceBoxesConfig

    @classmethod
    def check_config(cls, config: Any, info: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
        source = info["kinds"][0] if info["kinds"] else ""
        if source in ("source.folder", "source.files"):
            return [(("kind",), f"{source} carries no annotations; use source.coco or source.labelstudio")]
        return []

    def fingerprint(self, item: ImageItem) -> str:
        return sha256_text(canonical_json([a.to_dict() for a in item.annotations]))

    def prompts(self, item: ImageItem, embedding: ImageEmbedding) -> list[Prompt]:
        c: SourceBoxesConfig = self.config
        return annotations_to_prompts(
            item.annotations,
            embedding.original_hw,
            "annotation",
            keypoints=c.keypoints,
            labels=c.labels,
            min_box_size=c.min_box_size,
        )


# --- prompt.detections -------------------------------------------------------------------------------


class DetectionsConfig(StepConfig):
    """Boxes (and keypoints) from a detector's COCO results: ``[{image_id, category_id, bbox: [x, y, w, h],
    score, keypoints?}, ...]``, or a COCO dict whose ``annotations`` carry scores (its ``images`` and
    ``categories`` then map ids to file names and names).

    Matching a detection to an image (never by position): a ``file_name`` in the detection; the image ids
    of ``images`` (a COCO file: its file names are matched to the source's by path, then base name), else
    of the detections file's own ``images``; a string ``image_id`` is a file name, base name or stem; an
    integer ``image_id`` matches the source's ids only for ``source.coco`` / ``source.labelstudio`` (a
    folder's images have no ids: give ``images``). Labels are category names from ``categories``, then
    ``images``, the detections file, the source (``source.coco``); a category without a name is an error.
    A box or keypoint more than 1 px outside the image it is applied to fails that image."""

    file: InputFile = Field(description="COCO results json (a list of detections)")
    images: InputFile | None = Field(
        None, description="COCO file mapping image ids to file names + categories"
    )
    categories: dict[int, str] | None = Field(
        None, description="category id -> name (overrides the names from the files)"
    )
    min_score: Fraction = Field(0.0, description="drop detections below this score")
    top_k: PositiveInt | None = Field(None, description="at most this many detections per image (best first)")
    labels: list[str] | None = Field(None, description="only these category names")
    keypoints: bool = Field(True, description="add a detection's visible keypoints as positive points")
    min_box_size: float = Field(1.0, ge=0.0, description="drop boxes narrower/shorter than this (pixels)")


#: Sources whose image ids are real ids (COCO image ids, Label Studio task ids), not positions.
SOURCES_WITH_IDS = ("source.coco", "source.labelstudio")


def _load(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot read {what} {path}: {exc}") from None


def _names(coco: Any) -> dict[Any, str]:
    cats = coco.get("categories", []) if isinstance(coco, dict) else []
    return {c["id"]: str(c.get("name", c["id"])) for c in cats if isinstance(c, dict) and "id" in c}


class DetectionsPrompt(PromptStep):
    Config = DetectionsConfig
    #: where the files live does not change results (their per-image content is in the fingerprint)
    hash_exclude = ("file", "images")

    def __init__(self, config: DetectionsConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.unmatched = 0

    def bind(self, items: list[ImageItem], categories: list[str], source_kind: str = "") -> None:
        c: DetectionsConfig = self.config
        doc = _load(c.file, "detections file")
        dets = doc
        if isinstance(doc, dict) and isinstance(doc.get("annotations"), list):
            dets = doc["annotations"]  # a COCO file with scores works too
        if not isinstance(dets, list):
            raise self.error(f"{c.file} is not a COCO results list")
        by_key: dict[Any, ImageItem] = {}
        for it in items:
            for k in (it.file_name, posixpath.basename(it.file_name), Path(it.file_name).stem):
                by_key.setdefault(k, it)

        def by_name(fn: str) -> ImageItem | None:
            return by_key.get(fn) or by_key.get(posixpath.basename(fn)) or by_key.get(Path(fn).stem)

        mapping_doc = _load(c.images, "COCO images file") if c.images is not None else doc
        has_mapping = isinstance(mapping_doc, dict) and isinstance(mapping_doc.get("images"), list)
        id_to_item: dict[Any, ImageItem] = {}
        if has_mapping:
            for im in mapping_doc["images"]:
                it = by_name(str(im.get("file_name", "")))
                if it is not None:
                    id_to_item[im["id"]] = it
        # "" (a direct call without the source's kind): trust the ids, as before
        ids_are_real = source_kind in SOURCES_WITH_IDS or not source_kind
        if not has_mapping and ids_are_real:
            id_to_item = {it.id: it for it in items}
        cat_names: dict[Any, str] = {}
        if source_kind == "source.coco" or not source_kind:
            cat_names.update({i + 1: n for i, n in enumerate(categories)})
        cat_names.update(_names(doc))
        if c.images is not None:
            cat_names.update(_names(mapping_doc))
        cat_names.update(c.categories or {})
        wanted = set(c.labels) if c.labels is not None else None
        per_item: dict[int, list[tuple[float, int, Annotation]]] = {}
        self.unmatched = 0
        for n, d in enumerate(dets):
            if not isinstance(d, dict) or "bbox" not in d:
                raise self.error(f"{c.file}: detection {n} has no bbox")
            iid = d.get("image_id")
            it = by_name(str(d["file_name"])) if d.get("file_name") else None
            if it is None and iid is not None:
                it = id_to_item.get(iid)
                if it is None and (isinstance(iid, str) or (isinstance(iid, int) and not has_mapping)):
                    it = by_name(str(iid))  # a file name, or a number naming the file's stem ("7.jpg")
                if it is None and isinstance(iid, int) and not has_mapping and not ids_are_real:
                    raise self.error(
                        f"{c.file}: detection {n} has image_id {iid}, but the images of "
                        f"{source_kind or 'the source'} have no ids to match it to: give `images:` (the COCO "
                        "file the detector ran on, mapping ids to file names; EDGESAM_DETECTIONS_IMAGES in "
                        "the examples), or write file names as image_id"
                    )
            if it is None:
                self.unmatched += 1
                continue
            score = float(d.get("score", 1.0))
            if score < c.min_score:
                continue
            cid = d.get("category_id")
            label = None
            if cid is not None:
                if cid not in cat_names:
                    raise self.error(
                        f"{c.file}: detection {n} has category_id {cid!r}, which has no name: give "
                        "`images:` (a COCO file with categories), or `categories: {"
                        f"{cid}: <name>}}`"
                    )
                label = cat_names[cid]
            if wanted is not None and label not in wanted:
                continue
            pts: list[list[float]] = []
            kp = d.get("keypoints") or []
            if c.keypoints:
                pts = [[float(kp[j]), float(kp[j + 1])] for j in range(0, len(kp) - 2, 3) if kp[j + 2] > 0]
            ann = Annotation(
                box=transforms.box_xywh_to_xyxy(d["bbox"]).tolist(),
                points=pts,
                point_labels=[1] * len(pts),
                label=label,
                score=score,
                ref=n,
            )
            per_item.setdefault(it.index, []).append((-score, n, ann))
        if dets and not per_item and self.unmatched == len(dets):
            raise self.error(
                f"none of the {len(dets)} detections in {c.file} matched an image of the source "
                "(check image ids, or give 'images': the COCO file the detector ran on)"
            )
        if self.unmatched:
            log.warning("%s: %d detections matched no image of the source", c.file, self.unmatched)
        for it in items:
            ranked = sorted(per_item.get(it.index, []), key=lambda t: (t[0], t[1]))
            if c.top_k is not None:
                ranked = ranked[: c.top_k]
            it.extra["detections"] = [a.to_dict() for _, _, a in ranked]

    def fingerprint(self, item: ImageItem) -> str:
        return sha256_text(canonical_json(item.extra.get("detections", [])))

    def prompts(self, item: ImageItem, embedding: ImageEmbedding) -> list[Prompt]:
        c: DetectionsConfig = self.config
        anns = [Annotation.from_dict(a) for a in item.extra.get("detections", [])]
        h, w = embedding.original_hw
        for a in anns:
            try:
                check_inside(
                    np.asarray(a.points, np.float64).reshape(-1, 2),
                    np.ones(len(a.points)),
                    None if a.box is None else np.asarray(a.box, np.float64),
                    (h, w),
                )
            except PromptError as exc:
                raise PipelineError(
                    f"detection {a.ref} ({a.label}) does not fit {item.file_name}: {exc}; is it matched to "
                    "the right image? (detections are matched by file name or the `images` mapping)"
                ) from None
        return annotations_to_prompts(
            anns, embedding.original_hw, "detection", keypoints="separate", min_box_size=c.min_box_size
        )


__all__ = [
    "DetectionsPrompt",
    "GridPrompt",
    "ProposalPrompt",
    "SourceBoxesPrompt",
    "annotations_to_prompts",
]
