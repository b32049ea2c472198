"""Shared fixtures: the tiny model and small chat examples."""

from __future__ import annotations

import os
import random
import tempfile

import pytest

# audit reports written by tests are signed with a throw-away key, never the user's own
os.environ.setdefault(
    "FEDPERS_AUDIT_KEY",
    os.path.join(tempfile.mkdtemp(prefix="fedpers-test-key-"), "audit-signing-key.pem"),
)

from fedpers.models import (
    LoraSettings,
    PersonalizedLM,
    UserEmbedding,
    attach_lora,
    encode_messages,
    load_base_model,
)

TOPICS = ("VPN", "Outlook", "badge", "printer", "Wi-Fi", "laptop", "MFA", "Excel")


def chat(rng: random.Random) -> list[dict[str, str]]:
    topic = rng.choice(TOPICS)
    return [
        {"role": "user", "content": f"My {topic} fails with code {rng.randint(100, 999)}."},
        {"role": "assistant", "content": f"Restart the {topic} app, then sync your files."},
    ]


@pytest.fixture
def task_identity(monkeypatch):
    """Messages made outside a Flower process need the identity Flower gives each task."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture
def tiny():
    """A fresh tiny model and tokenizer (deterministic weights)."""
    return load_base_model("tiny")


@pytest.fixture
def examples(tiny):
    _, tokenizer = tiny
    rng = random.Random(0)
    return [encode_messages(tokenizer, chat(rng), 64) for _ in range(24)]


def personalized(
    model, tokenizer, embedding_tokens: int = 4, top_layers: int | None = 2
) -> PersonalizedLM:
    peft_model = attach_lora(model, LoraSettings(r=4, alpha=8, top_layers=top_layers))
    return PersonalizedLM(
        peft_model,
        UserEmbedding.public_init(embedding_tokens, peft_model.get_input_embeddings(), tokenizer),
    )


def run_secure_round(workflow, strategy, client_app, nodes: int) -> dict:
    """One round of ``workflow`` (a :class:`server.secagg.SecAggPlusRound`) driving ``strategy`` against
    ``client_app`` on ``nodes`` simulated SuperNodes (Flower's simulation engine). Returns ``{"error": e}`` if the
    round raised :class:`server.secagg.SecureAggregationError`, else ``{}``."""
    from flwr.app import Context
    from flwr.server import ServerConfig
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.workflow import DefaultWorkflow
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from server.secagg import SecureAggregationError

    os.environ["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    outcome: dict = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        legacy = LegacyContext(context, ServerConfig(num_rounds=1), strategy)
        try:
            DefaultWorkflow(fit_workflow=workflow, evaluate_workflow=lambda g, c: None)(
                grid, legacy
            )
        except SecureAggregationError as err:
            outcome["error"] = err

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=nodes,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": 2, "num_gpus": 0, "include_dashboard": False},
        },
    )
    return outcome
