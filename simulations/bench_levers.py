"""Benchmark: levers of private utility, each on and off, side by side in one process.

For every lever the same users train their persona adapters with federated averaging exactly as a round does —
DP-SGD on the LoRA layers (cached trunk), the devices' local steps and batch, each delta clipped to
``update_clip``, one FedAvg step per persona and round — once with record-level DP-SGD at the scenario's epsilon
and once without DP, from the same start and on the same Poisson samples' seeds. The persona adapters' held-out
loss (token-weighted over the users' held-out conversations, no user embedding) against the base model's gives
the share of the non-private gain kept::

    kept = (base - DP) / (base - non-DP)

The federation's transport (Flower, SecAgg+) is left out: it changes the adapters by less than 1e-6 relative
(BENCHMARKS.md, secure aggregation). Seeded noise: a benchmark, not a private run.

    python -m simulations.bench_levers --write
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from simulations.bench_dp_step import print_section

MARK = "levers"
LEVERS: dict[str, dict] = {
    "default settings": {},
    "no public warm start": {"public_data": "", "public_steps": 0},
    "FFA-LoRA (A frozen)": {"lora_train_a": False},
    "rank 1": {"lora_r": 1, "lora_alpha": 2},
    "v_proj only on the top 2 layers": {"lora_targets": "v_proj", "lora_layers": 2},
    "learning rate 5e-3": {"learning_rate": 5e-3},
    "learning rate 5e-2": {"learning_rate": 5e-2},
    "expected batch 16": {"batch_size": 16},
}


class _Cache:
    """Trunk states kept in memory for the whole benchmark (the devices keep them in their state)."""

    def __init__(self) -> None:
        self.items: dict[str, bytes] = {}

    def activations(self, key: str) -> bytes | None:
        return self.items.get(key)

    def save_activations(self, key: str, data: bytes) -> None:
        self.items[key] = data


def _config(base: dict, lever: dict, dp: bool):
    from fedpers.federated import FederatedConfig

    return FederatedConfig.from_flat(base | lever | {"dp": dp, "noise_seed": 11}).validated()


def heldout_loss(env, datas, arrays: dict | None) -> float:
    """Token-weighted held-out loss of ``arrays`` (``None``: the base model, LoRA off) over ``datas``."""
    import torch

    from fedpers.models import collate, load_adapter_arrays
    from fedpers.models.personalized import token_loss_sums

    model = env.model
    model.use_user_embedding = False
    total, tokens = 0.0, 0
    if arrays is not None:
        load_adapter_arrays(model.lm, arrays)
    lora_off = model.lm.disable_adapter() if arrays is None else contextlib.nullcontext()
    with torch.no_grad(), lora_off:
        for d in datas:
            for i in range(0, len(d.heldout), 8):
                s, n = token_loss_sums(model, collate(d.heldout[i : i + 8], env.pad_token_id))
                total, tokens = total + s, tokens + n
    return total / tokens


def federate(
    config,
    users: dict[str, list[str]],
    cache: _Cache,
    state_dir: Path,
    *,
    warm_start: Callable[[Any, dict], dict] | None = None,
    aggregate: Callable[[str, int, list[dict]], dict | None] | None = None,
) -> dict:
    """Persona adapters after ``rounds`` rounds of in-process FedAvg over ``users`` (persona -> user ids).

    ``warm_start(config, fresh)`` replaces :func:`fedpers.warmstart.public_warm_start` (e.g. a memoized one);
    ``aggregate(persona, round, clipped deltas)`` replaces the plain mean of the deltas (``None``: the persona
    gets no update that round).
    """
    from fedpers.aggregation import clip_delta
    from fedpers.data.synthetic import derive_seed
    from fedpers.local import local_round, set_trainable
    from fedpers.models import load_adapter_arrays
    from fedpers.models.environment import model_environment
    from fedpers.privacy import DPConfig, PrivacyLedger
    from fedpers.privacy.dp_sgd import plan_dp
    from fedpers.userdata import attach_trunk, user_data
    from fedpers.warmstart import public_warm_start

    env = model_environment(config)
    start = (warm_start or public_warm_start)(config, env.initial_adapter)
    frozen = set() if config.model.lora_train_a else {k for k in start if "lora_A" in k}
    adapters = {p: {k: v.copy() for k, v in start.items()} for p in users}
    plans: dict[str, DPConfig] = {}
    local = config.local
    for server_round in range(1, config.server.rounds + 1):
        for persona, ids in users.items():
            deltas = []
            for user in ids:
                data = attach_trunk(user_data(config, user, env), env, cache)
                load_adapter_arrays(env.model.lm, adapters[persona])
                ledger = PrivacyLedger(state_dir / f"{user}.json", user, config.privacy.delta)
                dp = DPConfig(enabled=False)
                if config.privacy.dp:
                    if user not in plans:
                        set_trainable(env.model, lora=True, embedding=False)
                        plan = plan_dp(
                            env.model,
                            data.train,
                            env.pad_token_id,
                            DPConfig(
                                target_epsilon=config.privacy.epsilon,
                                delta=config.privacy.delta,
                                max_grad_norm=config.privacy.clip or None,
                                clip_quantile=config.privacy.clip_quantile,
                            ),
                            ledger,
                            local.batch_size,
                            config.server.rounds * local.local_steps,
                            derive_seed(11, user, "clip") % 2**63,
                        )
                        plans[user] = DPConfig(
                            noise_multiplier=plan.noise_multiplier,
                            max_grad_norm=plan.max_grad_norm,
                            delta=config.privacy.delta,
                        )
                    dp = plans[user]
                result = local_round(
                    env,
                    config,
                    data.train,
                    derive_seed(11, user, server_round) % 2**63,
                    dp,
                    ledger if config.privacy.dp else None,
                )
                delta, _ = clip_delta(result.delta.arrays, config.aggregation.update_clip)
                deltas.append(delta)
            if aggregate is None:
                adapters[persona] = {
                    k: (
                        v
                        if k in frozen
                        else (v + np.mean([d[k] for d in deltas], axis=0)).astype(v.dtype)
                    )
                    for k, v in adapters[persona].items()
                }
                continue
            mean = aggregate(persona, server_round, deltas)
            if mean is not None:
                adapters[persona] = {
                    k: v if k in frozen else (v + mean[k]).astype(v.dtype)
                    for k, v in adapters[persona].items()
                }
    return {"adapters": adapters, "env": env, "start": start}


def measure(base: dict, personas: list[str], levers: dict[str, dict]) -> dict:
    from fedpers.models.environment import model_environment
    from fedpers.userdata import attach_trunk, user_data, user_ids

    cache = _Cache()
    rows = {}
    reference = _config(base, {}, True)
    users = {p: [u for u in user_ids(reference) if _persona(reference, u) == p] for p in personas}
    env = model_environment(reference)
    datas = [
        attach_trunk(user_data(reference, u, env), env, cache)
        for ids in users.values()
        for u in ids
    ]
    base_loss = heldout_loss(env, datas, None)
    for name, lever in levers.items():
        row: dict = {}
        for dp in (False, True):
            config = _config(base, lever, dp)
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as state:
                out = federate(config, users, cache, Path(state))
            env = out["env"]
            losses, starts, weights = [], [], []
            for persona, ids in users.items():
                pdatas = [attach_trunk(user_data(config, u, env), env, cache) for u in ids]
                losses.append(heldout_loss(env, pdatas, out["adapters"][persona]))
                if not dp:  # both runs start from the same adapters: scored once
                    starts.append(heldout_loss(env, pdatas, out["start"]))
                weights.append(sum(len(d.heldout) for d in pdatas))
            row["dp" if dp else "nodp"] = float(np.average(losses, weights=weights))
            if not dp:
                row["start"] = float(np.average(starts, weights=weights))
            row[("dp" if dp else "nodp") + "_seconds"] = time.perf_counter() - started
        row["kept"] = (base_loss - row["dp"]) / (base_loss - row["nodp"])
        # the private rounds' own part: from where both runs start (the warm start, or the base model)
        row["rounds_kept"] = (row["start"] - row["dp"]) / (row["start"] - row["nodp"])
        rows[name] = row
        print(f"{name}: {row}", flush=True)
    return {"base": base_loss, "rows": rows, "users": users}


def _persona(config, user: str) -> str:
    from fedpers.userdata import conversations

    return next(c.persona for c in conversations(config) if c.user_id == user)


def report(result: dict, base: dict) -> list[str]:
    import torch

    users = result["users"]
    lines = [
        "## Levers of private utility: each on and off, record-level DP-SGD",
        "",
        "`python -m simulations.bench_levers --write` — the default scenario's settings "
        f"(epsilon {base.get('epsilon', 8.0)}, {base.get('rounds', 3)} rounds) changed one lever at a time; "
        f"personas {', '.join(users)} ({sum(len(v) for v in users.values())} users); in-process FedAvg as a round "
        "does it, DP and non-DP from the same start with the same seeds. Machine: "
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}.",
        "",
        f"Base model held-out loss: {result['base']:.3f}. Kept = (base - DP) / (base - non-DP). Start: the loss "
        "both runs start from (the public warm start, which no device's data touches, trained under the lever's "
        "settings too, or the base model without it); the private rounds' part = (start - DP) / (start - non-DP), what the rounds themselves keep of "
        "what they add without DP.",
        "",
        "| lever | start | non-DP persona loss | DP persona loss | kept | private rounds' part | wall time DP + non-DP (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result["rows"].items():
        lines.append(
            f"| {name} | {r['start']:.3f} | {r['nodp']:.3f} | {r['dp']:.3f} | **{100 * r['kept']:.0f} %** | "
            f"{100 * r['rounds_kept']:.0f} % | {r['dp_seconds'] + r['nodp_seconds']:.0f} |"
        )
    rows = result["rows"]
    if "default settings" in rows:
        d = rows["default settings"]
        most = max(rows, key=lambda n: rows[n]["kept"])
        lowest = min(rows, key=lambda n: rows[n]["dp"])
        against = (result["base"] - rows[most]["dp"]) / (result["base"] - d["nodp"])
        lines += [
            "",
            f"Read from the rows: with the default settings the public warm start alone gives "
            f"{100 * (result['base'] - d['start']) / (result['base'] - d['nodp']):.0f} % of the non-private gain "
            f"and the private rounds add {100 * (d['start'] - d['dp']) / (result['base'] - d['nodp']):.0f} points "
            f"to it ({100 * d['rounds_kept']:.0f} % of what the same rounds add without DP). Lowest DP persona "
            f"loss: {lowest} ({rows[lowest]['dp']:.3f}). Most kept: {most} ({100 * rows[most]['kept']:.0f} % of its "
            f"own non-private gain; {100 * against:.0f} % of the default settings' non-private gain"
            + (
                ": a lever that also slows learning without DP keeps a larger share of a smaller gain)."
                if most != lowest
                else ")."
            ),
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    from fedpers.federated import load_config_file
    from simulations.simulate import SCENARIOS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--scenario", default="default", help="scenario file under simulations/scenarios"
    )
    p.add_argument(
        "--personas",
        default="leadership,field_worker",
        help="comma-separated persona groups to federate (each trains its own adapter)",
    )
    p.add_argument(
        "--levers",
        default=";".join(LEVERS),
        help=f"levers separated by ';', from: {'; '.join(LEVERS)}",
    )
    p.add_argument("--write", action="store_true", help="write the result into BENCHMARKS.md")
    args = p.parse_args(argv)
    base = load_config_file(SCENARIOS / f"{args.scenario}.toml")
    chosen = {n: LEVERS[n] for n in (x.strip() for x in args.levers.split(";")) if n}
    result = measure(base, args.personas.split(","), chosen)
    print_section(report(result, base), args.write, MARK)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
