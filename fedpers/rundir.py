"""The run directory: the single place that evaluation, routing, plots and the audit read.

RUN_DIR/run.json                  settings of the run (model, LoRA, personas, privacy)
RUN_DIR/adapters/<name>/          each adapter in peft format (``global`` and one per persona)
RUN_DIR/metrics.json              per-round metrics and the final evaluation
RUN_DIR/persona-discovery.json    inferred personas chosen from the prompts: K, the public centroid silhouette of
                                  every K tried and the K it favours (:mod:`fedpers.personas.prompt_choice`)
RUN_DIR/run.log                   a simulation's log: the server's and every simulated client's Flower log
                                  (DEBUG included), and the progress lines the terminal showed
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from fedpers.atomic import write_json

if TYPE_CHECKING:  # the layout and the JSON readers serve light commands (registry, help)
    import numpy as np
    from peft import PeftModel

    from fedpers.models.lora import LoraSettings

__all__ = [
    "ADAPTERS",
    "LOG_FILE",
    "METRICS",
    "PERSONA_DISCOVERY",
    "RUN_CONFIG",
    "adapter_dir",
    "load_adapter_file",
    "load_adapters",
    "lora_settings",
    "read_json",
    "save_adapter",
    "write_json",
]

RUN_CONFIG = "run.json"
ADAPTERS = "adapters"
METRICS = "metrics.json"
LOG_FILE = "run.log"
PERSONA_DISCOVERY = "persona-discovery.json"


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (is this a fedpers run directory?)") from None


def adapter_dir(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / ADAPTERS / name


def save_adapter(run_dir: Path, name: str, model: PeftModel, arrays: dict[str, np.ndarray]) -> Path:
    """Save ``arrays`` in peft format (loadable with ``PeftModel.from_pretrained``)."""
    from fedpers.models.lora import load_adapter_arrays

    load_adapter_arrays(model, arrays)
    target = adapter_dir(run_dir, name)
    model.save_pretrained(str(target))
    return target


def load_adapters(run_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every adapter of a run as NumPy arrays keyed like :func:`fedpers.models.adapter_arrays`.

    A file that is missing, cut short or garbled, or holds non-finite values raises
    :class:`fedpers.adapters.AdapterFormatError` naming it (peft writes no digest: a flipped bit in the
    tensor data of a finite value is not detected here; a registry version's SHA-256 list is the check)."""
    root = Path(run_dir) / ADAPTERS
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no adapters in this run directory")
    return {
        d.name: load_adapter_file(d / "adapter_model.safetensors")
        for d in sorted(root.iterdir())
        if d.is_dir()
    }


def load_adapter_file(path: Path) -> dict[str, np.ndarray]:
    """One adapter file's tensors; :class:`fedpers.adapters.AdapterFormatError` naming ``path`` if it cannot be."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    from fedpers.adapters import AdapterFormatError, check_tensors

    try:
        flat = load(Path(path).read_bytes())
    except FileNotFoundError:
        raise AdapterFormatError(f"{path}: missing") from None
    except SafetensorError as err:
        raise AdapterFormatError(f"{path}: not a safetensors file ({err})") from None
    check_tensors(flat, str(path))
    return flat


def lora_settings(run_config: dict) -> LoraSettings:
    from fedpers.models.lora import LoraSettings

    lora = dict(run_config["lora"])
    lora["target_modules"] = tuple(lora["target_modules"])
    return LoraSettings(**lora)
