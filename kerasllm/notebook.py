"""What only a notebook needs: Colab detection, smoke mode and where a notebook writes its runs.

The notebooks in `notebooks/` stay thin: every step is a kerasllm call. The library parts they
use live with the library and are re-exported here so a notebook needs one import line:

* `LiveLossPlot`, `TimeBudget`: `kerasllm.training.live`
* `attention_maps`, `gradient_norms`: `kerasllm.models.inspect`
* `resolve_corpus`, `shared_file`, `shared_data_dir`, `head_lines`: `kerasllm.data.shared`

    from kerasllm.notebook import LiveLossPlot, resolve_corpus, run_directory
"""

import os
import sys
import tempfile
from pathlib import Path

from kerasllm.data.shared import REPO_ROOT, head_lines, resolve_corpus, shared_data_dir, shared_file
from kerasllm.models.inspect import attention_maps, gradient_norms
from kerasllm.training.live import LiveLossPlot, TimeBudget


def in_colab():
    """True inside Google Colab."""
    return "google.colab" in sys.modules


def smoke_mode():
    """True when `KERASLLM_SMOKE=1`: CI runs every notebook with tiny sizes."""
    return os.environ.get("KERASLLM_SMOKE") == "1"


def run_directory(name):
    """Where a notebook writes run `name`: `$KERASLLM_RUNS/<name>`, else
    `saved_models/notebooks/<name>` in a source checkout, else a temporary folder."""
    if os.environ.get("KERASLLM_RUNS"):
        root = Path(os.environ["KERASLLM_RUNS"])
    elif (REPO_ROOT / "pyproject.toml").is_file():
        root = REPO_ROOT / "saved_models" / "notebooks"  # ignored by git
    else:
        root = Path(tempfile.gettempdir()) / "kerasllm-notebooks"
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


__all__ = [
    "LiveLossPlot",
    "TimeBudget",
    "attention_maps",
    "gradient_norms",
    "head_lines",
    "in_colab",
    "resolve_corpus",
    "run_directory",
    "shared_data_dir",
    "shared_file",
    "smoke_mode",
]
