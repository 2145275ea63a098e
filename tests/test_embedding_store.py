"""The persistent embedding store: byte-exact round trip (with and without proposals), corrupt and
torn files become misses and are removed, the byte bound evicts least recently used files, and
concurrent writers in several processes leave only complete, verifiable files."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from edgesam_backend.runtime.base import ImageEmbedding
from edgesam_backend.runtime.embedding_store import (
    EmbeddingStore,
    EmbeddingStoreError,
    deserialize,
    serialize,
)
from edgesam_backend.runtime.proposals import Proposals


def _emb(seed: int, proposals: bool = False) -> ImageEmbedding:
    rng = np.random.default_rng(seed)
    props = None
    if proposals:
        props = Proposals(
            rng.random((5, 4), dtype=np.float32) * 100, np.sort(rng.random(5, dtype=np.float32))[::-1]
        )
    return ImageEmbedding(
        rng.standard_normal((1, 256, 64, 64), dtype=np.float32), (428, 640), (684, 1024), props
    )


def _digest(i: int) -> str:
    return f"{i:064x}"


def test_round_trip_and_checksum() -> None:
    for props in (False, True):
        e = _emb(1, props)
        back = deserialize(serialize(e))
        assert np.array_equal(back.embeddings, e.embeddings)
        assert back.original_hw == e.original_hw and back.input_hw == e.input_hw
        if props:
            assert np.array_equal(back.proposals.boxes, e.proposals.boxes)
            assert np.array_equal(back.proposals.scores, e.proposals.scores)
        else:
            assert back.proposals is None
    data = bytearray(serialize(_emb(2)))
    data[100] ^= 1
    with pytest.raises(EmbeddingStoreError, match="checksum"):
        deserialize(bytes(data))


def test_corrupt_and_torn_files_are_misses(tmp_path: Path) -> None:
    store = EmbeddingStore(tmp_path, 1 << 30, "enc")
    store.put(_digest(1), _emb(1))
    assert store.get(_digest(1)) is not None
    p = store.path(_digest(1))
    p.write_bytes(p.read_bytes()[:-1000])  # a torn write (what a crash without rename would leave)
    assert store.get(_digest(1)) is None and not p.exists() and store.corrupt == 1
    assert store.get(_digest(2)) is None
    # another namespace (another encoder) never sees these
    store.put(_digest(3), _emb(3))
    assert EmbeddingStore(tmp_path, 1 << 30, "other").get(_digest(3)) is None


def test_byte_bound_evicts_least_recently_used(tmp_path: Path) -> None:
    one = len(serialize(_emb(0)))
    store = EmbeddingStore(tmp_path, int(one * 3.5), "enc")
    for i in range(3):
        store.put(_digest(i), _emb(i))
        os.utime(store.path(_digest(i)), (1000 + i, 1000 + i))
    assert store.get(_digest(0)) is not None  # now the most recently used
    store.put(_digest(3), _emb(3))  # over the bound: the oldest (1, then 2) go
    assert store.nbytes <= store.max_bytes * 0.9 + 1
    assert store.path(_digest(0)).exists() and store.path(_digest(3)).exists()
    assert not store.path(_digest(1)).exists()
    assert store.evictions >= 1
    # a new process-level view counts what is on disk
    assert EmbeddingStore(tmp_path, int(one * 3.5), "enc").nbytes == store.nbytes


def _writer(root: str, seed: int) -> None:
    store = EmbeddingStore(root, 1 << 30, "enc")
    for i in range(6):
        store.put(_digest(i % 3), _emb(i % 3))  # the same keys from every process
        store.get(_digest((i + seed) % 3))


def test_concurrent_writers_in_processes(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), s)) for s in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = EmbeddingStore(tmp_path, 1 << 30, "enc")
    for i in range(3):
        e = store.get(_digest(i))
        assert e is not None and np.array_equal(e.embeddings, _emb(i).embeddings)
    assert not list(tmp_path.rglob("*.tmp")) and store.corrupt == 0


def test_precompute_folder_command_shares_the_pipelines_namespace(
    onnx_dir: Path, tmp_path: Path, capsys
) -> None:
    """``edgesam precompute --folder``: encodes each image once (a second run encodes nothing), under the
    encoder's sha256 — the namespace the pipeline worker and ``edgesam serve`` use for the same files."""
    from edgesam_backend.cli import main
    from edgesam_backend.runtime.resolve import cached_sha256

    from .conftest import IMAGES

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("1.jpeg", "2.jpeg"):
        (folder / name).write_bytes((IMAGES / name).read_bytes())
    (folder / "notes.txt").write_text("not an image")
    store = tmp_path / "store"
    argv = ["precompute", "--store", str(store), "--folder", str(folder), "--onnx-dir", str(onnx_dir)]
    assert main(argv) == 0
    assert "2 encoded" in capsys.readouterr().out
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "0 encoded" in out and "2 already stored" in out
    ns = cached_sha256(onnx_dir / "encoder.onnx")[:32]
    assert sorted(p.parent.parent.name for p in store.glob("*/*/*.emb")) == [ns, ns]
