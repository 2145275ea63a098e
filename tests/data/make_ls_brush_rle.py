"""Regenerate ``ls_brush_rle.json``: Label Studio's own brush RLE (``label_studio_sdk`` 2.1.2, the version
Label Studio 1.23.2 pins) for a few masks, so the unit suite checks byte-identity without the sdk.

Run with the sdk's interpreter: ``<venv>/bin/python tests/data/make_ls_brush_rle.py`` (numpy only
besides the sdk). Each entry: ``shape`` (H, W), ``bits`` (base64 of ``np.packbits`` of the row-major
mask) and ``rle`` (``mask2rle(mask * 255)``).
"""

import base64
import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
from label_studio_sdk.converter.brush import mask2rle


def masks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    blob = np.zeros((120, 160), bool)
    blob[30:75, 50:110] = True
    long_runs = np.zeros((200, 400), bool)  # 320000 values: runs split at 65536
    long_runs[100:, 200:] = True
    checker = (np.indices((9, 14)).sum(axis=0) % 2).astype(bool)
    return {
        "blob": blob,
        "noise": rng.random((37, 53)) > 0.7,
        "full": np.ones((30, 20), bool),
        "empty": np.zeros((16, 12), bool),
        "tiny": np.array([[True]]),
        "long_runs": long_runs,
        "checker": checker,
    }


def main() -> None:
    out = {"label_studio_sdk": version("label-studio-sdk"), "masks": {}}
    for name, m in masks().items():
        out["masks"][name] = {
            "shape": list(m.shape),
            "bits": base64.b64encode(np.packbits(m.reshape(-1)).tobytes()).decode("ascii"),
            "rle": [int(v) for v in mask2rle(m.astype(np.uint8) * 255)],
        }
    path = Path(__file__).with_name("ls_brush_rle.json")
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
