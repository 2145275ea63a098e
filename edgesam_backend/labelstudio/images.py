"""Fetch a task's image bytes: Label Studio URLs with auth, an SSRF guard, size limits and timeouts.

Accepted image references (the value of the ``<Image value="$key">`` task field):

* ``/data/upload/...`` and other paths relative to Label Studio → ``LABEL_STUDIO_URL`` + path, with auth;
* ``/data/local-files/?d=rel/path`` → read from ``LOCAL_FILES_DOCUMENT_ROOT`` when the backend has it
  (the directory must be shared with Label Studio), else downloaded from Label Studio; ``..`` and
  absolute paths are refused either way;
* ``s3://``, ``gs://``, ``azure-blob://``, ``azure-spi://`` → ``/tasks/{id}/presign/?fileuri=<base64url>``
  on Label Studio, which redirects to a presigned URL (or proxies the bytes);
* ``http(s)://`` URLs → only on the Label Studio host, or on a host listed in ``EDGESAM_ALLOWED_HOSTS``
  (``*`` allows any host that resolves to public addresses only);
* ``data:image/...;base64,...`` URIs.

Auth is sent to the Label Studio host only (never to a redirect target elsewhere): a legacy token as
``Authorization: Token <key>``; a Personal Access Token (a JWT refresh token) is exchanged for a
short-lived access token at ``/api/token/refresh/`` and re-exchanged when it expires or on a 401.
Redirects are followed by hand (at most 5), each hop checked again. Hosts other than Label Studio and
explicitly allow-listed ones must resolve to public (global) addresses: no loopback, private,
link-local or metadata addresses. (A DNS answer that changes between the check and the connection
is not covered; pin ``EDGESAM_ALLOWED_HOSTS`` to trusted hosts where that matters.)
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit

import httpx
import numpy as np
from numpy.typing import NDArray

from ..formats.labelstudio.urls import UnsafePathError, local_files_path
from ..runtime.image import ImageError, load_image
from .errors import BadRequest, ImageFetchError
from .settings import Settings

log = logging.getLogger(__name__)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi", "gcs")
MAX_REDIRECTS = 5
Resolver = Callable[[str, int], list[str]]


def _default_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(i[4][0]) for i in infos]


def _origin(url: str) -> tuple[str, str, int]:
    u = urlsplit(url)
    scheme = (u.scheme or "").lower()
    port = u.port or (443 if scheme == "https" else 80)
    return scheme, (u.hostname or "").lower(), port


def _scheme(url: str) -> str:
    """The URL's scheme, lower-case, from parsing (``""`` for a path such as ``/data/x?u=http://y``)."""
    head = url.split("?", 1)[0].split("#", 1)[0]
    if "://" not in head:
        return ""
    return urlsplit(url).scheme.lower() or head.split(":", 1)[0].lower()


def _is_public(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def _jwt_claims(token: str) -> dict | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


class LabelStudioAuth:
    """``Authorization`` headers for Label Studio; exchanges a Personal Access Token when needed."""

    #: Seconds before an access token's ``exp`` at which it is renewed.
    MARGIN = 30.0

    def __init__(self, key: str | None, client: httpx.Client, timeout: float) -> None:
        self.key = key
        self._client = client
        self._timeout = timeout
        self._lock = threading.Lock()
        self._access: str | None = None
        self._expires = 0.0
        claims = _jwt_claims(key) if key else None
        self.kind = (
            "none" if not key else ("legacy" if claims is None else str(claims.get("token_type", "jwt")))
        )

    @property
    def is_pat(self) -> bool:
        return self.kind == "refresh"

    def invalidate(self) -> None:
        with self._lock:
            self._access, self._expires = None, 0.0

    def headers(self, base_url: str) -> dict[str, str]:
        if not self.key:
            return {}
        if self.kind == "legacy":
            return {"Authorization": f"Token {self.key}"}
        if not self.is_pat:  # an access JWT given directly
            return {"Authorization": f"Bearer {self.key}"}
        with self._lock:
            if self._access is None or time.time() >= self._expires:
                self._access, self._expires = self._exchange(base_url)
            return {"Authorization": f"Bearer {self._access}"}

    def _exchange(self, base_url: str) -> tuple[str, float]:
        url = base_url.rstrip("/") + "/api/token/refresh/"
        try:
            r = self._client.post(url, json={"refresh": self.key}, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise ImageFetchError(
                f"cannot reach Label Studio at {url} to exchange the API key: {exc}"
            ) from None
        if r.status_code != 200:
            raise ImageFetchError(
                f"Label Studio refused the Personal Access Token ({r.status_code} from /api/token/refresh/): "
                "check LABEL_STUDIO_API_KEY"
            )
        try:
            access = r.json()["access"]
        except (ValueError, KeyError, TypeError):
            raise ImageFetchError(
                "Label Studio's /api/token/refresh/ answered without an access token"
            ) from None
        claims = _jwt_claims(access) or {}
        exp = float(claims.get("exp", time.time() + 300))
        return access, max(time.time() + 1.0, exp - self.MARGIN)


class ImageFetcher:
    """Resolve and download task images under the policy described in the module docstring.

    Args:
        settings: :class:`Settings` (LS URL/key, allow-list, limits, local-files root, timeout).
        transport: an ``httpx`` transport (tests use ``httpx.MockTransport``).
        resolver: ``(host, port) -> [ip, ...]`` used for the public-address check.
    """

    def __init__(
        self,
        settings: Settings,
        transport: httpx.BaseTransport | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self.settings = settings
        timeout = httpx.Timeout(settings.fetch_timeout, connect=min(5.0, settings.fetch_timeout))
        self.client = httpx.Client(timeout=timeout, follow_redirects=False, transport=transport)
        self.resolver = resolver or _default_resolver
        self._fallback_url: str | None = None
        self._fallback_key: str | None = None
        self._auth = LabelStudioAuth(settings.label_studio_api_key, self.client, settings.fetch_timeout)
        self._fallback_auth: LabelStudioAuth | None = None
        self._fallback_lock = threading.Lock()
        root = settings.local_files_document_root
        self.local_root = Path(root).resolve() if root else None

    def close(self) -> None:
        self.client.close()

    # --- where Label Studio is ----------------------------------------------------------------
    def set_fallback(self, hostname: str | None, access_token: str | None) -> None:
        """Label Studio's address and token as sent by ``/setup``, used only when ``LABEL_STUDIO_URL`` is
        not configured. They travel together: the configured ``LABEL_STUDIO_API_KEY`` is never sent to a
        host that came from a request, and a /setup hostname gets only the token of that same /setup
        (none without one). With ``LABEL_STUDIO_URL`` set, the hostname is ignored and the /setup token
        is used only when no ``LABEL_STUDIO_API_KEY`` is configured."""
        if isinstance(hostname, str) and hostname.startswith(("http://", "https://")):
            url = hostname.rstrip("/")
        elif self.settings.label_studio_url:
            url = None
        else:
            return  # nothing usable: keep what an earlier /setup said
        token = access_token if isinstance(access_token, str) and access_token else None
        if url == self._fallback_url and token == self._fallback_key and self._fallback_auth is not None:
            return
        with self._fallback_lock:
            self._fallback_url, self._fallback_key = url, token
            self._fallback_auth = LabelStudioAuth(token, self.client, self.settings.fetch_timeout)

    @property
    def base_url(self) -> str | None:
        return self.settings.label_studio_url or self._fallback_url

    @property
    def auth(self) -> LabelStudioAuth:
        """The credential for :attr:`base_url`: configured host → configured key (else the /setup
        token); a host from /setup → only the token of that /setup."""
        fallback = self._fallback_auth or LabelStudioAuth(None, self.client, self.settings.fetch_timeout)
        if self.settings.label_studio_url:
            return self._auth if self.settings.label_studio_api_key else fallback
        return fallback

    def _is_ls(self, url: str) -> bool:
        base = self.base_url
        return base is not None and _origin(url) == _origin(base)

    # --- identity -----------------------------------------------------------------------------
    def identity(self, url: str, task_id: int | None = None) -> str:
        """A stable key for the image reference (presigned URLs differ per request; the URI does not)."""
        if not isinstance(url, str) or not url.strip():
            raise BadRequest("the task has no image URL")
        url = url.strip()
        if url.startswith("data:"):
            return "data:sha256:" + hashlib.sha256(url.encode()).hexdigest()
        if url.startswith("/"):
            return f"{self.base_url or ''}{url}"
        return url

    # --- fetching -----------------------------------------------------------------------------
    def fetch(self, url: str, task_id: int | None = None) -> bytes:
        """The image bytes for ``url`` (a task's image reference). Raises :class:`BackendError`s."""
        if not isinstance(url, str) or not url.strip():
            raise BadRequest("the task has no image URL")
        url = url.strip()
        if url.startswith("data:"):
            return self._data_uri(url)
        scheme = _scheme(url)
        if scheme in CLOUD_SCHEMES:
            if task_id is None:
                raise BadRequest(
                    f"cloud storage URI {url!r} needs the task id to be presigned by Label Studio"
                )
            base = self._require_base(url)
            fileuri = base64.urlsafe_b64encode(url.encode()).decode()
            return self._download(f"{base}/tasks/{int(task_id)}/presign/?fileuri={fileuri}")
        if scheme and scheme not in ("http", "https"):
            raise BadRequest(f"unsupported image URL scheme {scheme!r} in {url!r}")
        if not scheme:
            if not url.startswith("/"):
                raise BadRequest(f"image URL {url!r} is neither absolute nor relative to Label Studio")
            self._check_path(urlsplit(url).path, url)
            local = self._local_file(url)
            if local is not None:
                return local
            return self._download(self._require_base(url) + url)
        if self._is_ls(url):
            self._check_path(urlsplit(url).path, url)
            local = self._local_file(urlsplit(url)._replace(scheme="", netloc="").geturl())
            if local is not None:
                return local
        return self._download(url)

    def _require_base(self, url: str) -> str:
        base = self.base_url
        if base is None:
            raise BadRequest(
                f"image URL {url!r} is relative to Label Studio, but its address is unknown: "
                "set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY)"
            )
        return base

    @staticmethod
    def _check_path(path: str, url: str) -> None:
        parts = unquote(path).replace("\\", "/").split("/")
        if ".." in parts:
            raise BadRequest(f"path traversal ('..') is not allowed in image URL {url!r}")

    def _local_file(self, rel_url: str) -> bytes | None:
        """Serve ``/data/local-files/?d=...`` (the path rule of
        :mod:`edgesam_backend.formats.labelstudio.urls`); ``None`` when it must be downloaded instead."""
        try:
            d = local_files_path(rel_url)
        except UnsafePathError as exc:
            raise BadRequest(str(exc)) from None
        if d is None or self.local_root is None:
            return None
        target = (self.local_root / Path(*PurePosixPath(d.replace("\\", "/")).parts)).resolve()
        if not target.is_relative_to(self.local_root):
            raise BadRequest(f"local-files path {d!r} resolves outside LOCAL_FILES_DOCUMENT_ROOT")
        if not target.is_file():
            raise ImageFetchError(f"local file {d!r} not found under LOCAL_FILES_DOCUMENT_ROOT", status=404)
        size = target.stat().st_size
        if size > self.settings.max_image_bytes:
            raise ImageFetchError(
                f"image {d!r} is {size} bytes, over the limit of {self.settings.max_image_bytes}", status=413
            )
        return target.read_bytes()

    def _data_uri(self, url: str) -> bytes:
        head, _, payload = url.partition(",")
        if ";base64" not in head:
            raise BadRequest("only base64 data: URIs are supported for images")
        if len(payload) * 3 // 4 > self.settings.max_image_bytes:
            raise ImageFetchError(
                f"data: URI image is over the limit of {self.settings.max_image_bytes} bytes", 413
            )
        try:
            return base64.b64decode(payload, validate=False)
        except (ValueError, binascii.Error) as exc:
            raise BadRequest(f"data: URI is not valid base64: {exc}") from None

    def _check_host(self, url: str, from_ls_redirect: bool) -> bool:
        """Whether ``url`` may be fetched; returns True when it is the Label Studio host (auth)."""
        scheme, host, port = _origin(url)
        if scheme not in ("http", "https") or not host:
            raise BadRequest(f"unsupported image URL {url!r}")
        if self._is_ls(url):
            return True
        allowed = self.settings.allowed_hosts
        if host in allowed or f"{host}:{port}" in allowed:
            return False
        if not ("*" in allowed or from_ls_redirect):
            ls = self.base_url or "(LABEL_STUDIO_URL not set)"
            raise ImageFetchError(
                f"image host {host!r} is not allowed: only the Label Studio host {ls} and hosts listed in "
                "EDGESAM_ALLOWED_HOSTS are fetched",
                status=403,
            )
        try:
            addrs = self.resolver(host, port)
        except OSError as exc:
            raise ImageFetchError(f"cannot resolve image host {host!r}: {exc}") from None
        bad = [a for a in addrs if not _is_public(a)]
        if not addrs or bad:
            raise ImageFetchError(
                f"image host {host!r} resolves to a non-public address ({', '.join(bad) or 'none'}); "
                "list it in EDGESAM_ALLOWED_HOSTS to allow it",
                status=403,
            )
        return False

    def _download(self, url: str) -> bytes:
        from_ls = False
        retried = False
        hops = 0
        while True:
            is_ls = self._check_host(url, from_ls)
            headers = self.auth.headers(self.base_url or url) if is_ls else {}
            data, status, location = self._get(url, headers)
            if status == 401 and is_ls and self.auth.is_pat and not retried:
                self.auth.invalidate()  # the access token expired early: exchange again once
                retried = True
                continue
            if status in (301, 302, 303, 307, 308) and location:
                hops += 1
                if hops > MAX_REDIRECTS:
                    raise ImageFetchError(f"too many redirects fetching {url!r}")
                from_ls = is_ls
                url = urljoin(url, location)
                continue
            if status in (401, 403) and is_ls:
                raise ImageFetchError(
                    f"Label Studio refused the image download ({status}) for {url!r}: set "
                    "LABEL_STUDIO_API_KEY to a legacy token or a Personal Access Token of a user with "
                    "access to the project"
                )
            if status == 404:
                raise ImageFetchError(f"image not found (404) at {url!r}", status=404)
            if status != 200:
                raise ImageFetchError(f"image download from {url!r} failed with HTTP {status}")
            return data

    def _get(self, url: str, headers: dict[str, str]) -> tuple[bytes, int, str | None]:
        limit = self.settings.max_image_bytes
        deadline = time.monotonic() + self.settings.fetch_timeout
        try:
            with self.client.stream("GET", url, headers=headers) as r:
                if r.status_code != 200:
                    return b"", r.status_code, r.headers.get("location")
                length = r.headers.get("content-length")
                if length is not None and length.isdigit() and int(length) > limit:
                    raise ImageFetchError(
                        f"image at {url!r} is {length} bytes, over the limit of {limit}", 413
                    )
                buf = bytearray()
                for chunk in r.iter_bytes():
                    buf += chunk
                    if len(buf) > limit:
                        raise ImageFetchError(f"image at {url!r} is over the limit of {limit} bytes", 413)
                    if time.monotonic() > deadline:
                        raise ImageFetchError(
                            f"image download from {url!r} took longer than {self.settings.fetch_timeout} s"
                        )
                return bytes(buf), 200, None
        except httpx.TimeoutException:
            raise ImageFetchError(
                f"image download from {url!r} timed out after {self.settings.fetch_timeout} s"
            ) from None
        except httpx.HTTPError as exc:
            raise ImageFetchError(f"cannot reach {url!r}: {exc}") from None


def decode_image(data: bytes, max_pixels: int) -> NDArray[np.uint8]:
    """Image bytes → ``(H, W, 3)`` RGB with EXIF orientation applied; 413 over ``max_pixels``
    (checked from the header, before decoding: decompression bombs), 422 when not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Image.DecompressionBombError as exc:
        # Pillow refuses > 2 x its own limit at open(): a pixel limit, as documented (413)
        raise ImageFetchError(
            f"the task's image is over the pixel limit of {max_pixels} (EDGESAM_MAX_IMAGE_PIXELS): {exc}",
            status=413,
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ImageFetchError("the task's image is not a decodable image", status=422) from None
    if w * h > max_pixels:
        raise ImageFetchError(
            f"the task's image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
            "(EDGESAM_MAX_IMAGE_PIXELS)",
            status=413,
        )
    try:
        return load_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise ImageFetchError(f"the task's image cannot be decoded: {exc}", status=422) from None
