"""Benchmark: the share of the non-private gain kept against epsilon, record-level and user-level DP.

For each cohort size ``n`` (users per persona) the same users train their persona adapters with in-process
FedAvg as :mod:`simulations.bench_levers` does (the devices' local steps and batch, each delta clipped to
``update_clip``, one FedAvg step per persona and round, the same seeds). The persona adapters' held-out loss
(token-weighted over the users' held-out conversations, no user embedding) is measured for

- base: the base model, LoRA off;
- non-DP: adapters trained without DP (epsilon = infinity; one run shared by both modes at a cohort size);
- DP(eps): the same users, seeds and settings under DP at target epsilon ``eps``;

and gives the share of the non-private gain kept::

    kept(eps) = (base - DP(eps)) / (base - non-DP)

With a public warm start, ``kept`` counts what the warm start gives before any private round; the private
rounds' own part leaves it out, ``start`` being the warm start's loss::

    part(eps) = (start - DP(eps)) / (start - non-DP)

**Record-level DP** (the unit is one conversation): Opacus DP-SGD on the device, calibrated to ``eps`` over
``rounds * local_steps`` steps, each user's delta clipped to ``update_clip``, FedAvg. The per-sample clipping
norm is fixed (``--clip``, default :data:`RECORD_CLIP`) at every epsilon: the scenario's private clip estimate
(five Gaussian count queries at noise multiplier 5) costs epsilon 1.91 at delta 1e-5 by itself, more than the
smallest target, and a fixed norm keeps the rows comparable. With Adam on the privatised gradients the norm
matters only through how many per-sample gradients it clips (the update scales with it, and so does the noise).

**User-level DP** (the unit is the whole user): no DP-SGD on the device; each delta ``D_u`` is clipped to
``||D_u|| <= U``, and an upload also carries its count entry ``U``, so its L2 norm is at most
``C = sqrt(2) U``. ``U`` is ``update_clip``, or with ``--user-clip public`` the median L2 norm of the deltas
that the public users (``public_data``, held by no device) get from one round of the devices' local training
from the warm start (:func:`public_clip`): a clip near the deltas' own norm, chosen without device data, so
it costs no privacy budget. The noise scales with ``U`` and the mean of ``n`` deltas shrinks with
their alignment, so a clip far above the deltas' norm buys nothing but noise.

On the SecAgg+ grid of ``s = 2**17 / (2 U)`` levels per unit, the devices' Skellam shares
give every unmasked sum per-coordinate noise of variance at least (:class:`fedpers.privacy.user_level.DistributedNoise`)::

    v = (z C s)^2                                    (levels squared)

``z`` is calibrated for ``eps`` as one Skellam release per round over ``rounds`` rounds:
``v = noise_variance_for_epsilon(eps, delta, D2, D1, rounds)`` with ``D2 = C s + sqrt(d)`` and
``D1 = sqrt(d) D2`` for an upload of ``d`` coordinates (every slot and the count vector), then checked the way a
device charges it: ``rounds`` :func:`~fedpers.privacy.user_level.user_level_entry` records in a user-level
ledger must come to at most ``eps``. Each of the ``N`` devices of a round's SecAgg+ session adds a share of
variance ``v / t`` (``t`` the reconstruction threshold, as Flower computes it from ``secagg_shares`` and
``secagg_threshold``) to every slot. Assuming no dropout, persona ``p``'s sum and count carry Skellam noise of
variance ``V = N v / t`` per coordinate (a sum of independent Skellam shares is Skellam of the summed
variance, so it is drawn at once), and the server's mean is (:func:`fedpers.aggregation.means_from_sums`)::

    count_p = (n_p U + Y / s) / U,        mean_p = (sum_u D_u + X / s) / count_p,      X, Y ~ Skellam(V)

applied only when ``count_p >= min_clients`` (otherwise the persona's adapter keeps its value that round).
``N`` counts every user of the run (all the scenario's personas), though only ``--personas`` are trained
and scored: the other devices upload zeros in persona ``p``'s slot, and their noise shares. SecAgg+'s
stochastic rounding (under one level per coordinate) is left out.

Seeded noise throughout (DP-SGD through ``noise_seed``, the Skellam draws from a generator seeded per persona
and round): a benchmark, not a private run.

    python -m simulations.bench_privacy_utility --write
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulations import bench_dp_step
from simulations.bench_dp_step import print_section
from simulations.bench_levers import _Cache, _config, _persona, federate, heldout_loss

MARK = "privacy-utility"
MODES: tuple[str, ...] = ("record-level", "user-level")
NOISE_SEED = 11
# record-level DP-SGD's per-sample clipping norm: about the private 0.25-quantile estimate most users of the
# default scenario get (0.87, at the estimate's upper end of 1.0), without the estimate's epsilon
RECORD_CLIP = 1.0
PLOT_NAME = Path("docs") / "privacy-utility.png"
# the plot's floor (kept, in %): figures below are drawn on it and labelled with their value
PLOT_FLOOR = -100.0
# settings a benchmark run varies between its runs; the public warm start depends on none of them
_VARYING = frozenset(
    {
        "users_per_persona",
        "dp",
        "epsilon",
        "user_dp",
        "user_noise_multiplier",
        "noise_seed",
        "update_clip",
    }
)
_WARM: dict[tuple, dict[str, np.ndarray]] = {}


def warm_start(config, fresh: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`fedpers.warmstart.public_warm_start`, computed once per process and settings: it is deterministic
    given the settings, and none of those a benchmark run varies (``_VARYING``) changes it."""
    from fedpers.warmstart import public_warm_start

    if config.dataset.public_steps <= 0:
        return public_warm_start(config, fresh)
    key = tuple(sorted((k, v) for k, v in config.to_record().items() if k not in _VARYING))
    if key not in _WARM:
        _WARM[key] = public_warm_start(config, fresh)
    return _WARM[key]


def clip_estimate_epsilon(config) -> float:
    """Epsilon (at the run's delta) that a device's private clip estimate spends by itself."""
    from fedpers.privacy.accounting import epsilon
    from fedpers.privacy.dp_sgd import DPConfig, clip_estimate_event

    dp = DPConfig(delta=config.privacy.delta, clip_quantile=config.privacy.clip_quantile)
    return epsilon([clip_estimate_event(dp)], config.privacy.delta)


def kept_share(base: float, nodp: float, dp: float) -> float:
    """``(base - dp) / (base - nodp)``; NaN when the non-private run gained nothing."""
    gain = base - nodp
    return (base - dp) / gain if gain != 0 else float("nan")


def secagg_threshold(num_samples: int, shares: float, threshold: float) -> int:
    """``t``: shares needed to unmask, as Flower's ``SecAggPlusWorkflow.setup_stage`` computes it from the
    fractions ``secagg_shares`` and ``secagg_threshold`` for ``num_samples`` sampled devices."""
    num_shares = round(shares * num_samples)
    if num_shares < num_samples and num_shares % 2 == 0:
        num_shares += 1
    if num_shares <= 2:
        num_shares = num_samples
    return max(round(threshold * num_shares), 2)


def sampled_devices(config) -> int:
    """``N``: devices in a round's SecAgg+ session (every user of the run, ``fraction_train`` of them, at least
    ``min_clients``), as the server samples them."""
    from fedpers.userdata import user_ids

    nodes = len(user_ids(config))
    return max(min(config.server.min_clients, nodes), round(config.server.fraction_train * nodes))


def _ledger_epsilon(noise, rounds: int, delta: float) -> float:
    """A device's user-level epsilon after ``rounds`` releases of ``noise``, charged as a device charges them."""
    from fedpers.privacy.ledger import PrivacyLedger
    from fedpers.privacy.user_level import user_level_entry

    with tempfile.TemporaryDirectory() as state:
        ledger = PrivacyLedger(Path(state) / "user-level.json", "benchmark", delta)
        for server_round in range(1, rounds + 1):
            ledger.complete(ledger.record(user_level_entry(noise, round=server_round)))
        return ledger.spent().epsilon


@dataclass(frozen=True)
class UserLevelPlan:
    """One run's user-level noise for a target epsilon (see the module docstring).

    ``noise`` is what every device's ledger is charged for (variance ``v``), ``sampled`` and ``threshold`` are
    ``N`` and ``t``, ``epsilon`` the ledger's figure after ``rounds`` releases."""

    noise: Any  # fedpers.privacy.user_level.DistributedNoise
    sampled: int
    threshold: int
    epsilon: float
    count_value: float

    @property
    def sum_variance(self) -> float:
        """``V = N v / t``: per-coordinate variance (levels squared) of the noise in a slot's sum, no dropout."""
        return self.sampled * self.noise.share_variance(self.threshold)

    @property
    def sum_std(self) -> float:
        """Standard deviation of that noise in the adapter's units, ``sqrt(V) / s``."""
        return math.sqrt(self.sum_variance) / self.noise.levels_per_unit


def plan_user_level(config, adapter: dict[str, np.ndarray], epsilon: float) -> UserLevelPlan:
    """The noise multiplier ``z`` whose ``rounds`` releases keep a device's user-level ledger within
    ``epsilon`` at the run's delta, for uploads of ``adapter``'s shape in every slot of the run."""
    from fedpers.aggregation.slots import SlotLayout
    from fedpers.instructions import round_slots
    from fedpers.privacy.skellam import noise_variance_for_epsilon
    from fedpers.privacy.user_level import DistributedNoise

    clip, delta, rounds = (
        config.aggregation.update_clip,
        config.privacy.delta,
        config.server.rounds,
    )
    dimension = SlotLayout.for_adapter(adapter, round_slots(config)).upload_size
    unit = DistributedNoise.for_settings(1.0, clip, dimension)  # sensitivities do not depend on z
    variance = noise_variance_for_epsilon(
        epsilon, delta, unit.l2_sensitivity, unit.l1_sensitivity, rounds
    )
    z = math.sqrt(variance) / (unit.clip * unit.levels_per_unit)
    for _ in range(64):
        noise = DistributedNoise.for_settings(z, clip, dimension)
        spent = _ledger_epsilon(noise, rounds, delta)
        if spent <= epsilon:
            break
        z *= 1 + 1e-9  # floating point took v a hair below the calibrated variance
    else:
        raise RuntimeError(f"no noise multiplier near {z} keeps {rounds} rounds within {epsilon}")
    sampled = sampled_devices(config)
    threshold = secagg_threshold(
        sampled, config.aggregation.secagg_shares, config.aggregation.secagg_threshold
    )
    return UserLevelPlan(noise, sampled, threshold, spent, clip)


def noised_sum_and_count(
    deltas: Sequence[dict[str, np.ndarray]],
    variance: float,
    levels_per_unit: float,
    count_value: float,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], float]:
    """``sum_u D_u + X / s`` and ``(n U + Y / s) / U``, with ``X``, ``Y`` Skellam of per-coordinate ``variance``
    (levels squared) on the grid of ``s = levels_per_unit``: what the server unmasks for one slot."""
    from fedpers.privacy.skellam import sample_skellam

    sums = {}
    for k in sorted(deltas[0]):
        total = np.sum([np.asarray(d[k], np.float64) for d in deltas], axis=0)
        sums[k] = total + sample_skellam(total.shape, variance, rng) / levels_per_unit
    noise = float(sample_skellam(1, variance, rng)[0]) / levels_per_unit
    return sums, (len(deltas) * count_value + noise) / count_value


@dataclass
class UserLevelAggregate:
    """``aggregate`` for :func:`simulations.bench_levers.federate`: the persona's noised mean, or ``None`` when
    its noised count is below ``min_clients`` (``gated`` records those rounds)."""

    plan: UserLevelPlan
    min_clients: int
    seed: int = NOISE_SEED
    gated: list[tuple[str, int]] = field(default_factory=list)

    def __call__(
        self, persona: str, server_round: int, deltas: list[dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray] | None:
        from fedpers.aggregation import means_from_sums
        from fedpers.data.synthetic import derive_seed

        rng = np.random.default_rng(derive_seed(self.seed, "user-level", persona, server_round))
        sums, count = noised_sum_and_count(
            deltas,
            self.plan.sum_variance,
            self.plan.noise.levels_per_unit,
            self.plan.count_value,
            rng,
        )
        mean = means_from_sums(
            {persona: sums}, {persona: count}, [persona], self.min_clients
        ).persona_deltas[persona]
        if mean is None:
            self.gated.append((persona, server_round))
        return mean


def public_clip(config, start: dict[str, np.ndarray]) -> tuple[float, list[float]]:
    """``U`` for ``--user-clip public`` and every public user's norm: :func:`fedpers.warmstart.public_update_clip`
    from ``start`` (the warm start), the benchmark's noise seed choosing the public users' batches."""
    from fedpers.warmstart import public_update_clip

    chosen = public_update_clip(config, start, NOISE_SEED)
    return chosen.clip, list(chosen.norms)


def _loss(config, env, users: dict[str, list[str]], cache: _Cache, adapters: dict) -> float:
    """Persona adapters' held-out loss, averaged over personas by held-out conversations (as bench_levers)."""
    from fedpers.userdata import attach_trunk, user_data

    losses, weights = [], []
    for persona, ids in users.items():
        datas = [attach_trunk(user_data(config, u, env), env, cache) for u in ids]
        losses.append(heldout_loss(env, datas, adapters[persona]))
        weights.append(sum(len(d.heldout) for d in datas))
    return float(np.average(losses, weights=weights))


def _run(
    config,
    users: dict[str, list[str]],
    cache: _Cache,
    aggregate: Callable | None = None,
) -> tuple[float, float]:
    """Held-out loss of one federated training run and its wall time (s)."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as state:
        out = federate(
            config, users, cache, Path(state), warm_start=warm_start, aggregate=aggregate
        )
    loss = _loss(config, out["env"], users, cache, out["adapters"])
    return loss, time.perf_counter() - started


def measure(
    base: dict,
    personas: Sequence[str],
    cohorts: Sequence[int],
    epsilons: Sequence[float],
    log: Callable[[str], None] | None = None,
    user_clip: str = "update",
) -> dict:
    """Base, non-DP and DP losses for every cohort size, mode and epsilon (see the module docstring).

    ``user_clip``: user-level DP's ``U``, ``"update"`` (the settings' ``update_clip``) or ``"public"``
    (:func:`public_clip`)."""
    from fedpers.models.environment import model_environment
    from fedpers.userdata import attach_trunk, user_data, user_ids

    def say(line: str) -> None:
        (log or (lambda s: print(s, flush=True)))(line)

    cache = _Cache()
    epsilons = sorted(set(epsilons))
    result: dict = {"epsilons": epsilons, "personas": list(personas), "cohorts": {}}
    started = time.perf_counter()
    for n in sorted(set(cohorts)):
        settings = base | {"users_per_persona": n}
        reference = _config(settings, {}, False)
        unknown = sorted(set(personas) - set(reference.persona_names))
        if unknown:
            raise ValueError(
                f"unknown personas {unknown}; the scenario has {reference.persona_names}"
            )
        users = {
            p: [u for u in user_ids(reference) if _persona(reference, u) == p] for p in personas
        }
        env = model_environment(reference)
        datas = [
            attach_trunk(user_data(reference, u, env), env, cache)
            for ids in users.values()
            for u in ids
        ]
        base_loss = heldout_loss(env, datas, None)
        nodp, nodp_seconds = _run(reference, users, cache)
        adapter = env.initial_adapter
        start = warm_start(reference, adapter)
        start_loss = heldout_loss(env, datas, start)
        say(
            f"[{n} users/persona] base {base_loss:.4f}, warm start {start_loss:.4f}, non-DP {nodp:.4f} "
            f"({nodp_seconds:.1f} s)"
        )
        cohort: dict = {
            "users": users,
            "base": base_loss,
            "start": start_loss,
            "nodp": nodp,
            "nodp_seconds": nodp_seconds,
            "rounds": reference.server.rounds,
            "delta": reference.privacy.delta,
            "rows": {mode: [] for mode in MODES},
        }
        user_settings = settings
        if user_clip == "public":
            if "public_clip" not in result:
                clip, norms = public_clip(reference, start)
                result["public_clip"] = {"clip": clip, "norms": norms}
                say(
                    f"user-level clip U = {clip:.4g}: the median of {len(norms)} public users' delta norms "
                    f"({min(norms):.4g} to {max(norms):.4g})"
                )
            user_settings = settings | {"update_clip": result["public_clip"]["clip"]}
        user_reference = _config(user_settings, {}, False)
        for mode in MODES:
            for eps in epsilons:
                row: dict = {"epsilon": eps}
                if mode == "record-level":
                    config = _config(settings, {"epsilon": eps}, True)
                    row["dp"], row["seconds"] = _run(config, users, cache)
                else:
                    plan = plan_user_level(user_reference, adapter, eps)
                    z = plan.noise.noise_multiplier
                    config = _config(
                        user_settings,
                        {"epsilon": eps, "user_dp": True, "user_noise_multiplier": z},
                        False,
                    )
                    aggregate = UserLevelAggregate(plan, config.server.min_clients)
                    row["dp"], row["seconds"] = _run(config, users, cache, aggregate)
                    row |= {
                        "z": z,
                        "ledger_epsilon": plan.epsilon,
                        "sum_std": plan.sum_std,
                        "sampled": plan.sampled,
                        "threshold": plan.threshold,
                        "clip": config.aggregation.update_clip,
                        "gated": len(aggregate.gated),
                        "releases": len(users) * config.server.rounds,
                    }
                row["kept"] = kept_share(base_loss, nodp, row["dp"])
                cohort["rows"][mode].append(row)
                say(
                    f"[{n} users/persona] {mode} eps={eps:g}: loss {row['dp']:.4f}, "
                    f"kept {100 * row['kept']:.1f} % ({row['seconds']:.1f} s)"
                )
        result["cohorts"][n] = cohort
    result["seconds"] = time.perf_counter() - started
    return result


def _clip(value) -> str:
    if value is None:
        return "?"
    return "a private estimate" if value == 0 else f"{value:g} (fixed)"


def _part(cohort: dict, row: dict) -> str:
    """The private rounds' own part of what they add without DP: ``(start - DP) / (start - non-DP)``, ``start``
    the warm start's loss (``kept`` counts the warm start's gain too); ``?`` when not measured."""
    if "start" not in cohort:
        return "?"
    return _percent(kept_share(cohort["start"], cohort["nodp"], row["dp"]))


def _percent(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.0f} %"


def conclusion(result: dict) -> str:
    """One sentence from the figures: what each mode keeps at the largest epsilon, and from which epsilon it
    keeps at least half of the gain."""
    top = max(result["epsilons"])
    parts = []
    for mode in MODES:
        at_top, half = [], []
        for n, cohort in result["cohorts"].items():
            rows = cohort["rows"][mode]
            at_top.append(f"{_percent(rows[-1]['kept'])} ({n} users/persona)")
            reached = [r["epsilon"] for r in rows if r["kept"] >= 0.5]
            half.append(
                f"from eps {min(reached):g} ({n})" if reached else f"at no eps measured ({n})"
            )
        parts.append(
            f"{mode} DP keeps {', '.join(at_top)} at eps {top:g}, and half of the gain "
            f"{', '.join(half)}"
        )
    wins = [
        (n, r_user["epsilon"])
        for n, cohort in result["cohorts"].items()
        for r_rec, r_user in zip(cohort["rows"]["record-level"], cohort["rows"]["user-level"])
        if r_user["kept"] > r_rec["kept"]
    ]
    points = sum(len(c["rows"]["user-level"]) for c in result["cohorts"].values())
    return (
        "Conclusion (computed from the rows): "
        + "; ".join(parts)
        + f"; user-level DP keeps more than record-level at {len(wins)} of {points} (cohort, eps) points."
    )


def report(
    result: dict, command: str = "python -m simulations.bench_privacy_utility --write"
) -> list[str]:
    """The BENCHMARKS.md section: one table per cohort size and mode, the machine, a computed conclusion."""
    import torch

    settings = result.get("settings", {})
    some = next(iter(result["cohorts"].values()))
    warm = (
        f"public warm start {settings['public_steps']} steps on {settings['public_data']!r}"
        if settings.get("public_steps")
        else "no public warm start"
    )
    lines = [
        "## Privacy against utility: share of the non-private gain kept, record-level and user-level DP",
        "",
        f"`{command}` — scenario {settings.get('scenario', '?')!r}, rounds {some['rounds']}, "
        f"local steps {settings.get('local_steps', '?')}, delta {some['delta']:g}, update clip "
        f"{settings.get('update_clip', '?')}, DP-SGD clip {_clip(settings.get('clip'))}, {warm}; personas {', '.join(result['personas'])}; in-process "
        "FedAvg as a round does it, every run from the same start with the same seeds. Kept = (base - DP) / "
        "(base - non-DP), losses token-weighted over the users' held-out conversations; the private rounds' "
        "part = (start - DP) / (start - non-DP), start the warm start's loss, leaves out what the public warm "
        "start gives before any private round. Record-level: "
        "DP-SGD on the device at target epsilon. User-level: no DP-SGD; the devices' Skellam shares "
        "calibrated so that a device's user-level ledger reaches at most epsilon after the run's rounds, "
        "assuming no dropout (all N devices of the SecAgg+ session add their share v/t, so each persona "
        "sum and count carries N v / t); noised mean = noised sum / noised count, no update when the noised "
        "count is below min_clients. Seeded noise: a benchmark, not a private run. Machine: "
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
        f"total wall time {result.get('seconds', 0):.0f} s.",
    ]
    for n, cohort in result["cohorts"].items():
        users = sum(len(v) for v in cohort["users"].values())
        start_text = (
            f"warm start alone (public data, before any private round) {cohort['start']:.4f}; "
            if "start" in cohort
            else ""
        )
        lines += [
            "",
            f"### {n} users per persona ({users} users trained)",
            "",
            f"Base model loss {cohort['base']:.4f}; {start_text}non-DP persona loss {cohort['nodp']:.4f} "
            f"(eps = inf, kept 100 % by definition; {cohort['nodp_seconds']:.0f} s).",
            "",
            "Record-level DP (DP-SGD, unit: one conversation):",
            "",
            "| eps | DP persona loss | kept | private rounds' part | wall time (s) |",
            "|---|---|---|---|---|",
        ]
        for r in cohort["rows"]["record-level"]:
            lines.append(
                f"| {r['epsilon']:g} | {r['dp']:.4f} | **{_percent(r['kept'])}** | {_part(cohort, r)} | "
                f"{r['seconds']:.0f} |"
            )
        user_rows = cohort["rows"]["user-level"]
        if user_rows:
            first = user_rows[0]
            lines += [
                "",
                f"User-level DP (Skellam under SecAgg+, unit: one user; U = {first.get('clip', 0):.4g}; "
                f"N = {first['sampled']} devices, "
                f"threshold t = {first['threshold']}; z the noise multiplier, noise std z C at the threshold; "
                "the persona sum's noise std sqrt(N / t) z C per coordinate, in the adapter's units, against "
                "a delta clipped to L2 norm U; gated: releases whose noised count fell below min_clients):",
                "",
                "| eps | z | ledger eps | noise std of a persona sum | gated releases | DP persona loss | "
                "kept | private rounds' part | wall time (s) |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
        for r in user_rows:
            lines.append(
                f"| {r['epsilon']:g} | {r['z']:.3g} | {r['ledger_epsilon']:.3f} | {r['sum_std']:.3g} | "
                f"{r['gated']} of {r['releases']} | {r['dp']:.4f} | **{_percent(r['kept'])}** | "
                f"{_part(cohort, r)} | {r['seconds']:.0f} |"
            )
    if "public_clip" in result:
        norms = result["public_clip"]["norms"]
        lines[2] += (
            f" User-level clip U = {result['public_clip']['clip']:.4g}: the median L2 norm of the deltas "
            f"{len(norms)} public users get from one round of local training from the warm start "
            f"({min(norms):.4g} to {max(norms):.4g}; public data only, no budget spent)."
        )
    if settings.get("overrides"):
        shown = ", ".join(f"{k} = {v!r}" for k, v in settings["overrides"].items())
        lines[2] += f" Settings changed from the scenario's for every run: {shown}."
    lines += ["", conclusion(result)]
    return lines


def plot(result: dict, path: Path) -> Path:
    """Kept (%) against epsilon (log2), one line per mode and cohort size; non-DP (eps = inf) as a star."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epsilons = result["epsilons"]
    infinity = 2 * max(epsilons)
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    styles = {"record-level": ("-", "o"), "user-level": ("--", "s")}
    lowest = 0.0
    for i, (n, cohort) in enumerate(result["cohorts"].items()):
        for mode in MODES:
            rows = cohort["rows"][mode]
            xs = [r["epsilon"] for r in rows]
            ys = [100 * r["kept"] for r in rows]
            shown = [max(y, PLOT_FLOOR) for y in ys]
            lowest = min(lowest, *shown)
            line, marker = styles[mode]
            ax.plot(
                xs, shown, line, marker=marker, color=f"C{i}", label=f"{mode}, {n} users/persona"
            )
            for x, y in zip(xs, ys):
                if y < PLOT_FLOOR:
                    ax.plot([x], [PLOT_FLOOR], "v", color=f"C{i}", markersize=9)
                    ax.annotate(
                        f"{y:.0f} %",
                        (x, PLOT_FLOOR),
                        textcoords="offset points",
                        xytext=(4, 6 + 9 * i),
                        fontsize=7,
                        color=f"C{i}",
                    )
    ax.plot([infinity], [100], "*", color="black", markersize=12, label="non-DP (eps = inf)")
    ax.axhline(100, color="grey", linewidth=0.6, linestyle=":")
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_xscale("log", base=2)
    ax.set_xticks([*epsilons, infinity], [f"{e:g}" for e in epsilons] + ["∞"])
    ax.set_ylim(lowest - 12, 112)
    ax.set_xlabel("target epsilon (log2 scale; ∞: no DP)")
    ax.set_ylabel("share of the non-private gain kept (%)")
    ax.set_title(
        f"Privacy against utility ({', '.join(result['personas'])}; "
        f"below {PLOT_FLOOR:.0f} %: drawn on the floor)",
        fontsize=9,
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def _setting_value(text: str):
    """A ``--set`` value read as TOML (``2``, ``false``, ``"v_proj"``), else as the plain string."""
    import tomllib

    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def _numbers(text: str, kind: type) -> list:
    values = [kind(x) for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"no values in {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    from fedpers.federated import load_config_file
    from simulations.simulate import SCENARIOS

    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--scenario", default="default", help="scenario file under simulations/scenarios"
    )
    p.add_argument(
        "--personas",
        default="leadership",
        help="comma-separated persona groups to federate and score (each trains its own adapter)",
    )
    p.add_argument(
        "--cohorts",
        type=lambda s: _numbers(s, int),
        default=[3, 12],
        help="comma-separated cohort sizes (users per persona)",
    )
    p.add_argument(
        "--epsilons",
        type=lambda s: _numbers(s, float),
        default=[1.0, 2.0, 4.0, 8.0],
        help="comma-separated target epsilons (each mode, each cohort size)",
    )
    p.add_argument(
        "--clip",
        type=float,
        default=RECORD_CLIP,
        help="record-level DP-SGD's per-sample clipping norm at every epsilon (0: the scenario's private "
        f"estimate, which alone costs epsilon 1.9 at delta 1e-5; default {RECORD_CLIP:g})",
    )
    p.add_argument("--rounds", type=int, help="override the scenario's rounds")
    p.add_argument("--local-steps", type=int, help="override the scenario's local steps")
    p.add_argument(
        "--public-steps",
        type=int,
        help="public warm start steps (0: none; with no public data in the scenario: 'synthetic')",
    )
    p.add_argument("--public-data", help="public warm start data ('synthetic' or a JSONL path)")
    p.add_argument(
        "--user-clip",
        choices=("update", "public"),
        default="update",
        help="user-level DP's delta clip U: 'update' (the scenario's update clip) or 'public' (the median "
        "norm of the public users' deltas after one round of local training; no budget spent)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting changed for every run, as in a scenario file (TOML value; e.g. lora_targets=v_proj, "
        "lora_layers=2, lora_train_a=false); repeatable",
    )
    p.add_argument(
        "--label",
        help="a second section of its own: BENCHMARKS.md marker privacy-utility-LABEL, plot "
        "docs/privacy-utility-LABEL.png (default: the main section and plot)",
    )
    p.add_argument(
        "--plot",
        type=Path,
        help=f"PNG written with --write (default: {PLOT_NAME} in the repository)",
    )
    p.add_argument(
        "--write", action="store_true", help="write the result into BENCHMARKS.md and the PNG"
    )
    args = p.parse_args(argv)
    if any(e <= 0 or not math.isfinite(e) for e in args.epsilons):
        p.error("epsilons must be positive and finite (the non-DP run is always measured)")
    if any(n < 1 for n in args.cohorts):
        p.error("cohort sizes must be at least 1")
    if args.clip < 0:
        p.error("--clip must be 0 (private estimate) or a positive norm")
    base = load_config_file(SCENARIOS / f"{args.scenario}.toml")
    base["clip"] = args.clip
    overrides = {}
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            p.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip().replace("-", "_")] = _setting_value(text.strip())
    try:
        _config(base | overrides, {}, False)
    except (TypeError, ValueError) as exc:
        p.error(f"--set: {exc}")
    base |= overrides
    if args.label is not None and not args.label.replace("-", "").isalnum():
        p.error(f"--label {args.label!r}: letters, digits and '-' only")
    for key, value in (
        ("rounds", args.rounds),
        ("local_steps", args.local_steps),
        ("public_steps", args.public_steps),
        ("public_data", args.public_data),
    ):
        if value is not None:
            base[key] = value
    if base.get("public_steps", 0) > 0 and not base.get("public_data"):
        base["public_data"] = "synthetic"
    if args.public_steps == 0 and args.public_data is None:
        base["public_data"] = ""  # --public-steps 0: no warm start, whatever the scenario sets
    personas = [x.strip() for x in args.personas.split(",") if x.strip()]
    if args.clip == 0:
        cost = clip_estimate_epsilon(_config(base, {}, True))
        if min(args.epsilons) <= cost:
            p.error(
                f"--clip 0: the private clip estimate alone costs epsilon {cost:.2f}, at or above the smallest "
                f"target {min(args.epsilons):g}; give a fixed --clip or larger --epsilons"
            )
    result = measure(base, personas, args.cohorts, args.epsilons, user_clip=args.user_clip)
    resolved = _config(base, {}, False)
    result["settings"] = {
        "scenario": args.scenario,
        "local_steps": resolved.local.local_steps,
        "update_clip": resolved.aggregation.update_clip,
        "clip": resolved.privacy.clip,
        "public_steps": resolved.dataset.public_steps,
        "public_data": resolved.dataset.public_data,
        "overrides": overrides,
    }
    command = " ".join(["python -m simulations.bench_privacy_utility", *argv])
    mark, plot_name = MARK, PLOT_NAME
    if args.label:
        mark = f"{MARK}-{args.label}"
        plot_name = PLOT_NAME.with_name(f"{PLOT_NAME.stem}-{args.label}{PLOT_NAME.suffix}")
    lines = report(result, command)
    if args.label:
        lines[0] += f" ({args.label})"
    print_section(lines, args.write, mark)
    if args.write:
        target = args.plot or bench_dp_step.ROOT / plot_name
        print(f"wrote {plot(result, target)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
