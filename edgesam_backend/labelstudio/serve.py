"""``edgesam serve``: run the Label Studio ML backend under uvicorn.

Command-line options override the environment (see :mod:`.settings`); they are written back into the
environment so that ``WORKERS`` > 1 worker processes (which build the app from the environment) see them.
The model is loaded before the port is bound, so ``/health`` answers only once it can predict.
"""

from __future__ import annotations

import argparse
import logging
import os

from .settings import Settings

#: CLI option → environment variable.
OPTION_ENV = {
    "host": "HOST",
    "port": "PORT",
    "model_dir": "MODEL_DIR",
    "onnx_dir": "EDGESAM_ONNX_DIR",
    "checkpoint": "EDGESAM_CHECKPOINT",
    "workers": "WORKERS",
    "threads": "THREADS",
    "log_level": "LOG_LEVEL",
    "label_studio_url": "LABEL_STUDIO_URL",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="listen address (env HOST, default 0.0.0.0)")
    p.add_argument("--port", type=int, help="listen port (env PORT, default 9090)")
    p.add_argument("--model-dir", help="directory with encoder.onnx + decoder.onnx (env MODEL_DIR)")
    p.add_argument("--onnx-dir", help="ONNX directory, overrides MODEL_DIR (env EDGESAM_ONNX_DIR)")
    p.add_argument(
        "--checkpoint",
        help="model name or checkpoint when no ONNX directory is found (env EDGESAM_CHECKPOINT)",
    )
    p.add_argument("--workers", type=int, help="worker processes (env WORKERS, default 1)")
    p.add_argument("--threads", type=int, help="concurrent requests per worker (env THREADS, default 4)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ... (env LOG_LEVEL, default INFO)")
    p.add_argument("--label-studio-url", help="Label Studio's base URL (env LABEL_STUDIO_URL)")


def serve(args: argparse.Namespace) -> int:
    """Run until interrupted. Raises ``SettingsError`` / ``EngineError`` for bad configuration."""
    import uvicorn

    from .app import create_app

    for opt, env in OPTION_ENV.items():
        v = getattr(args, opt, None)
        if v is not None:
            os.environ[env] = str(v)
    settings = Settings.from_env()
    level = settings.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("edgesam_backend.labelstudio")
    common = {
        "host": settings.host,
        "port": settings.port,
        "log_level": level.lower(),
        "timeout_graceful_shutdown": 5,
    }
    if settings.workers > 1:
        log.info("starting %d workers on %s:%d", settings.workers, settings.host, settings.port)
        uvicorn.run(
            "edgesam_backend.labelstudio.app:app_from_env", factory=True, workers=settings.workers, **common
        )
        return 0
    app = create_app(settings)
    log.info(
        "EdgeSAM Label Studio backend %s on %s:%d (Label Studio: %s)",
        app.state.backend.model_version,
        settings.host,
        settings.port,
        settings.label_studio_url or "from /setup",
    )
    uvicorn.run(app, **common)
    return 0
