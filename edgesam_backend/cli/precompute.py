"""``edgesam precompute``: fill the persistent embedding store for a folder or a Label Studio project
(see ``edgesam_backend/labelstudio/fill_store.py``); the backend and the pipeline then find every
image already encoded."""

from __future__ import annotations

import argparse

from .common import CliError, add_device_argument, add_precision_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("precompute", help="encode images into the persistent embedding store ahead of time")
    p.add_argument("--store", help="store folder (env EDGESAM_EMBEDDING_STORE)")
    p.add_argument("--store-mb", type=float, help="store size bound in MiB (env EDGESAM_EMBEDDING_STORE_MB)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--folder", help="encode every image under this folder")
    src.add_argument("--project", type=int, help="encode every task image of this Label Studio project")
    p.add_argument("--label-studio-url", help="Label Studio's address (env LABEL_STUDIO_URL)")
    p.add_argument("--onnx-dir", help="ONNX directory (env EDGESAM_ONNX_DIR)")
    p.add_argument("--checkpoint", help="model name or checkpoint (env EDGESAM_CHECKPOINT)")
    p.add_argument("--int8", action="store_true", default=None, help="int8 encoder (env EDGESAM_INT8)")
    add_device_argument(p)
    add_precision_argument(p, env="EDGESAM_PRECISION")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..labelstudio.app import load_backend_model
    from ..labelstudio.fill_store import fill_from_folder, fill_from_project
    from ..labelstudio.images import ImageFetcher
    from ..labelstudio.lsapi import LabelStudioAPI
    from ..labelstudio.settings import Settings, SettingsError
    from ..runtime.embedding_store import EmbeddingStore

    try:
        settings = Settings.from_env(
            None,
            embedding_store=args.store,
            embedding_store_mb=args.store_mb,
            label_studio_url=args.label_studio_url,
            onnx_dir=args.onnx_dir,
            checkpoint=args.checkpoint,
            int8=args.int8,
            device=getattr(args, "device", None),
            precision=getattr(args, "precision", None),
        )
    except SettingsError as exc:
        raise CliError(str(exc)) from None
    if settings.embedding_store is None:
        raise CliError("no store: pass --store or set EDGESAM_EMBEDDING_STORE")
    predictor, version, encoder_sha = load_backend_model(settings)
    store = EmbeddingStore(
        settings.embedding_store, int(settings.embedding_store_mb * 1024 * 1024), encoder_sha
    )
    if args.folder:
        rep = fill_from_folder(args.folder, store, predictor, settings.max_image_pixels)
    else:
        fetcher = ImageFetcher(settings)
        api = LabelStudioAPI(
            settings.label_studio_url, settings.label_studio_api_key, fetcher.client, settings.fetch_timeout
        )
        if not api.configured:
            raise CliError(
                "--project needs LABEL_STUDIO_URL (or --label-studio-url) and LABEL_STUDIO_API_KEY"
            )
        rep = fill_from_project(api, fetcher, args.project, store, predictor, settings.max_image_pixels)
    print(
        f"precompute ({version}): {rep.encoded} encoded ({rep.encode_seconds:.1f} s), {rep.cached} already "
        f"stored, {rep.failed} failed; store {store.nbytes / 2**20:.1f} MiB in {settings.embedding_store}"
    )
    return 0 if rep.failed == 0 else 1
