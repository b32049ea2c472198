"""Benchmark: where the user embedding enters the model, its held-out gain against the cost of its phase.

The user embedding (:mod:`fedpers.models.user_embedding`) is ``k`` soft-prompt vectors prepended to the input
embeddings, so every step of its phase runs all decoder layers forward and backward: the frozen-trunk cache
(:mod:`fedpers.models.trunk`) cannot serve it, and it is most of a device's round. This benchmark measures what
moving the prompt up would give and cost. For an entry layer ``m`` the ``k`` prompt vectors are prepended to the
hidden states *entering* layer ``m``::

    h_m = [P ; h_m(x)],    loss = CE(head(f_{L-1} o ... o f_m(h_m))[k:], targets)

where ``h_m(x)`` are the conversation's states entering layer ``m`` without the prompt (fixed: computed once,
like the trunk cache; for ``m = 0`` the token embeddings, which is exactly the user embedding at ``embedding_layer = 0``), so a
step runs only layers ``m .. L-1`` and the head. ``m`` = the first LoRA layer is the cached path itself: no
second cache, the cost of a DP-SGD step. The prompt starts from the states entering layer ``m`` of the public
initialisation text (:data:`fedpers.models.user_embedding.PUBLIC_INIT_TEXT`, data-independent, as the project's
``public_init`` at ``m = 0``).

Every variant trains on the same Poisson samples (benchmark seed per user and round) with the scenario's
embedding steps, batch and rounds (Adam reset each round, as a device does), on top of the public warm start
adapter (no device's data), and is scored on the user's held-out conversations, token-weighted:
``gain = loss(adapter) - loss(adapter + prompt)``. Hidden states above layer 0 are far larger than token
embeddings (a few dimensions carry most of the norm), so each entry layer above 0 tries Adam learning rates
``embedding_lr * r_m * f`` for ``f`` in ``--lr-factors``, ``r_m`` the ratio of the mean norms of its initial
vectors and the token embeddings', and reports the best ``f`` on the held-out data (optimistic for the
alternatives: chosen on the data it is scored on). Times: the embedding phase per user (all rounds), the
one-off states below ``m`` apart.

    python -m simulations.bench_embedding [--write] [--users 5] [--entries 8,16,trunk]
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from simulations.bench_dp_step import print_section

ROOT = Path(__file__).resolve().parent.parent
MARK = "embedding-entry"
SCENARIO = ROOT / "simulations" / "scenarios" / "default.toml"
SEED = 20261204
LR_FACTORS = (0.3, 1.0, 3.0, 10.0)


@dataclass
class Entry:
    """One entry layer's result, summed over users."""

    layer: int
    factor: float
    learning_rate: float
    gain: float  # token-weighted over all users' held-out conversations
    seconds: float  # embedding phase, per user (all rounds)
    states_seconds: float  # one-off states entering the layer, per user


def _setup(scenario: Path, users: int, overrides: dict):
    from fedpers.federated import FederatedConfig, load_config_file
    from fedpers.models.environment import model_environment
    from fedpers.userdata import user_data, user_ids
    from fedpers.warmstart import public_warm_start

    # float32 throughout: the prompt passes below are the benchmark's own (no bfloat16 head or layers)
    values = load_config_file(scenario) | {"bf16": "off"} | overrides
    config = FederatedConfig.from_flat(values).validated()
    env = model_environment(config)
    ids = user_ids(config)
    chosen = ids[:: config.dataset.users_per_persona][:users]  # one user of each persona
    adapter = public_warm_start(config, env.initial_adapter)
    return config, env, adapter, [user_data(config, u, env) for u in chosen]


def _states(env, examples, layer: int):
    """``(batch, h_layer)``: the collated examples and the states entering ``layer`` (no prompt, no grad)."""
    import torch

    from fedpers.models import collate
    from fedpers.models.trunk import causal_lm_parts, run_layers

    backbone, _ = causal_lm_parts(env.model.lm)
    batch = collate(examples, env.pad_token_id)
    with torch.no_grad():
        hidden = backbone.get_input_embeddings()(batch["input_ids"])
        if layer > 0:
            hidden = run_layers(backbone, hidden, batch["attention_mask"], 0, layer)
    return batch, hidden


def prompt_losses(env, prompt, batch, hidden, layer: int):
    """Per-sequence assistant-token loss with ``prompt`` ``[k, d]`` prepended to ``hidden`` entering ``layer``."""
    import torch

    from fedpers.models.personalized import sequence_losses
    from fedpers.models.trunk import causal_lm_parts, run_layers

    backbone, head = causal_lm_parts(env.model.lm)
    rows, k = hidden.shape[0], prompt.shape[0]
    joined = torch.cat([prompt.unsqueeze(0).expand(rows, -1, -1), hidden], dim=1)
    mask = torch.cat(
        [torch.ones(rows, k, dtype=batch["attention_mask"].dtype), batch["attention_mask"]], dim=1
    )
    return sequence_losses(
        run_layers(backbone, joined, mask, layer)[:, k:, :], batch["labels"], head
    )


def initial_prompt(env, k: int, layer: int):
    """The public initialisation text's ``k`` vectors entering ``layer`` (its token embeddings at 0), as a
    device starts its user embedding there (:func:`fedpers.models.environment.public_prompt`)."""
    from fedpers.models.environment import public_prompt
    from fedpers.models.user_embedding import UserEmbedding

    start = UserEmbedding.public_init(k, env.model.lm.get_input_embeddings(), env.tokenizer)
    return public_prompt(env.model, start, layer)


def _heldout(env, prompt, chunks, layer: int) -> tuple[float, int]:
    """Summed assistant-token loss and token count over ``chunks`` (``(batch, states)`` pairs)."""
    import torch

    from fedpers.models.chat import IGNORE_INDEX

    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch, hidden in chunks:
            losses = prompt_losses(env, prompt, batch, hidden, layer)
            counts = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1)
            total, tokens = total + float((losses * counts).sum()), tokens + int(counts.sum())
    return total, tokens


def train_prompt(env, config, data, layer: int, learning_rate: float, user_seed: int):
    """The prompt after the scenario's rounds of embedding steps entering ``layer``; the phase's seconds and
    the one-off seconds of the states below it."""
    import torch

    from fedpers.models import collate

    started = time.perf_counter()
    states = [_states(env, [e], layer)[1][0] for e in data.train]
    states_seconds = time.perf_counter() - started
    prompt = torch.nn.Parameter(initial_prompt(env, config.model.embedding_tokens, layer))
    n, batch_size = len(data.train), config.local.batch_size
    started = time.perf_counter()
    for server_round in range(config.server.rounds):
        generator = torch.Generator().manual_seed(SEED + 1000 * user_seed + server_round)
        optimizer = torch.optim.Adam([prompt], lr=learning_rate)
        for _ in range(config.local.embedding_steps):
            picked = (torch.rand(n, generator=generator) < batch_size / n).nonzero().flatten()
            if len(picked) == 0:
                continue
            batch = collate([data.train[i] for i in picked.tolist()], env.pad_token_id)
            width = batch["input_ids"].shape[1]
            hidden = torch.zeros(len(picked), width, states[0].shape[-1])
            for row, i in enumerate(picked.tolist()):
                hidden[row, : states[i].shape[0]] = states[i][:width]
            optimizer.zero_grad(set_to_none=True)
            prompt_losses(env, prompt, batch, hidden, layer).mean().backward()
            optimizer.step()
    return prompt.detach(), time.perf_counter() - started, states_seconds


def measure(
    scenario: Path, users: int, entries: list[str], factors: list[float], overrides: dict
) -> dict:
    """The best learning rate's gain and times for the input (layer 0) and every entry layer."""
    import torch

    from fedpers.models import load_adapter_arrays

    config, env, adapter, datas = _setup(scenario, users, overrides)
    load_adapter_arrays(env.model.lm, adapter)
    env.model.use_user_embedding = False
    env.model.eval()
    if "trunk" in entries and env.trunk_layer is None:
        raise ValueError("entry 'trunk': this model's LoRA layers leave no frozen trunk below them")
    layers = sorted({env.trunk_layer if e == "trunk" else int(e) for e in entries} | {0})
    k = config.model.embedding_tokens
    base_norm = float(initial_prompt(env, k, 0).norm(dim=-1).mean())
    heldouts = {
        layer: [
            [_states(env, d.heldout[i : i + 16], layer) for i in range(0, len(d.heldout), 16)]
            for d in datas
        ]
        for layer in layers
    }
    no_prompt = initial_prompt(env, k, 0)[:0]
    sums = [_heldout(env, no_prompt, chunks, 0) for chunks in heldouts[0]]
    without, tokens = sum(s for s, _ in sums), sum(t for _, t in sums)
    rows: list[Entry] = []
    for layer in layers:
        ratio = float(initial_prompt(env, k, layer).norm(dim=-1).mean()) / base_norm
        best: Entry | None = None
        for factor in factors:
            lr = config.local.embedding_lr * ratio * factor
            total, seconds, states_seconds = 0.0, 0.0, 0.0
            for u, data in enumerate(datas):
                prompt, s, one_off = train_prompt(env, config, data, layer, lr, u)
                seconds, states_seconds = seconds + s, states_seconds + one_off
                total += _heldout(env, prompt, heldouts[layer][u], layer)[0]
            entry = Entry(
                layer,
                factor,
                lr,
                (without - total) / tokens,
                seconds / len(datas),
                states_seconds / len(datas),
            )
            print(
                f"entry layer {layer}, lr {lr:.3g}: gain {entry.gain:.4f} nats, "
                f"{entry.seconds:.1f} s/user",
                flush=True,
            )
            if best is None or entry.gain > best.gain:
                best = entry
        assert best is not None
        rows.append(best)
    from fedpers.models.trunk import causal_lm_parts

    backbone, _ = causal_lm_parts(env.model.lm)
    return {
        "rows": rows,
        "layers": len(backbone.layers),
        "trunk_layer": env.trunk_layer,
        "users": [d.user_id for d in datas],
        "heldout_tokens": tokens,
        "factors": list(factors),
        "config": config,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def report(result: dict, command: str) -> list[str]:
    """The BENCHMARKS.md section: one row per entry layer, shares and speed against the input prompt."""
    config, rows = result["config"], result["rows"]
    total, trunk = result["layers"], result["trunk_layer"]
    first = rows[0]
    lines = [
        "## User embedding: where the soft prompt enters, its gain against its phase's cost",
        "",
        f"`{command}` — the default scenario's settings ({config.model.model}, "
        f"{config.model.embedding_tokens} prompt vectors, {config.local.embedding_steps} steps a round for "
        f"{config.server.rounds} rounds, expected batch {config.local.batch_size}, Adam reset each round), on "
        f"the public warm start adapter; {len(result['users'])} users (one per persona), the same Poisson "
        f"samples for every variant; gain = held-out loss without the prompt minus with it, token-weighted "
        f"over their {result['heldout_tokens']} held-out assistant tokens. Entry layer 0 is the "
        "user embedding at the input (`embedding-layer = 0`, prepended to the input embeddings); above 0 the prompt is prepended to the states "
        "entering that layer and each step runs only the layers from there up; the learning rate of each "
        "entry (the input's included) is the best of "
        + ", ".join(f"{f:g}" for f in result["factors"])
        + f" times the scenario's {config.local.embedding_lr:g} scaled by the ratio of the prompt's norm "
        "to the token embeddings', chosen on the held-out data it is scored on (the same search for "
        f'every entry, optimistic for all alike). Float32 throughout (`bf16 = "off"`). Machine: {platform.machine()}, {result["threads"]} torch threads, torch '
        f"{result['torch']}.",
        "",
        "| prompt enters at | layers run per step | learning rate | held-out gain (nats) | share of the "
        "input prompt's gain | embedding phase (s/user) | faster than the input prompt | one-off states "
        "below it (s/user) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = (
            "layer 0 (input, the user embedding)"
            if row.layer == 0
            else f"layer {row.layer}"
            + (" (first LoRA layer: the cached path)" if row.layer == trunk else "")
        )
        lines.append(
            f"| {name} | {total - row.layer} of {total} | {row.learning_rate:.3g} | {row.gain:.4f} | "
            f"{_share(row.gain, first.gain)} | {row.seconds:.1f} | {first.seconds / row.seconds:.2f}× | "
            f"{row.states_seconds:.1f} |"
        )
    lines += ["", conclusion(result)]
    return lines


def _share(gain: float, reference: float) -> str:
    return f"{100 * gain / reference:.0f} %" if reference > 0 else "n/a"


def conclusion(result: dict) -> str:
    """What the rows say about moving the prompt onto the cached path (computed from them)."""
    rows, trunk = result["rows"], result["trunk_layer"]
    first = rows[0]
    text = f"The input prompt gains {first.gain:.3f} nats in {first.seconds:.1f} s per user. "
    best = max(rows, key=lambda r: r.gain)
    if best is not first:
        text += (
            f"The largest gain is layer {best.layer}'s, {best.gain:.3f} nats "
            f"({_share(best.gain, first.gain)} of the input prompt's), "
            f"{first.seconds / best.seconds:.2f}× faster. "
        )
    cached = next((r for r in rows if r.layer == trunk), None)
    if cached is not None:
        text += (
            f"Entering at the first LoRA layer (layer {trunk}), where the trunk cache would serve it, the "
            f"phase runs {first.seconds / cached.seconds:.1f}× faster but keeps "
            f"{_share(cached.gain, first.gain)} of the gain. "
        )
    keeping = [r for r in rows[1:] if r.gain >= 0.95 * first.gain]
    if keeping:
        fastest = min(keeping, key=lambda r: r.seconds)
        below = (
            "the trunk cache's states"
            if fastest.layer == trunk
            else f"states of its own below it ({fastest.states_seconds:.1f} s per user, once)"
        )
        text += (
            f"The cheapest entry that keeps at least 95 % of it is layer {fastest.layer}, "
            f"{first.seconds / fastest.seconds:.2f}× faster, with {below}."
        )
    else:
        text += "No entry above the input keeps 95 % of it."
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=5, help="users, one per persona (default 5)")
    p.add_argument(
        "--entries",
        default="8,16,trunk",
        help="comma-separated entry layers above the input ('trunk': the first LoRA layer)",
    )
    p.add_argument(
        "--lr-factors",
        default=",".join(f"{f:g}" for f in LR_FACTORS),
        help="factors of the norm-scaled learning rate tried at each entry above the input",
    )
    p.add_argument("--model", help="override the scenario's model (e.g. 'tiny')")
    p.add_argument("--rounds", type=int, help="override the scenario's rounds")
    p.add_argument("--public-steps", type=int, help="override the public warm start's steps")
    p.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    args = p.parse_args(argv)
    if args.users < 1:
        p.error("--users must be at least 1")
    overrides = {
        key: value
        for key, value in (
            ("model", args.model),
            ("rounds", args.rounds),
            ("public_steps", args.public_steps),
        )
        if value is not None
    }
    entries = [e.strip() for e in args.entries.split(",") if e.strip()]
    factors = [float(f) for f in args.lr_factors.split(",") if f.strip()]
    result = measure(SCENARIO, args.users, entries, factors, overrides)
    command = " ".join(["python -m simulations.bench_embedding", *(argv or [])])
    print_section(report(result, command), args.write, MARK)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
