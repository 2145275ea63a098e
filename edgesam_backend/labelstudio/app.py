"""FastAPI app speaking Label Studio's ML backend protocol (label-studio-ml 2.x conventions).

Routes: ``GET /health`` (and ``/``), ``POST /setup``, ``POST /predict``, ``POST /webhook``,
``GET /versions``, ``GET /metrics`` (Prometheus text). ``/health`` and ``/setup`` never wait for the
model (it is loaded before the server starts) nor for running predictions (they run on the event
loop, predictions on worker threads: interactive clicks and batch jobs have separate thread limits,
so a long batch job cannot starve clicks of threads). ``/webhook`` answers at once; precomputation
runs in the background, after interactive requests. With ``BASIC_AUTH_USER`` set, every route except
``/health`` requires HTTP Basic auth (``/webhook`` too, unless ``EDGESAM_WEBHOOK_AUTH=false``: give the
Label Studio webhook an ``Authorization`` header).

Request bodies (:mod:`.requests`): ``application/json`` only (415 otherwise, so a web page cannot post
here from a browser without a CORS preflight), at most ``EDGESAM_MAX_BODY_BYTES`` counted while
streaming (413), nesting depth bounded (400), context regions and prompt points bounded. A batch request
whose client disconnects stops between decoder batches.

No torch is imported on this path.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from .. import __version__
from ..runtime.base import BasePredictor
from . import openapi
from .errors import BackendError
from .images import ImageFetcher
from .memory import Trimmer
from .metrics import CONTENT_TYPE, Metrics
from .model import EdgeSAMBackend
from .requests import check_context_size, read_json_body, run_cancellable
from .settings import Settings

log = logging.getLogger("edgesam_backend.labelstudio")

ROUTES = ("/", "/health", "/setup", "/predict", "/webhook", "/versions", "/metrics", "/openapi.json")
NO_AUTH = ("/", "/health")


def load_backend_predictor(settings: Settings) -> tuple[BasePredictor, str]:
    """The onnxruntime predictor and a model version derived from the ONNX files' content
    (:func:`load_backend_model` without the encoder digest)."""
    predictor, version, _ = load_backend_model(settings)
    return predictor, version


def serving_onnx_dir(settings: Settings) -> Path | None:
    """The ONNX directory the base model is served from (``EDGESAM_ONNX_DIR``, else ``MODEL_DIR`` or
    ``MODEL_DIR/onnx`` when they hold the files), None when it comes from ``EDGESAM_CHECKPOINT``."""
    from ..runtime.model_files import onnx_files

    if settings.onnx_dir:
        return settings.onnx_dir
    candidates = [settings.model_dir, settings.model_dir / "onnx"]
    return next((Path(d) for d in candidates if onnx_files(d)[0].is_file()), None)


def base_checkpoint(settings: Settings, custom_predictor: bool) -> str | None:
    """The checkpoint a fit of the base model starts from: ``EDGESAM_TRAIN_INIT``, else
    ``EDGESAM_CHECKPOINT`` when the model was resolved from it (None: unknown, ONNX files or a custom
    predictor)."""
    if settings.train_init:
        return settings.train_init
    if custom_predictor or serving_onnx_dir(settings) is not None:
        return None
    return settings.checkpoint


def load_backend_model(settings: Settings) -> tuple[BasePredictor, str, str]:
    """``(predictor, model version, encoder sha256)``; the digest names the embedding store's namespace
    (the pipeline uses the same one).

    ONNX files are looked up in ``EDGESAM_ONNX_DIR``, then ``MODEL_DIR`` and ``MODEL_DIR/onnx``;
    otherwise ``EDGESAM_CHECKPOINT`` (a name or path) is resolved by the model resolver (our export,
    written once, which needs torch; without torch a model name uses the official ONNX files).
    ``EDGESAM_INT8``, ``EDGESAM_DEVICE`` and ``EDGESAM_PRECISION`` apply either way.
    """
    from ..engine import onnx_predictor
    from ..runtime.resolve import resolve_model

    onnx_dir = serving_onnx_dir(settings)
    model = resolve_model(
        None if onnx_dir is not None else settings.checkpoint,
        onnx_dir=onnx_dir,
        int8=settings.int8,
        device=settings.device,
        precision=settings.precision,
    )
    log.info("%s", model.describe())
    predictor = onnx_predictor(model, threads=settings.intra_op_threads)
    return predictor, settings.model_version or model.model_version, model.encoder_sha256


class _Middleware:
    """Pure ASGI: Basic auth, per-route request counts and latency."""

    def __init__(
        self, app: Any, metrics: Metrics, basic_auth: tuple[str, str] | None, webhook_auth: bool = True
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.expected: bytes | None = None
        self.open_paths = NO_AUTH if webhook_auth else (*NO_AUTH, "/webhook")
        if basic_auth:
            self.expected = base64.b64encode(f"{basic_auth[0]}:{basic_auth[1]}".encode())

    def _authorized(self, scope: dict) -> bool:
        if self.expected is None or scope["path"] in self.open_paths:
            return True
        for k, v in scope.get("headers", []):
            if k == b"authorization":
                scheme, _, cred = v.strip().partition(b" ")
                cred = cred.strip()
                try:
                    base64.b64decode(cred, validate=True)
                except (ValueError, binascii.Error):
                    return False
                # auth schemes are case-insensitive (RFC 9110 11.1)
                return scheme.lower() == b"basic" and secrets.compare_digest(cred, self.expected)
        return False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in ROUTES else "other"
        method = scope.get("method", "GET")
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if not self._authorized(scope):
                resp = JSONResponse(
                    {"detail": "authentication required (HTTP Basic)"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="edgesam"'},
                )
                await resp(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.inc(route, method, str(status["code"]))
            self.metrics.latency.observe(time.perf_counter() - t0, route, method)


def create_app(
    settings: Settings | None = None,
    predictor: BasePredictor | None = None,
    *,
    model_version: str | None = None,
    fetcher: ImageFetcher | None = None,
    store_namespace: str | None = None,
) -> FastAPI:
    """Build the app. Without ``predictor`` the model is loaded now (before serving), from settings.
    ``store_namespace`` names the encoder in the embedding store (default: the model version)."""
    settings = settings or Settings.from_env()
    custom = predictor is not None
    if predictor is None:
        predictor, version, store_namespace = load_backend_model(settings)
    else:
        version = settings.model_version or "edgesam"
    version = model_version or version
    metrics = Metrics()
    backend = EdgeSAMBackend(
        settings,
        predictor,
        version,
        fetcher=fetcher,
        metrics=metrics,
        store_namespace=store_namespace,
        checkpoint=base_checkpoint(settings, custom_predictor=custom),
    )
    interactive_limiter = anyio.CapacityLimiter(settings.threads)
    batch_limiter = anyio.CapacityLimiter(max(1, settings.threads // 2))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        backend.close()

    app = FastAPI(
        lifespan=lifespan,
        title="EdgeSAM Label Studio ML backend",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.backend = backend
    app.state.settings = settings
    app.add_middleware(
        _Middleware, metrics=metrics, basic_auth=settings.basic_auth, webhook_auth=settings.webhook_auth
    )
    trimmer = Trimmer()
    app.state.trimmer = trimmer
    metrics.gauge(
        "edgesam_malloc_trims_total", "Times freed memory was returned to the OS.", lambda: trimmer.trims
    )

    @app.exception_handler(BackendError)
    async def _backend_error(request: Request, exc: BackendError) -> JSONResponse:
        log.info("%s %s -> %d: %s", request.method, request.url.path, exc.status, exc.message)
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    async def read_json(request: Request) -> dict[str, Any]:
        return await read_json_body(request, settings.max_body_bytes)

    providers = list(getattr(predictor, "providers", []))
    app.state.providers = providers
    precision = getattr(predictor, "precision", None)
    app.state.precision = precision

    def health_body() -> dict[str, Any]:
        body = {
            "status": "UP",
            "model_class": "EdgeSAM",
            "model_version": backend.model_version,
            "providers": providers,
        }
        if precision is not None:
            body["precision"] = precision
        return body

    @app.get("/")
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return health_body()

    @app.post("/setup", openapi_extra=openapi.SETUP)
    async def setup(request: Request) -> dict[str, Any]:
        return backend.setup(await read_json(request))

    def predict_json(body: dict[str, Any]) -> bytes:
        # serialised here, on the worker thread: RLE lists are long, and FastAPI's generic encoder
        # would walk every int on the event loop; orjson is ~5x faster than json on them
        return orjson.dumps(backend.predict(body))

    @app.post("/predict", openapi_extra=openapi.PREDICT)
    async def predict(request: Request) -> Response:
        body = await read_json(request)
        params = body.get("params")
        interactive = isinstance(params, dict) and bool(params.get("context"))
        if interactive:
            check_context_size(params["context"], settings)
        limiter = interactive_limiter if interactive else batch_limiter
        try:
            if interactive:
                with backend.priority.interactive():
                    content = await anyio.to_thread.run_sync(predict_json, body, limiter=limiter)
            else:
                content = await run_cancellable(request, predict_json, body, limiter)
        except BackendError as exc:
            backend.metrics.prediction_errors.inc("interactive" if interactive else "batch", str(exc.status))
            raise
        finally:
            await anyio.to_thread.run_sync(trimmer.trim)
        return Response(content, media_type="application/json")

    @app.post("/webhook", openapi_extra=openapi.WEBHOOK)
    async def webhook(request: Request) -> JSONResponse:
        status, body = backend.webhook(await read_json(request))
        return JSONResponse(body, status_code=status)

    @app.get("/versions")
    async def versions() -> dict[str, Any]:
        return {"versions": backend.version_names()}

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    return app


def app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory edgesam_backend.labelstudio.app:app_from_env`` (each worker)."""
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return create_app(settings)
