"""What a run leaves in its run directory: adapters (peft, with model cards), run.json, metrics.json, a plot and the
headline table."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
from peft import PeftModel

from fedpers.adapters import GLOBAL
from fedpers.basemodel import base_model_record
from fedpers.federated import FederatedConfig
from fedpers.modelcard import write_model_cards
from fedpers.rundir import METRICS, RUN_CONFIG, save_adapter, write_json

COLUMNS = (
    ("base", "base model"),
    ("global", "global adapter"),
    ("persona", "persona adapter"),
    ("persona-embedding", "persona + user embedding"),
)


def write_run_config(run_dir: Path, config: FederatedConfig, run_id: str) -> None:
    lora = asdict(config.lora())
    lora["target_modules"] = list(lora["target_modules"])
    write_json(
        run_dir / RUN_CONFIG,
        {
            "run_id": run_id,
            "model": config.model.model,
            # the portable name, and the file and its SHA-256 for the packaged model
            "base_model": base_model_record(config.model.model),
            "personas": config.persona_names,
            "lora": lora,
            "settings": config.to_record(),
        },
    )


def save_adapters(
    run_dir: Path, model: PeftModel, adapters: dict[str, dict[str, np.ndarray]]
) -> None:
    for name, arrays in adapters.items():
        save_adapter(run_dir, name, model, arrays)


def evaluation_table(final: dict) -> dict:
    """Rows per persona (and the user-weighted mean) of the final held-out losses."""
    losses, users = final["heldout_loss"], final["users"]
    rows = {
        p: {k: losses[p].get(k) for k, _ in COLUMNS} | {"users": users.get(p, 0)} for p in losses
    }
    scored = [p for p in rows if p != GLOBAL]
    mean = {}
    for key, _ in COLUMNS:
        values = [(rows[p][key], rows[p]["users"]) for p in scored if rows[p][key] is not None]
        if values:
            mean[key] = sum(v * n for v, n in values) / sum(n for _, n in values)
    wins = sum(
        1
        for p in scored
        if rows[p]["persona"] is not None
        and rows[p]["global"] is not None
        and rows[p]["persona"] < rows[p]["global"]
    )
    return {"rows": rows, "mean": mean, "persona_beats_global": wins, "personas": len(scored)}


def dp_note(config: FederatedConfig) -> str:
    """How the table's adapters were trained, privacy-wise."""
    if not config.privacy.dp:
        return "DP off"
    note = f"DP-SGD on, per-user epsilon <= {config.privacy.epsilon} (delta {config.privacy.delta})"
    return (
        note
        if config.privacy.noise_seed < 0
        else f"{note}, but NOT PRIVATE: DP randomness seeded by noise_seed (benchmark switch)"
    )


def format_table(table: dict, note: str) -> str:
    def cell(v):
        return f"{v:.3f}" if v is not None and not math.isnan(v) else "—"

    header = f"{'persona':<18}{'users':>6}" + "".join(f"{label:>26}" for _, label in COLUMNS)
    lines = [
        f"Held-out loss (nats per assistant token, lower is better) — {note}",
        header,
        "-" * len(header),
    ]
    for p, row in table["rows"].items():
        lines.append(
            f"{p:<18}{row['users']:>6}" + "".join(f"{cell(row[k]):>26}" for k, _ in COLUMNS)
        )
    lines.append(
        f"{'mean':<18}{sum(r['users'] for r in table['rows'].values()):>6}"
        + "".join(f"{cell(table['mean'].get(k)):>26}" for k, _ in COLUMNS)
    )
    lines.append(
        f"persona adapter below global adapter for {table['persona_beats_global']} of {table['personas']} personas"
    )
    return "\n".join(lines)


def plot_heldout(eval_history: list[dict], path: Path) -> None:
    """Held-out loss per persona over rounds: persona adapter (solid) and global adapter (dashed)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    personas = sorted({p for h in eval_history for p in h["heldout_loss"]})
    for i, p in enumerate(personas):
        rounds = [h["round"] for h in eval_history if p in h["heldout_loss"]]
        color = f"C{i % 10}"
        for key, style in (("persona", "-"), ("global", "--")):
            ys = [
                h["heldout_loss"][p].get(key, float("nan"))
                for h in eval_history
                if p in h["heldout_loss"]
            ]
            ax.plot(rounds, ys, style, color=color, marker="o", label=f"{p} ({key})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("held-out loss (nats / assistant token)")
    ax.set_title("Held-out loss per persona: persona adapter (solid) vs global adapter (dashed)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_metrics(run_dir: Path, payload: dict) -> None:
    """``metrics.json``, and the adapters' model cards, which read it."""
    write_json(run_dir / METRICS, payload)
    write_model_cards(run_dir)
