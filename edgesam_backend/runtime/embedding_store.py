"""A persistent, content-addressed store of image embeddings on disk, shared by the Label Studio backend
(behind its RAM LRU) and the pipeline: the same image is never encoded twice across restarts.

Layout: ``<root>/<namespace>/<digest[:2]>/<digest>.emb``. ``namespace`` names the encoder (its ONNX
file's sha256, shortened), ``digest`` is the sha256 of the image file's bytes, so the key does not
depend on a URL or a path. One file holds one :class:`~.base.ImageEmbedding`::

    b"EDGESAM-EMB1\\n" | uint32 header length | header JSON | embeddings (float32) |
    proposal boxes (float32 K×4) | proposal scores (float32 K) | sha256 of everything before (32 bytes)

Writes go to a unique temporary file in the same folder, are fsynced and renamed into place
(``os.replace`` is atomic), so a crash leaves either the old state or a complete file, and concurrent
writers of the same key (two processes encoding the same image) both write identical content. Reads
verify the checksum; a torn or corrupt file is deleted and counts as a miss.

Bounded in bytes: every hit touches the file's mtime, and when a writer pushes the total over
``max_bytes`` the least recently used files (oldest mtime) are deleted down to 90 % of it. The total is
kept in memory per process and re-counted from disk on start and at every eviction, so several
processes sharing one folder converge on the bound.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
import uuid
from pathlib import Path

import numpy as np

from .base import ImageEmbedding
from .proposals import Proposals

log = logging.getLogger("edgesam_backend.runtime")

MAGIC = b"EDGESAM-EMB1\n"
SUFFIX = ".emb"
DIGEST_BYTES = 32


class EmbeddingStoreError(ValueError):
    """A stored file is not a valid embedding (bad magic, size or checksum)."""


def serialize(emb: ImageEmbedding) -> bytes:
    """One embedding → the file bytes described in the module docstring (checksum included)."""
    e = np.ascontiguousarray(emb.embeddings, dtype=np.float32)
    props = emb.proposals
    boxes = np.zeros((0, 4), np.float32) if props is None else np.ascontiguousarray(props.boxes, np.float32)
    scores = np.zeros((0,), np.float32) if props is None else np.ascontiguousarray(props.scores, np.float32)
    header = json.dumps(
        {
            "shape": list(e.shape),
            "original_hw": [int(v) for v in emb.original_hw],
            "input_hw": [int(v) for v in emb.input_hw],
            "proposals": None if props is None else int(scores.shape[0]),
        }
    ).encode()
    body = b"".join(
        [MAGIC, struct.pack("<I", len(header)), header, e.tobytes(), boxes.tobytes(), scores.tobytes()]
    )
    return body + hashlib.sha256(body).digest()


def deserialize(data: bytes) -> ImageEmbedding:
    """File bytes → the embedding; raises :class:`EmbeddingStoreError` if anything does not add up."""
    if len(data) < len(MAGIC) + 4 + DIGEST_BYTES or not data.startswith(MAGIC):
        raise EmbeddingStoreError("not an embedding file")
    body, digest = data[:-DIGEST_BYTES], data[-DIGEST_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        raise EmbeddingStoreError("checksum mismatch")
    off = len(MAGIC)
    (n,) = struct.unpack_from("<I", body, off)
    off += 4
    try:
        head = json.loads(body[off : off + n])
        shape = tuple(int(v) for v in head["shape"])
        k = head["proposals"]
    except (ValueError, KeyError, TypeError):
        raise EmbeddingStoreError("bad header") from None
    off += n
    size = int(np.prod(shape)) * 4
    nk = 0 if k is None else int(k)
    if len(body) != off + size + nk * 20:
        raise EmbeddingStoreError("truncated file")
    e = np.frombuffer(body, np.float32, count=size // 4, offset=off).reshape(shape).copy()
    off += size
    proposals = None
    if k is not None:
        boxes = np.frombuffer(body, np.float32, count=nk * 4, offset=off).reshape(nk, 4).copy()
        scores = np.frombuffer(body, np.float32, count=nk, offset=off + nk * 16).copy()
        proposals = Proposals(boxes, scores)
    return ImageEmbedding(
        embeddings=e,
        original_hw=(int(head["original_hw"][0]), int(head["original_hw"][1])),
        input_hw=(int(head["input_hw"][0]), int(head["input_hw"][1])),
        proposals=proposals,
    )


class EmbeddingStore:
    """Embeddings on disk under ``root``, keyed by ``(namespace, image sha256)``; thread- and
    process-safe (see the module docstring).

    Args:
        root: the folder (created on demand).
        max_bytes: size bound of all files under ``root``.
        namespace: the encoder's identity (e.g. its sha256); embeddings of other encoders never mix.
    """

    def __init__(self, root: str | os.PathLike[str], max_bytes: int, namespace: str) -> None:
        if not namespace or "/" in namespace or namespace.startswith("."):
            raise ValueError(f"bad embedding-store namespace {namespace!r}")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.namespace = namespace[:32]
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.evictions = 0
        self.corrupt = 0
        self.root.mkdir(parents=True, exist_ok=True)
        self._bytes = self._count()

    @property
    def nbytes(self) -> int:
        return self._bytes

    def path(self, digest: str) -> Path:
        if len(digest) < 8 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a hex sha256: {digest!r}")
        return self.root / self.namespace / digest[:2] / (digest + SUFFIX)

    def _files(self) -> list[tuple[float, int, Path]]:
        out = []
        for p in self.root.glob(f"*/*/*{SUFFIX}"):
            try:
                st = p.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            out.append((st.st_mtime, st.st_size, p))
        return out

    def _count(self) -> int:
        return sum(size for _, size, _ in self._files())

    def get(self, digest: str) -> ImageEmbedding | None:
        """The stored embedding of the image with this sha256, or None (a corrupt file is removed)."""
        p = self.path(digest)
        try:
            data = p.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            with self._lock:
                self.misses += 1
            return None
        try:
            emb = deserialize(data)
        except EmbeddingStoreError as exc:
            log.warning("embedding store: removing %s (%s)", p, exc)
            self._unlink(p, len(data))
            with self._lock:
                self.corrupt += 1
                self.misses += 1
            return None
        try:
            os.utime(p)  # LRU: most recently used = newest mtime
        except FileNotFoundError:
            pass
        with self._lock:
            self.hits += 1
        return emb

    def put(self, digest: str, emb: ImageEmbedding) -> None:
        """Store atomically (temporary file, fsync, rename), then evict beyond ``max_bytes``."""
        data = serialize(emb)
        if len(data) > self.max_bytes:
            return
        p = self.path(digest)
        p.parent.mkdir(parents=True, exist_ok=True)
        existed = p.exists()
        tmp = p.parent / f".{p.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
        with self._lock:
            self.writes += 1
            if not existed:
                self._bytes += len(data)
            over = self._bytes > self.max_bytes
        if over:
            self.evict()

    def evict(self, target: float = 0.9) -> int:
        """Delete the least recently used files until the total is at most ``target · max_bytes``."""
        with self._lock:
            files = sorted(self._files())
            total = sum(size for _, size, _ in files)
            removed = 0
            for _, size, p in files:
                if total <= self.max_bytes * target:
                    break
                try:
                    p.unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
                total -= size
            self._bytes = total
            self.evictions += removed
            return removed

    def _unlink(self, p: Path, size: int) -> None:
        try:
            p.unlink()
        except FileNotFoundError:
            return
        with self._lock:
            self._bytes = max(0, self._bytes - size)

    def __len__(self) -> int:
        return len(self._files())


def store_from_env(namespace: str) -> EmbeddingStore | None:
    """The store named by ``EDGESAM_EMBEDDING_STORE`` (a folder; ``EDGESAM_EMBEDDING_STORE_MB``, default
    4096, bounds it), or None when it is not set. Both the backend and the pipeline read these."""
    root = os.environ.get("EDGESAM_EMBEDDING_STORE", "").strip()
    if not root:
        return None
    mb = float(os.environ.get("EDGESAM_EMBEDDING_STORE_MB", "4096") or 4096)
    return EmbeddingStore(root, int(mb * 1024 * 1024), namespace)
