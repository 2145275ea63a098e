"""Teacher-embedding cache: the teacher encoder runs once over the dataset; training reads fp16 records.

Layout of ``cache.dir``:

* ``meta.json``: teacher kind and checkpoint, image size, record shape ``[256, S/16, S/16]``, dtype.
  A cache made for another teacher or size is refused.
* ``shard_r{rank}_{k:05d}.npy``: ``(n, 256, S/16, S/16)`` float16, ``n ≤ shard_size``; each written to a
  temporary file and renamed into place (atomic).
* ``manifest_r{rank}.jsonl``: one line per image, appended (and fsynced) after its shard is in place:
  ``{"image_id", "file", "sha256", "original_hw", "input_hw", "shard", "offset"}``.

Building is resumable: images already in a manifest are skipped; a shard that was being written when
the process stopped is simply redone. Under ``torchrun`` each rank caches the images ``i ≡ rank (mod
world)`` into its own shards and manifest; readers merge all manifests.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..fileio import atomic_open, atomic_write_text
from ..runtime import transforms
from .data import DistillDataset

CACHE_FORMAT = 1


class CacheError(RuntimeError):
    """The cache does not match the run, misses an image, or an image changed since it was cached."""


@dataclass(frozen=True)
class CacheEntry:
    image_id: str
    file: str
    sha256: str
    original_hw: tuple[int, int]
    input_hw: tuple[int, int]
    shard: str
    offset: int

    @classmethod
    def from_record(cls, d: dict[str, Any], shard: str, offset: int) -> CacheEntry:
        """The entry of a manifest record ``d`` stored at ``offset`` of ``shard``."""
        return cls(
            d["image_id"],
            d["file"],
            d["sha256"],
            tuple(d["original_hw"]),
            tuple(d["input_hw"]),
            shard,
            offset,
        )


class EmbeddingCache:
    """Read side of the cache (and the manifest bookkeeping of the write side)."""

    def __init__(self, directory: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.meta = self._check_meta(meta)
        self.entries: dict[str, CacheEntry] = {}
        self._shards: dict[str, np.ndarray] = {}
        self.reload()

    def _check_meta(self, meta: dict[str, Any] | None) -> dict[str, Any]:
        path = self.dir / "meta.json"
        if path.is_file():
            found = json.loads(path.read_text())
            if meta is not None:
                diff = {k: (found.get(k), v) for k, v in meta.items() if found.get(k) != v}
                if diff:
                    detail = ", ".join(f"{k}: cache has {a!r}, run wants {b!r}" for k, (a, b) in diff.items())
                    raise CacheError(f"{self.dir} was built for another teacher or size ({detail})")
            return found
        if meta is None:
            raise CacheError(f"{self.dir} has no meta.json: not a teacher-embedding cache")
        atomic_write_text(path, json.dumps(meta, indent=2, sort_keys=True))
        return meta

    def reload(self) -> None:
        """Re-read every manifest (ignoring a torn last line) and keep entries whose shard exists."""
        self.entries.clear()
        for mf in sorted(self.dir.glob("manifest_r*.jsonl")):
            for line in mf.read_text().splitlines():
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if not (self.dir / d["shard"]).is_file():
                    continue
                self.entries[d["image_id"]] = CacheEntry.from_record(d, d["shard"], int(d["offset"]))

    def __contains__(self, image_id: str) -> bool:
        return image_id in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def _shard(self, name: str) -> np.ndarray:
        arr = self._shards.get(name)
        if arr is None:
            arr = np.load(self.dir / name, mmap_mode="r")
            self._shards[name] = arr
        return arr

    def get(self, image_id: str, sha256: str | None = None) -> np.ndarray:
        """The fp16 ``(256, E, E)`` record of ``image_id``; with ``sha256``, check the image is unchanged."""
        e = self.entries.get(image_id)
        if e is None:
            raise CacheError(
                f"image {image_id!r} is not in the cache {self.dir}; run `edgesam distill cache`"
            )
        if sha256 is not None and sha256 != e.sha256:
            raise CacheError(
                f"image {e.file} changed since it was cached (sha256 differs); rebuild the cache"
            )
        return np.asarray(self._shard(e.shard)[e.offset])

    def batch(self, image_ids: list[str], hashes: list[str] | None = None) -> torch.Tensor:
        """fp32 ``(B, 256, E, E)`` tensor of several records."""
        hashes = hashes or [None] * len(image_ids)
        return torch.from_numpy(
            np.stack([self.get(i, h) for i, h in zip(image_ids, hashes, strict=True)])
        ).float()

    # --- write side ---------------------------------------------------------------------------------

    def next_shard_index(self, rank: int) -> int:
        prefix = f"shard_r{rank}_"
        used = [int(e.shard[len(prefix) : -4]) for e in self.entries.values() if e.shard.startswith(prefix)]
        return 1 + max(used, default=-1)

    def write_shard(self, rank: int, records: list[dict[str, Any]], arrays: list[np.ndarray]) -> str:
        """Write one shard atomically, then append its manifest lines (fsynced)."""
        name = f"shard_r{rank}_{self.next_shard_index(rank):05d}.npy"
        with atomic_open(self.dir / name, fsync=True) as f:
            np.save(f, np.stack(arrays).astype(np.float16))
        self._shards.pop(name, None)
        lines = []
        for off, rec in enumerate(records):
            d = {**rec, "shard": name, "offset": off}
            lines.append(json.dumps(d, sort_keys=True))
            self.entries[d["image_id"]] = CacheEntry.from_record(d, name, off)
        with open(self.dir / f"manifest_r{rank}.jsonl", "a") as f:
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return name


def cache_meta(teacher_kind: str, teacher_checkpoint: str | None, image_size: int) -> dict[str, Any]:
    e = image_size // 16
    return {
        "format": CACHE_FORMAT,
        "teacher": teacher_kind,
        "teacher_checkpoint": Path(teacher_checkpoint).name if teacher_checkpoint else "random",
        "image_size": image_size,
        "shape": [256, e, e],
        "dtype": "float16",
    }


class _Images(torch.utils.data.Dataset):
    """Image tensors only (no prompts) for the teacher pass."""

    def __init__(self, ds: DistillDataset, indices: list[int]) -> None:
        self.ds, self.indices = ds, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> dict[str, Any]:
        i = self.indices[j]
        rec = self.ds.records[i]
        img, digest = self.ds.load_image(i)
        resized = transforms.resize_longest_side(img, self.ds.image_size)
        x = transforms.normalize_and_pad(resized, self.ds.image_size)[0]
        return {
            "x": torch.from_numpy(x),
            "record": {
                "image_id": rec.image_id,
                "file": rec.file.name,
                "sha256": digest,
                "original_hw": [int(img.shape[0]), int(img.shape[1])],
                "input_hw": [int(resized.shape[0]), int(resized.shape[1])],
            },
        }


@torch.no_grad()
def build_cache(
    cache: EmbeddingCache,
    teacher_encoder: torch.nn.Module,
    dataset: DistillDataset,
    *,
    shard_size: int = 64,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    amp: bool = True,
    rank: int = 0,
    world: int = 1,
    num_workers: int = 0,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Run ``teacher_encoder`` over this rank's images that are not cached yet; returns stats."""
    device = torch.device(device)
    todo = [i for i in range(rank, len(dataset), world) if dataset.records[i].image_id not in cache]
    stats = {"cached_before": len(cache), "new": len(todo), "seconds": 0.0}
    if not todo:
        return stats
    teacher_encoder.eval().to(device)
    loader = torch.utils.data.DataLoader(
        _Images(dataset, todo), batch_size=batch_size, num_workers=num_workers, collate_fn=list
    )
    use_amp = amp and device.type == "cuda"
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    arrays: list[np.ndarray] = []
    done = 0
    for batch in loader:
        x = torch.stack([b["x"] for b in batch]).to(device)
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            emb = teacher_encoder(x)
        emb = emb.float().to(torch.float16).cpu().numpy()
        for b, e in zip(batch, emb, strict=True):
            records.append(b["record"])
            arrays.append(e)
            if len(records) == shard_size:
                cache.write_shard(rank, records, arrays)
                done += len(records)
                records, arrays = [], []
                log(f"cache: {done}/{len(todo)} images ({time.perf_counter() - t0:.0f}s)")
    if records:
        cache.write_shard(rank, records, arrays)
        done += len(records)
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    log(f"cache: {done} new embeddings in {stats['seconds']}s")
    return stats
