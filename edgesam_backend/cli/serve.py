"""``edgesam serve``: the Label Studio ML backend (see ``edgesam_backend/labelstudio``).

Command-line options override the environment (``labelstudio/settings.py``); :data:`OPTION_ENV` maps
each option to its variable.
"""

from __future__ import annotations

import argparse

from .common import CliError, add_device_argument, add_precision_argument

#: CLI option → environment variable.
OPTION_ENV = {
    "host": "HOST",
    "port": "PORT",
    "model_dir": "MODEL_DIR",
    "onnx_dir": "EDGESAM_ONNX_DIR",
    "checkpoint": "EDGESAM_CHECKPOINT",
    "int8": "EDGESAM_INT8",
    "device": "EDGESAM_DEVICE",
    "precision": "EDGESAM_PRECISION",
    "workers": "WORKERS",
    "threads": "THREADS",
    "log_level": "LOG_LEVEL",
    "label_studio_url": "LABEL_STUDIO_URL",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the Label Studio ML backend (HTTP, port 9090)")
    p.add_argument("--host", help="listen address (env HOST, default 0.0.0.0)")
    p.add_argument("--port", type=int, help="listen port (env PORT, default 9090)")
    p.add_argument("--model-dir", help="directory with encoder.onnx + decoder.onnx (env MODEL_DIR)")
    p.add_argument("--onnx-dir", help="ONNX directory, overrides MODEL_DIR (env EDGESAM_ONNX_DIR)")
    p.add_argument(
        "--checkpoint",
        help="model name or checkpoint when no ONNX directory is found (env EDGESAM_CHECKPOINT)",
    )
    p.add_argument(
        "--int8",
        action="store_const",
        const="true",
        default=None,
        help="use encoder.int8.onnx from the same directory (env EDGESAM_INT8=true)",
    )
    add_device_argument(p, env="EDGESAM_DEVICE")
    add_precision_argument(p, env="EDGESAM_PRECISION")
    p.add_argument("--workers", type=int, help="worker processes (env WORKERS, default 1)")
    p.add_argument("--threads", type=int, help="concurrent requests per worker (env THREADS, default 4)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ... (env LOG_LEVEL, default INFO)")
    p.add_argument("--label-studio-url", help="Label Studio's base URL (env LABEL_STUDIO_URL)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from .. import weights
    from ..labelstudio.serve import serve
    from ..labelstudio.settings import SettingsError
    from ..runtime.resolve import EngineError

    overrides = {env: getattr(args, opt, None) for opt, env in OPTION_ENV.items()}
    try:
        return serve({k: str(v) for k, v in overrides.items() if v is not None})
    except (SettingsError, EngineError, weights.WeightsError) as exc:
        raise CliError(str(exc)) from None
