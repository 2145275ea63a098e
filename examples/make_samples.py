"""Regenerate the sample inputs shipped with the repository (deterministic; no network, no torch).

* ``examples/shapes.jpg``: the image of the README's ``edgesam predict`` command (640x480, drawn by the
  project's synthetic generator, :func:`edgesam_backend.training.synthetic.make_image`; redistributable
  with the project);
* ``pipelines/samples/``: tiny inputs for every example pipeline — ``images/`` (3 images), a COCO
  ``instances.json`` (boxes, one keypoint per object, category names = shape kinds, file names
  ``images/<file>``), a detector's results ``detections.json`` (COCO results with scores, wrapped with
  the ``images`` and ``categories`` that map its image ids to file names and its category ids to names)
  and a Label Studio JSON export ``labelstudio_export.json`` (rectangles + keypoints on
  ``/data/local-files/?d=images/<file>`` URLs).

Run from the repository root: ``python examples/make_samples.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from edgesam_backend.training.synthetic import SHAPES, SyntheticImage, make_image

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_IMAGE = ROOT / "examples" / "shapes.jpg"
SAMPLES = ROOT / "pipelines" / "samples"
SAMPLE_HW = (240, 320)  # (H, W) of the pipeline sample images


def _save_jpeg(path: Path, s: SyntheticImage) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(s.image).save(path, format="JPEG", quality=72)


def _inner_point(mask: np.ndarray) -> list[float]:
    """A pixel well inside ``mask`` ``(H, W)`` bool: the foreground pixel farthest from the background."""
    import cv2

    dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return [float(x), float(y)]


def _r(v: float) -> float:
    return round(float(v), 1)


def _region(rid: str, kind: str, value: dict[str, object], w: int, h: int) -> dict[str, object]:
    """A Label Studio annotation region of ``kind`` on a ``w`` x ``h`` image (``value`` in percent)."""
    return {
        "id": rid,
        "type": kind,
        "from_name": "tag",
        "to_name": "image",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": value,
    }


def write_example_image() -> dict[str, object]:
    """``examples/shapes.jpg`` and the point (x, y) inside its largest object (for the README)."""
    s = make_image(np.random.default_rng(15), 480, 640, max_objects=5)
    _save_jpeg(EXAMPLE_IMAGE, s)
    biggest = int(np.argmax(s.masks.reshape(len(s.masks), -1).sum(1)))
    return {"image": str(EXAMPLE_IMAGE.relative_to(ROOT)), "point": _inner_point(s.masks[biggest])}


def write_pipeline_samples() -> dict[str, object]:
    h, w = SAMPLE_HW
    rng = np.random.default_rng(7)
    cats = [{"id": i + 1, "name": name} for i, name in enumerate(SHAPES)]
    cat_id = {c["name"]: c["id"] for c in cats}
    images, anns, dets, tasks = [], [], [], []
    for i, name in enumerate(("beach.jpg", "garden.jpg", "street.jpg")):
        s = make_image(rng, h, w, max_objects=4)
        _save_jpeg(SAMPLES / "images" / name, s)
        image_id = 101 + i
        images.append({"id": image_id, "file_name": f"images/{name}", "width": w, "height": h})
        regions = []
        for j, (m, b, kind) in enumerate(zip(s.masks, s.boxes, s.shapes, strict=True)):
            x0, y0, x1, y1 = (_r(v) for v in b)
            bbox = [x0, y0, _r(x1 - x0), _r(y1 - y0)]
            px, py = _inner_point(m)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat_id[kind],
                    "iscrowd": 0,
                    "bbox": bbox,
                    "area": float(m.sum()),
                    "keypoints": [px, py, 2],
                    "num_keypoints": 1,
                }
            )
            dets.append(
                {
                    "image_id": image_id,
                    "category_id": cat_id[kind],
                    "bbox": bbox,
                    "score": round(0.95 - 0.2 * j, 2),
                }
            )
            pct = {"x": round(100 * x0 / w, 4), "y": round(100 * y0 / h, 4)}
            size = {"width": round(100 * (x1 - x0) / w, 4), "height": round(100 * (y1 - y0) / h, 4)}
            rect = {**pct, **size, "rotation": 0, "rectanglelabels": [kind]}
            point = {"x": round(100 * px / w, 4), "y": round(100 * py / h, 4), "width": 0.5}
            regions.append(_region(f"r{i}-{j}", "rectanglelabels", rect, w, h))
            regions.append(_region(f"k{i}-{j}", "keypointlabels", {**point, "keypointlabels": [kind]}, w, h))
        tasks.append(
            {
                "id": 11 + i,
                "data": {"image": f"/data/local-files/?d=images/{name}"},
                "annotations": [{"id": 21 + i, "result": regions}],
                "predictions": [],
            }
        )
    coco = {
        "info": {
            "description": "edgesam-backend pipeline samples (synthetic shapes, examples/make_samples.py)"
        },
        "images": images,
        "annotations": anns,
        "categories": cats,
    }
    # the detector's results with their own image list and category names (the explicit mapping)
    results = {"images": images, "annotations": dets, "categories": cats}
    files = {
        "instances.json": coco,
        "detections.json": results,
        "labelstudio_export.json": tasks,
    }
    for fname, doc in files.items():
        (SAMPLES / fname).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return {"images": len(images), "annotations": len(anns), "detections": len(dets)}


if __name__ == "__main__":
    print(json.dumps({"example": write_example_image(), "samples": write_pipeline_samples()}))
