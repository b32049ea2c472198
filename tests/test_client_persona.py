"""The client's persona choice: declared wins; inferred is IFCA under DP and recorded in the ledger."""

import pytest
import torch
from conftest import personalized

from clients.persona import choose_persona, private_persona_choice
from fedpers.models import adapter_arrays
from fedpers.privacy import DPConfig, PrivacyLedger, TrainConfig, train

PERSONAS = ["leadership", "field_worker"]


def test_declared_persona_wins_and_cold_start_falls_back_to_global():
    assert choose_persona("field_worker", PERSONAS, [], None).persona == "field_worker"
    assert choose_persona(None, PERSONAS, [], None).persona == "global"
    with pytest.raises(ValueError, match="unknown persona"):
        choose_persona("pilot", PERSONAS, [], None)


def test_inferred_choice_prefers_the_adapter_that_fits_and_is_accounted(tiny, examples, tmp_path):
    model, tok = tiny
    net = personalized(model, tok)
    net.user_embedding.requires_grad_(False)
    untrained = adapter_arrays(net.lm)
    train(
        net,
        examples,
        tok.pad_token_id,
        TrainConfig(steps=30, batch_size=8, learning_rate=5e-2),
        DPConfig(enabled=False),
    )
    fitted = adapter_arrays(net.lm)
    adapters = {"leadership": untrained, "field_worker": fitted}
    ledger = PrivacyLedger(tmp_path / "ledger.json", "u")
    scores = private_persona_choice(
        net, adapters, PERSONAS, examples, tok.pad_token_id, ledger, noise_multiplier=0.01
    )
    assert scores["field_worker"] < scores["leadership"]
    choice = choose_persona(None, PERSONAS, PERSONAS, scores)
    assert choice.persona == "field_worker" and choice.source == "inferred"
    (entry,) = ledger.entries
    assert entry.purpose == "persona-choice" and entry.status == "completed"
    assert entry.events[0].noise_multiplier == 0.01 and entry.events[0].sample_rate == 1.0


def test_inferred_choice_is_noisy_at_the_default_noise(tiny, examples, tmp_path):
    """With the default noise, two identical adapters are chosen at random (the choice itself is private)."""
    model, tok = tiny
    net = personalized(model, tok)
    same = adapter_arrays(net.lm)
    picks = set()
    for i in range(20):  # both outcomes appear unless 20 fair coins agree (p = 2e-6)
        ledger = PrivacyLedger(tmp_path / f"{i}.json", "u")
        scores = private_persona_choice(
            net,
            {"leadership": same, "field_worker": same},
            PERSONAS,
            examples[:4],
            tok.pad_token_id,
            ledger,
        )
        picks.add(min(scores, key=scores.get))
    assert picks == set(PERSONAS)


def test_inferred_choice_does_not_depend_on_any_user_embedding(
    tiny, examples, tmp_path, monkeypatch
):
    """The IFCA scores are a DP release: the non-private user embedding must not enter them (issue 12, point 3)."""
    import clients.persona as persona_module

    model, tok = tiny
    net = personalized(model, tok)
    same = adapter_arrays(net.lm)
    adapters = {"leadership": same, "field_worker": same}
    # the same noise draws on both calls
    monkeypatch.setattr(persona_module.os, "urandom", lambda n: b"\x01" * n)
    scores = []
    for fill in (0.0, 3.0):
        with torch.no_grad():
            net.user_embedding.embedding.weight.fill_(fill)
        net.use_user_embedding = True  # as left by the embedding phase of an earlier user
        ledger = PrivacyLedger(tmp_path / f"{fill}.json", "u")
        scores.append(
            private_persona_choice(net, adapters, PERSONAS, examples, tok.pad_token_id, ledger)
        )
    assert scores[0] == scores[1]
