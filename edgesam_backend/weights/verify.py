"""Checks a download must pass before it enters the cache: an EdgeSAM checkpoint (torch optional) or
an official EdgeSAM ONNX encoder/decoder (graph structure: expected inputs and outputs)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from ..runtime.model_files import OFFICIAL_DECODER_INPUTS
from .registry import WeightsError

#: Expected graph inputs/outputs of the official ONNX files.
OFFICIAL_ENCODER_IO = (("image",), ("image_embeddings",))
OFFICIAL_DECODER_IO = (OFFICIAL_DECODER_INPUTS, ("scores", "masks"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def verify_checkpoint(path: str | os.PathLike[str]) -> None:
    """Check that ``path`` is a loadable EdgeSAM checkpoint.

    With torch installed the file is loaded and checked key by key and shape by shape by
    ``edgesam_backend.model.checkpoint.load_state_dict_file`` (the engine's own loader). Without
    torch, only the container format is checked (a zip archive with a ``data.pkl`` entry, which is
    what ``torch.save`` writes).

    Raises:
        WeightsError: ``"<path> is not a valid EdgeSAM checkpoint: <reason>"``.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} is not a valid EdgeSAM checkpoint: file not found")
    try:
        import torch  # noqa: F401 - the full check needs the [torch] extra
    except ImportError:
        _check_torch_container(path)
        return
    from ..model.checkpoint import CheckpointError, load_state_dict_file

    try:
        load_state_dict_file(path)
    except CheckpointError as exc:
        raise WeightsError(f"{path} is not a valid EdgeSAM checkpoint: {exc}") from exc


def _check_torch_container(path: Path) -> None:
    """Without torch only the container format is checked: a zip archive with a ``data.pkl`` entry."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise WeightsError(
            f"{path} is not a valid EdgeSAM checkpoint: not a torch.save zip archive ({_first_line(exc)})"
        ) from exc
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        raise WeightsError(f"{path} is not a valid EdgeSAM checkpoint: zip archive has no data.pkl entry")


def verify_onnx(path: str | os.PathLike[str], role: str) -> None:
    """Check that ``path`` is an official EdgeSAM ONNX ``role`` (``"encoder"`` / ``"decoder"``) file: it
    parses, passes ``onnx.checker`` and has exactly the expected graph inputs and outputs.

    Raises:
        WeightsError: ``"<path> is not a valid EdgeSAM ONNX <role>: <reason>"``.
    """
    import onnx

    inputs, outputs = OFFICIAL_ENCODER_IO if role == "encoder" else OFFICIAL_DECODER_IO
    path = Path(path)
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf / onnx checker errors
        raise WeightsError(f"{path} is not a valid EdgeSAM ONNX {role}: {_first_line(exc)}") from exc
    init = {i.name for i in model.graph.initializer}
    got_in = tuple(sorted(i.name for i in model.graph.input if i.name not in init))
    got_out = tuple(sorted(o.name for o in model.graph.output))
    if got_in != tuple(sorted(inputs)) or got_out != tuple(sorted(outputs)):
        raise WeightsError(
            f"{path} is not a valid EdgeSAM ONNX {role}: inputs {list(got_in)}, outputs {list(got_out)} "
            f"(expected {sorted(inputs)} and {sorted(outputs)})"
        )
