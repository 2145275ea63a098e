"""The Ray executor on a local Ray (2 CPUs): same final output as the local executor, resume across
executors, the CPU-starvation guard, and ``gpus_per_worker`` on fake GPUs (Ray's ``num_gpus``) and on
a cluster without any. Needs the ``[ray]`` extra."""

from __future__ import annotations

import shutil
import textwrap
import time
import types

import pytest

from edgesam_backend.pipeline.base import PipelineError
from edgesam_backend.pipeline.loader import load_pipeline
from edgesam_backend.pipeline.runner import run_pipeline

from .conftest import IMAGES
from .helpers import REFINE_AND_EXPORT_ALL

ray = pytest.importorskip(
    "ray", reason="the Ray executor needs `ray[data]` (pip install 'edgesam-backend[ray]')"
)

pytestmark = pytest.mark.slow

YAML = (
    """
model:
  onnx_dir: {onnx}
executor: {executor}
output_dir: out
steps:
  - kind: source.folder
    path: {images}
  - kind: prompt.grid
    {grid}
  - kind: segment
"""
    + REFINE_AND_EXPORT_ALL
)


@pytest.fixture(scope="module")
def local_ray(request):
    """A local Ray of 2 CPUs and ``request.param`` GPUs (0 unless a test parametrizes ``local_ray``
    indirectly; Ray advertises and assigns them, nothing here runs on a GPU). A test with another
    GPU count gets a fresh Ray: pytest tears the module's instance down and groups the tests by it."""
    gpus = getattr(request, "param", 0)
    ray.init(num_cpus=2, num_gpus=gpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    for name in ("1.jpeg", "2.jpeg", "3.jpeg", "groceries.jpg"):
        shutil.copy(IMAGES / name, d / name)
    return d


GRID = "points_per_side: 2"
#: coverage-driven everything mode: 8x8 grid in 3 nested levels, stability-accepted masks cover
COVERAGE = (
    "strategy: coverage\n    points_per_side: 8\n    coverage_stability_thresh: 0.2\n    max_prompts: 40"
)


def pipeline(tmp_path, onnx_dir, images, executor: str, name: str, grid: str = GRID):
    (tmp_path / f"{name}-cfg").mkdir(exist_ok=True)
    p = tmp_path / f"{name}-cfg" / "pipeline.yaml"  # same file name: the export's description is its stem
    text = textwrap.dedent(YAML).format(onnx=onnx_dir, images=images, executor=executor, grid="{grid}")
    p.write_text(text.replace("{grid}", grid))
    return load_pipeline(p, [f"output_dir={tmp_path / name}"])


def tree(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".edgesam" not in p.relative_to(root).parts
    }


def test_ray_executor_matches_local(local_ray, onnx_dir, images, tmp_path):
    local = run_pipeline(pipeline(tmp_path, onnx_dir, images, "{type: local}", "local"), progress=False)
    ray_pipe = pipeline(tmp_path, onnx_dir, images, "{type: ray, num_workers: 2}", "ray")
    remote = run_pipeline(ray_pipe, progress=False)
    assert remote["executor"] == "ray" and remote["processed"] == 4 and remote["failed"] == 0
    assert remote["masks"] == local["masks"] > 0 and remote["config_hash"] == local["config_hash"]
    a, b = tree(tmp_path / "local"), tree(tmp_path / "ray")
    assert sorted(a) == sorted(b) and len(a) > 10
    for name in a:
        assert a[name] == b[name], name
    # resume works across executors: Ray finds everything the local run stored
    again = run_pipeline(
        pipeline(tmp_path, onnx_dir, images, "{type: ray, num_workers: 2}", "local"), progress=False
    )
    assert again["skipped"] == 4 and again["processed"] == 0
    assert tree(tmp_path / "local") == a


def test_ray_matches_local_in_coverage_mode(local_ray, onnx_dir, images, tmp_path):
    """The coverage-driven everything mode gives byte-identical outputs on both executors."""
    local = run_pipeline(
        pipeline(tmp_path, onnx_dir, images, "{type: local}", "cl", COVERAGE), progress=False
    )
    remote = run_pipeline(
        pipeline(tmp_path, onnx_dir, images, "{type: ray, num_workers: 2}", "cr", COVERAGE), progress=False
    )
    assert remote["executor"] == "ray" and remote["processed"] == 4 and remote["failed"] == 0
    assert remote["masks"] == local["masks"] > 0
    a, b = tree(tmp_path / "cl"), tree(tmp_path / "cr")
    assert sorted(a) == sorted(b) and len(a) > 10
    for name in a:
        assert a[name] == b[name], name


def test_ray_executor_records_failures(local_ray, onnx_dir, images, tmp_path):
    (images / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    summary = run_pipeline(
        pipeline(tmp_path, onnx_dir, images, "{type: ray, num_workers: 1}", "f"), progress=False
    )
    assert summary["failed"] == 1 and summary["failures"][0]["file_name"] == "broken.jpg"
    assert summary["failures"][0]["stage"] == "decode" and summary["processed"] == 4


def test_ray_refuses_to_starve_the_cluster(local_ray, onnx_dir, images, tmp_path):
    from edgesam_backend.pipeline.ray_executor import run_ray

    cfg = types.SimpleNamespace(address=None, num_workers=2, cpus_per_worker=1.0, num_cpus=None)
    with pytest.raises(PipelineError, match=r"starve Ray Data's read tasks.*cpus_per_worker <= 0\.5"):
        run_ray({"config_hash": "x", "output_dir": str(tmp_path)}, [], [], None, lambda o: True, cfg)  # type: ignore[arg-type]


@pytest.mark.parametrize("local_ray", [2], indirect=True)
def test_fractional_gpus_per_worker_on_fake_gpus(local_ray, onnx_dir, images, tmp_path):
    """Two actors of 0.5 GPU each on a Ray advertising 2 GPUs: the run completes and the summary names
    the GPU Ray assigned to each actor."""
    assert ray.cluster_resources().get("GPU") == 2
    ex = "{type: ray, num_workers: 2, gpus_per_worker: 0.5}"
    s = run_pipeline(pipeline(tmp_path, onnx_dir, images, ex, "gpu"), progress=False)
    assert s["processed"] == 4 and s["failed"] == 0
    assert sum(w["images"] for w in s["workers"].values()) == 4
    for w in s["workers"].values():
        assert len(w["gpus"]) == 1 and w["gpus"][0] in ("0", "1"), s["workers"]


def test_gpus_per_worker_on_a_cluster_without_gpus_fails_fast(local_ray, onnx_dir, images, tmp_path):
    assert ray.cluster_resources().get("GPU", 0) == 0
    ex = "{type: ray, num_workers: 1, gpus_per_worker: 0.5}"
    t0 = time.monotonic()
    with pytest.raises(PipelineError, match=r"gpus_per_worker 0\.5 but the Ray cluster has 0 GPUs"):
        run_pipeline(pipeline(tmp_path, onnx_dir, images, ex, "nogpu"), progress=False)
    assert time.monotonic() - t0 < 120  # an error, not a wait for resources that never come
