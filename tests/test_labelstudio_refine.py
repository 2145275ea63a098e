"""Iterative refinement: a click that extends the previous clicks on the same image is decoded with the
previous answer's low-res logits as mask input; the memory's matching rules."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from edgesam_backend.formats.labelstudio import coords
from edgesam_backend.formats.labelstudio.rle import rle_to_mask
from edgesam_backend.labelstudio.app import create_app
from edgesam_backend.labelstudio.refine import ClickMemory
from edgesam_backend.labelstudio.settings import Settings
from edgesam_backend.runtime.image import load_image

from .conftest import IMAGES
from .helpers import LS_CONFIG, ls_keypoint


def test_memory_matches_a_prompt_minus_one_point_in_any_order() -> None:
    mem = ClickMemory(max_items=2)
    a, b, c = [10.0, 20.0], [30.5, 40.25], [5.0, 5.0]
    logits = np.full((16, 16), 3.0, np.float32)
    mem.put("img", np.array([a, b]), np.array([1, 0]), None, logits)
    got = mem.previous("img", np.array([b, c, a]), np.array([0, 1, 1]), None)
    assert got is not None and got.shape == (1, 16, 16) and got[0, 0, 0] == 3.0
    assert mem.previous("img", np.array([b, c, a]), np.array([1, 1, 1]), None) is None  # label differs
    assert mem.previous("other", np.array([b, c, a]), np.array([0, 1, 1]), None) is None  # other image
    assert mem.previous("img", np.array([a, b, c]), np.array([1, 0, 1]), np.array([0, 0, 9, 9])) is None
    assert mem.previous("img", np.array([a]), np.array([1]), None) is None  # one point: nothing before it
    box = np.array([1.0, 2.0, 50.0, 60.0])
    mem.put("img", None, None, box, logits + 1)  # a box, then a click inside it
    assert mem.previous("img", np.array([a]), np.array([1]), box)[0, 0, 0] == 4.0
    mem.put("img", np.array([c]), np.array([1]), None, logits)  # LRU bound: the first entry goes
    assert mem.previous("img", np.array([a, b, c]), np.array([1, 0, 1]), None) is None


def _predict(client: TestClient, ctx: list[dict]) -> np.ndarray:
    body = {
        "tasks": [{"id": 1, "data": {"image": "/data/local-files/?d=1.jpeg"}}],
        "project": "1.1",
        "label_config": LS_CONFIG,
        "params": {"context": {"result": ctx}},
    }
    r = client.post("/predict", json=body)
    assert r.status_code == 200, r.text
    (region,) = r.json()["results"][0]["result"]
    return rle_to_mask(region["value"]["rle"], 428, 640) == 255


def test_second_click_is_decoded_with_the_first_answer_as_mask_input(onnx_predictor, tmp_path) -> None:
    (tmp_path / "1.jpeg").write_bytes((IMAGES / "1.jpeg").read_bytes())
    img = load_image(IMAGES / "1.jpeg")
    emb = onnx_predictor.encode(img)
    p1 = ls_keypoint(43.773, 45.807, True, w=640, h=428)
    p2 = ls_keypoint(60.25, 70.5, False, w=640, h=428)
    px = coords.percent_to_pixels(np.array([[43.773, 45.807], [60.25, 70.5]]), 640, 428)
    first = onnx_predictor.predict_selected(
        px[:1], [1], select="stability", num_multimask_outputs=3, embedding=emb
    )
    both = px[::-1]  # sent as [p2, p1] below: the memory matches in any order
    refined = onnx_predictor.predict_selected(
        both, [0, 1], None, first.low_res_logits[:1], select="single", embedding=emb
    )
    plain = onnx_predictor.predict_selected(both, [0, 1], select="single", embedding=emb)
    assert not np.array_equal(refined.masks[0], plain.masks[0])  # the mask input changes the answer

    for on, want in ((True, refined.masks[0]), (False, plain.masks[0])):
        s = Settings.from_env({}, local_files_document_root=tmp_path, refine_with_mask=on, preannotate="none")
        with TestClient(create_app(s, onnx_predictor, model_version="edgesam-test")) as client:
            assert np.array_equal(_predict(client, [p1]), first.masks[0])
            assert np.array_equal(_predict(client, [p2, p1]), want)  # the order of regions does not matter
            hits = "edgesam_refine_mask_input_total 1" if on else "edgesam_refine_mask_input_total 0"
            assert hits in client.get("/metrics").text
