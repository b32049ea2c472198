"""The persona registry: each published run's adapters as a numbered, immutable version on disk.

    REGISTRY/v0001/adapters/<name>/   every adapter in peft format, with its model card (README.md) and a
                                      portable base-model reference (:mod:`fedpers.modelcard`)
    REGISTRY/v0001/router/            the learned router (centroids.safetensors, router.json), when the run saved
                                      one (:mod:`fedpers.personas.router_round`)
    REGISTRY/v0001/run.json ...       the run's settings, metrics.json, evaluation.txt, heldout_loss.png and
                                      the audit report (audit.html, audit.json, audit.sig.json) where present
    REGISTRY/v0001/version.json       version number, run id, source, time, personas, SHA-256 of every file
    REGISTRY/latest -> v0001          the newest version (a symlink, replaced atomically)

A version is assembled in a temporary directory and renamed into place, so a reader sees whole
versions only, and two publishers never get the same number. A version directory is a run
directory as far as readers go (``fedpers route REGISTRY/latest PROMPT``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fedpers.atomic import write_json
from fedpers.modelcard import write_model_cards
from fedpers.personas.centroid import ROUTER_DIR, has_router
from fedpers.rundir import ADAPTERS, METRICS, RUN_CONFIG, read_json

LATEST = "latest"
VERSION_FILE = "version.json"
PUBLISHED = (
    RUN_CONFIG,
    METRICS,
    "evaluation.txt",
    "heldout_loss.png",
    "audit.html",
    "audit.json",
    "audit.sig.json",
)
_VERSION = re.compile(r"v(\d{4,})")


@dataclass(frozen=True)
class Version:
    number: int
    path: Path

    @property
    def name(self) -> str:
        return version_name(self.number)


def version_name(number: int) -> str:
    return f"v{number:04d}"


def versions(registry: Path | str) -> list[Version]:
    """The registry's versions, oldest first (none if the directory does not exist)."""
    root = Path(registry)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if p.is_dir() and not p.is_symlink() and (m := _VERSION.fullmatch(p.name))
    ]
    return [Version(n, p) for n, p in sorted(found)]


def latest(registry: Path | str) -> Version | None:
    """The version ``latest`` points to, or None for an empty registry."""
    link = Path(registry) / LATEST
    if not link.is_symlink():
        return None
    target = link.resolve()
    match = _VERSION.fullmatch(target.name)
    if match is None or not target.is_dir():
        raise FileNotFoundError(
            f"{link}: points to {os.readlink(link)!r}, not a version of this registry"
        )
    return Version(int(match.group(1)), target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_run_dir(run_dir: Path) -> list[str]:
    """The adapter names of ``run_dir``; FileNotFoundError naming what is missing."""
    if not (run_dir / RUN_CONFIG).is_file():
        raise FileNotFoundError(
            f"{run_dir / RUN_CONFIG}: missing (is {run_dir} a finished fedpers run directory?)"
        )
    adapters = run_dir / ADAPTERS
    names = (
        sorted(d.name for d in adapters.iterdir() if (d / "adapter_model.safetensors").is_file())
        if adapters.is_dir()
        else []
    )
    if not names:
        raise FileNotFoundError(f"{adapters}: no adapters (adapter_model.safetensors) to publish")
    return names


def _assemble(run_dir: Path, into: Path, names: list[str]) -> dict[str, str]:
    """Copy the adapters, the router (when the run saved one) and the published files of ``run_dir`` into
    ``into``, with the adapters' model cards written from the copied run.json and metrics.json (a run directory
    written before the cards gets them too); SHA-256 per relative path."""
    for name in names:
        shutil.copytree(run_dir / ADAPTERS / name, into / ADAPTERS / name)
    if has_router(run_dir):
        shutil.copytree(run_dir / ROUTER_DIR, into / ROUTER_DIR)
    for name in PUBLISHED:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, into / name)
    write_model_cards(into)
    return {
        p.relative_to(into).as_posix(): _sha256(p) for p in sorted(into.rglob("*")) if p.is_file()
    }


def _point_latest(registry: Path, version: Version) -> None:
    tmp = registry / f".{LATEST}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version.name)
    os.replace(tmp, registry / LATEST)


def publish(run_dir: Path | str, registry: Path | str) -> Version:
    """Publish the adapters of ``run_dir`` as the registry's next version and point ``latest`` at it."""
    run_dir, registry = Path(run_dir).resolve(), Path(registry).resolve()
    names = _check_run_dir(run_dir)
    registry.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=registry))
    try:
        files = _assemble(run_dir, staging, names)
        run = read_json(run_dir / RUN_CONFIG)
        number = (versions(registry) or [Version(0, registry)])[-1].number + 1
        while True:
            record = {
                "version": number,
                "name": version_name(number),
                "run_id": run.get("run_id"),
                "source": str(run_dir),
                "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "personas": run.get("personas", []),
                "adapters": names,
                "router": has_router(staging),
                "files": files,
            }
            write_json(staging / VERSION_FILE, record)
            try:
                # fails if another publisher took the number
                os.rename(staging, registry / version_name(number))
                break
            except OSError:
                number += 1
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    version = Version(number, registry / version_name(number))
    _point_latest(registry, version)
    return version
