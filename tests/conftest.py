"""Shared fixtures: the random-weight reference data in ../shared and a session-wide ONNX export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REF = SHARED / "reference" / "edgesam"
IMAGES = SHARED / "images"
CHECKPOINT = REF / "weights_perturbed.pth"

requires_shared = pytest.mark.skipif(
    not CHECKPOINT.is_file(), reason=f"needs the shared reference data at {REF}"
)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's tests (restored after): far faster than two on a
    shared, loaded 2-core machine. Use as ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ls_venv() -> Path:
    """The Python environment with the pinned Label Studio (installed once from PyPI; skip when that
    cannot be done) used by the real-Label-Studio tests."""
    from .e2e_labelstudio import ls_server

    try:
        return ls_server.ensure_venv()
    except ls_server.Unavailable as exc:
        pytest.skip(f"needs Label Studio {ls_server.LS_VERSION} from PyPI: {exc}")


@pytest.fixture(scope="session")
def ref_vectors() -> dict[str, np.ndarray]:
    if not CHECKPOINT.is_file():
        pytest.skip(f"needs the shared reference data at {REF}")
    with np.load(REF / "vectors_perturbed.npz") as z:
        return dict(z)


@pytest.fixture(scope="session")
def ref_inputs() -> dict[str, np.ndarray]:
    if not CHECKPOINT.is_file():
        pytest.skip(f"needs the shared reference data at {REF}")
    with np.load(REF / "image_inputs.npz") as z:
        return dict(z)


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """encoder.onnx + decoder.onnx exported (and self-validated) from the reference checkpoint."""
    if not CHECKPOINT.is_file():
        pytest.skip(f"needs the shared reference data at {REF}")
    from edgesam_backend.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("onnx")
    export_onnx(CHECKPOINT, out)
    return out


@pytest.fixture(scope="session")
def onnx_predictor(onnx_dir: Path):
    from edgesam_backend.runtime.predictor import OnnxPredictor

    return OnnxPredictor(onnx_dir / "encoder.onnx", onnx_dir / "decoder.onnx")


@pytest.fixture(scope="session")
def torch_predictor():
    if not CHECKPOINT.is_file():
        pytest.skip(f"needs the shared reference data at {REF}")
    from edgesam_backend.model.predictor import TorchPredictor

    return TorchPredictor(CHECKPOINT)


#: The reference prompts (original-frame pixels), as in ../shared/reference/edgesam/README.md.
PROMPTS = {
    "a_point": {"point_coords": [[500, 375]], "point_labels": [1]},
    "b_box": {"box": [425, 600, 700, 875]},
    "c_points": {"point_coords": [[500, 375], [1125, 625], [575, 750]], "point_labels": [1, 1, 0]},
}
ORIGINAL_HW = (1200, 1800)
INPUT_HW = (683, 1024)


@pytest.fixture(scope="session")
def small_edgesam(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A seeded random EdgeSAM at 64 px (cheap to train and export): ``(checkpoint with its
    image_size, its ONNX export directory)``."""
    torch = pytest.importorskip("torch")
    from edgesam_backend.export.onnx import export_onnx
    from edgesam_backend.model.checkpoint import with_metadata
    from edgesam_backend.model.edge_sam import build_edge_sam

    d = tmp_path_factory.mktemp("small")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_edge_sam(image_size=64)
    ckpt = d / "small.pth"
    torch.save(with_metadata(model.state_dict(), 64), ckpt)
    export_onnx(ckpt, d / "onnx")
    return ckpt, d / "onnx"
