"""Source steps: which images to segment, in a deterministic order, with any annotations they carry.

* ``source.folder``: a directory (recursive by default) or a glob below it, filtered by extension;
* ``source.files``: a list file (one path per line) or inline ``paths``;
* ``source.coco``: a COCO instances json (images + boxes / keypoints, category names);
* ``source.labelstudio``: a Label Studio JSON export (tasks; rectangles → boxes, keypoints → points).

Hidden files and directories (``.name``) and anything below the run's ``output_dir`` are never listed,
so a preview written next to the images is not picked up by the next run.

``source.folder`` ``path``, ``source.files`` ``list_file`` / ``paths`` / ``root`` and ``source.coco``
``annotations`` / ``images_dir`` may be fsspec URLs (``s3://bucket/images``): they are listed and read
through :mod:`..storage` (the driver lists; workers read each image themselves).
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ...formats.coco import CocoFormatError, parse_coco, read_coco
from ...formats.imagefiles import IMAGE_EXTENSIONS
from ...formats.labelstudio.coords import Rectangle, percent_to_pixels
from ...formats.labelstudio.urls import UnsafePathError, url_to_relpath
from .. import storage
from ..base import PipelineError, SourceStep, StepConfig
from ..records import Annotation, ImageItem
from ..types import InputDir, InputFile, PositiveInt


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort key that orders ``2.jpg`` before ``10.jpg`` (digit runs compare as numbers)."""
    return tuple((0, int(t), t) if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _under(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
        return True
    except (ValueError, OSError):
        return False


def image_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(width, height)`` after EXIF orientation, from the header only; None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, ValueError):
        return None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


# --- source.folder -----------------------------------------------------------------------------------


class FolderConfig(StepConfig):
    """Images below ``path`` (relative to the YAML file)."""

    path: InputDir = Field(description="directory with the images")
    recursive: bool = Field(True, description="descend into sub-directories")
    glob: str | None = Field(
        None,
        min_length=1,
        description="pattern relative to path (e.g. '2024-*/**/*.jpg'); overrides recursive",
    )
    extensions: list[str] = Field(
        list(IMAGE_EXTENSIONS), min_length=1, description="file extensions to keep (case-insensitive)"
    )
    exclude: list[str] = Field([], description="glob patterns (relative paths) to leave out")
    limit: PositiveInt | None = Field(None, description="only the first N images (after sorting)")


class FolderSource(SourceStep):
    Config = FolderConfig

    def items(self) -> list[ImageItem]:
        cfg: FolderConfig = self.config
        exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in cfg.extensions}
        root = cfg.path.rstrip("/") if storage.is_url(cfg.path) else str(Path(cfg.path))
        found = []
        for rel in self._candidates(cfg, root):
            if any(part.startswith(".") for part in rel.split("/")):
                continue
            if posixpath.splitext(rel)[1].lower() not in exts:
                continue
            if any(fnmatch.fnmatch(rel, pat) for pat in cfg.exclude):
                continue
            found.append(rel)
        found.sort(key=natural_key)
        if cfg.limit is not None:
            found = found[: cfg.limit]
        if not found:
            raise self.error(f"no images with extensions {sorted(exts)} found in {storage.display(root)}")
        return [
            ImageItem(index=i, id=i + 1, file_name=rel, path=storage.join(root, rel))
            for i, rel in enumerate(found)
        ]

    def _candidates(self, cfg: FolderConfig, root: str) -> list[str]:
        """Files below ``root`` (``/``-separated, relative), by ``glob`` / ``recursive``; on disk
        anything below the run's output directory is left out. URLs: ``glob`` is matched segment-wise
        (``**`` any depth), as ``Path.glob`` does."""
        if storage.is_url(root):
            try:
                rels = storage.find(root)
            except (OSError, storage.StorageError) as exc:
                raise self.error(f"cannot list {storage.display(root)}: {exc}") from None
            if cfg.glob:
                return [r for r in rels if storage.glob_match(r, cfg.glob)]
            return rels if cfg.recursive else [r for r in rels if "/" not in r]
        base = Path(root)
        if cfg.glob:
            paths = base.glob(cfg.glob)
        else:
            paths = base.rglob("*") if cfg.recursive else base.glob("*")
        out_dir = self.ctx.output_dir
        return [_rel(p, base) for p in paths if p.is_file() and not _under(p, out_dir)]


# --- source.files ------------------------------------------------------------------------------------


class FilesConfig(StepConfig):
    """An explicit list of images: ``list_file`` (a text file, one path per line, relative to that file;
    ``#`` starts a comment) or ``paths`` (relative to the YAML file)."""

    list_file: InputFile | None = Field(None, description="text file with one image path per line")
    paths: list[str] | None = Field(None, min_length=1, description="image paths (relative to the YAML file)")
    root: InputDir | None = Field(
        None, description="file names in exports are relative to this (default: the list's directory)"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> FilesConfig:
        if (self.list_file is None) == (self.paths is None):
            raise ValueError("give exactly one of 'list_file' (a text file) or 'paths' (inline)")
        return self


class FilesSource(SourceStep):
    Config = FilesConfig

    def items(self) -> list[ImageItem]:
        cfg: FilesConfig = self.config
        base: str | Path
        if cfg.list_file is not None:
            base = (
                posixpath.dirname(cfg.list_file)
                if storage.is_url(cfg.list_file)
                else Path(cfg.list_file).parent
            )
            try:
                text = storage.read_text(cfg.list_file)
            except (OSError, storage.StorageError) as exc:
                raise self.error(f"cannot read {storage.display(cfg.list_file)}: {exc}") from None
            entries = []
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    entries.append(line)
        else:
            base = self.ctx.base_dir
            entries = list(cfg.paths or [])
        root = cfg.root if cfg.root is not None else base
        items = []
        for i, e in enumerate(entries):
            if storage.is_url(e) or storage.is_url(base):
                path = e if storage.is_url(e) else storage.join(base, e)
                name = storage.relative_url(path, str(root))
            else:
                p = Path(e).expanduser()
                p = p if p.is_absolute() else Path(base) / p
                path, name = str(p), _rel(p, Path(root))
            items.append(ImageItem(index=i, id=i + 1, file_name=name, path=path))
        if not items:
            raise self.error(f"the list {storage.display(cfg.list_file or '')} names no images")
        return items


# --- source.coco -------------------------------------------------------------------------------------


class CocoConfig(StepConfig):
    """A COCO instances file: images in file order, boxes (``bbox`` XYWH) and keypoints as annotations."""

    annotations: InputFile = Field(description="COCO json (images, annotations, categories)")
    images_dir: InputDir | None = Field(
        None, description="where file_name is found (default: the json's dir)"
    )
    include_crowd: bool = Field(False, description="also use iscrowd=1 annotations as prompts")


def _load_json(path: str, what: str, step: SourceStep) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise step.error(f"cannot read {what} {path}: {exc}") from None


class CocoSource(SourceStep):
    Config = CocoConfig

    def __init__(self, config: CocoConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self._cats: dict[int, str] | None = None

    def categories(self) -> list[str]:
        if self._cats is None:
            self.items()
        assert self._cats is not None
        return [self._cats[k] for k in sorted(self._cats)]

    def category_ids(self) -> dict[str, int]:
        """The COCO category id of each name (kept by ``export.coco``)."""
        self.categories()
        assert self._cats is not None
        return {name: cid for cid, name in sorted(self._cats.items(), reverse=True)}

    def items(self) -> list[ImageItem]:
        cfg: CocoConfig = self.config
        try:
            if storage.is_url(cfg.annotations):
                data = parse_coco(
                    json.loads(storage.read_bytes(cfg.annotations)), storage.display(cfg.annotations)
                )
            else:
                data = read_coco(cfg.annotations)
        except CocoFormatError as exc:
            raise self.error(str(exc)) from None
        except (OSError, ValueError, storage.StorageError) as exc:
            raise self.error(f"cannot read {storage.display(cfg.annotations)}: {exc}") from None
        images_dir = cfg.images_dir or (
            posixpath.dirname(cfg.annotations)
            if storage.is_url(cfg.annotations)
            else str(Path(cfg.annotations).parent)
        )
        cats = data.categories
        self._cats = cats
        anns: dict[Any, list[Annotation]] = {}
        for a in data.annotations:
            if a.iscrowd and not cfg.include_crowd:
                continue
            box = a.box_xyxy()
            pts = a.visible_points()
            if box is None and not pts:
                continue
            cid = a.category_id
            label = cats.get(cid, str(cid)) if cid is not None else None
            ann = Annotation(
                box=None if box is None else list(box),
                points=pts,
                point_labels=[1] * len(pts),
                label=label,
                score=a.score,
                ref=a.id,
            )
            anns.setdefault(a.image_id, []).append(ann)
        items = [
            ImageItem(
                index=i,
                id=im.id,
                file_name=im.file_name,
                path=storage.join(images_dir, im.file_name),
                width=im.width,
                height=im.height,
                annotations=anns.get(im.id, []),
            )
            for i, im in enumerate(data.images)
        ]
        if not items:
            raise self.error(f"{storage.display(cfg.annotations)} lists no images")
        return items


# --- source.labelstudio ------------------------------------------------------------------------------


class LabelStudioConfig(StepConfig):
    """A Label Studio JSON export (Export → JSON): one item per task; the first non-cancelled annotation's
    (or prediction's) rectangles become boxes and keypoints become positive points. Image URLs map to
    files below ``images_dir`` by :func:`edgesam_backend.formats.labelstudio.urls.url_to_relpath`:
    ``/data/local-files/?d=REL`` → ``REL``, ``/data/upload/REL`` → ``REL`` (``REL`` relative, no ``..``),
    other URLs → their file name (also tried: the file name alone)."""

    export: InputFile = Field(description="Label Studio JSON export (a list of tasks)")
    images_dir: InputDir | None = Field(
        None, description="root of the image files (default: the export's dir)"
    )
    data_key: str | None = Field(
        None, min_length=1, description="task data key of the image (default: 'image')"
    )
    use: Literal["annotations", "predictions"] = Field(
        "annotations", description="where regions are read from"
    )


class LabelStudioSource(SourceStep):
    Config = LabelStudioConfig

    def __init__(self, config: LabelStudioConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self._labels: list[str] = []

    def categories(self) -> list[str]:
        return list(self._labels)

    def _image_url(self, data: dict[str, Any]) -> str | None:
        key = self.config.data_key
        if key is not None:
            v = data.get(key)
            return v if isinstance(v, str) else None
        if isinstance(data.get("image"), str):
            return data["image"]
        return next((v for v in data.values() if isinstance(v, str)), None)

    def items(self) -> list[ImageItem]:
        cfg: LabelStudioConfig = self.config
        tasks = _load_json(cfg.export, "Label Studio export", self)
        if isinstance(tasks, dict):
            tasks = [tasks]
        if not isinstance(tasks, list):
            raise self.error(f"{cfg.export} is not a Label Studio JSON export (a list of tasks)")
        root = Path(cfg.images_dir) if cfg.images_dir else Path(cfg.export).parent
        labels: dict[str, None] = {}
        items = []
        for i, task in enumerate(tasks):
            data = task.get("data", {}) if isinstance(task, dict) else {}
            url = self._image_url(data)
            if url is None:
                raise self.error(f"task {task.get('id', i)} has no image URL in data (set data_key)")
            try:
                rel = url_to_relpath(url)
            except UnsafePathError as exc:
                raise self.error(f"task {task.get('id', i)}: {exc}") from None
            path = root / rel
            if not path.is_file() and (root / posixpath.basename(rel)).is_file():
                rel = posixpath.basename(rel)
                path = root / rel
            anns, size = self._regions(task, path, labels)
            items.append(
                ImageItem(
                    index=i,
                    id=task.get("id", i + 1),
                    file_name=rel,
                    path=str(path),
                    width=size[0] if size else None,
                    height=size[1] if size else None,
                    annotations=anns,
                    extra={"ls_task": {"id": task.get("id"), "data": data}},
                )
            )
        if not items:
            raise self.error(f"{cfg.export} has no tasks")
        self._labels = list(labels)
        return items

    def _regions(
        self, task: dict[str, Any], path: Path, labels: dict[str, None]
    ) -> tuple[list[Annotation], tuple[int, int] | None]:
        groups = task.get(self.config.use) or []
        chosen = next((g for g in groups if isinstance(g, dict) and not g.get("was_cancelled")), None)
        results = chosen.get("result", []) if chosen else []
        size: tuple[int, int] | None = None
        anns: list[Annotation] = []
        for r in results:
            typ = str(r.get("type", "")).lower()
            value = r.get("value", {})
            if typ not in ("rectanglelabels", "rectangle", "keypointlabels", "keypoint"):
                for name in value.get(typ, []) if isinstance(value.get(typ), list) else []:
                    labels.setdefault(str(name), None)
                continue
            if r.get("original_width") and r.get("original_height"):
                size = (int(r["original_width"]), int(r["original_height"]))
            if size is None:
                size = image_size(path)
                if size is None:
                    raise self.error(f"task {task.get('id')}: cannot read the size of {path}")
            w, h = size
            names = value.get(typ if typ.endswith("labels") else f"{typ}labels") or []
            label = str(names[0]) if names else None
            for name in names:
                labels.setdefault(str(name), None)
            if typ.startswith("rectangle"):
                box = Rectangle.from_value(value).to_box(w, h).tolist()
                anns.append(Annotation(box=box, label=label, ref=r.get("id")))
            else:
                pt = percent_to_pixels([value["x"], value["y"]], w, h)
                anns.append(Annotation(points=[pt.tolist()], point_labels=[1], label=label, ref=r.get("id")))
        return anns, size


def check_unique_file_names(items: list[ImageItem]) -> None:
    seen: dict[str, int] = {}
    for it in items:
        if it.file_name in seen:
            raise PipelineError(
                f"two images share the file name {it.file_name!r} "
                f"(items {seen[it.file_name]} and {it.index}); "
                "exports would overwrite each other"
            )
        seen[it.file_name] = it.index


__all__ = [
    "CocoSource",
    "FilesSource",
    "FolderSource",
    "LabelStudioSource",
    "image_size",
    "natural_key",
]
