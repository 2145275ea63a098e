"""What every benchmark script does with its result (run them as ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit_result(result: Any, out: Path | None) -> None:
    """Print ``result`` as indented JSON and, with ``out`` (``--out``), write the same text there
    (newline-terminated)."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")
