"""The serving path (runtime/, labelstudio/, pipeline/, formats/, and the top-level modules they use) runs
with the core install only: not one module of it imports torch, at import time or while serving.

One subprocess blocks ``torch`` with an import hook that records every attempt (so even a guarded
``try: import torch`` counts), imports every module of the serving packages, then serves: a Label Studio
``/health`` call and a small ``edgesam run`` pipeline on the ONNX files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from .conftest import IMAGES, REPO

#: Packages whose every module is on the serving path (``formats`` once it exists).
SERVING_PACKAGES = ("runtime", "labelstudio", "pipeline", "formats")
#: Top-level modules / packages the serving path imports (only the module itself, not submodules:
#: the CLI also hosts torch commands, imported when such a command runs).
SERVING_MODULES = ("engine", "weights", "fileio", "yamlconfig", "cli")

_SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.util, json, pkgutil, sys

    attempts = []

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                attempts.append(name)
                raise ImportError(f"torch is blocked in this test ({name})")
            return None

    sys.meta_path.insert(0, BlockTorch())
    packages, modules, onnx_dir, pipeline_yaml = json.loads(sys.argv[1])
    imported = []
    for pkg in packages:
        name = "edgesam_backend." + pkg
        if importlib.util.find_spec(name) is None:
            continue
        mod = importlib.import_module(name)
        imported.append(name)
        for info in pkgutil.walk_packages(mod.__path__, name + "."):
            importlib.import_module(info.name)
            imported.append(info.name)
    for name in modules:
        importlib.import_module("edgesam_backend." + name)
        imported.append("edgesam_backend." + name)

    from fastapi.testclient import TestClient
    from edgesam_backend.labelstudio.app import create_app
    from edgesam_backend.labelstudio.settings import Settings

    app = create_app(Settings.from_env({}, onnx_dir=onnx_dir))
    assert TestClient(app).get("/health").status_code == 200

    from edgesam_backend.pipeline import load_pipeline, run_pipeline

    summary = run_pipeline(load_pipeline(pipeline_yaml), progress=False)
    loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    served_attempts = list(attempts)
    # last: "Start Training" looks for torch (find_spec, which the hook records) and must answer 422
    r = TestClient(app).post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    train = [r.status_code, r.json().get("detail", "")]
    print(json.dumps({"attempts": served_attempts, "loaded": loaded, "imported": imported,
                      "version": app.state.backend.model_version, "summary": summary,
                      "train": train}))
    """
)


def test_serving_packages_run_without_torch(onnx_dir: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "1.jpeg").write_bytes((IMAGES / "1.jpeg").read_bytes())
    pipeline_yaml = tmp_path / "p.yaml"
    pipeline_yaml.write_text(
        f"model: {{onnx_dir: {onnx_dir}, threads: 1}}\n"
        "output_dir: out\n"
        "steps:\n"
        f"  - {{kind: source.folder, path: {images}}}\n"
        "  - {kind: prompt.grid, points_per_side: 2}\n"
        "  - {kind: segment}\n"
        "  - {kind: export.coco}\n"
    )
    args = json.dumps([SERVING_PACKAGES, SERVING_MODULES, str(onnx_dir), str(pipeline_yaml)])
    r = subprocess.run(
        [sys.executable, "-c", _SCRIPT, args], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["attempts"] == [] and out["loaded"] == [], out
    for pkg in ("runtime", "labelstudio", "pipeline"):  # each package was really walked
        assert any(m.startswith(f"edgesam_backend.{pkg}.") for m in out["imported"]), pkg
    assert "edgesam_backend.pipeline.steps.segment" in out["imported"]
    assert out["version"].startswith("edgesam-")
    status, detail = out["train"]  # Label Studio's "Start Training" without the [torch] extra
    assert status == 422 and "edgesam-backend[torch]" in detail, out["train"]
    summary = out["summary"]
    assert (summary["images"], summary["processed"], summary["failed"]) == (1, 1, 0), summary
    assert summary["exports"]["export.coco"]["images"] == 1, summary
