"""Calibration data for the int8 encoder: image listing and an onnxruntime calibration reader that feeds
preprocessed ``(1, 3, 1024, 1024)`` float32 tensors, one image at a time."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
from numpy.typing import NDArray
from onnxruntime.quantization import CalibrationDataReader

from ..formats.imagefiles import IMAGE_EXTENSIONS, is_image_file
from ..runtime import transforms
from ..runtime.image import ImageError, load_image
from ..runtime.model_files import check_encoder


def list_images(directory: str | os.PathLike[str]) -> list[Path]:
    """Image files (by suffix) directly inside ``directory``, sorted by name; raises if none."""
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"calibration image directory not found: {d}")
    files = sorted(p for p in d.iterdir() if p.is_file() and is_image_file(p))
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {d}")
    return files


def input_name_of(model: str | os.PathLike[str] | onnx.ModelProto) -> str:
    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    names = [i.name for i in m.graph.input if i.name not in init]
    if len(names) != 1:
        raise ValueError(f"expected an encoder with one input, got {names}")
    return names[0]


def input_side_of(model: str | os.PathLike[str] | onnx.ModelProto) -> int:
    """The encoder's square input side ``S`` (input ``(1, 3, S, S)``; see ``model_files.check_encoder``)."""
    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    return check_encoder(m, "calibration model")[2]


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds ``transforms.preprocess(load_image(p), S)[0]`` for each path, one image per batch
    (``S``: ``image_size``, else the model's input side).

    Images are decoded lazily (one 12 MiB tensor alive at a time). ``input_name`` is read from
    ``model`` (a path or ModelProto) unless given.
    """

    def __init__(
        self,
        image_paths: Iterable[str | os.PathLike[str]],
        model: str | os.PathLike[str] | onnx.ModelProto | None = None,
        input_name: str | None = None,
        image_size: int | None = None,
    ) -> None:
        self.paths = [Path(p) for p in image_paths]
        if input_name is None:
            if model is None:
                raise ValueError("give the model or the input name")
            input_name = input_name_of(model)
        self.input_name = input_name
        if image_size is None and model is not None:
            image_size = input_side_of(model)
        #: The model's input side ``S`` (the encoder input's static side; 1024 when unknown).
        self.image_size = image_size or transforms.IMAGE_SIZE
        self._pos = 0

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        if self._pos >= len(self.paths):
            return None
        path = self.paths[self._pos]
        self._pos += 1
        x, _ = transforms.preprocess(load_image(path), self.image_size)
        return {self.input_name: x}

    def rewind(self) -> None:
        self._pos = 0

    def __len__(self) -> int:
        return len(self.paths)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.paths = self.paths[start_index:end_index]
        self._pos = 0


def check_images(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(paths, str | os.PathLike):
        raise ValueError("calibration_images must be a list of image paths (see list_images)")
    out = [Path(p) for p in paths]
    if not out:
        raise ValueError("calibration_images is empty: int8 calibration needs at least one image")
    for p in out:
        try:
            load_image(p)
        except ImageError as exc:
            raise ValueError(f"unreadable calibration image: {exc}") from None
    return out
