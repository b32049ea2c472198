"""The server's checkpoint of a deployment run: everything a resumed run needs, written after every round.

    RUN_DIR/checkpoint/checkpoint.json           the commit point: round, run id, settings, history, ...
    RUN_DIR/checkpoint/round-NNNN.safetensors    the tensors of that round: every adapter and the server
                                                 optimizers' state

After round ``r`` has been applied (or has failed and is final), the server writes the round's tensors
to ``round-r.safetensors`` and then ``checkpoint.json``, each with :mod:`fedpers.atomic` (temporary file,
fsync, rename, fsync of the folder); only then is the previous round's tensor file removed. A crash at
any point leaves either the previous checkpoint (``checkpoint.json`` still names the previous tensor
file, which still exists) or the new one, never a mixture. ``checkpoint.json`` carries the SHA-256 of
the tensor file and a SHA-256 of its own content (``digest``): a damaged checkpoint is refused, never
half-read.

What a checkpoint holds (:class:`Checkpoint`): the completed round, the fedpers run id (the devices key
their DP plan, persona choice and cached uploads by it, so a resumed run keeps it), the settings, every
adapter (``global`` and one per persona), the personas trained so far, each server optimizer's state
(FedAdam's ``t``, ``m_t``, ``v_t``; FedAvg has none), the per-round records of ``metrics.json``, the
SecAgg+ sessions' records, the layered weights, the text of the server's user-level DP ledgers and the
length and SHA-256 of the received-wire manifest at that point. A resumed run restores all of them, so
nothing of a completed round is repeated or counted twice, and what a round that did not complete left
behind (ledger events, manifest lines) is set aside.

A resumed run is asked for explicitly: ``fedpers-server run --resume RUN_DIR`` writes
``checkpoint/resume.json`` (:func:`request_resume`) before submitting the run; the ServerApp takes it
(:func:`take_resume_request`) and resumes. A run directory that holds the checkpoint of an unfinished
run is never silently overwritten by a new run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_tensors
from safetensors.numpy import save as save_tensors

from fedpers.adapters import Adapters
from fedpers.aggregation.optimizers import FedAdamOptimizer, FedAvgOptimizer, ServerOptimizer
from fedpers.atomic import TEMP_SUFFIX, fsync_dir, write_bytes, write_json
from fedpers.personas.layered import MixChoice

CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "checkpoint.json"
RESUME_REQUEST = "resume.json"
LOCK_FILE = "server.lock"
FORMAT = 1
# settings a resumed run may change: where it publishes, and how long a SecAgg+ stage waits
OPERATIONAL_SETTINGS = frozenset({"registry", "secagg_timeout"})
_SEP = "/"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: missing, damaged, finished, or made with other settings."""


@dataclass
class Checkpoint:
    """The server's state after ``round`` completed rounds (see the module docstring)."""

    round: int
    run_id: str
    settings: dict
    adapters: Adapters
    trained: list[str]
    # per adapter name: {"kind": "fedavg"|"fedadam", "t": int, "m_t": arrays, "v_t": arrays}
    optimizers: dict[str, dict]
    history: list[dict] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    sessions: list[list[dict]] = field(default_factory=list)
    mixing: dict[str, dict] = field(default_factory=dict)
    # the server's user-level DP ledger files (name -> text), as they were after ``round``
    ledgers: dict[str, str] = field(default_factory=dict)
    # the received-wire manifest after ``round``: {"bytes": n, "sha256": hex}, or None (not recorded)
    manifest: dict | None = None
    nodes: int = 0
    wall_seconds: float = 0.0
    # the rounds after which earlier server runs stopped and this run was resumed
    resumed_after: list[int] = field(default_factory=list)
    finished: bool = False


def checkpoint_dir(run_dir: Path | str) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def _tensor_name(server_round: int) -> str:
    return f"round-{server_round:04d}.safetensors"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(document: Mapping) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def optimizer_state(optimizer: ServerOptimizer) -> dict:
    """A server optimizer's state: its kind, step count and moment arrays (float64)."""
    if isinstance(optimizer, FedAdamOptimizer):
        return {"kind": "fedadam", "t": optimizer.t, "m_t": optimizer.m_t, "v_t": optimizer.v_t}
    if isinstance(optimizer, FedAvgOptimizer):
        return {"kind": "fedavg", "t": 0, "m_t": {}, "v_t": {}}
    raise CheckpointError(
        f"cannot checkpoint a server optimizer of type {type(optimizer).__name__}"
    )


def restore_optimizer(optimizer: ServerOptimizer, state: Mapping, name: str) -> None:
    """Put ``state`` (from :func:`optimizer_state`) back into ``optimizer``, which the settings built."""
    kind = optimizer_state(optimizer)["kind"]
    if state.get("kind") != kind:
        raise CheckpointError(
            f"optimizers.{name}.kind: the checkpoint holds a {state.get('kind')!r} optimizer, "
            f"the settings build a {kind!r} one"
        )
    if isinstance(optimizer, FedAdamOptimizer):
        optimizer.t = int(state["t"])
        optimizer.m_t = {k: np.array(v, dtype=np.float64) for k, v in state["m_t"].items()}
        optimizer.v_t = {k: np.array(v, dtype=np.float64) for k, v in state["v_t"].items()}


def mix_choices(record: Mapping[str, Mapping]) -> dict[str, MixChoice]:
    """Layered weights back from their ``MixChoice.to_dict`` form."""
    return {
        persona: MixChoice(
            float(c["weight"]),
            {float(w): float(v) for w, v in c.get("public_heldout_loss", {}).items()},
            int(c.get("conversations", 0)),
            str(c.get("source", "fixed")),
        )
        for persona, c in record.items()
    }


def _pack(checkpoint: Checkpoint) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for name, arrays in checkpoint.adapters.items():
        for key, value in arrays.items():
            tensors[_SEP.join(("adapter", name, key))] = np.ascontiguousarray(value)
    for name, state in checkpoint.optimizers.items():
        for moment in ("m_t", "v_t"):
            for key, value in state[moment].items():
                tensors[_SEP.join(("optimizer", name, moment, key))] = np.ascontiguousarray(
                    value, dtype=np.float64
                )
    return tensors


def _unpack(tensors: Mapping[str, np.ndarray], where: Path) -> tuple[Adapters, dict[str, dict]]:
    adapters: Adapters = {}
    moments: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for full, value in tensors.items():
        kind, _, rest = full.partition(_SEP)
        if kind == "adapter":
            name, _, key = rest.partition(_SEP)
            adapters.setdefault(name, {})[key] = value
        elif kind == "optimizer":
            name, _, rest = rest.partition(_SEP)
            moment, _, key = rest.partition(_SEP)
            if moment not in ("m_t", "v_t") or not key:
                raise CheckpointError(f"{where}: tensor {full!r} is not an optimizer moment")
            moments.setdefault(name, {"m_t": {}, "v_t": {}})[moment][key] = value
        else:
            raise CheckpointError(f"{where}: tensor {full!r} is neither an adapter nor a moment")
    return adapters, moments


def write_checkpoint(run_dir: Path | str, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` atomically (tensors first, then ``checkpoint.json``, the commit point); the
    older tensor files and temporary files of an interrupted write are removed afterwards."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f".*{TEMP_SUFFIX}"):  # an earlier write that crashed before its rename
        stale.unlink(missing_ok=True)
    data = save_tensors(_pack(checkpoint))
    tensor_file = _tensor_name(checkpoint.round)
    write_bytes(folder / tensor_file, data)
    document = {
        "format": FORMAT,
        "round": checkpoint.round,
        "run_id": checkpoint.run_id,
        "finished": checkpoint.finished,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": checkpoint.settings,
        "tensors": {"file": tensor_file, "bytes": len(data), "sha256": _sha256(data)},
        "adapters": sorted(checkpoint.adapters),
        # the tensors' order in each adapter (safetensors sorts them): restored as it was
        "order": {name: list(arrays) for name, arrays in checkpoint.adapters.items()},
        "trained": sorted(checkpoint.trained),
        "optimizers": {
            n: {"kind": s["kind"], "t": s["t"]} for n, s in checkpoint.optimizers.items()
        },
        "history": checkpoint.history,
        "evaluations": checkpoint.evaluations,
        "sessions": checkpoint.sessions,
        "mixing": checkpoint.mixing,
        "ledgers": checkpoint.ledgers,
        "manifest": checkpoint.manifest,
        "nodes": checkpoint.nodes,
        "wall_seconds": checkpoint.wall_seconds,
        "resumed_after": checkpoint.resumed_after,
    }
    document["digest"] = _sha256(_canonical(document))
    path = write_json(folder / CHECKPOINT_FILE, document)
    for old in folder.glob("round-*.safetensors"):
        if old.name != tensor_file:
            old.unlink(missing_ok=True)
    fsync_dir(folder)
    return path


def _field(document: Mapping, name: str, kind: type | tuple[type, ...], path: Path):
    if name not in document:
        raise CheckpointError(f"{path}: field {name!r} is missing (damaged checkpoint)")
    value = document[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CheckpointError(
            f"{path}: field {name!r} is {type(value).__name__}, not {getattr(kind, '__name__', kind)} "
            "(damaged checkpoint)"
        )
    return value


def read_document(run_dir: Path | str) -> dict:
    """``checkpoint.json``, its digest checked; :class:`CheckpointError` naming what is wrong."""
    path = checkpoint_dir(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint (no round of a run in {run_dir} completed)")
    try:
        document = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not JSON ({err}); the checkpoint is damaged") from None
    if not isinstance(document, dict):
        raise CheckpointError(f"{path}: not a JSON object; the checkpoint is damaged")
    digest = _field(document, "digest", str, path)
    body = {k: v for k, v in document.items() if k != "digest"}
    if _sha256(_canonical(body)) != digest:
        raise CheckpointError(
            f"{path}: field 'digest' does not match the content; the checkpoint is damaged"
        )
    if document.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: field 'format' is {document.get('format')!r}; this version reads format {FORMAT}"
        )
    return document


def read_checkpoint(run_dir: Path | str) -> Checkpoint:
    """The checkpoint of ``run_dir``, every file checked against its recorded SHA-256."""
    path = checkpoint_dir(run_dir) / CHECKPOINT_FILE
    document = read_document(run_dir)
    server_round = _field(document, "round", int, path)
    tensors_record = _field(document, "tensors", dict, path)
    tensor_path = checkpoint_dir(run_dir) / str(tensors_record.get("file"))
    if not tensor_path.is_file():
        raise CheckpointError(
            f"{path}: field 'tensors.file' names {tensor_path.name}, which is missing"
        )
    data = tensor_path.read_bytes()
    if _sha256(data) != tensors_record.get("sha256"):
        raise CheckpointError(
            f"{tensor_path}: SHA-256 differs from field 'tensors.sha256' of {path}; the checkpoint is damaged"
        )
    try:
        adapters, moments = _unpack(load_tensors(data), tensor_path)
    except CheckpointError:
        raise
    except Exception as err:  # safetensors' own errors on a malformed file
        raise CheckpointError(f"{tensor_path}: not a safetensors file ({err})") from None
    if sorted(adapters) != _field(document, "adapters", list, path):
        raise CheckpointError(
            f"{tensor_path}: adapters {sorted(adapters)} differ from field 'adapters' of {path}"
        )
    order = _field(document, "order", dict, path)
    for name in list(adapters):
        if sorted(order.get(name, [])) != sorted(adapters[name]):
            raise CheckpointError(
                f"{path}: field 'order.{name}' does not list the tensors of {tensor_path.name}"
            )
        adapters[name] = {key: adapters[name][key] for key in order[name]}
    adapters = {name: adapters[name] for name in order}
    optimizers = {}
    for name, state in _field(document, "optimizers", dict, path).items():
        optimizers[name] = {
            "kind": state.get("kind"),
            "t": state.get("t", 0),
            **moments.get(name, {"m_t": {}, "v_t": {}}),
        }
    return Checkpoint(
        round=server_round,
        run_id=_field(document, "run_id", str, path),
        settings=_field(document, "settings", dict, path),
        adapters=adapters,
        trained=_field(document, "trained", list, path),
        optimizers=optimizers,
        history=_field(document, "history", list, path),
        evaluations=_field(document, "evaluations", list, path),
        sessions=_field(document, "sessions", list, path),
        mixing=_field(document, "mixing", dict, path),
        ledgers=_field(document, "ledgers", dict, path),
        manifest=document.get("manifest"),
        nodes=_field(document, "nodes", int, path),
        wall_seconds=float(_field(document, "wall_seconds", (int, float), path)),
        resumed_after=_field(document, "resumed_after", list, path),
        finished=bool(_field(document, "finished", bool, path)),
    )


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return a == b or (math.isnan(a) and math.isnan(float(b)))
    return a == b


def differing_settings(saved: Mapping, current: Mapping) -> list[str]:
    """The settings whose values differ between the checkpoint's and the current run's (operational ones,
    :data:`OPERATIONAL_SETTINGS`, may differ; so may ``update_clip`` when both choose it from public data,
    ``update_clip_public``: the checkpoint holds the clip the run chose, and the resumed run keeps it)."""
    names = sorted(set(saved) | set(current))
    chosen = (
        {"update_clip"}
        if saved.get("update_clip_public") and current.get("update_clip_public")
        else set()
    )
    return [
        n
        for n in names
        if n not in OPERATIONAL_SETTINGS
        and n not in chosen
        and not _same(saved.get(n, None), current.get(n, None))
    ]


def check_settings(checkpoint: Checkpoint, current: Mapping, where: Path | str) -> None:
    """Refuse to resume with settings other than the checkpoint's, naming each differing setting."""
    differing = differing_settings(checkpoint.settings, current)
    if differing:
        details = "; ".join(
            f"{n}: checkpoint {checkpoint.settings.get(n)!r}, now {current.get(n)!r}"
            for n in differing
        )
        raise CheckpointError(
            f"{Path(where) / CHECKPOINT_DIR / CHECKPOINT_FILE}: cannot resume with changed settings "
            f"({details}); resume with the checkpoint's settings or start a new run"
        )


def resumable(run_dir: Path | str, settings: Mapping | None = None) -> Checkpoint:
    """The checkpoint to resume ``run_dir`` from: present, undamaged, unfinished, with these settings."""
    checkpoint = read_checkpoint(run_dir)
    if checkpoint.finished:
        raise CheckpointError(
            f"{checkpoint_dir(run_dir) / CHECKPOINT_FILE}: run {checkpoint.run_id[:8]} finished all "
            f"{checkpoint.round} rounds and wrote its outputs; there is nothing to resume"
        )
    if settings is not None:
        check_settings(checkpoint, settings, run_dir)
    return checkpoint


def unfinished(run_dir: Path | str) -> dict | None:
    """The ``checkpoint.json`` of an unfinished run in ``run_dir`` (damaged ones count), or None."""
    path = checkpoint_dir(run_dir) / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        document = read_document(run_dir)
    except CheckpointError as err:
        return {"damaged": str(err)}
    return None if document.get("finished") else document


def hold_run_dir(run_dir: Path | str) -> int:
    """Lock ``run_dir`` for this server run (an exclusive ``flock`` on ``checkpoint/server.lock``, released
    when the process ends, however it ends); a descriptor to keep open. :class:`CheckpointError` if another
    live server run holds it (a resume while the interrupted run's ServerApp still runs)."""
    import fcntl

    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CheckpointError(
            f"{folder / LOCK_FILE}: another server run is still using {run_dir}; stop it first "
            "(`flwr stop RUN_ID`) or wait for it to end"
        ) from None
    return fd


def request_resume(run_dir: Path | str) -> Path:
    """Ask the next ServerApp run in ``run_dir`` to resume from its checkpoint."""
    return write_json(
        checkpoint_dir(run_dir) / RESUME_REQUEST,
        {"requested_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    )


def take_resume_request(run_dir: Path | str) -> bool:
    """Whether a resume was requested for ``run_dir``; the request is consumed."""
    path = checkpoint_dir(run_dir) / RESUME_REQUEST
    if not path.exists():
        return False
    path.unlink()
    fsync_dir(path.parent)
    return True


def clear(run_dir: Path | str) -> None:
    """Remove a finished run's checkpoint (a new run starts in ``run_dir``)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and (
            path.name == CHECKPOINT_FILE
            or path.name.startswith("round-")
            or path.name.endswith(TEMP_SUFFIX)
        ):
            path.unlink()
    fsync_dir(folder)


def manifest_state(path: Path) -> dict | None:
    """Length and SHA-256 of the received-wire manifest now (fsynced first), or None if there is none."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        data = f.read()
        os.fsync(f.fileno())
    return {"bytes": len(data), "sha256": _sha256(data)}


def restore_manifest(path: Path, recorded: dict | None, set_aside: Path) -> int:
    """Cut the received-wire manifest back to what it held at the checkpoint: the lines of the round that
    did not complete go to ``set_aside`` (kept, out of the audit's way). The number of lines set aside.

    :class:`CheckpointError` if the manifest's first ``bytes`` bytes are not the recorded ones."""
    if recorded is None:
        if path.is_file() and path.stat().st_size:
            data = path.read_bytes()
            write_bytes(set_aside, data)
            write_bytes(path, b"")
            return data.count(b"\n")
        return 0
    data = path.read_bytes() if path.is_file() else b""
    size = int(recorded["bytes"])
    if len(data) < size or _sha256(data[:size]) != recorded["sha256"]:
        raise CheckpointError(
            f"{path}: its first {size} bytes are not those the checkpoint recorded (field "
            "'manifest.sha256'); the received-wire manifest was changed or damaged"
        )
    tail = data[size:]
    if tail:
        write_bytes(set_aside, tail)
        write_bytes(path, data[:size])
    return tail.count(b"\n")
