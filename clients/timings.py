"""Where a ClientApp process spends its time, for the deployment benchmark (:mod:`simulations.bench_deploy`).

Off unless ``FEDPERS_CLIENT_TIMINGS`` names a file. Then :func:`timing_mod` appends one JSON line per
message to it: when the server created the message, when this process started, when the ClientApp
began and finished handling it, the handler's own split (``prepare``: model and data, ``answer``:
training; or ``worker``: the round trip to the device worker), and which heavy libraries the process
had imported by then. Times and stage names only: nothing of the user's data.
"""

from __future__ import annotations

import json
import os
import sys
import time

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from clients.warm_clientapp import TASK_ARRIVED_ENV

TIMINGS_ENV = "FEDPERS_CLIENT_TIMINGS"
HEAVY_MODULES = ("torch", "transformers", "peft", "opacus")
LOADED_AT = time.time()
"""When the ClientApp's modules were being imported (this one among the first of them)."""
TIMINGS: dict[str, dict[str, float]] = {}
"""Filled while a message is handled (``handler``: the split above); :func:`timing_mod` writes and clears it."""


def process_started() -> float | None:
    """When this process started (Unix time, to the kernel's clock tick); ``None`` off Linux. A process
    started ahead of its task (:mod:`clients.warm_clientapp`) counts from when its task arrived."""
    arrived = os.environ.get(TASK_ARRIVED_ENV)
    if arrived:
        return float(arrived)
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])  # field 22, starttime, counting from field 3
    except (OSError, IndexError, ValueError):
        return None
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age


def timing_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Record how long this message took, and where (see the module docstring)."""
    path = os.environ.get(TIMINGS_ENV)
    if not path:
        return call_next(msg, context)
    stage = msg.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE)
    TIMINGS.clear()
    started = time.time()
    try:
        return call_next(msg, context)
    finally:
        entry = {
            "node_id": context.node_id,
            "round": msg.metadata.group_id,
            "message_type": msg.metadata.message_type,
            "stage": stage,
            "created_at": msg.metadata.created_at,
            "process_started": process_started(),
            "app_loaded": LOADED_AT,
            "handler_started": started,
            "handler_ended": time.time(),
            "handler": TIMINGS.get("handler", {}),
            "heavy_modules": [m for m in HEAVY_MODULES if m in sys.modules],
        }
        with open(path, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
