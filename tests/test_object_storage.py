"""Object storage: sources and output_dir as fsspec URLs.

Fast tests use fsspec's in-process ``memory://`` filesystem (store semantics, listing, globs). The slow
ones start a real S3-compatible HTTP server (moto's ``ThreadedMotoServer``) on a loopback port and run
pipelines against ``s3://`` through s3fs: output identical to a run on local disk, resume after
``kill -9`` with no result lost or duplicated, credentials never written, and a Ray run whose workers
read images from and write results to ``s3://`` themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgesam_backend.pipeline import storage
from edgesam_backend.pipeline.base import PipelineError
from edgesam_backend.pipeline.loader import load_pipeline
from edgesam_backend.pipeline.records import ImageItem, ImageResult
from edgesam_backend.pipeline.runner import run_pipeline
from edgesam_backend.pipeline.store import ResultStore

from .conftest import IMAGES, REPO
from .helpers import free_port, grid_pipeline_yaml

NAMES = ["1.jpeg", "2.jpeg", "3.jpeg", "4.jpeg", "5.jpeg", "6.jpeg"]
#: Distinctive fake credentials: the test greps every output object for them.
KEY_ID, SECRET = "AKIAEDGESAMTESTKEY01", "edgesamSecretValueThatMustNeverLeak"
BUCKET = "edgesam-test"

STEPS = """\
  - kind: refine
    stability_score_thresh: 0.2
  - kind: export.coco
  - kind: export.png
  - kind: export.preview
    max_side: 128
"""


# --- fast: memory:// -----------------------------------------------------------------------------------


def _result(key: str) -> ImageResult:
    return ImageResult(key=key, image_sha256="ab" * 32, width=4, height=3, masks=[], stats={})


def test_store_on_a_url_writes_whole_objects_and_finds_them():
    fsspec = pytest.importorskip("fsspec")
    url = "memory://edgesam-store-test/run"
    store = ResultStore(url + "/")
    store.acquire()  # no lock on object stores: a no-op, not an error
    assert store.url and store.results_dir == url + "/.edgesam/results"
    keys = [f"{i:02d}" + "c" * 30 for i in range(3)]
    assert not store.has(keys[0])
    for k in keys:
        store.write_result(_result(k))
    assert all(store.has(k) for k in keys) and sorted(store.result_keys()) == sorted(keys)
    assert store.read_result(keys[1]).width == 4
    fs = fsspec.filesystem("memory")
    assert fs.isfile(f"/edgesam-store-test/run/.edgesam/results/{keys[0][:2]}/{keys[0]}.json")
    item = ImageItem(index=0, id=1, file_name="a.jpg", path="s3://user:pw@bucket/a.jpg")
    store.record_failure(item, "boom", "decode")
    fails = store.failures()
    assert fails == [
        {"file_name": "a.jpg", "path": "s3://bucket/a.jpg", "id": 1, "stage": "decode", "error": "boom"}
    ]
    store.clear_failure(item)
    assert store.failures() == []
    fs.rm("/edgesam-store-test", recursive=True)


def test_folder_source_lists_a_url_like_a_directory(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    from edgesam_backend.pipeline.base import StepContext
    from edgesam_backend.pipeline.steps.sources import FolderConfig, FolderSource

    fs = fsspec.filesystem("memory")
    for rel in ("b/10.jpg", "b/2.jpg", "a.png", ".hidden/x.jpg", "notes.txt", "b/c/d.jpg"):
        fs.pipe_file(f"/edgesam-src-test/{rel}", b"x")
    ctx = StepContext(tmp_path, tmp_path / "out")
    try:
        src = FolderSource(FolderConfig(path="memory://edgesam-src-test"), ctx)
        items = src.items()
        assert [i.file_name for i in items] == ["a.png", "b/2.jpg", "b/10.jpg", "b/c/d.jpg"]
        assert items[1].path == "memory://edgesam-src-test/b/2.jpg"
        cfg = FolderConfig(path="memory://edgesam-src-test", glob="b/*.jpg")
        assert [i.file_name for i in FolderSource(cfg, ctx).items()] == ["b/2.jpg", "b/10.jpg"]
        cfg = FolderConfig(path="memory://edgesam-src-test", recursive=False)
        assert [i.file_name for i in FolderSource(cfg, ctx).items()] == ["a.png"]
    finally:
        fs.rm("/edgesam-src-test", recursive=True)


def test_files_source_reads_a_list_and_paths_from_urls(tmp_path):
    """``source.files``: a list file at a URL (entries relative to it, or URLs), inline URL ``paths``
    and a URL ``root``; file names are relative to the root, every path is readable by the workers."""
    fsspec = pytest.importorskip("fsspec")
    from edgesam_backend.pipeline.base import StepContext
    from edgesam_backend.pipeline.steps.sources import FilesConfig, FilesSource
    from edgesam_backend.pipeline.worker import read_item

    fs = fsspec.filesystem("memory")
    for rel in ("imgs/a.jpg", "imgs/sub/b.jpg", "other/c.jpg"):
        fs.pipe_file(f"/edgesam-files-test/{rel}", rel.encode())
    fs.pipe_file(
        "/edgesam-files-test/imgs/list.txt",
        b"# the images\na.jpg\n  sub/b.jpg  # second\nmemory://edgesam-files-test/other/c.jpg\n",
    )
    ctx = StepContext(tmp_path, tmp_path / "out")
    lst = "memory://edgesam-files-test/imgs/list.txt"

    def check(raw: dict) -> list[tuple[str, str]]:
        cfg = FilesConfig.model_validate(raw, context={"base_dir": tmp_path})  # as from a YAML file
        items = FilesSource(cfg, ctx).items()
        assert [read_item(it)[0] for it in items] == [
            it.path.split("edgesam-files-test/")[1].encode() for it in items
        ]
        return [(it.file_name, it.path) for it in items]

    try:
        assert check({"list_file": lst}) == [
            ("a.jpg", "memory://edgesam-files-test/imgs/a.jpg"),
            ("sub/b.jpg", "memory://edgesam-files-test/imgs/sub/b.jpg"),
            ("edgesam-files-test/other/c.jpg", "memory://edgesam-files-test/other/c.jpg"),  # outside the root
        ]
        named = check({"list_file": lst, "root": "memory://edgesam-files-test/"})
        assert [n for n, _ in named] == ["imgs/a.jpg", "imgs/sub/b.jpg", "other/c.jpg"]
        inline = check(
            {
                "paths": [
                    "memory://edgesam-files-test/imgs/sub/b.jpg",
                    "memory://edgesam-files-test/other/c.jpg",
                ],
                "root": "memory://edgesam-files-test",
            }
        )
        assert inline == [
            ("imgs/sub/b.jpg", "memory://edgesam-files-test/imgs/sub/b.jpg"),
            ("other/c.jpg", "memory://edgesam-files-test/other/c.jpg"),
        ]
        with pytest.raises(PipelineError, match=r"cannot read memory://edgesam-files-test/nowhere\.txt"):
            FilesSource(FilesConfig(list_file="memory://edgesam-files-test/nowhere.txt"), ctx).items()
        fs.pipe_file("/KEY:pw@edgesam-files-test/empty.txt", b"# nothing\n")  # credentials never shown
        with pytest.raises(PipelineError, match=r"list memory://edgesam-files-test/empty\.txt names no") as e:
            FilesSource(FilesConfig(list_file="memory://KEY:pw@edgesam-files-test/empty.txt"), ctx).items()
        assert "pw" not in str(e.value)
    finally:
        for d in ("/edgesam-files-test", "/KEY:pw@edgesam-files-test"):
            fs.rm(d, recursive=True)


def test_coco_source_reads_annotations_and_images_from_urls(tmp_path):
    """``source.coco``: the instances json at a URL (images next to it by default), or a local json
    with a URL ``images_dir``; boxes and categories as from disk, images readable by the workers."""
    fsspec = pytest.importorskip("fsspec")
    from edgesam_backend.pipeline.base import StepContext
    from edgesam_backend.pipeline.steps.sources import CocoConfig, CocoSource
    from edgesam_backend.pipeline.worker import read_item

    doc = {
        "images": [
            {"id": 7, "file_name": "b.jpg", "width": 50, "height": 40},
            {"id": 3, "file_name": "sub/a.jpg", "width": 20, "height": 10},
        ],
        "annotations": [{"id": 1, "image_id": 7, "bbox": [10, 20, 30, 15], "category_id": 5}],
        "categories": [{"id": 5, "name": "dog"}],
    }
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/edgesam-coco-test/ann/instances.json", json.dumps(doc).encode())
    for rel in ("ann/b.jpg", "ann/sub/a.jpg", "imgs/b.jpg", "imgs/sub/a.jpg"):
        fs.pipe_file(f"/edgesam-coco-test/{rel}", rel.encode())
    local = tmp_path / "instances.json"
    local.write_text(json.dumps(doc))
    ctx = StepContext(tmp_path, tmp_path / "out")

    def check(raw: dict, where: str) -> None:
        src = CocoSource(CocoConfig.model_validate(raw, context={"base_dir": tmp_path}), ctx)
        items = src.items()
        assert [(it.id, it.file_name, it.width) for it in items] == [(7, "b.jpg", 50), (3, "sub/a.jpg", 20)]
        assert [it.path for it in items] == [f"{where}/b.jpg", f"{where}/sub/a.jpg"]
        assert items[0].annotations[0].box == [10, 20, 40, 35] and items[0].annotations[0].label == "dog"
        assert src.categories() == ["dog"]
        base = where.split("edgesam-coco-test/")[1]
        assert [read_item(it)[0] for it in items] == [f"{base}/b.jpg".encode(), f"{base}/sub/a.jpg".encode()]

    try:
        check(
            {"annotations": "memory://edgesam-coco-test/ann/instances.json"}, "memory://edgesam-coco-test/ann"
        )
        check(
            {"annotations": "instances.json", "images_dir": "memory://edgesam-coco-test/imgs/"},
            "memory://edgesam-coco-test/imgs",
        )
        check(
            {
                "annotations": "memory://edgesam-coco-test/ann/instances.json",
                "images_dir": "memory://edgesam-coco-test/imgs",
            },
            "memory://edgesam-coco-test/imgs",
        )
        missing = CocoConfig(annotations="memory://edgesam-coco-test/nowhere.json")
        with pytest.raises(PipelineError, match=r"cannot read memory://edgesam-coco-test/nowhere\.json"):
            CocoSource(missing, ctx).items()
        fs.pipe_file("/KEY:pw@edgesam-coco-test/empty.json", json.dumps({**doc, "images": []}).encode())
        empty = CocoConfig(annotations="memory://KEY:pw@edgesam-coco-test/empty.json")
        with pytest.raises(
            PipelineError, match=r"memory://edgesam-coco-test/empty\.json lists no images"
        ) as e:
            CocoSource(empty, ctx).items()
        assert "pw" not in str(e.value)
    finally:
        for d in ("/edgesam-coco-test", "/KEY:pw@edgesam-coco-test"):
            fs.rm(d, recursive=True)


def test_url_helpers():
    assert storage.is_url("s3://b/k") and storage.is_url("memory://x")
    assert not storage.is_url("/data/x") and not storage.is_url("file:///data/x")
    assert storage.local_path("file:///data/x") == "/data/x"
    assert storage.display("s3://AKIA:secret@bucket/run") == "s3://bucket/run"
    assert storage.join("s3://b/run/", "a", "b.json") == "s3://b/run/a/b.json"
    with pytest.raises(storage.StorageError, match="edgesam-nonexistent-proto"):
        storage.read_bytes("edgesam-nonexistent-proto://x/y")


# --- slow: a real S3 server on loopback ---------------------------------------------------------------


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with the test bucket; the standard AWS_* variables point at it."""
    pytest.importorskip("s3fs", reason="s3:// needs s3fs (pip install 'edgesam-backend[s3]')")
    server_mod = pytest.importorskip("moto.server", reason="needs moto[server] (pip install 'moto[server]')")
    import boto3

    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    for name in NAMES:
        client.upload_file(str(IMAGES / name), BUCKET, f"images/{name}")
    try:
        yield client, env
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _objects(client, prefix: str) -> dict[str, bytes]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"][len(prefix) :]] = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
    return out


def _outputs(client, prefix: str) -> dict[str, bytes]:
    return {k: v for k, v in _objects(client, prefix).items() if not k.startswith(".edgesam/")}


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".edgesam" not in p.relative_to(root).parts
    }


def _yaml(tmp_path: Path, name: str, onnx, images: str, out: str, executor: str = "{type: local}") -> Path:
    d = tmp_path / f"{name}-cfg"
    d.mkdir(exist_ok=True)
    p = d / "pipeline.yaml"  # one file name: the export's description is the YAML's stem
    p.write_text(grid_pipeline_yaml(onnx, images, out, executor, STEPS))
    return p


@pytest.fixture(scope="module")
def disk_reference(onnx_dir, tmp_path_factory):
    """The same pipeline on local disk (images copied from the shared set)."""
    tmp = tmp_path_factory.mktemp("disk")
    images = tmp / "images"
    images.mkdir()
    for n in NAMES:
        shutil.copy(IMAGES / n, images / n)
    summary = run_pipeline(
        load_pipeline(_yaml(tmp, "disk", onnx_dir, str(images), str(tmp / "out"))), progress=False
    )
    assert summary["processed"] == len(NAMES)
    return _tree(tmp / "out")


@pytest.mark.slow
def test_s3_run_matches_disk_and_resumes_after_kill9(s3, onnx_dir, disk_reference, tmp_path):
    client, _env = s3
    out = f"s3://{BUCKET}/runs/kill9"
    yaml = _yaml(tmp_path, "s3", onnx_dir, f"s3://{BUCKET}/images", out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgesam_backend.cli", "run", str(yaml)],  # progress and log lines too
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # its whole console output, checked for the credentials below
    )
    prefix = "runs/kill9/.edgesam/results/"
    deadline = time.monotonic() + 300
    stored = 0
    while time.monotonic() < deadline and proc.poll() is None:
        stored = len(_objects(client, prefix))
        if stored >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, (
        f"the run ended before it could be killed: {proc.stdout.read().decode()[-2000:]}"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    console = proc.stdout.read()  # what the killed run printed (its log and errors)
    proc.stdout.close()
    assert b"edgesam: " in console  # the log and progress lines were printed ...
    assert SECRET.encode() not in console and KEY_ID.encode() not in console, console[-2000:]  # ... clean
    stored = len(_objects(client, prefix))
    assert 1 <= stored < len(NAMES), stored
    assert not _outputs(client, "runs/kill9/"), "no export before the run finished"

    summary = run_pipeline(load_pipeline(yaml), progress=False)
    assert summary["skipped"] == stored and summary["processed"] == len(NAMES) - stored
    assert summary["failed"] == 0 and summary["output_dir"] == out
    assert len(_objects(client, prefix)) == len(NAMES)  # one object per image: none lost, none twice
    got = _outputs(client, "runs/kill9/")
    assert sorted(got) == sorted(disk_reference) and len(got) > len(NAMES)
    for name, data in disk_reference.items():
        assert got[name] == data, name
    assert all(f"s3://{BUCKET}/runs/kill9/" in json.dumps(v) for v in summary["exports"].values())
    for key, data in _objects(client, "runs/kill9/").items():  # credentials never written
        assert SECRET.encode() not in data and KEY_ID.encode() not in data, key
    assert SECRET not in json.dumps(summary)


@pytest.mark.slow
def test_ray_workers_read_and_write_s3(s3, onnx_dir, disk_reference, tmp_path):
    ray = pytest.importorskip("ray", reason="needs ray[data] (pip install 'edgesam-backend[ray]')")
    client, env = s3
    if ray.is_initialized():
        ray.shutdown()
    # the workers get the standard AWS_* chain from their environment (as on a cluster's nodes)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        out = f"s3://{BUCKET}/runs/ray"
        yaml = _yaml(tmp_path, "ray", onnx_dir, f"s3://{BUCKET}/images", out, "{type: ray, num_workers: 1}")
        summary = run_pipeline(load_pipeline(yaml), progress=False)
    finally:
        ray.shutdown()
    assert summary["executor"] == "ray" and summary["processed"] == len(NAMES) and summary["failed"] == 0
    (worker,) = summary["workers"].values()
    assert worker["images"] == len(NAMES) and worker["model_loads"] == 1
    assert len(_objects(client, "runs/ray/.edgesam/results/")) == len(NAMES)
    got = _outputs(client, "runs/ray/")
    assert sorted(got) == sorted(disk_reference)
    for name, data in disk_reference.items():
        assert got[name] == data, name
