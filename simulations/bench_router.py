"""Router benchmark: the centroid router against loss scoring, cold start, and persona discovery.

    python -m simulations.bench_router [--run RUN_DIR] [--shakespeare-run RUN_DIR] [--jsonl PATH]
                                       [--inferred-run RUN_DIR ...] [--loss-sample 50] [--write]

Every table is measured here, on the CPUs this process is given (torch limited to 2 threads):

- routing accuracy on held-out prompts (the opening user message of each held-out conversation) of the
  run's data, for the centroid router learned from the run's users' training prompts (clean statistics,
  and the whole private path: each device's Skellam-noised quantized upload, recorded in its own ledger,
  summed as SecAgg+ would), and for loss scoring under the run's adapters on a sample of the same prompts;
  milliseconds per prompt, one prompt at a time;
- the private router against the number of users (the synthetic desk at 37 users per persona);
- tinyshakespeare with the personas the devices of an inferred-persona run chose (client-state);
- any JSONL with declared personas: ``--jsonl PATH`` (same table, without loss scoring; add
  ``--jsonl-only`` for that table alone);
- cold start: a new user (left out of the router's statistics) routed from its context, then its first
  1 and 3 messages; held-out loss of its answers under the chosen adapter, the global one and its true
  persona's;
- persona discovery: the adjusted Rand index against the synthetic desk's personas of the choices the devices
  of inferred-persona runs made (IFCA's noisy losses, or noisy prompt scores against public centroids), of that
  prompt choice made here on the same devices, and of private spherical k-means on the router's statistics, with K
  chosen by the centroid silhouette of the released sums, or from a public start (K and starting
  centroids from the public users alone, then private rounds at that K; with and without the public PCA map).

``--write`` puts the section into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MARK = "router"
DELTA = 1e-5
EPSILONS = (1.0, 4.0, 8.0)
DEFAULT_RUN = Path("/work/runs/m1-no-dp")


class Section(list):
    """The section's lines; each one also goes to standard error as soon as it is measured."""

    def append(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        super().append(line)

    def __iadd__(self, lines):  # type: ignore[override]
        for line in lines:
            self.append(line)
        return self


# ------------------------------------------- data -------------------------------------------


@dataclass
class Split:
    name: str
    personas: tuple[str, ...]
    train: list  # EncodedUser
    heldout: list  # EncodedUser
    train_convs: list
    heldout_convs: list


def _split_users(convs, heldout_fraction: float, seed: int):
    from fedpers.data.split import train_heldout_split

    return train_heldout_split(list(convs), heldout_fraction, seed)


def run_settings(run_dir: Path):
    from fedpers.federated import FederatedConfig
    from fedpers.rundir import RUN_CONFIG, read_json

    run = read_json(run_dir / RUN_CONFIG)
    return run, FederatedConfig.from_flat(run["settings"])


def run_split(run_dir: Path, encoder, labels: dict[str, str] | None = None) -> Split:
    """The run's data as its devices hold it (same settings, same per-user held-out split)."""
    from dataclasses import replace

    from fedpers.personas.router_data import encode_users, user_prompts
    from fedpers.userdata import conversations

    run, config = run_settings(run_dir)
    convs = list(conversations(config))
    if labels is not None:
        convs = [replace(c, persona=labels[c.user_id]) for c in convs if c.user_id in labels]
    train, heldout = _split_users(convs, config.dataset.heldout_fraction, config.dataset.data_seed)
    return Split(
        run_dir.name,
        tuple(run["personas"]),
        encode_users(user_prompts(train), encoder),
        encode_users(user_prompts(heldout), encoder),
        train,
        heldout,
    )


def client_state_dir(run_dir: Path) -> Path:
    """Where a finished simulation kept its devices' state: its ``state_dir``, or the run's ``client-state``."""
    from fedpers.rundir import RUN_CONFIG, read_json

    state = Path(read_json(run_dir / RUN_CONFIG)["settings"]["state_dir"])
    return state if state.is_dir() else run_dir / "client-state"


def inferred_labels(run_dir: Path) -> dict[str, str]:
    """The persona each device of an inferred-persona run chose (its client state's persona file)."""
    from fedpers.rundir import RUN_CONFIG, read_json

    run = read_json(run_dir / RUN_CONFIG)
    state = client_state_dir(run_dir)
    out = {}
    for user in sorted(p for p in state.iterdir() if p.is_dir()):
        files = sorted(user.glob(f"persona-{run['run_id']}.txt")) or sorted(
            user.glob("persona-*.txt")
        )
        if files:
            out[user.name] = files[0].read_text().strip()
    if not out:
        raise FileNotFoundError(f"{state}: no device recorded a persona choice")
    return out


# ------------------------------------------- routing -------------------------------------------


def _flat(users) -> tuple[np.ndarray, np.ndarray, list[str]]:
    text = np.concatenate([u.text for u in users])
    context = np.concatenate([u.context for u in users])
    labels = [u.persona for u in users for _ in u.text]
    return text, context, labels


def accuracy(model, users, use_context: bool) -> float:
    text, context, labels = _flat(users)
    chosen = [
        model.personas[int(np.argmax(model.logits(t, c if use_context else None)))]
        for t, c in zip(text, context)
    ]
    return float(np.mean([a == b for a, b in zip(chosen, labels)]))


def private_router(
    split: Split, epsilon: float, use_context: bool, ledgers: Path, features=None, prior=None
):
    from fedpers.personas.features import IDENTITY
    from fedpers.personas.router_data import learn_router
    from fedpers.personas.router_stats import StatsLayout, noise_for_epsilon

    features = features or IDENTITY
    d_c = split.train[0].context.shape[1] if use_context else 0
    layout = StatsLayout(split.personas, features.dimension(split.train[0].text.shape[1]), d_c)
    noise = noise_for_epsilon(epsilon, DELTA, layout)
    model = learn_router(
        split.train,
        split.personas,
        noise=noise,
        ledger_dir=ledgers,
        use_context=use_context,
        features=features,
        prior=prior,
    )
    return model, noise


def public_features(encoder, personas: Sequence[str], config=None):
    """The router's public feature map (the default scenario's public split unless ``config`` is given), and
    the router learned from the public data alone (its clean centroids under that map)."""
    from fedpers.federated import FederatedConfig, load_config_file
    from fedpers.personas.router_data import encode_users, learn_router, user_prompts
    from fedpers.personas.router_public import public_router_features
    from fedpers.warmstart import public_split
    from simulations.simulate import SCENARIOS

    if config is None or not config.dataset.public_data:
        config = FederatedConfig.from_flat(load_config_file(SCENARIOS / "default.toml"))
    features = public_router_features(config, encoder, personas)
    public = encode_users(user_prompts(public_split(config)[0]), encoder)
    public = [u for u in public if u.persona in set(personas)]
    alone = learn_router(public, personas, use_context=False, features=features) if public else None
    return features, alone, public


def time_centroid(model, encoder, prompts: Sequence[str]) -> tuple[float, float]:
    """Median milliseconds to embed one prompt and score it (one prompt at a time): wall-clock with torch
    on 2 threads, and CPU time of torch on 1 thread. The single-thread CPU time hardly grows when other
    processes share the cores (2 threads' CPU time does: OpenMP threads spin while they wait)."""
    import torch

    encoder.encode(list(prompts[:3]))  # warm up
    wall, cpu = [], []
    torch.set_num_threads(1)
    for p in prompts:
        start = time.thread_time()
        model.logits(encoder.encode([p])[0], None)
        cpu.append(time.thread_time() - start)
    torch.set_num_threads(2)
    for p in prompts:
        start = time.perf_counter()
        model.logits(encoder.encode([p])[0], None)
        wall.append(time.perf_counter() - start)
    return 1000 * statistics.median(wall), 1000 * statistics.median(cpu)


def sample_prompts(split: Split, per_persona: int) -> list[tuple[str, str]]:
    """``per_persona`` held-out prompts of each persona (first users first), as ``(prompt, persona)``."""
    from fedpers.personas.router_data import user_prompts

    out = []
    by_persona: dict[str, int] = {}
    users = user_prompts(split.heldout_convs)
    for i in range(max(len(u.prompts) for u in users)):
        for u in users:
            if i < len(u.prompts) and by_persona.get(u.persona or "", 0) < per_persona:
                by_persona[u.persona or ""] = by_persona.get(u.persona or "", 0) + 1
                out.append((u.prompts[i], u.persona))
    return out


def loss_scoring(run_dir: Path, split: Split, sample: list[tuple[str, str]]) -> tuple[float, float]:
    """Accuracy and median ms per prompt of the loss-scoring router on ``sample`` (the run's adapters)."""
    from fedpers.models import PersonalizedLM, attach_lora, load_base_model
    from fedpers.personas.routing import LossScorer, Router
    from fedpers.rundir import load_adapters, lora_settings

    run, config = run_settings(run_dir)
    adapters = load_adapters(run_dir)
    base, tokenizer = load_base_model(run["model"])
    model = PersonalizedLM(attach_lora(base, lora_settings(run)))
    personas = list(split.personas)
    scorer = LossScorer(
        model, tokenizer, {p: adapters[p] for p in personas}, config.dataset.max_length
    )
    router = Router(scorer, personas, available=personas)
    right, times = 0, []
    for prompt, persona in sample:
        start = time.process_time()
        right += router.route(prompt).persona == persona
        times.append(time.process_time() - start)
    return right / len(sample), 1000 * statistics.median(times)


def centroid_on_sample(model, encoder, sample: list[tuple[str, str]]) -> float:
    rows = encoder.encode([p for p, _ in sample])
    chosen = [model.personas[int(np.argmax(model.logits(r, None)))] for r in rows]
    return float(np.mean([c == p for c, (_, p) in zip(chosen, sample)]))


DRAWS = 5  # private rows: mean (and range) of the accuracy over this many independent noise draws


def _private_accuracy(
    split: Split, eps: float, use_context: bool, ledgers: Path, features, prior=None
) -> str:
    accs, noise = [], None
    for draw in range(DRAWS):
        model, noise = private_router(split, eps, use_context, ledgers / str(draw), features, prior)
        accs.append(100 * accuracy(model, split.heldout, use_context))
    assert noise is not None
    return (
        f"(z = {noise.noise_multiplier:.2f}) | {len(_flat(split.heldout)[2])} | "
        f"{statistics.mean(accs):.1f} % ({min(accs):.0f}–{max(accs):.0f}) |"
    )


def routing_rows(
    split: Split,
    encoder,
    ledgers: Path,
    loss: tuple[float, float, int, float] | None,
    public: tuple | None = None,
) -> list[str]:
    """The routing table's rows; ``public``: the public feature map and the public-only router (or
    ``None``), whose private rows are measured beside the unmapped ones. Private rows: the mean accuracy
    over :data:`DRAWS` noise draws and its range."""
    from fedpers.personas.router_data import learn_router

    n = len(_flat(split.heldout)[2])
    users = len(split.train)
    has_context = any(u.context.any() for u in split.train)
    rows = []
    clean_text = learn_router(split.train, split.personas, use_context=False)
    rows.append(
        f"| centroid, text, clean statistics | {n} | {100 * accuracy(clean_text, split.heldout, False):.1f} % |"
    )
    if has_context:
        clean_both = learn_router(split.train, split.personas, use_context=True)
        rows.append(
            f"| centroid, text + context, clean statistics | {n} | {100 * accuracy(clean_both, split.heldout, True):.1f} % |"
        )
    for eps in EPSILONS:
        rows.append(
            f"| centroid, text, private statistics of {users} devices, ε = {eps:g} "
            + _private_accuracy(split, eps, False, ledgers / f"{split.name}-{eps:g}", None)
        )
    if public is not None and public[0].kind != "identity":
        features, alone, public_users = public
        label = (
            f"{features.kind.upper()} map of the public data ({features.dimension(0)} dimensions)"
        )
        if alone is not None:
            rows.append(
                f"| public data alone: {label}, public centroids (no device data) | {n} | "
                f"{100 * accuracy(alone, split.heldout, False):.1f} % |"
            )
        mapped = learn_router(split.train, split.personas, use_context=False, features=features)
        rows.append(
            f"| centroid, text, {label}, clean statistics | {n} | "
            f"{100 * accuracy(mapped, split.heldout, False):.1f} % |"
        )
        for use_context in (False, True) if has_context else (False,):
            what = "text + context" if use_context else "text"
            for eps in EPSILONS:
                rows.append(
                    f"| **centroid, {what}, {label}, private statistics of {users} devices, "
                    f"ε = {eps:g}** "
                    + _private_accuracy(
                        split,
                        eps,
                        use_context,
                        ledgers / f"{split.name}-mapped-{what}-{eps:g}",
                        features,
                    )
                )
        if public_users:
            from fedpers.personas.router_data import public_statistics

            for use_context in (False, True) if has_context else (False,):
                what = "text + context" if use_context else "text"
                prior = public_statistics(public_users, split.personas, features, use_context)
                for eps in EPSILONS:
                    rows.append(
                        f"| **public warm start ({len(public_users)} public users) + private statistics "
                        f"of {users} devices, {what}, {label}, ε = {eps:g}** "
                        + _private_accuracy(
                            split,
                            eps,
                            use_context,
                            ledgers / f"{split.name}-warm-{what}-{eps:g}",
                            features,
                            prior,
                        )
                    )
    if loss is not None:
        acc, _, sample, centroid_acc = loss
        rows.append(
            f"| loss scoring under the run's adapters (sample of {sample}) | {sample} | {100 * acc:.1f} % |"
        )
        rows.append(
            f"| centroid, text, clean statistics, same sample | {sample} | {100 * centroid_acc:.1f} % |"
        )
    return rows


def headline(
    args, big: Split, public, encoder, ledgers: Path, cpu_ms: float, ms: float
) -> list[str]:
    """One line: the router learned through the private path at the larger population (text + context, the
    public map and warm start, ε = 8; mean of the noise draws) and loss scoring under the default run's
    adapters, on the same sample of held-out prompts of the larger desk."""
    from fedpers.personas.context import CONTEXT_DIMENSION
    from fedpers.personas.router_data import public_statistics, user_prompts

    features, _, public_users = public
    per = max(1, args.loss_sample // len(big.personas))
    picked: list[tuple[str, np.ndarray, str]] = []
    counts: dict[str, int] = {}
    for user in user_prompts(big.heldout_convs):
        for prompt, context in zip(user.prompts, user.contexts):
            if counts.get(user.persona or "", 0) < per:
                counts[user.persona or ""] = counts.get(user.persona or "", 0) + 1
                picked.append((prompt, context.vector(CONTEXT_DIMENSION), user.persona or ""))
    rows = encoder.encode([p for p, _, _ in picked])
    prior = public_statistics(public_users, big.personas, features, True)
    accs = []
    for draw in range(DRAWS):
        model, _ = private_router(
            big, HEADLINE_EPSILON, True, ledgers / f"headline-{draw}", features, prior
        )
        chosen = [
            model.personas[int(np.argmax(model.logits(r, c)))] for r, (_, c, _) in zip(rows, picked)
        ]
        accs.append(100 * np.mean([a == p for a, (_, _, p) in zip(chosen, picked)]))
    loss_acc, loss_ms = loss_scoring(args.run, big, [(p, persona) for p, _, persona in picked])
    return [
        "",
        f"**Routing accuracy on held-out synthetic prompts: {statistics.mean(accs):.1f} %** — the centroid "
        f"router learned through the private path from {len(big.train)} devices (text + context, public "
        f"{features.kind.upper()} map and public warm start, ε = {HEADLINE_EPSILON:g}; mean of {DRAWS} noise "
        f"draws, {min(accs):.0f}–{max(accs):.0f}) on {len(picked)} held-out prompts of that desk, "
        f"{cpu_ms:.1f} ms of CPU time per prompt on 1 thread ({ms:.1f} ms wall-clock on 2); loss scoring "
        f"under the {args.run.name} run's adapters on the same {len(picked)} prompts: {100 * loss_acc:.1f} % "
        f"at {loss_ms:.0f} ms per prompt.",
    ]


HEADLINE_EPSILON = 8.0

# ------------------------------------------- cold start -------------------------------------------


COLD_START_EPSILON = 8.0


def cold_start(
    run_dir: Path,
    split: Split,
    calibration_split: Split,
    out: list[str],
    features=None,
    ledgers: Path | None = None,
    public_users=None,
) -> None:
    """Leave-one-user-out: each user is new to a router learned from the others (private statistics at
    :data:`COLD_START_EPSILON` under the public feature map ``features``)."""
    from fedpers.evaluation import evaluate
    from fedpers.models import PersonalizedLM, attach_lora, load_adapter_arrays, load_base_model
    from fedpers.models.chat import encode_conversations
    from fedpers.personas.centroid import calibrate
    from fedpers.personas.router_data import learn_router
    from fedpers.rundir import load_adapters, lora_settings

    run, config = run_settings(run_dir)
    adapters = load_adapters(run_dir)
    base, tokenizer = load_base_model(run["model"])
    model = PersonalizedLM(attach_lora(base, lora_settings(run)))
    model.use_user_embedding = False
    names = ["global", *split.personas]
    losses: dict[str, dict[str, float]] = {}
    for user in split.heldout:
        convs = [c for c in split.heldout_convs if c.user_id == user.user_id]
        examples = encode_conversations(tokenizer, convs, config.dataset.max_length)
        losses[user.user_id] = {}
        for name in names:
            load_adapter_arrays(model.lm, adapters[name])
            losses[user.user_id][name] = evaluate(model, examples, tokenizer.pad_token_id).loss
    # temperature and threshold from public data (the synthetic desk with another seed), never users' data
    from fedpers.personas.features import IDENTITY
    from fedpers.personas.router_stats import StatsLayout, noise_for_epsilon

    features = features or IDENTITY
    ledgers = ledgers or Path(tempfile.mkdtemp(prefix="bench-router-cold-"))
    layout = StatsLayout(
        split.personas,
        features.dimension(split.train[0].text.shape[1]),
        split.train[0].context.shape[1],
    )
    noise = noise_for_epsilon(COLD_START_EPSILON, DELTA, layout)
    public = learn_router(
        calibration_split.train, split.personas, use_context=True, features=features
    )
    from fedpers.personas.router_data import public_statistics

    prior = public_statistics(public_users or [], split.personas, features, True)
    text, context, labels = _flat(calibration_split.heldout)
    cal = calibrate(public, text, context, labels, target_accuracy=0.9)
    results: dict[int, dict[str, list[float]]] = {}
    train_by_user = {u.user_id: u for u in split.train}
    for n in (0, 1, 3):
        rec: dict[str, list[float]] = {
            k: [] for k in ("right", "router", "fallback", "used_global")
        }
        for user in split.heldout:
            others = [u for u in split.train if u.user_id != user.user_id]
            router = learn_router(
                others,
                split.personas,
                noise=noise,
                ledger_dir=ledgers / f"cold-{n}-{user.user_id}",
                use_context=True,
                rng=np.random.default_rng(len(results) * 1000 + len(rec["right"])),
                temperature=cal.temperature,
                threshold=cal.threshold,
                features=features,
                prior=prior,
            )
            mine = train_by_user[user.user_id]
            text_state = (
                (mine.text[:n].mean(0) / np.linalg.norm(mine.text[:n].mean(0))) if n else None
            )
            probs = router.probabilities(text_state, mine.context[0], split.personas)
            choice = max(probs, key=probs.__getitem__)
            confident = probs[choice] >= router.threshold
            rec["right"].append(float(choice == user.persona))
            rec["router"].append(losses[user.user_id][choice])
            rec["fallback"].append(losses[user.user_id][choice if confident else "global"])
            rec["used_global"].append(float(not confident))
        results[n] = rec
    users = len(split.heldout)
    g = np.mean([losses[u.user_id]["global"] for u in split.heldout])
    t = np.mean([losses[u.user_id][u.persona] for u in split.heldout])
    out += [
        "",
        f"**Cold start** ({run_dir.name}: {users} users, each new to a router learned from the other "
        f"{users - 1} users' training prompts with context, private statistics at ε = {COLD_START_EPSILON:g} "
        f"under the public {features.kind.upper()} feature map"
        + (", with the public warm start" if prior is not None else "")
        + "; held-out loss of the new user's "
        "answers, nats per assistant token, lower is better; temperature "
        f"{cal.temperature:g} and confidence threshold {cal.threshold:.2f} calibrated on public data — the synthetic "
        f"desk with seed 1 — for 90 % accuracy of the confident choices; coverage there {100 * cal.coverage:.0f} %)",
        "",
        "| messages seen | routed to the true persona | loss, router's choice | loss, router with fallback (users on global) | loss, global adapter | loss, true persona's adapter |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for n, rec in results.items():
        out.append(
            f"| {n}{' (context only)' if n == 0 else ''} | {int(sum(rec['right']))} / {users} | "
            f"{np.mean(rec['router']):.3f} | {np.mean(rec['fallback']):.3f} ({int(sum(rec['used_global']))}) | "
            f"{g:.3f} | {t:.3f} |"
        )


# ------------------------------------------- persona discovery -------------------------------------------


def unit_means(users: Sequence) -> np.ndarray:
    """Each user's mean prompt embedding, scaled to unit norm (float64 rows)."""
    from fedpers.personas.encoder import unit_rows

    return unit_rows(np.stack([u.text.mean(0) for u in users])).astype(np.float64)


def discovery(
    split: Split,
    epsilon: float | None,
    ks: Sequence[int],
    rounds: int,
    seed: int,
    public: np.ndarray | None = None,
    pca: bool = False,
):
    """Private spherical k-means of the devices' unit mean embeddings for each K; the chosen clustering,
    all of them, and the noise (``None``: clean sums). With ``public`` (the public users' unit means), K and
    the starting centroids come from them (:func:`fedpers.personas.discovery.public_start`) and only the
    chosen K runs privately; with ``pca`` too, devices and public users first map their means with the
    public users' principal directions (unit rows after the map)."""
    from fedpers.personas.discovery import choose_k, public_start, spherical_kmeans
    from fedpers.personas.encoder import unit_rows
    from fedpers.personas.features import pca_map
    from fedpers.personas.router_stats import (
        StatsLayout,
        device_contribution,
        noise_for_epsilon,
        private_upload,
        secure_sum,
        statistics_from_sum,
    )
    from fedpers.privacy.ledger import PrivacyLedger
    from fedpers.privacy.skellam import noise_variance_for_epsilon
    from fedpers.privacy.user_level import DistributedNoise

    vectors = unit_means(split.train)
    start = None
    if public is not None:
        if pca:
            features = pca_map(public)
            vectors = unit_rows(features(vectors)).astype(np.float64)
            public = unit_rows(features(public)).astype(np.float64)
        start, _ = public_start(public, ks, np.random.default_rng(seed))
        ks = (start.k,)
    d = vectors.shape[1]
    # the global mean, then every round of every K; from a public start, the chosen K's rounds only
    releases = len(ks) * rounds + (1 if start is None else 0)
    tmp = tempfile.TemporaryDirectory()
    rng = np.random.default_rng(seed)

    def noise_of(layout: StatsLayout) -> DistributedNoise | None:
        if epsilon is None:
            return None
        probe = noise_for_epsilon(1.0, DELTA, layout)
        v = noise_variance_for_epsilon(
            epsilon, DELTA, probe.l2_sensitivity, probe.l1_sensitivity, steps=releases
        )
        return DistributedNoise(
            math.sqrt(v) / (layout.clip * layout.levels_per_unit),
            layout.clip,
            layout.levels_per_unit,
            layout.dimension,
        )

    def private_round(k: int):
        slots = tuple(f"c{j}" for j in range(k))
        layout = StatsLayout(slots, d, 0)
        noise = noise_of(layout)

        def run(assign: np.ndarray):
            parts = [
                device_contribution(layout, {slots[a]: v[None]}) for v, a in zip(vectors, assign)
            ]
            if noise is None:
                total = np.sum(parts, axis=0).reshape(k, layout.row)
                return total[:, :d], total[:, -1]
            uploads = [
                private_upload(
                    p,
                    layout,
                    noise,
                    len(parts),
                    PrivacyLedger(Path(tmp.name) / f"{i}.json", str(i)),
                )
                for i, p in enumerate(parts)
            ]
            stats = statistics_from_sum(
                secure_sum(uploads, layout.grid(), pairwise_masks=False), len(parts), layout
            )
            return stats.text_sums, stats.counts

        return run

    if start is not None:
        found = [
            spherical_kmeans(
                vectors,
                start.k,
                private_round(start.k),
                None,
                rng,
                rounds=rounds,
                start=start.centroids,
            )
        ]
    else:
        mean_sums, _ = private_round(1)(np.zeros(len(vectors), dtype=int))
        found = [
            spherical_kmeans(vectors, k, private_round(k), mean_sums[0], rng, rounds=rounds)
            for k in ks
        ]
    spent = None
    if epsilon is not None:
        ledger = PrivacyLedger(Path(tmp.name) / "0.json", "0")
        spent = ledger.spent().epsilon
    tmp.cleanup()
    return choose_k(found), found, spent


@dataclass(frozen=True)
class InferredRun:
    """A federated run with inferred personas: its name, how its devices chose, K, and the ARI of the choices."""

    name: str
    method: str
    k: int
    ari: float


def inferred_run(run_dir: Path, split: Split) -> InferredRun:
    """The ARI of the persona each device of ``run_dir`` chose against the desk's true personas."""
    from clients.persona import LOSS_METHOD
    from fedpers.personas.discovery import adjusted_rand_index
    from fedpers.privacy.ledger import LEDGER_FILE, PrivacyLedger

    chosen = inferred_labels(run_dir)
    truth = {u.user_id: u.persona for u in split.train}
    users = sorted(set(chosen) & set(truth))
    run, config = run_settings(run_dir)
    state = client_state_dir(run_dir)
    # how the devices chose, as their ledgers recorded it (entries from before the method was recorded: IFCA)
    methods = {
        str(e.details.get("method", LOSS_METHOD))
        for u in users
        for e in PrivacyLedger(state / u / LEDGER_FILE, u).entries
        if e.purpose == "persona-choice" and e.details.get("run_id") == run["run_id"]
    }
    method = "noisy choice by " + " / ".join(sorted(methods)) if methods else "no choice recorded"
    return InferredRun(
        run_dir.name,
        method,
        len(config.persona_names),
        adjusted_rand_index([truth[u] for u in users], [chosen[u] for u in users]),
    )


def prompt_choice_ari(
    split: Split, public_users: Sequence, k: int, draws: int = 5
) -> tuple[float, float, float, str]:
    """The devices' noisy prompt choice (:mod:`fedpers.personas.prompt_choice`, default noise) against public
    centroids at ``k``, as a federated run makes it: mean, min and max ARI over ``draws`` noise draws, and the
    public data's verdict on K."""
    from clients.persona import SELECTION_NOISE
    from fedpers.personas.discovery import adjusted_rand_index
    from fedpers.personas.prompt_choice import discover_public

    found = discover_public(
        unit_means(public_users),
        np.concatenate([u.text for u in public_users]),
        [f"p{j}" for j in range(k)],
        np.random.default_rng(0),
    )
    truth = [u.persona for u in split.train]
    rng = np.random.default_rng(1)
    aris = []
    for _ in range(draws):
        picks = []
        for u in split.train:
            scores = found.centroids.noisy_scores(u.text, SELECTION_NOISE, rng)
            picks.append(max(scores, key=scores.__getitem__))
        aris.append(adjusted_rand_index(truth, picks))
    return float(np.mean(aris)), min(aris), max(aris), f"public favours {found.favoured_k}"


def discovery_rows(
    split: Split, out: list[str], runs: Sequence[InferredRun], public_users: Sequence = ()
) -> None:
    from fedpers.personas.discovery import adjusted_rand_index, nearest, public_start

    truth = [u.persona for u in split.train]
    ks = tuple(range(2, 9))
    out += [
        "",
        f"**Persona discovery** ({split.name}: the users' unit mean prompt embeddings; K tried: "
        f"{ks[0]}..{ks[-1]}; chosen by the centroid silhouette of the released sums; {len(truth)} devices, "
        f"{len(set(truth))} true personas)",
        "",
        "| method | ε (all releases) | chosen K | silhouette by K | ARI against the true personas |",
        "| --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        out.append(
            f"| federated run with inferred personas ({run.name}), {run.method} | one noisy choice per "
            f"device (its ledger) | {run.k} (set) | — | {run.ari:.3f} |"
        )
    for eps in (None, 8.0):
        best, found, spent = discovery(split, eps, ks, rounds=6, seed=0)
        sil = ", ".join(f"{c.k}: {c.silhouette:.2f}" for c in found)
        out.append(
            f"| private spherical k-means, {'clean sums' if eps is None else 'private sums'} | "
            f"{'—' if spent is None else f'{spent:.2f}'} | {best.clusters} | {sil} | "
            f"{adjusted_rand_index(truth, best.labels):.3f} |"
        )
    if not public_users:
        return
    public = unit_means(public_users)
    chosen, tried = public_start(public, ks, np.random.default_rng(0))
    sil = ", ".join(f"{c.k}: {c.silhouette:.2f}" for c in tried)
    # each device's nearest public centroid, kept on the device
    own = nearest(unit_means(split.train), chosen.centroids)
    out.append(
        f"| public centroids alone ({len(public)} public users: K chosen on them), each device takes the "
        f"nearest | 0 (nothing released) | {len(set(own.tolist()))} | public: {sil} | "
        f"{adjusted_rand_index(truth, own):.3f} |"
    )
    k = len(set(truth))
    mean, low, high, verdict = prompt_choice_ari(split, public_users, k)
    out.append(
        f"| public centroids at K = {k} (the run's personas), each device's noisy prompt choice "
        f"(`fedpers.personas.prompt_choice`, noise multiplier 1, as in a federated run) | one Gaussian "
        f"release per device (its ledger) | {k} (set; {verdict}) | public: {sil} | "
        f"{mean:.3f} (5 draws, {low:.2f}–{high:.2f}) |"
    )
    for pca in (False, True):
        for eps in (None, 8.0):
            best, _, spent = discovery(split, eps, ks, rounds=2, seed=0, public=public, pca=pca)
            out.append(
                f"| public start ({len(public)} public users{', PCA map' if pca else ''}: K chosen on "
                f"them, their centroids), then 2 private rounds, {'clean sums' if eps is None else 'private sums'} | "
                f"{'—' if spent is None else f'{spent:.2f}'} | {best.clusters} | public: "
                f"{sil if not pca else f'K = {best.k}'} | {adjusted_rand_index(truth, best.labels):.3f} |"
            )


# ------------------------------------------- main -------------------------------------------


def synthetic_split(
    name: str, users_per_persona: int, conversations: int, seed: int, encoder
) -> Split:
    from fedpers.data.synthetic import SyntheticConfig, generate
    from fedpers.personas.router_data import encode_users, user_prompts

    config = SyntheticConfig(
        users_per_persona=users_per_persona, conversations_per_user=conversations, seed=seed
    )
    train, heldout = _split_users(generate(config), 0.25, seed)
    return Split(
        name,
        config.personas,
        encode_users(user_prompts(train), encoder),
        encode_users(user_prompts(heldout), encoder),
        train,
        heldout,
    )


def report(args: argparse.Namespace) -> list[str]:
    import torch

    from fedpers.data.schema import read_jsonl
    from fedpers.personas.encoder import default_encoder
    from fedpers.personas.router_data import learn_router

    torch.set_num_threads(2)
    encoder = default_encoder()
    ledgers = Path(tempfile.mkdtemp(prefix="bench-router-ledgers-"))
    out = Section()
    out += [
        "## Prompt router",
        "",
        f"`python -m simulations.bench_router` on {os.cpu_count()} CPU cores, torch limited to 2 threads. "
        "Prompts: the opening user message of each held-out conversation (per-user split of the run's "
        "settings). Centroid router: all-MiniLM-L6-v2 (offline) + nearest centroid (cosine); its private "
        "statistics are one Skellam release per device (user-level: a device's upload is its mean embedding "
        "and count, L2 norm at most √2; with context, its mean context vector too, √3), each device's noised quantized upload summed as "
        "SecAgg+ would, δ = 1e-5. With a public feature map, each device first maps its embeddings with a "
        "linear map learned from the scenario's public split only (Fisher's discriminant when the public "
        "data declares the run's personas, else principal components; `fedpers.personas.features`), so the "
        "same noise spreads over a few dimensions instead of 384; the public data alone (map and centroids, "
        "no device data) is measured beside it. Loss scoring: one forward pass of the LLM per persona adapter.",
    ]
    # --- any JSONL with declared personas
    if args.jsonl:
        convs = read_jsonl(args.jsonl, mode="strict").conversations
        personas = tuple(dict.fromkeys(c.persona for c in convs if c.persona))
        if not personas:
            raise ValueError(f"{args.jsonl}: no conversation declares a persona")
        from fedpers.personas.router_data import encode_users, user_prompts

        train, heldout = _split_users([c for c in convs if c.persona], 0.25, 0)
        data = Split(
            Path(args.jsonl).name,
            personas,
            encode_users(user_prompts(train), encoder),
            encode_users(user_prompts(heldout), encoder),
            train,
            heldout,
        )
        out += [
            "",
            f"**{data.name}** ({len(data.train)} users, {len(personas)} declared personas)",
            "",
            "| router | prompts | accuracy (private: mean of 5 noise draws, range) |",
            "| --- | --- | --- |",
            *routing_rows(data, encoder, ledgers, None, public_features(encoder, personas)),
        ]
    if args.jsonl_only:
        return out
    # --- the default scenario's run
    split = run_split(args.run, encoder)
    run_public = public_features(encoder, split.personas, run_settings(args.run)[1])
    sample = sample_prompts(split, args.loss_sample // len(split.personas))
    clean = learn_router(split.train, split.personas, use_context=False)
    heldout_prompts = [p for c in split.heldout_convs for p in c.texts("user")[:1]]
    ms, cpu_ms = time_centroid(clean, encoder, heldout_prompts[: args.timing_prompts])
    load = os.getloadavg()[0]
    loss = None
    if args.loss_sample:
        acc, loss_ms = loss_scoring(args.run, split, sample)
        loss = (acc, loss_ms, len(sample), centroid_on_sample(clean, encoder, sample))
    out += [
        "",
        f"**Routing accuracy on held-out synthetic prompts** ({args.run.name}: {len(split.train)} users, "
        f"{len(split.personas)} personas, chance {100 / len(split.personas):.0f} %)",
        "",
        "| router | prompts | accuracy (private: mean of 5 noise draws, range) |",
        "| --- | --- | --- |",
        *routing_rows(
            split,
            encoder,
            ledgers,
            loss,
            run_public,
        ),
        "",
        f"Time per prompt, one at a time (median of {min(args.timing_prompts, len(heldout_prompts))} "
        f"prompts, embedding + scoring): centroid router **{cpu_ms:.1f} ms of CPU time on 1 thread**, "
        f"{ms:.1f} ms wall-clock on 2 threads with a load average of {load:.1f} on {os.cpu_count()} cores "
        "(on 2 idle cores the wall-clock time is at most the 1-thread CPU time)"
        + (
            f"; loss scoring {loss[1]:.0f} ms of CPU time per prompt ({len(split.personas)} adapters)."
            if loss
            else "."
        ),
    ]
    # --- the private router against the number of devices
    big = synthetic_split(
        f"synthetic desk, {args.population} users per persona", args.population, 12, 0, encoder
    )
    big_public = public_features(encoder, big.personas)
    out += [
        "",
        f"**Private statistics against the number of devices** (synthetic desk, {len(big.train)} users, "
        "12 conversations each, seed 0; text only; one release per device)",
        "",
        "| router | prompts | accuracy (private: mean of 5 noise draws, range) |",
        "| --- | --- | --- |",
        *routing_rows(big, encoder, ledgers, None, big_public),
    ]
    if args.loss_sample:
        out += headline(args, big, big_public, encoder, ledgers, cpu_ms, ms)
    # --- tinyshakespeare with the personas its devices inferred
    if args.shakespeare_run:
        labels = inferred_labels(args.shakespeare_run)
        shakes = run_split(args.shakespeare_run, encoder, labels)
        out += [
            "",
            f"**tinyshakespeare** ({args.shakespeare_run.name}: {len(shakes.train)} speakers; labels: the voice "
            f"each device chose privately in that run, {len(set(labels.values()))} voices; chance "
            f"{100 / len(shakes.personas):.0f} %)",
            "",
            "| router | prompts | accuracy (private: mean of 5 noise draws, range) |",
            "| --- | --- | --- |",
            *routing_rows(
                shakes,
                encoder,
                ledgers,
                None,
                public_features(encoder, shakes.personas, run_settings(args.shakespeare_run)[1]),
            ),
        ]
    # --- cold start
    if args.cold_start:
        public = synthetic_split("public synthetic desk", 3, 40, 1, encoder)
        cold_start(
            args.run,
            split,
            public,
            out,
            run_public[0],
            ledgers,
            run_public[2],
        )
    # --- persona discovery
    runs = [inferred_run(path, split) for path in args.inferred_run]
    discovery_rows(split, out, runs, run_public[2])
    discovery_rows(big, out, (), big_public[2])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--run",
        type=Path,
        default=DEFAULT_RUN,
        help="a finished run of the default scenario (declared personas)",
    )
    p.add_argument(
        "--shakespeare-run", type=Path, help="a finished tinyshakespeare run with inferred personas"
    )
    p.add_argument("--jsonl", type=Path, help="a JSONL file with declared personas")
    p.add_argument(
        "--jsonl-only", action="store_true", help="with --jsonl: only the JSONL file's table"
    )
    p.add_argument(
        "--inferred-run",
        "--ifca-run",
        type=Path,
        action="append",
        default=[],
        help="a finished run of the default scenario with --persona-mode inferred (repeatable: one row each)",
    )
    p.add_argument(
        "--loss-sample", type=int, default=50, help="prompts scored by the loss router (0: none)"
    )
    p.add_argument("--timing-prompts", type=int, default=100)
    p.add_argument(
        "--population",
        type=int,
        default=37,
        help="users per persona of the larger synthetic desk (37: every first name the generator has)",
    )
    p.add_argument("--no-cold-start", dest="cold_start", action="store_false")
    p.add_argument("--write", action="store_true", help="write the result into BENCHMARKS.md")
    args = p.parse_args(argv)
    from simulations.bench_dp_step import print_section

    print_section(report(args), args.write, MARK)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
