"""The report reads datasets, never models: importing ``reports`` loads neither torch nor
transformers.

Null hypothesis: nothing ``reports`` imports (its own modules and the parts of ``robustness`` it
reads datasets with) needs torch or transformers. Checked in a fresh interpreter whose import
system refuses both, so a later test that imports them cannot hide an import here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BLOCKED = """
import sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} is refused here")
        return None

sys.meta_path.insert(0, Refuse())
import reports
import robustness.measure.results
print("ok")
"""


def test_reports_imports_neither_torch_nor_transformers():
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
