"""Coordinate transforms, upscaling, image decoding, prompt packing and the exact bicubic upsample."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from edgesam_backend.model.upsample import Bicubic2xConvUpsample
from edgesam_backend.runtime import transforms
from edgesam_backend.runtime.image import ImageError, load_image
from edgesam_backend.runtime.masks import stability_score
from edgesam_backend.runtime.prompts import PromptError, check_mask_input, pack_prompt


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        ((1200, 1800), (683, 1024)),
        ((428, 640), (685, 1024)),
        ((2000, 1000), (1024, 512)),
        ((1024, 1024), (1024, 1024)),
        ((1, 3000), (0, 1024)),
    ],
)
def test_preprocess_shape(hw, expected):
    assert transforms.preprocess_shape(*hw) == expected


def torch_postprocess(low: np.ndarray, input_hw, original_hw) -> np.ndarray:
    t = F.interpolate(torch.from_numpy(low)[None], (1024, 1024), mode="bilinear", align_corners=False)
    t = t[..., : input_hw[0], : input_hw[1]]
    return F.interpolate(t, original_hw, mode="bilinear", align_corners=False)[0].numpy()


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Exact (float64) bilinear, half-pixel centres, edge clamped: ``out = A @ in``."""
    a = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(np.floor(src))
        frac = src - i0
        a[o, i0] += 1 - frac
        a[o, min(i0 + 1, n_in - 1)] += frac
    return a


@pytest.mark.parametrize("original_hw", [(428, 640), (1200, 1800), (300, 2000), (2000, 700)])
def test_upscale_logits_matches_exact_and_torch(original_hw):
    """OpenCV's float path equals the exact resize → crop → resize to 1e-5; PyTorch's own float32
    coordinate rounding puts it up to ~3e-4 away on rough random logits (7.5e-5 on real ones)."""
    rng = np.random.default_rng(0)
    low = (rng.standard_normal((3, 256, 256)) * 5).astype(np.float32)
    input_hw = transforms.preprocess_shape(*original_hw)
    got = transforms.upscale_logits(low, input_hw, original_hw)
    assert got.shape == (3, *original_hw)
    ay = _interp_matrix(input_hw[0], original_hw[0]) @ _interp_matrix(256, 1024)[: input_hw[0]]
    ax = _interp_matrix(input_hw[1], original_hw[1]) @ _interp_matrix(256, 1024)[: input_hw[1]]
    exact = np.stack([ay @ m @ ax.T for m in low.astype(np.float64)])
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got, torch_postprocess(low, input_hw, original_hw), rtol=0, atol=1e-3)


def test_coords_round_trip():
    pts = np.array([[0.0, 0.0], [1799.0, 1199.0], [512.5, 300.25]])
    model = transforms.apply_coords(pts, (1200, 1800))
    np.testing.assert_allclose(transforms.model_to_original_coords(model, (1200, 1800)), pts, atol=1e-3)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        transforms.apply_coords([1, 2, 3], (10, 10))


def test_stability_score_known_values():
    logits = np.full((2, 4, 4), -5.0, np.float32)
    logits[0, :2, :] = 2.0  # 8 pixels > 1
    logits[0, 2, :] = 0.5  # 4 more > -1
    np.testing.assert_array_equal(stability_score(logits), np.array([8 / 12, 0.0], np.float32))


def test_bicubic_conv_upsample_is_exact():
    x = torch.randn(2, 7, 32, 32, generator=torch.Generator().manual_seed(0)) * 3
    ref = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    torch.testing.assert_close(Bicubic2xConvUpsample(7)(x), ref, rtol=0, atol=1e-5)


# --- image decoding ----------------------------------------------------------------------------


def _jpeg_bytes(arr: np.ndarray, orientation: int | None = None) -> bytes:
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(buf, format="PNG", exif=exif.tobytes())
    return buf.getvalue()


def test_exif_orientation_is_applied():
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:5, :5] = 255  # top-left block marker
    out = load_image(_jpeg_bytes(arr, orientation=6))  # 6 = rotate 90° clockwise for display
    assert out.shape == (40, 20, 3)
    assert out[:5, -5:].min() == 255  # the marker is now top-right
    raw = load_image(_jpeg_bytes(arr, orientation=6), exif_transpose=False)
    assert raw.shape == (20, 40, 3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_modes_become_rgb(mode):
    img = Image.new("RGB", (16, 8), (10, 200, 30)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="TIFF" if mode in ("I;16", "CMYK") else "PNG")
    out = load_image(buf.getvalue())
    assert out.shape == (8, 16, 3) and out.dtype == np.uint8


def test_image_errors(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="not a decodable image"):
        load_image(b"<html>not an image</html>")
    big = Image.new("L", (300, 300))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    with pytest.raises(ImageError, match="exceeds the limit"):
        load_image(buf.getvalue(), max_pixels=10_000)


# --- prompts -------------------------------------------------------------------------------------


def test_pack_points_adds_padding_point():
    c, lab = pack_prompt([[500, 375]], [1], None, (1200, 1800))
    assert c.shape == (1, 2, 2) and lab.tolist() == [[1.0, -1.0]]
    np.testing.assert_array_equal(c[0, 1], [0, 0])


def test_pack_box_with_points_has_no_padding():
    c, lab = pack_prompt([[10, 10]], [0], [5, 6, 100, 200], (1200, 1800))
    assert lab.tolist() == [[0.0, 2.0, 3.0]]
    np.testing.assert_allclose(c[0, 1:], transforms.apply_boxes([5, 6, 100, 200], (1200, 1800)).reshape(2, 2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"point_coords": None, "point_labels": None, "box": None}, "at least one point or a box"),
        ({"point_coords": [[1, 2]], "point_labels": [1, 0], "box": None}, "1 points but 2 labels"),
        ({"point_coords": [[1, 2]], "point_labels": [7], "box": None}, "labels must be in"),
        ({"point_coords": [[1, np.nan]], "point_labels": [1], "box": None}, "finite"),
        ({"point_coords": [[1, 2, 3]], "point_labels": [1], "box": None}, r"shape \(N, 2\)"),
        ({"point_coords": [[1, 2]], "point_labels": None, "box": None}, "point_labels are required"),
        ({"point_coords": None, "point_labels": None, "box": [10, 10, 5, 20]}, "x0 <= x1"),
        ({"point_coords": None, "point_labels": None, "box": [1, 2, 3]}, "4 finite numbers"),
    ],
)
def test_prompt_errors(kwargs, match):
    with pytest.raises(PromptError, match=match):
        pack_prompt(kwargs["point_coords"], kwargs["point_labels"], kwargs["box"], (100, 100))


def test_mask_input_shapes():
    assert check_mask_input(np.zeros((256, 256))).shape == (1, 1, 256, 256)
    assert check_mask_input(np.zeros((3, 1, 256, 256)), batch=3).shape == (3, 1, 256, 256)
    with pytest.raises(PromptError, match="256x256"):
        check_mask_input(np.zeros((64, 64)))
