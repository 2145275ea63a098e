"""Data that flows through a pipeline: images from sources, prompts, masks, per-image results.

Everything here is JSON-serialisable (``to_dict`` / ``from_dict``) so that items travel to Ray actors and
results are stored as small JSON files. Masks are COCO RLE (pycocotools, ``counts`` as ``str``).

Frames: boxes are XYXY and points (x, y) in original-image pixels (EXIF-corrected); ``bbox`` in a mask
record is COCO's XYWH as ``pycocotools.mask.toBbox`` computes it from the RLE.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

#: Bumped whenever stored results change meaning or layout (part of every result key).
RESULT_FORMAT_VERSION = 1


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _PlainRecord:
    """``to_dict`` / ``from_dict`` of a dataclass whose fields are all JSON values."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        return cls(**d)


@dataclass
class Annotation(_PlainRecord):
    """One annotation carried by a source (COCO / Label Studio) or a detections file.

    ``box``: XYXY pixels or None; ``points`` / ``point_labels``: (x, y) pixels and 1/0 labels (keypoints
    are positive points); ``label``: class name; ``score``: detector confidence; ``ref``: the source's id
    for it (COCO annotation id, Label Studio region id).
    """

    box: list[float] | None = None
    points: list[list[float]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    label: str | None = None
    score: float | None = None
    ref: str | int | None = None


@dataclass
class ImageItem:
    """One image to process, as listed by a source step (in source order).

    Attributes:
        index: position in the source's listing (0-based); exports follow this order.
        id: the image id written to exports (COCO image id, Label Studio task id, else ``index + 1``).
        file_name: path relative to the source root (unique within a run); used for export file names.
        path: absolute path of the image file.
        width, height: known size (COCO / Label Studio), else None (read from the decoded image).
        annotations: boxes / keypoints from the source.
        extra: source- or prompt-specific data (Label Studio task data, detections, ...).
    """

    index: int
    id: int | str
    file_name: str
    path: str
    width: int | None = None
    height: int | None = None
    annotations: list[Annotation] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageItem:
        d = dict(d)
        d["annotations"] = [Annotation.from_dict(a) for a in d.get("annotations", [])]
        return cls(**d)


@dataclass
class Prompt:
    """One decoder prompt in original pixels: optional box (XYXY) and points with 1/0 labels.

    ``kind`` says where it came from (``annotation``, ``detection``, ``proposal``, ``point``); ``label`` and
    ``score`` (e.g. detector confidence) are carried into the mask record.
    """

    kind: str
    box: list[float] | None = None
    points: list[list[float]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    label: str | None = None
    score: float | None = None
    ref: str | int | None = None

    def signature(self) -> tuple[int, bool]:
        """Prompts with equal signatures decode together in one batch without padding."""
        return len(self.points), self.box is not None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        if self.box is not None:
            d["box"] = [round(float(v), 3) for v in self.box]
        if self.points:
            d["points"] = [[round(float(x), 3), round(float(y), 3)] for x, y in self.points]
            d["point_labels"] = [int(v) for v in self.point_labels]
        if self.score is not None:
            d["score"] = round(float(self.score), 6)
        if self.ref is not None:
            d["ref"] = self.ref
        return d


@dataclass
class MaskRecord(_PlainRecord):
    """One output mask (JSON-serialisable).

    ``segmentation``: COCO RLE ``{"size": [H, W], "counts": str}``; ``area`` in pixels; ``bbox`` XYWH
    (pycocotools' ``toBbox``); ``score``: the quality score used for ranking (stability by default);
    ``predicted_iou`` / ``stability_score``: the decoder's outputs for the chosen mask token; ``label``:
    class name or None; ``prompt``: what produced it (see :meth:`Prompt.to_dict`, or
    ``{"kind": "grid", "point": [x, y], "crop_box": [...]}``).
    """

    segmentation: dict[str, Any]
    area: int
    bbox: list[float]
    score: float
    predicted_iou: float
    stability_score: float
    label: str | None
    prompt: dict[str, Any]


@dataclass
class ImageResult:
    """Everything stored for one image: its size and masks (independent of where the file lives, so
    identical images with identical prompts share one result)."""

    key: str
    image_sha256: str
    width: int
    height: int
    masks: list[MaskRecord]
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RESULT_FORMAT_VERSION,
            "key": self.key,
            "image_sha256": self.image_sha256,
            "width": self.width,
            "height": self.height,
            "masks": [m.to_dict() for m in self.masks],
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageResult:
        return cls(
            key=d["key"],
            image_sha256=d["image_sha256"],
            width=int(d["width"]),
            height=int(d["height"]),
            masks=[MaskRecord.from_dict(m) for m in d["masks"]],
            stats=d.get("stats", {}),
        )


def result_key(image_sha256: str, config_hash: str, prompt_fingerprint: str) -> str:
    """The store key of one image's result: content hash + results-affecting config + prompt inputs."""
    return sha256_text(f"v{RESULT_FORMAT_VERSION}:{image_sha256}:{config_hash}:{prompt_fingerprint}")[:40]


__all__ = [
    "RESULT_FORMAT_VERSION",
    "Annotation",
    "ImageItem",
    "ImageResult",
    "MaskRecord",
    "Prompt",
    "canonical_json",
    "result_key",
    "sha256_text",
]
