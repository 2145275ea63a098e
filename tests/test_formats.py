"""The annotation formats (edgesam_backend.formats): Label Studio brush RLE (byte-identical to the sdk,
from a checked-in fixture), regions, URL ↔ path rule (and both of its callers), percent/rotation
geometry, rectangles → boxes; the COCO reader and its callers; the one polygon convention; YOLO lines."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from edgesam_backend.formats import coco as C
from edgesam_backend.formats.imagefiles import IMAGE_EXTENSIONS, is_image_file
from edgesam_backend.formats.labelstudio import coords
from edgesam_backend.formats.labelstudio.coords import Rectangle
from edgesam_backend.formats.labelstudio.regions import brush_region_of_mask, polygon_regions_of_mask
from edgesam_backend.formats.labelstudio.rle import (
    RLEError,
    coco_to_rle,
    mask_to_rle,
    rle_decode,
    rle_length,
    rle_to_mask,
)
from edgesam_backend.formats.labelstudio.urls import (
    LOCAL_FILES_URL,
    UnsafePathError,
    local_files_path,
    upload_path,
    url_to_relpath,
)
from edgesam_backend.formats.polygons import mask_polygons
from edgesam_backend.formats.yolo import polygon_line, validate_yolo_text

DATA = Path(__file__).parent / "data"


# --- Label Studio brush RLE -----------------------------------------------------------------------------


def test_rle_header_and_round_trip() -> None:
    m = np.zeros((480, 640), bool)
    m[140:300, 200:360] = True
    rle = mask_to_rle(m)
    assert rle[:4] == [0, 18, 192, 0]  # 640*480*4 = 1228800 values (protocol doc §2.1)
    assert all(isinstance(v, int) and 0 <= v <= 255 for v in rle)
    assert np.array_equal(rle_to_mask(rle, 480, 640), m.astype(np.uint8) * 255)
    flat = rle_decode(rle)
    assert flat.shape == (480 * 640 * 4,) and set(np.unique(flat)) == {0, 255}


@pytest.mark.parametrize(
    "shape_kind",
    [((1, 1), "full"), ((3, 5), "noise"), ((97, 131), "noise"), ((700, 300), "full"), ((512, 512), "empty")],
)
def test_rle_round_trip_shapes(shape_kind) -> None:
    (h, w), kind = shape_kind
    rng = np.random.default_rng(h * w)
    m = {"full": np.ones((h, w), bool), "empty": np.zeros((h, w), bool), "noise": rng.random((h, w)) > 0.5}[
        kind
    ]
    assert np.array_equal(rle_to_mask(mask_to_rle(m), h, w) == 255, m)
    # non-bool input: any non-zero value is foreground
    assert mask_to_rle(m.astype(np.uint8) * 7) == mask_to_rle(m)


def test_rle_long_runs_split_at_65536() -> None:
    m = np.zeros((300, 1000), bool)  # 1.2 M values of 0 → 19 run records
    m[150:, 500:] = True
    assert np.array_equal(rle_to_mask(mask_to_rle(m), 300, 1000) == 255, m)


def test_rle_decodes_literal_records() -> None:
    # header: num=3, word 8, sizes 3/4/8/16; one literal record of 3 values 1, 2, 3
    bits = f"{3:032b}" + f"{7:05b}" + "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16))
    bits += "0" + "00" + f"{2:03b}" + "".join(f"{v:08b}" for v in (1, 2, 3))
    bits += "0" * (-len(bits) % 8)
    rle = [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]
    assert rle_decode(rle).tolist() == [1, 2, 3]


def test_rle_errors() -> None:
    rle = mask_to_rle(np.ones((4, 4), bool))
    with pytest.raises(RLEError, match="expected 5x4x4"):
        rle_to_mask(rle, 5, 4)
    with pytest.raises(RLEError, match="ends in the middle"):
        rle_decode(rle[:6])
    with pytest.raises(RLEError, match="0-255"):
        rle_decode([0, 300])
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        mask_to_rle(np.ones((2, 2, 2)))


# --- Label Studio coordinates ---------------------------------------------------------------------------


def test_percent_to_pixels_keeps_floats() -> None:
    px = coords.percent_to_pixels([[43.773, 45.807], [100, 0]], 640, 480)
    assert px.dtype == np.float64
    np.testing.assert_allclose(px, [[43.773 / 100 * 640, 45.807 / 100 * 480], [640, 0]], rtol=0, atol=1e-12)
    assert px[0, 0] != round(px[0, 0])  # not rounded to whole pixels
    np.testing.assert_allclose(coords.pixels_to_percent(px, 640, 480), [[43.773, 45.807], [100, 0]])


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_rotation_points_agree_with_rotated_masks(rotation: int) -> None:
    w, h = 7, 5
    rng = np.random.default_rng(rotation)
    for _ in range(5):
        r, c = int(rng.integers(h)), int(rng.integers(w))
        m = np.zeros((h, w), bool)
        m[r, c] = True
        rm = coords.rotate_mask(m, rotation)
        assert rm.shape[::-1] == ((h, w) if rotation in (90, 270) else (w, h))
        ((rr, rc),) = np.argwhere(rm)
        p = coords.rotate_points([c + 0.5, r + 0.5], w, h, rotation)
        np.testing.assert_allclose(p, [rc + 0.5, rr + 0.5])
        np.testing.assert_allclose(coords.unrotate_points(p, w, h, rotation), [c + 0.5, r + 0.5])


def test_normalize_rotation() -> None:
    assert coords.normalize_rotation(None) == 0
    assert coords.normalize_rotation(-90) == 270
    assert coords.normalize_rotation(450.0) == 90
    with pytest.raises(ValueError, match="multiple of 90"):
        coords.normalize_rotation(45)


def _fixture_masks() -> dict[str, tuple[np.ndarray, list[int]]]:
    doc = json.loads((DATA / "ls_brush_rle.json").read_text())
    out = {}
    for name, e in doc["masks"].items():
        h, w = e["shape"]
        bits = np.unpackbits(np.frombuffer(base64.b64decode(e["bits"]), np.uint8))[: h * w]
        out[name] = (bits.reshape(h, w).astype(bool), e["rle"])
    return out


def test_rle_is_byte_identical_to_label_studio_sdk_fixture() -> None:
    """label_studio_sdk 2.1.2's ``mask2rle`` output (tests/data/make_ls_brush_rle.py), checked always."""
    masks = _fixture_masks()
    assert {"blob", "noise", "full", "empty", "tiny", "long_runs", "checker"} <= set(masks)
    for name, (m, theirs) in masks.items():
        assert mask_to_rle(m) == theirs, name
        assert np.array_equal(rle_to_mask(theirs, *m.shape) == 255, m), name
        assert rle_length(theirs) == m.size * 4


def test_coco_rle_goes_straight_to_brush_rle() -> None:
    for name, (m, theirs) in _fixture_masks().items():
        coco = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        as_json = {"size": coco["size"], "counts": coco["counts"].decode("ascii")}
        assert coco_to_rle(as_json) == theirs == coco_to_rle(coco), name


def test_rle_length_of_broken_headers() -> None:
    assert rle_length([0, 0, 1]) == -1 and rle_length([0, 0, 1, 300]) == -1
    assert rle_length([0, 18, 192, 0, 7]) == 640 * 480 * 4


# --- Label Studio regions -------------------------------------------------------------------------------


def test_brush_and_polygon_regions() -> None:
    m = np.zeros((40, 50), bool)
    m[10:20, 5:25] = True
    kw = {"from_name": "tag", "to_name": "image", "label": "Car", "score": 0.5, "rotation": 90, "id": "r1"}
    b = brush_region_of_mask(m, **kw)
    assert list(b) == [
        "id", "from_name", "to_name", "type", "original_width", "original_height", "image_rotation",
        "score", "value",
    ]  # fmt: skip
    assert (b["type"], b["original_width"], b["original_height"], b["image_rotation"]) == (
        "brushlabels",
        50,
        40,
        90,
    )
    assert b["value"] == {"format": "rle", "rle": mask_to_rle(m), "brushlabels": ["Car"]}
    (p,) = polygon_regions_of_mask(
        m, from_name="poly", to_name="image", label="Car", score=0.5, type="polygonlabels"
    )
    assert p["value"]["closed"] and p["value"]["polygonlabels"] == ["Car"] and len(p["id"]) == 10
    # boundary pixel centres (x 5.5..24.5, y 10.5..19.5) in percent of 50 x 40
    pts = np.array(p["value"]["points"])
    np.testing.assert_allclose(
        sorted({tuple(v) for v in pts}), sorted({(11.0, 26.25), (49.0, 26.25), (49.0, 48.75), (11.0, 48.75)})
    )


# --- polygons: one pixel convention ---------------------------------------------------------------------


def test_mask_polygons_vertices_are_boundary_pixel_centres() -> None:
    m = np.zeros((20, 20), bool)
    m[3:9, 4:12] = True
    (poly,) = mask_polygons(m, tolerance=0)
    assert {tuple(v) for v in poly} == {(4.5, 3.5), (11.5, 3.5), (11.5, 8.5), (4.5, 8.5)}
    yy, xx = np.mgrid[:40, :40]
    disk = ((yy - 20) ** 2 + (xx - 18) ** 2) < 12**2
    (poly,) = mask_polygons(disk, tolerance=0)
    r = mask_utils.decode(mask_utils.frPyObjects([poly.reshape(-1).tolist()], 40, 40))[:, :, 0].astype(bool)
    assert not (r & ~disk).any()  # half a pixel inside the outline: nothing outside the mask
    assert (r & disk).sum() / disk.sum() > 0.92
    # shifted by -0.5 (the old index convention) the same polygon spills outside the mask
    r0 = mask_utils.decode(mask_utils.frPyObjects([(poly - 0.5).reshape(-1).tolist()], 40, 40))[:, :, 0]
    assert (r0.astype(bool) & ~disk).any()


def test_mask_polygons_order_holes_and_tiny_parts() -> None:
    m = np.zeros((30, 30), bool)
    m[2:6, 2:6] = True  # small
    m[10:28, 10:28] = True  # large, with a hole
    m[15:20, 15:20] = False
    m[0, 29] = True  # a single pixel: fewer than 3 vertices
    outer = mask_polygons(m)
    assert len(outer) == 2 and np.ptp(outer[0][:, 0]) == 17  # largest first
    assert len(mask_polygons(m, holes=True)) == 3
    assert len(mask_polygons(m, min_area=10)) == 1


# --- YOLO -----------------------------------------------------------------------------------------------


def test_yolo_line_and_validation() -> None:
    line = polygon_line(2, [[0.5, 0.5], [99.5, 0.5], [99.5, 49.5]], 100, 50)
    assert line == "2 0.005000 0.010000 0.995000 0.010000 0.995000 0.990000"
    assert validate_yolo_text(line + "\n\n" + line + "\n", 3) == 2
    with pytest.raises(ValueError, match="class 2 outside"):
        validate_yolo_text(line, 2)
    with pytest.raises(ValueError, match=">= 6"):
        validate_yolo_text("0 0.1 0.2 0.3 0.4", 1)


def test_image_extensions_defined_once() -> None:
    from edgesam_backend.pipeline.steps.sources import FolderConfig

    assert FolderConfig.model_fields["extensions"].default == list(IMAGE_EXTENSIONS)
    assert is_image_file("a/B.JPG") and is_image_file("x.webp") and not is_image_file("x.json")


# --- Label Studio rectangles → boxes --------------------------------------------------------------------


def test_rectangle_to_box() -> None:
    r = Rectangle(24.1, 30.4, 44.9, 39.1)
    np.testing.assert_array_equal(  # exactly the corners' percent → pixels
        r.to_box(640, 428),
        coords.percent_to_pixels([[24.1, 30.4], [24.1 + 44.9, 30.4 + 39.1]], 640, 428).reshape(-1),
    )
    # 90° clockwise about the top-left corner (pixel space: 15 x 20 px at (30, 0) in 60 x 40)
    rot = Rectangle.from_value({"x": 50, "y": 0, "width": 25, "height": 50, "rotation": 90})
    np.testing.assert_allclose(rot.to_box(60, 40), [10, 0, 30, 15], atol=1e-12)
    np.testing.assert_allclose(Rectangle(90, 90, 20, 20).to_box(100, 50), [90, 45, 100, 50])  # clipped
    np.testing.assert_allclose(Rectangle(50, 50, 10, 10, 180).to_box(100, 100), [40, 40, 50, 50], atol=1e-12)


def test_rectangle_rule_is_shared_by_backend_and_pipeline(tmp_path) -> None:
    """The same rotated rectangle gives the same pixel box in the backend's context and the pipeline's
    Label Studio source (one conversion each: percent → pixels)."""
    from edgesam_backend.labelstudio.config import parse_label_config
    from edgesam_backend.labelstudio.context import parse_context, to_pixels
    from edgesam_backend.pipeline.steps import sources as S

    from .helpers import LS_CONFIG
    from .test_pipeline_steps import ctx

    value = {
        "x": 20.0,
        "y": 10.0,
        "width": 30.0,
        "height": 25.0,
        "rotation": 30.0,
        "rectanglelabels": ["Foreground"],
    }
    result = {"type": "rectanglelabels", "value": value, "original_width": 640, "original_height": 480}
    raw = parse_context({"result": [{**result, "to_name": "image"}]}, parse_label_config(LS_CONFIG))
    backend_box = to_pixels(raw, (480, 640)).box
    want = Rectangle.from_value(value).to_box(640, 480)
    np.testing.assert_array_equal(backend_box, want)
    export = tmp_path / "export.json"
    export.write_text(
        json.dumps([{"id": 1, "data": {"image": "a.png"}, "annotations": [{"result": [result]}]}])
    )
    (item,) = S.LabelStudioSource(S.LabelStudioConfig(export=str(export)), ctx(tmp_path)).items()
    np.testing.assert_array_equal(item.annotations[0].box, want.tolist())


# --- Label Studio URLs ↔ paths --------------------------------------------------------------------------

UNSAFE_URLS = [
    "/data/local-files/?d=../../etc/passwd",
    "/data/local-files/?d=/etc/passwd",
    "/data/local-files/?d=images/%2e%2e/%2e%2e/x",
    "/data/local-files/?d=C:/Windows/x.png",
    "/data/local-files/?d=",
    "/data/upload/../secret.png",
    "http://ls:8080/data/local-files/?d=..%2Fx.png",
]


def test_url_rule() -> None:
    assert local_files_path("/data/local-files/?d=imgs/a%20b.png") == "imgs/a b.png"
    assert local_files_path("/data/local-files?d=a.png") == "a.png"
    assert local_files_path("http://ls:8080/data/local-files/?d=x/y.jpg") == "x/y.jpg"
    assert local_files_path("/other/data/local-files/?d=a.png") is None  # the path must be exactly this
    assert local_files_path("/data/upload/3/a.png") is None and upload_path("/data/local-files/?d=a") is None
    assert upload_path("/data/upload/3/abc%20x.jpg") == "3/abc x.jpg"
    assert local_files_path(LOCAL_FILES_URL.format(file_name="sub/b.jpg")) == "sub/b.jpg"
    assert url_to_relpath("/data/local-files/?d=imgs/a%20b.png") == "imgs/a b.png"
    assert url_to_relpath("/data/upload/3/abc-x.jpg") == "3/abc-x.jpg"
    assert url_to_relpath("https://host/bucket/p/c.jpg?sig=1") == "c.jpg"
    assert url_to_relpath("s3://bucket/p/d.jpg") == "d.jpg"
    assert url_to_relpath("plain/d.jpg") == "plain/d.jpg"
    for url in UNSAFE_URLS:
        with pytest.raises(UnsafePathError):
            url_to_relpath(url)


@pytest.mark.parametrize("url", UNSAFE_URLS[:5])
def test_both_callers_refuse_unsafe_local_files(tmp_path, url: str) -> None:
    """The backend's fetcher and the pipeline's source apply the same rule to the same URLs."""
    from edgesam_backend.labelstudio.errors import BackendError
    from edgesam_backend.labelstudio.images import ImageFetcher
    from edgesam_backend.labelstudio.settings import Settings
    from edgesam_backend.pipeline.base import PipelineError
    from edgesam_backend.pipeline.steps import sources as S

    from .test_pipeline_steps import ctx

    f = ImageFetcher(Settings(local_files_document_root=str(tmp_path)))
    with pytest.raises(BackendError, match=r"traversal|has no"):
        f.fetch(url)
    export = tmp_path / "export.json"
    export.write_text(json.dumps([{"id": 5, "data": {"image": url}}]))
    with pytest.raises(PipelineError, match=r"task 5: .*(traversal|has no)"):
        S.LabelStudioSource(S.LabelStudioConfig(export=str(export)), ctx(tmp_path)).items()


def test_both_callers_map_local_files_alike(tmp_path) -> None:
    from PIL import Image

    from edgesam_backend.labelstudio.images import ImageFetcher
    from edgesam_backend.labelstudio.settings import Settings
    from edgesam_backend.pipeline.steps import sources as S

    from .test_pipeline_steps import ctx

    (tmp_path / "im g").mkdir()
    Image.new("RGB", (4, 3)).save(tmp_path / "im g" / "a.png")
    url = "/data/local-files/?d=im%20g/a.png"
    data = ImageFetcher(Settings(local_files_document_root=str(tmp_path))).fetch(url)
    assert data == (tmp_path / "im g" / "a.png").read_bytes()
    export = tmp_path / "export.json"
    export.write_text(json.dumps([{"id": 5, "data": {"image": url}}]))
    (item,) = S.LabelStudioSource(S.LabelStudioConfig(export=str(export)), ctx(tmp_path)).items()
    assert item.file_name == "im g/a.png" and Path(item.path).read_bytes() == data


# --- COCO -----------------------------------------------------------------------------------------------

COCO_DOC = {
    "images": [
        {"id": 7, "file_name": "b.jpg", "width": 40, "height": 30},
        {"id": 2, "file_name": "a.jpg", "width": 40, "height": 30},
        {"id": 9, "file_name": "c.jpg"},
    ],
    "categories": [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}],
    "annotations": [
        {"id": 1, "image_id": 7, "category_id": 5, "bbox": [1, 2, 10, 5], "area": 50, "iscrowd": 0,
         "segmentation": [[1, 2, 11, 2, 11, 7, 1, 7]]},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [], "keypoints": [4, 5, 2, 0, 0, 0, 6, 7, 1]},
        {"id": 3, "image_id": 7, "category_id": 5, "bbox": [0, 0, 3, 3], "iscrowd": 1, "score": 0.5},
        {"id": 4, "image_id": 99, "bbox": [0, 0, 3, 3]},
    ],
}  # fmt: skip


def test_coco_reader_records() -> None:
    d = C.parse_coco(COCO_DOC)
    assert [im.id for im in d.images] == [7, 2, 9] and d.images[2].width is None
    assert d.categories == {5: "dog", 2: "cat"}
    a1, a2, a3, a4 = d.annotations
    assert a1.box_xyxy() == (1.0, 2.0, 11.0, 7.0) and a1.area == 50 and not a1.iscrowd
    assert a2.bbox is None and a2.visible_points() == [[4.0, 5.0], [6.0, 7.0]]
    assert a3.iscrowd and a3.score == 0.5 and a4.category_id is None
    assert [a.id for a in d.by_image()[7]] == [1, 3] and 9 not in d.by_image()
    m = C.decode_segmentation(a1.segmentation, 30, 40)
    assert m.shape == (30, 40) and m[3:7, 2:11].all() and not m[:, 12:].any()
    rle = C.segmentation_to_rle(a1.segmentation, 30, 40)
    assert np.array_equal(C.decode_segmentation({**rle, "counts": rle["counts"].decode()}, 30, 40), m)
    assert np.array_equal(C.decode_rle_raster(rle).astype(bool), m)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"images": {}}, "no 'images' list"),
        ({"images": [{"id": 1}]}, r"images\[0\].file_name"),
        ({"images": [{"id": 1, "file_name": "a"}, {"id": 1, "file_name": "b"}]}, "share an id"),
        ({"images": [{"id": 1.5, "file_name": "a"}]}, "integer"),
        ({"annotations": [{"image_id": 7, "bbox": [1, 2, 3]}]}, r"annotations\[0\].bbox"),
        ({"annotations": [{"image_id": 7, "bbox": [1, 2, 3, float("nan")]}]}, "finite"),
        ({"annotations": [{"image_id": 7, "keypoints": [1, 2]}]}, "triples"),
        ({"categories": [{"name": "x"}]}, r"categories\[0\].id"),
    ],
)
def test_coco_reader_errors(patch: dict, message: str) -> None:
    with pytest.raises(C.CocoFormatError, match=message):
        C.parse_coco({**COCO_DOC, **patch})


def test_coco_callers_read_through_one_reader(tmp_path) -> None:
    """source.coco, the distillation data and the RPN data see the same records."""
    from edgesam_backend.pipeline.base import PipelineError
    from edgesam_backend.pipeline.steps import sources as S
    from edgesam_backend.training.data import read_coco
    from edgesam_backend.training.distill_config import DataConfig
    from edgesam_backend.training.rpn import CocoBoxes

    from .test_pipeline_steps import ctx

    doc = {**COCO_DOC, "images": COCO_DOC["images"][:2]}
    f = tmp_path / "coco.json"
    f.write_text(json.dumps(doc))
    items = S.CocoSource(S.CocoConfig(annotations=str(f)), ctx(tmp_path)).items()
    assert [len(it.annotations) for it in items] == [1, 1] and items[0].annotations[0].box == [1, 2, 11, 7]
    recs = read_coco(DataConfig(format="coco", images=str(tmp_path), annotations=str(f)))
    assert [r.image_id for r in recs] == ["2", "7"]  # sorted by id; the keypoint-only one has no bbox
    assert [a.box for a in recs[1].annotations] == [(1.0, 2.0, 11.0, 7.0)]
    rpn = CocoBoxes(tmp_path, f, 128)
    assert [im.id for im in rpn.images] == [2, 7] and rpn.boxes[7].tolist() == [[1, 2, 11, 7]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**doc, "annotations": [{"image_id": 7, "bbox": [1, 2]}]}))
    with pytest.raises(PipelineError, match="bbox"):
        S.CocoSource(S.CocoConfig(annotations=str(bad)), ctx(tmp_path)).items()
    with pytest.raises(C.CocoFormatError, match="bbox"):
        CocoBoxes(tmp_path, bad, 128)
