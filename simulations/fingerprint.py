"""Fingerprint of the tiny simulation: what a refactoring must leave bitwise unchanged.

Runs the tiny scenario under each aggregation mode (SecAgg+ with persona hiding, SecAgg+ per persona
group, plain with persona hiding, plain with personas in clear) with the benchmark noise switch
(``noise_seed``), so that the DP-SGD batches and noise and the SecAgg+ rounding are reproducible, and records the SHA-256 of every released adapter's tensors and of the
``metrics.json`` figures with timings, paths and run ids left out.

    python -m simulations.fingerprint --out before.json
    python -m simulations.fingerprint --compare before.json   # exit 1 on any difference

The runs are NOT private (seeded randomness); they exist only to compare code versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

MODES: dict[str, dict[str, Any]] = {
    "secagg-hidden": {"secure_aggregation": True, "persona_hiding": True},
    "secagg-groups": {"secure_aggregation": True, "persona_hiding": False},
    "plain-hidden": {"secure_aggregation": False, "persona_hiding": True},
    "plain": {"secure_aggregation": False, "persona_hiding": False},
}
NOISE_SEED = 7
# run-specific, not figures: timings, where the run went, its id
_VOLATILE_KEYS = ("seconds", "run_id", "run_dir", "state_dir", "registry")


def _figures(value: Any) -> Any:
    """``metrics.json`` without timings, paths and run ids."""
    if isinstance(value, dict):
        return {k: _figures(v) for k, v in value.items() if not any(m in k for m in _VOLATILE_KEYS)}
    if isinstance(value, list):
        return [_figures(v) for v in value]
    return value


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def fingerprint_run(run_dir: Path) -> dict[str, Any]:
    """Digests of one finished run: each adapter's tensors (name, dtype, shape, bytes) and the metrics."""
    from fedpers.rundir import load_adapters, read_json

    adapters = {}
    for name, arrays in sorted(load_adapters(run_dir).items()):
        h = hashlib.sha256()
        for key in sorted(arrays):
            a = arrays[key]
            h.update(f"{key}|{a.dtype}|{a.shape}|".encode())
            h.update(a.tobytes())
        adapters[name] = h.hexdigest()[:16]
    figures = _figures(read_json(run_dir / "metrics.json"))
    return {
        "adapters": adapters,
        "metrics": _digest(json.dumps(figures, sort_keys=True).encode()),
        "max_epsilon": figures.get("max_epsilon"),
    }


def fingerprint(modes: list[str]) -> dict[str, Any]:
    from fedpers.federated import FederatedConfig, load_config_file
    from simulations.simulate import SCENARIOS, simulate

    out = {}
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix=f"fingerprint-{mode}-") as tmp:
            run_dir = Path(tmp)
            values = (
                load_config_file(SCENARIOS / "tiny.toml")
                | MODES[mode]
                | {"noise_seed": NOISE_SEED, "state_dir": str(run_dir / "client-state")}
            )
            simulate(FederatedConfig.from_flat(values).validated(), run_dir)
            out[mode] = fingerprint_run(run_dir)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the fingerprint here (JSON)")
    p.add_argument(
        "--compare",
        type=Path,
        help="compare with a fingerprint written earlier; exit 1 on a difference",
    )
    p.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}"
    )
    args = p.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        p.error(f"unknown mode(s) {', '.join(sorted(unknown))}")
    result = fingerprint(modes)
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.compare:
        before = json.loads(args.compare.read_text())
        diffs = [m for m in modes if before.get(m) != result[m]]
        for m in diffs:
            print(
                f"DIFFERENT: {m}\n  before {before.get(m)}\n  after  {result[m]}", file=sys.stderr
            )
        if diffs:
            return 1
        print(f"bitwise identical to {args.compare} in {', '.join(modes)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
