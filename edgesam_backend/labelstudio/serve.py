"""``edgesam serve``: run the Label Studio ML backend under uvicorn.

Command-line options (parsed in ``cli/serve.py``) override the environment (see :mod:`.settings`); they
are written into the environment so that ``WORKERS`` > 1 worker processes (which build the app from the
environment) see them.
The model is loaded before the port is bound, so ``/health`` answers only once it can predict.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from .settings import Settings


def serve(env_overrides: Mapping[str, str]) -> int:
    """Run until interrupted. ``env_overrides`` (variable → value, from the command line) are written
    into the environment first. Raises ``SettingsError`` / ``EngineError`` for bad configuration."""
    import uvicorn

    from .app import create_app

    os.environ.update(env_overrides)
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
        "EdgeSAM Label Studio backend %s (%s%s) on %s:%d (Label Studio: %s)",
        app.state.backend.model_version,
        ", ".join(app.state.providers) or "custom predictor",
        f", {app.state.precision}" if app.state.precision else "",
        settings.host,
        settings.port,
        settings.label_studio_url or "from /setup",
    )
    uvicorn.run(app, **common)
    return 0
