"""Pipeline language: JSON Schema sync, YAML errors with line numbers, env expansion, overrides, step
order, the step registry (entry points, third-party steps), the Ray CPU guard. No model needed."""

from __future__ import annotations

import json
import re
import textwrap
import warnings
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

from edgesam_backend.cli import main
from edgesam_backend.pipeline import config as pconfig
from edgesam_backend.pipeline import registry
from edgesam_backend.pipeline.base import PipelineError, SourceStep, StepConfig
from edgesam_backend.pipeline.config import pipeline_json_schema
from edgesam_backend.pipeline.cpus import cpu_budget
from edgesam_backend.pipeline.loader import load_pipeline
from edgesam_backend.pipeline.overrides import apply_override
from edgesam_backend.yamlconfig import ConfigError, schema_text

from .conftest import IMAGES, REPO
from .helpers import REFINE_AND_EXPORT_ALL, grid_pipeline_yaml

EXAMPLES = REPO / "pipelines"


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


def write_steps(tmp_path: Path, onnx: Path, steps: str) -> Path:
    """Write a pipeline with ``model.onnx_dir: onnx``, ``output_dir: out`` and the ``steps`` list
    (YAML list items, any common indent; they start on line 5, items at column 3)."""
    items = textwrap.indent(textwrap.dedent(steps).strip("\n"), "  ")
    return write(tmp_path, f"model:\n  onnx_dir: {onnx}\noutput_dir: out\nsteps:\n{items}\n")


@pytest.fixture
def onnx_stub(tmp_path: Path) -> Path:
    """A directory that passes the model.onnx_dir file check (contents are not read by validation)."""
    d = tmp_path / "onnx"
    d.mkdir()
    (d / "encoder.onnx").write_bytes(b"x")
    (d / "decoder.onnx").write_bytes(b"x")
    return d


def good(onnx: Path, images: Path = IMAGES) -> str:
    return f"""
    model:
      onnx_dir: {onnx}
    output_dir: out
    steps:
      - kind: source.folder
        path: {images}
      - kind: prompt.grid
        points_per_side: 4
      - kind: segment
      - kind: export.coco
    """


def errors_of(path: Path, *overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load_pipeline(path, list(overrides))
    return str(exc.value).splitlines()[1:]


def line_of(err: str) -> tuple[int, int]:
    m = re.search(r"\.yaml:(\d+):(\d+): ", err)
    assert m, err
    return int(m.group(1)), int(m.group(2))


# --- schema ------------------------------------------------------------------------------------------


def test_schema_file_is_in_sync():
    committed = (REPO / "schemas" / "pipeline.schema.json").read_text()
    assert committed == schema_text(pipeline_json_schema()), (
        "schemas/pipeline.schema.json is stale: run `edgesam schema`"
    )


def test_schema_cli_check(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["schema", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["title"] == "EdgeSAM pipeline"
    assert main(["schema", "--out", str(out), "--check"]) == 0
    out.write_text("{}")
    assert main(["schema", "--out", str(out), "--check"]) == 1


def test_schema_lists_every_builtin_kind_and_forbids_unknown_keys():
    schema = json.loads(schema_text(pipeline_json_schema()))
    steps = schema["properties"]["steps"]["items"]
    kinds = set(steps["discriminator"]["mapping"])
    assert kinds == set(registry.BUILTIN_STEPS)
    for ref in steps["oneOf"]:
        d = schema["$defs"][ref["$ref"].split("/")[-1]]
        assert d["additionalProperties"] is False
    grid = schema["$defs"]["PromptGridStep"]["properties"]
    assert {"points_per_side", "crop_n_layers"} <= set(grid)
    refine = schema["$defs"]["RefineStep"]["properties"]
    for knob in ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh", "min_mask_region_area"):
        assert knob in refine
    assert "points_per_batch" in schema["$defs"]["SegmentStep"]["properties"]


# --- loading and errors ------------------------------------------------------------------------------


def test_good_pipeline_resolves_paths_against_the_yaml(tmp_path, onnx_stub):
    p = write(tmp_path, good(onnx_stub))
    pipe = load_pipeline(p)
    assert pipe.output_dir == str(tmp_path / "out")
    assert pipe.executor.type == "local" and pipe.max_errors == 10
    assert [s.kind for s in pipe.steps] == ["source.folder", "prompt.grid", "segment", "export.coco"]
    assert pipe.step_where(1).endswith("p.yaml:7:5")


def test_shared_refine_and_export_all_steps_validate(tmp_path, onnx_stub):
    """The step list the Ray and resume runs share (tests/helpers.py) is a valid pipeline tail."""
    p = write(tmp_path, grid_pipeline_yaml(onnx_stub, IMAGES, "out", steps=REFINE_AND_EXPORT_ALL))
    kinds = [s.kind for s in load_pipeline(p).steps]
    assert kinds[3:] == [
        "refine",
        "export.coco",
        "export.png",
        "export.yolo",
        "export.labelstudio",
        "export.preview",
    ]


def test_wrong_types_unknown_kind_unknown_key_point_at_their_lines(tmp_path, onnx_stub):
    p = write(
        tmp_path,
        f"""
        model:
          onnx_dir: {onnx_stub}
          threads: two
        output_dir: out
        steps:
          - kind: source.folder
            path: {IMAGES}
            recursiv: true
          - kind: prompt.gird
            points_per_side: 4
          - kind: segment
            points_per_batch: -3
          - kind: export.coco
        """,
    )
    errs = errors_of(p)
    assert len(errs) == 4
    by_key = {e.split(": ")[1]: e for e in errs}
    assert line_of(by_key["model.threads"]) == (3, 12)
    assert "valid integer" in by_key["model.threads"]
    assert line_of(by_key["steps.0.recursiv"]) == (8, 5)
    assert "unknown key 'recursiv' (did you mean 'recursive'?)" in by_key["steps.0.recursiv"]
    assert line_of(by_key["steps.1.kind"]) == (9, 11)
    assert "unknown step kind 'prompt.gird' (did you mean 'prompt.grid'?)" in by_key["steps.1.kind"]
    assert line_of(by_key["steps.2.points_per_batch"]) == (12, 23)


@pytest.mark.parametrize(
    ("executor", "key", "hint"),
    [
        ("{type: local, worker: 2}", "worker", "workers"),  # the local executor's own key
        ("{type: local, prefetc: 2}", "prefetc", "prefetch"),
        ("{type: ray, num_worker: 2}", "num_worker", "num_workers"),
        ("{type: ray, adress: auto}", "adress", "address"),
    ],
)
def test_executor_did_you_mean_uses_that_executors_keys(tmp_path, onnx_stub, executor, key, hint):
    text = good(onnx_stub).replace(
        "    output_dir: out\n", f"    output_dir: out\n    executor: {executor}\n"
    )
    errs = errors_of(write(tmp_path, text))
    assert len(errs) == 1, errs
    assert f"executor.{key}: unknown key {key!r} (did you mean {hint!r}?)" in errs[0]
    assert line_of(errs[0])[0] == 4


def test_missing_file_points_at_its_key(tmp_path, onnx_stub):
    p = write_steps(
        tmp_path,
        onnx_stub,
        """
        - kind: source.coco
          annotations: nowhere/instances.json
        - kind: prompt.source_boxes
        - kind: segment
        - kind: export.coco
        """,
    )
    (err,) = errors_of(p)
    assert line_of(err) == (6, 18)
    assert (
        "steps.0.annotations: file not found" in err and str(tmp_path / "nowhere" / "instances.json") in err
    )


def test_missing_onnx_files_and_unknown_model(tmp_path):
    p = write_steps(
        tmp_path,
        tmp_path,
        f"""
        - kind: source.folder
          path: {IMAGES}
        - kind: prompt.grid
        - kind: segment
        - kind: export.coco
        """,
    )
    (err,) = errors_of(p)
    assert line_of(err) == (2, 13) and "lacks" in err and "encoder.onnx" in err
    p.write_text(p.read_text().replace(f"onnx_dir: {tmp_path}", "checkpoint: edge_sam_9x"))
    (err,) = errors_of(p)
    assert line_of(err) == (2, 15) and "unknown model name 'edge_sam_9x'" in err


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param(
            """
            - kind: source.folder
              path: {images}
            - kind: segment
            - kind: prompt.grid
            - kind: export.coco
            - kind: refine
              iterations: 1
            """,
            [
                ((7, 11), "segment needs a prompt step"),
                ((8, 11), "cannot follow segment"),
                ((10, 11), "cannot follow export.coco"),
                ((11, 17), "iterations need box/point prompts"),
            ],
            id="prompt-before-segment",
        ),
        pytest.param(
            """
            - kind: prompt.grid
            - kind: source.folder
              path: {images}
            - kind: segment
            """,
            [(None, "the source step must be the first step"), (None, "needs at least one export step")],
            id="source-first-and-an-export",
        ),
    ],
)
def test_step_order_errors_point_at_the_step(tmp_path, onnx_stub, steps, expected):
    """Each expected message is among the errors, at its (line, column) where one is given."""
    errs = errors_of(write_steps(tmp_path, onnx_stub, steps.format(images=IMAGES)))
    text = "\n".join(errs)
    for where, message in expected:
        assert any(message in e and (where is None or line_of(e) == where) for e in errs), text


def test_source_boxes_needs_an_annotated_source(tmp_path, onnx_stub):
    p = write(
        tmp_path,
        good(onnx_stub).replace("kind: prompt.grid\n        points_per_side: 4", "kind: prompt.source_boxes"),
    )
    (err,) = errors_of(p)
    assert "carries no annotations" in err and line_of(err) == (7, 11)


def test_jsonschema_rejects_what_pydantic_would_coerce(tmp_path, onnx_stub):
    p = write(tmp_path, good(onnx_stub).replace("points_per_side: 4", 'points_per_side: "4"'))
    (err,) = errors_of(p)
    assert "steps.1.points_per_side" in err and "(JSON Schema)" in err and line_of(err) == (8, 22)


def test_yaml_syntax_error_has_a_line(tmp_path):
    p = write(tmp_path, "model: {onnx_dir: x\nsteps: [\n")
    with pytest.raises(ConfigError, match=r"p\.yaml:\d+:\d+: invalid YAML"):
        load_pipeline(p)


def test_env_expansion_types_plain_scalars(tmp_path, onnx_stub, monkeypatch):
    monkeypatch.setenv("PL_PPS", "5")
    monkeypatch.setenv("PL_OUT", "results")
    monkeypatch.delenv("PL_UNSET", raising=False)
    text = good(onnx_stub).replace("points_per_side: 4", "points_per_side: ${PL_PPS}")
    text = text.replace("output_dir: out", "output_dir: ${PL_OUT}/${PL_UNSET:-x}")
    pipe = load_pipeline(write(tmp_path, text))
    assert pipe.steps[1].points_per_side == 5
    assert pipe.output_dir == str(tmp_path / "results" / "x")
    # quoted: stays a string, which the JSON Schema refuses for an integer
    quoted = good(onnx_stub).replace("points_per_side: 4", 'points_per_side: "${PL_PPS}"')
    (err,) = errors_of(write(tmp_path, quoted, "q.yaml"))
    assert "(JSON Schema)" in err
    # an empty default gives null
    monkeypatch.setenv("PL_EMPTY", "")
    assert (
        load_pipeline(
            write(
                tmp_path, good(onnx_stub).replace("max_errors", "x") + "max_errors: ${PL_EMPTY:-}\n", "n.yaml"
            )
        ).max_errors
        is None
    )


def test_unset_env_var_points_at_its_line(tmp_path, onnx_stub, monkeypatch):
    monkeypatch.delenv("PL_NOPE", raising=False)
    p = write(tmp_path, good(onnx_stub).replace("output_dir: out", "output_dir: ${PL_NOPE}"))
    with pytest.raises(ConfigError, match=r"p\.yaml:3:13: environment variable PL_NOPE is not set"):
        load_pipeline(p)


def test_overrides(tmp_path, onnx_stub):
    p = write(tmp_path, good(onnx_stub))
    pipe = load_pipeline(
        p, ["steps[prompt.grid].points_per_side=7", "steps[2].points_per_batch=8", "max_errors=null"]
    )
    assert (
        pipe.steps[1].points_per_side == 7 and pipe.steps[2].points_per_batch == 8 and pipe.max_errors is None
    )
    data = {"steps": [{"kind": "a"}], "executor": {"type": "local"}}
    apply_override(data, "executor={type: ray, num_workers: 3}")
    assert data["executor"] == {"type": "ray", "num_workers": 3}
    for bad in ("nokey", "steps[prompt.none].x=1", "steps[9].x=1", "max_errors.x=1"):
        with pytest.raises(ConfigError, match="--set"):
            apply_override({"steps": [{"kind": "a"}], "max_errors": 1}, bad)


def test_examples_validate(tmp_path, monkeypatch, onnx_stub):
    coco = tmp_path / "coco.json"
    coco.write_text('{"images": [], "annotations": [], "categories": []}')
    monkeypatch.setenv("EDGESAM_IMAGES", str(IMAGES))
    monkeypatch.setenv("EDGESAM_ONNX_DIR", str(onnx_stub))
    monkeypatch.setenv("EDGESAM_COCO", str(coco))
    monkeypatch.setenv("EDGESAM_DETECTIONS", str(coco))
    monkeypatch.setenv("EDGESAM_LS_EXPORT", str(coco))
    names = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert {"quickstart.yaml", "boxes_from_coco.yaml", "labelstudio_preannotate.yaml"} <= set(names)
    for name in names:
        pipe = load_pipeline(EXAMPLES / name)
        assert pipe.model.checkpoint == "edge_sam_3x" and pipe.model.onnx_dir == str(onnx_stub)


def test_validate_cli(tmp_path, onnx_stub, capsys):
    p = write(tmp_path, good(onnx_stub))
    assert main(["validate", str(p), "--no-check-model"]) == 0  # the stub is no real model
    assert json.loads(capsys.readouterr().out)["valid"] is True
    bad = write(tmp_path, good(onnx_stub).replace("points_per_side: 4", "points_per_side: many"), "bad.yaml")
    assert main(["validate", str(bad), "--no-check-model"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:8:22: steps.1.points_per_side:" in err


# --- registry ----------------------------------------------------------------------------------------


def test_builtins_are_registered_with_their_roles():
    reg = registry.load_registry()
    assert set(registry.BUILTIN_STEPS) <= set(reg)
    roles = {k: reg[k].role for k in registry.BUILTIN_STEPS}
    assert roles["source.coco"] == "source" and roles["prompt.grid"] == "prompt"
    assert roles["segment"] == "segment" and roles["refine"] == "refine" and roles["export.yolo"] == "export"


def test_pyproject_entry_points_match_the_builtin_table():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    eps = data.get("project", {}).get("entry-points", {}).get(registry.ENTRY_POINT_GROUP)
    if eps is None:
        pytest.skip(
            f'pyproject.toml does not declare [project.entry-points."{registry.ENTRY_POINT_GROUP}"] yet'
        )
    assert eps == registry.BUILTIN_STEPS


class _CountConfig(StepConfig):
    every: int = 1


class CountSource(SourceStep):
    """A third-party source for the registry test (lists nothing)."""

    Config = _CountConfig

    def items(self):
        return []


@pytest.fixture
def fresh_registry(monkeypatch):
    registry.reset_registry()
    pconfig._pipeline_model.cache_clear()
    yield
    registry.reset_registry()
    pconfig._pipeline_model.cache_clear()


def test_third_party_step_from_an_entry_point(fresh_registry, monkeypatch, tmp_path, onnx_stub):
    group = registry.ENTRY_POINT_GROUP
    fake = [
        metadata.EntryPoint("acme.count", f"{__name__}:CountSource", group),
        metadata.EntryPoint("acme.broken", "no_such_module_xyz:Thing", group),
    ]
    monkeypatch.setattr(registry, "_entry_points", lambda: fake)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = registry.load_registry()
    assert any("acme.broken" in str(w.message) for w in caught)
    assert reg["acme.count"].role == "source" and set(registry.BUILTIN_STEPS) <= set(reg)
    assert "kind" in reg["acme.count"].config_model.model_fields
    p = write(
        tmp_path,
        good(onnx_stub).replace(
            f"kind: source.folder\n        path: {IMAGES}", "kind: acme.count\n        every: 2"
        ),
    )
    pipe = load_pipeline(p)
    assert pipe.steps[0].kind == "acme.count" and pipe.steps[0].every == 2
    bad = write(tmp_path, p.read_text().replace("every: 2", "every: 2\n    extra: 1"), "bad.yaml")
    (err,) = errors_of(bad)
    assert "steps.0.extra: unknown key" in err
    # the committed schema holds only the built-ins
    assert "acme.count" not in schema_text(pipeline_json_schema()) and "acme.count" in schema_text(
        pipeline_json_schema(builtins_only=False)
    )


def test_register_step_api_checks(fresh_registry):
    registry.load_registry()
    with pytest.raises(registry.RegistryError, match="already registered"):
        registry.register_step("source.folder", _CountConfig, CountSource)
    with pytest.raises(registry.RegistryError, match="Step subclass"):
        registry.register_step("acme.x", _CountConfig, object)  # type: ignore[arg-type]

    from pydantic import BaseModel

    class Loose(BaseModel):
        a: int = 1

    with pytest.raises(registry.RegistryError, match="forbid unknown keys"):
        registry.register_step("acme.loose", Loose, CountSource)
    spec = registry.register_step("acme.ok", _CountConfig, CountSource)
    assert registry.register_step("acme.ok", _CountConfig, CountSource) is spec


# --- Ray CPU guard -----------------------------------------------------------------------------------


def test_cpu_budget_refuses_starving_configurations():
    assert cpu_budget(2, None, 2.0) == pytest.approx(0.5)
    assert cpu_budget(2, 0.5, 2.0) == 0.5
    assert cpu_budget(3, None, 16.0) == pytest.approx(5.0)
    with pytest.raises(PipelineError, match=r"2 x 1 = 2 CPUs.*44687.*cpus_per_worker <= 0\.5"):
        cpu_budget(2, 1.0, 2.0)
    with pytest.raises(PipelineError, match="at least"):
        cpu_budget(1, None, 1.0)


def test_ray_cpu_guard_is_a_validation_error(tmp_path, onnx_stub):
    ray = "output_dir: out\n    executor:\n      type: ray\n      num_cpus: 2\n      num_workers: 2\n"
    ray += "      cpus_per_worker: 1"
    p = write(tmp_path, good(onnx_stub).replace("output_dir: out", ray))
    (err,) = errors_of(p)
    assert "executor.cpus_per_worker" in err and "starve" in err and line_of(err) == (8, 20)
