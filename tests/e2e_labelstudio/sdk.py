"""Label Studio's own brush RLE code (``label_studio_sdk.converter.brush``), run inside the Label Studio
venv (the sdk is heavy, so it is not a dependency of this project)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

_DECODE = """
import json, sys, numpy as np
from label_studio_sdk.converter.brush import decode_rle
items = json.load(open(sys.argv[1]))
out = {}
for i, it in enumerate(items):
    flat = decode_rle(it["rle"])
    out[f"m{i}"] = np.reshape(flat, [it["height"], it["width"], 4])[:, :, 3]
np.savez(sys.argv[2], **out)
"""

_ENCODE = """
import sys, numpy as np
from label_studio_sdk.converter.brush import mask2rle
masks = np.load(sys.argv[1])
import json
json.dump({k: [int(v) for v in mask2rle(masks[k].astype(np.uint8) * 255)] for k in masks.files},
          open(sys.argv[2], "w"))
"""


def sdk_decode(venv: Path, items: list[dict], workdir: Path) -> list[np.ndarray]:
    """Decode ``[{"rle", "height", "width"}]`` with the sdk's ``decode_rle`` → alpha channels (H, W) uint8."""
    src, dst = workdir / "sdk_in.json", workdir / "sdk_out.npz"
    src.write_text(json.dumps(items))
    subprocess.run([str(venv / "bin" / "python"), "-c", _DECODE, str(src), str(dst)], check=True, timeout=300)
    with np.load(dst) as z:
        return [z[f"m{i}"] for i in range(len(items))]


def sdk_encode(venv: Path, masks: dict[str, np.ndarray], workdir: Path) -> dict[str, list[int]]:
    """Encode bool masks with the sdk's ``mask2rle`` (foreground 255)."""
    src, dst = workdir / "sdk_masks.npz", workdir / "sdk_rles.json"
    np.savez(src, **masks)
    subprocess.run([str(venv / "bin" / "python"), "-c", _ENCODE, str(src), str(dst)], check=True, timeout=300)
    return json.loads(dst.read_text())
