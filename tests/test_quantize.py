"""Static int8 (QDQ) encoder: graph contents, runtime, agreement metric, CLI and engine wiring."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgesam_backend.export.agreement import agreement, default_prompts
from edgesam_backend.export.calibration import ImageCalibrationReader, list_images
from edgesam_backend.export.int8 import is_int8_model, quantize_encoder
from edgesam_backend.runtime.masks import mask_iou
from edgesam_backend.runtime.model_files import INT8_ENCODER_FILE

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CHECKPOINT = SHARED / "reference" / "edgesam" / "weights_perturbed.pth"
IMAGES = SHARED / "images"

pytestmark = pytest.mark.skipif(
    not CHECKPOINT.is_file() or not IMAGES.is_dir(), reason=f"needs the shared reference data in {SHARED}"
)

#: The four smallest shared images (640 px wide), to keep calibration quick.
CALIBRATION = ["1.jpeg", "2.jpeg", "3.jpeg", "4.jpeg"]


@pytest.fixture(scope="module")
def q8_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """encoder.onnx + decoder.onnx from the reference checkpoint, plus encoder.int8.onnx (4 images)."""
    from edgesam_backend.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("q8")
    export_onnx(CHECKPOINT, out)
    quantize_encoder(out / "encoder.onnx", out / INT8_ENCODER_FILE, [IMAGES / n for n in CALIBRATION])
    return out


@pytest.fixture(scope="module")
def predictors(q8_dir: Path):
    from edgesam_backend.runtime.predictor import OnnxPredictor

    dec = q8_dir / "decoder.onnx"
    return OnnxPredictor(q8_dir / "encoder.onnx", dec, 2), OnnxPredictor(q8_dir / INT8_ENCODER_FILE, dec, 2)


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_int8_model_is_per_channel_qdq(q8_dir: Path):
    path = q8_dir / INT8_ENCODER_FILE
    assert is_int8_model(path) and not is_int8_model(q8_dir / "encoder.onnx")
    m = onnx.load(str(path))
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    init = _initializers(m)
    weight_dq = [
        n
        for n in m.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in init and init[n.input[0]].dtype == np.int8
    ]
    assert len(weight_dq) > 50  # the backbone's convolutions
    for n in weight_dq:
        w, scale = init[n.input[0]], init[n.input[1]]
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        assert axis == 0 and scale.shape == (w.shape[0],), n.name  # one scale per output channel
        assert w.shape[0] == 1 or scale.size > 1
        assert np.all(init[n.input[2]] == 0)  # symmetric weights
    # activations are uint8 (onnxruntime's fast U8S8 kernels)
    act_q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert all(init[n.input[2]].dtype == np.uint8 for n in act_q)
    # the default exclusions (fuse neck, first output-neck conv) keep float weights; the rest is int8
    convs = {n.name: n for n in m.graph.node if n.op_type == "Conv"}
    produced_by_dq = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    float_convs = {name for name, c in convs.items() if c.input[1] not in produced_by_dq}
    assert float_convs == {
        "/encoder/fuse_stage2/Conv",
        "/encoder/fuse_stage3/op_list.0/Conv",
        "/encoder/fuse_stage3/op_list.1/Conv",
        "/encoder/neck/neck.0/Conv",
    }
    # the exact rewrites: fused erf GELUs, pooled squeeze-excite means
    assert ops.count("Gelu") == 27 and "Erf" not in ops and ops.count("GlobalAveragePool") == 10
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["edgesam.quantization"] == "int8-static-qdq"
    assert meta["edgesam.quantization.calibration_images"] == "4"
    assert meta["edgesam.role"] == "encoder" and len(meta["edgesam.checkpoint_sha256"]) == 64


def test_int8_predictor_runs(predictors):
    from edgesam_backend.runtime.image import load_image

    _, p8 = predictors
    image = load_image(IMAGES / "5.jpeg")
    emb = p8.encode(image)
    assert emb.embeddings.shape == (1, 256, 64, 64) and np.isfinite(emb.embeddings).all()
    pred = p8.predict([[320, 200]], [1], num_multimask_outputs=3, embedding=emb)
    assert pred.masks.shape == (3, *image.shape[:2]) and pred.masks.dtype == np.bool_
    box = p8.predict(box=[100, 80, 400, 300], num_multimask_outputs=1, embedding=emb)
    assert box.masks.shape == (1, *image.shape[:2])


def test_agreement_of_identical_predictors_is_exact(predictors):
    p32, _ = predictors
    res = agreement(p32, p32, [IMAGES / "6.jpeg"], prompts_per_image=4)
    assert res["mean_iou"] == 1.0 and res["min_iou"] == 1.0
    assert res["per_image"] == {"6.jpeg": 1.0}
    assert res["embedding_rel_error"] == {"mean": 0.0, "max": 0.0}
    assert res["num_prompts"] == 4 and res["passes"] is True


#: Measured on 7.jpeg with the random reference weights (4 calibration images): mean best-mask IoU
#: 0.959, embedding relative error 0.127. The same int8 model with its weight scales multiplied by 4
#: scores 0.606 and 1.20. The bounds sit between with margin on both sides.
MIN_MEAN_IOU = 0.9
MAX_EMBEDDING_REL_ERROR = 0.25


def _check_int8_agreement(res: dict) -> None:
    """The acceptance check of an int8 encoder against fp32 (fails on a broken one)."""
    assert res["mean_iou"] >= MIN_MEAN_IOU, res
    assert res["embedding_rel_error"]["mean"] <= MAX_EMBEDDING_REL_ERROR, res


def test_agreement_int8_vs_fp32(predictors):
    p32, p8 = predictors
    res = agreement(p32, p8, [IMAGES / "7.jpeg"])
    assert res["num_images"] == 1 and res["num_prompts"] == len(default_prompts(427, 640)) == 11
    assert 0.0 <= res["min_iou"] <= res["mean_iou"] <= 1.0
    assert res["embedding_rel_error"]["mean"] > 0.0  # really int8, not the fp32 encoder
    _check_int8_agreement(res)
    json.dumps(res)  # JSON-ready


def test_agreement_catches_a_broken_int8_encoder(q8_dir: Path, predictors, tmp_path: Path):
    """The same int8 graph with every int8 weight's dequantization scale multiplied by 4 must fail."""
    from edgesam_backend.runtime.predictor import OnnxPredictor

    m = onnx.load(str(q8_dir / INT8_ENCODER_FILE))
    init = {i.name: i for i in m.graph.initializer}
    scaled = 0
    for n in m.graph.node:
        w = init.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if w is not None and numpy_helper.to_array(w).dtype == np.int8:
            scale = init[n.input[1]]
            scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * 4.0, scale.name))
            scaled += 1
    assert scaled > 50
    broken = tmp_path / "broken.int8.onnx"
    onnx.save(m, str(broken))
    p32, _ = predictors
    res = agreement(p32, OnnxPredictor(broken, q8_dir / "decoder.onnx", 2), [IMAGES / "7.jpeg"])
    assert res["passes"] is False
    with pytest.raises(AssertionError):
        _check_int8_agreement(res)


def test_mask_iou_and_prompts():
    a = np.zeros((4, 4), bool)
    assert mask_iou(a, a, empty=1.0) == 1.0 and np.isnan(mask_iou(a, a))
    b = a.copy()
    b[:2] = True
    assert mask_iou(a, b) == 0.0
    c = b.copy()
    c[:, :2] = True
    assert mask_iou(b, c) == pytest.approx(8 / 12)
    assert np.allclose(mask_iou(np.stack([b, c]), np.stack([c, c])), [8 / 12, 1.0])  # batched
    p = default_prompts(100, 200)
    assert p == default_prompts(100, 200)  # deterministic
    assert sum(q["box"] is not None for q in p) == 2 and p[4]["point_coords"] == [[100.0, 50.0]]


def test_graph_rewrites_are_exact(tmp_path: Path):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgesam_backend.export.rewrites import fuse_gelu, spatial_means_to_pooling

    def const(name: str, value: float) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.float32(value)))

    nodes = [
        const("c_sqrt2", np.sqrt(2.0)),
        const("c_one", 1.0),
        const("c_half", 0.5),
        helper.make_node("Div", ["x", "c_sqrt2"], ["d"], name="/blk/Div"),
        helper.make_node("Erf", ["d"], ["e"], name="/blk/Erf"),
        helper.make_node("Add", ["e", "c_one"], ["a"], name="/blk/Add"),
        helper.make_node("Mul", ["x", "a"], ["m"], name="/blk/Mul"),  # x first: either order matches
        helper.make_node("Mul", ["m", "c_half"], ["g"], name="/blk/Mul_1"),
        helper.make_node("ReduceMean", ["g"], ["s"], axes=[2, 3], keepdims=1, name="/se/ReduceMean"),
        helper.make_node("ReduceMean", ["g"], ["c"], axes=[1], keepdims=1, name="/ln/ReduceMean"),
        helper.make_node("Add", ["s", "c"], ["y"], name="/out"),
    ]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "g", [vi("x", TensorProto.FLOAT, [1, 4, 5, 6])], [vi("y", TensorProto.FLOAT, [1, 1, 5, 6])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).normal(0, 3, (1, 4, 5, 6)).astype(np.float32)

    def run(m: onnx.ModelProto) -> np.ndarray:
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )[0]

    before = run(model)
    assert fuse_gelu(model) == 1 and spatial_means_to_pooling(model) == 1
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Gelu", "GlobalAveragePool", "ReduceMean", "Add"]  # channel mean left alone
    assert model.graph.node[0].domain == "com.microsoft" and model.graph.node[0].name == "/blk/Gelu"
    np.testing.assert_allclose(run(model), before, rtol=1e-5, atol=1e-5)
    assert fuse_gelu(model) == 0  # idempotent


def test_calibration_reader_feeds_preprocessed_images(q8_dir: Path):
    reader = ImageCalibrationReader([IMAGES / "1.jpeg", IMAGES / "2.jpeg"], q8_dir / "encoder.onnx")
    batches = list(reader)
    assert len(batches) == 2 and list(batches[0]) == ["image"]
    assert batches[0]["image"].shape == (1, 3, 1024, 1024) and batches[0]["image"].dtype == np.float32
    assert reader.get_next() is None


def test_calibration_input_errors(q8_dir: Path, tmp_path: Path):
    enc = q8_dir / "encoder.onnx"
    with pytest.raises(ValueError, match="empty"):
        quantize_encoder(enc, tmp_path / "x.onnx", [])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="unreadable calibration image"):
        quantize_encoder(enc, tmp_path / "x.onnx", [bad])
    with pytest.raises(ValueError, match="unreadable calibration image"):
        quantize_encoder(enc, tmp_path / "x.onnx", [tmp_path / "missing.jpg"])
    with pytest.raises(ValueError, match="method"):
        quantize_encoder(enc, tmp_path / "x.onnx", [IMAGES / "1.jpeg"], method="kl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(ValueError, match="not found"):
        list_images(tmp_path / "missing")
    assert not (tmp_path / "x.onnx").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".quantize-")]  # no temp leftovers


def test_engine_int8_is_opt_in(q8_dir: Path, tmp_path: Path):
    from edgesam_backend.engine import EngineError, load_predictor
    from edgesam_backend.runtime.image import load_image

    image = load_image(IMAGES / "8.jpeg")
    default = load_predictor(onnx_dir=q8_dir, threads=2)
    int8 = load_predictor(onnx_dir=q8_dir, threads=2, int8=True)
    fp32_only = tmp_path / "fp32"
    fp32_only.mkdir()
    for name in ("encoder.onnx", "decoder.onnx"):
        os.link(q8_dir / name, fp32_only / name)
    e_default, e_int8 = default.encode(image).embeddings, int8.encode(image).embeddings
    e_fp32 = load_predictor(onnx_dir=fp32_only, threads=2).encode(image).embeddings
    np.testing.assert_array_equal(e_default, e_fp32)  # default off even when the int8 file exists
    assert not np.array_equal(e_int8, e_fp32)
    with pytest.raises(EngineError, match=r"encoder\.int8\.onnx"):
        load_predictor(onnx_dir=fp32_only, int8=True)
    with pytest.raises(EngineError, match="onnx"):
        load_predictor(CHECKPOINT, backend="torch", int8=True)


def test_cli_int8_needs_calibration_images(tmp_path: Path, capsys):
    from edgesam_backend.cli import main

    out = tmp_path / "out"
    assert main(["export", "--checkpoint", str(CHECKPOINT), "--out", str(out), "--int8"]) == 2
    assert "--int8 needs --calibration-images" in capsys.readouterr().err
    assert not out.exists()  # rejected before exporting anything
    args = ["export", "--checkpoint", str(CHECKPOINT), "--out", str(out), "--calibration-images", str(IMAGES)]
    assert main(args) == 2
    assert "only used with --int8" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_export_int8(tmp_path: Path, capsys):
    from edgesam_backend.cli import main

    calib = tmp_path / "calib"
    calib.mkdir()
    for name in ("1.jpeg", "2.jpeg"):
        os.link(IMAGES / name, calib / name)
    out = tmp_path / "out"
    args = ["export", "--checkpoint", str(CHECKPOINT), "--out", str(out), "--int8"]
    assert main([*args, "--calibration-images", str(calib)]) == 0
    summary = json.loads(capsys.readouterr().out)
    q = summary["int8"]
    assert q["encoder"] == str(out / INT8_ENCODER_FILE) and is_int8_model(out / INT8_ENCODER_FILE)
    # one image calibrates, the other (held out) measures the agreement
    assert q["calibration_images"] == 1 and q["agreement"]["num_images"] == 1
    assert q["agreement"]["held_out"] and "held-out" in q["agreement_images"]
    assert list(q["agreement"]["per_image"]) == ["2.jpeg"]
    assert 0.0 <= q["agreement"]["mean_iou"] <= 1.0
    assert q["recommended"] == (q["agreement"]["mean_iou"] >= 0.95)
    meta = {p.key: p.value for p in onnx.load(str(out / INT8_ENCODER_FILE)).metadata_props}
    assert float(meta["edgesam.int8.mean_iou"]) == pytest.approx(q["agreement"]["mean_iou"], abs=1e-6)


def test_label_studio_backend_serves_int8(q8_dir: Path):
    """EDGESAM_INT8 reaches the Label Studio backend through the one resolver (model_version changes)."""
    from edgesam_backend.engine import load_predictor
    from edgesam_backend.labelstudio.app import load_backend_predictor
    from edgesam_backend.labelstudio.settings import Settings
    from edgesam_backend.runtime.image import load_image

    image = load_image(IMAGES / "8.jpeg")
    p8, v8 = load_backend_predictor(Settings.from_env({"EDGESAM_INT8": "true"}, onnx_dir=q8_dir))
    _, v32 = load_backend_predictor(Settings.from_env({}, onnx_dir=q8_dir))
    ref8 = load_predictor(onnx_dir=q8_dir, threads=2, int8=True).encode(image).embeddings
    np.testing.assert_array_equal(p8.encode(image).embeddings, ref8)
    assert v8 != v32 and v8.startswith("edgesam-") and v32.startswith("edgesam-")
