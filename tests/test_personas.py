"""Persona assignment, loss-based routing, greedy answers and ``fedpers route`` on the tiny model."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random

import pytest

from fedpers.models import (
    LoraSettings,
    PersonalizedLM,
    UserEmbedding,
    adapter_arrays,
    attach_lora,
    encode_messages,
    load_adapter_arrays,
    load_base_model,
)
from fedpers.personas import LossScorer, Router, assign_persona, generate_answer
from fedpers.personas.answer import greedy_ids, prompt_ids, stop_ids
from fedpers.personas.cli import register
from fedpers.privacy import DPConfig, TrainConfig, train
from fedpers.rundir import RUN_CONFIG, save_adapter, write_json

PERSONAS = ["field", "exec"]
SETTINGS = LoraSettings(r=4, alpha=8, top_layers=2)


def field_prompt(rng: random.Random) -> str:
    return (
        f"VPN ERR {rng.randint(1000, 9999)} AT SITE {rng.randint(10, 99)}: "
        f"{rng.choice(['TABLET', 'LAPTOP', 'SCANNER'])} OFFLINE, SYNC {rng.choice(['FAILS', 'STALLS', 'DROPS'])}"
    )


def exec_prompt(rng: random.Random) -> str:
    return (
        f"kindly {rng.choice(['arrange', 'prepare', 'schedule'])} the quarterly "
        f"{rng.choice(['board', 'finance', 'strategy'])} briefing for {rng.choice(['monday', 'friday'])}, thank you"
    )


STYLES = {"field": field_prompt, "exec": exec_prompt}


def prompts(style: str, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [STYLES[style](rng) for _ in range(n)]


@pytest.fixture(scope="module")
def trained():
    """The tiny model with LoRA, and an adapter per prompt style trained (no DP) on the user tokens, on seeded
    Poisson batches."""
    base, tokenizer = load_base_model("tiny")
    model = PersonalizedLM(attach_lora(base, SETTINGS))
    init = adapter_arrays(model.lm)
    adapters = {"global": init}
    for i, style in enumerate(PERSONAS):
        load_adapter_arrays(model.lm, init)
        examples = [
            encode_messages(tokenizer, [{"role": "user", "content": p}], 64, target_roles=("user",))
            for p in prompts(style, 24, seed=i)
        ]
        train(
            model,
            examples,
            tokenizer.pad_token_id,
            # seeded batches: drawn from the OS CSPRNG the fixture was flaky (an unlucky draw left an
            # adapter that scored its own style no better than the other)
            TrainConfig(steps=40, batch_size=8, learning_rate=2e-2, noise_seed=i),
            DPConfig(enabled=False),
        )
        adapters[style] = adapter_arrays(model.lm)
    load_adapter_arrays(model.lm, init)
    return model, tokenizer, adapters


def test_assignment_declared_inferred_and_cold_start():
    scores = {"field": 2.0, "exec": 1.5, "intern": 1.5}
    assert assign_persona("exec", PERSONAS, None, []).source == "declared"
    with pytest.raises(ValueError, match="unknown persona 'ceo'"):
        assign_persona("ceo", PERSONAS, None, PERSONAS)
    inferred = assign_persona(
        None, ["field", "exec", "intern"], scores.__getitem__, {"field", "exec", "intern"}
    )
    # tie: earlier persona
    assert (inferred.persona, inferred.source, inferred.scores) == (
        "exec",
        "inferred",
        scores,
    )
    only_field = assign_persona(None, ["field", "exec"], scores.__getitem__, {"field"})
    assert only_field.persona == "field" and set(only_field.scores) == {
        "field"
    }  # untrained adapters are not scored
    cold = assign_persona(None, PERSONAS, scores.__getitem__, set())
    assert (cold.persona, cold.source) == ("global", "global")
    nan = assign_persona(None, PERSONAS, lambda p: float("nan"), PERSONAS)
    assert nan.persona == "global"


def test_loss_scorer_prefers_the_adapter_trained_on_the_prompt_style(trained):
    model, tokenizer, adapters = trained
    before = adapter_arrays(model.lm)
    scorer = LossScorer(model, tokenizer, {p: adapters[p] for p in PERSONAS})
    router = Router(scorer, PERSONAS)
    for seed, style in ((100, "field"), (101, "exec")):
        for prompt in prompts(style, 4, seed):
            decision = router.route(prompt)
            assert decision.persona == style, (prompt, decision.scores)
            assert decision.source == "inferred" and set(decision.scores) == set(PERSONAS)
    # scoring restores the adapter
    assert all((adapter_arrays(model.lm)[k] == v).all() for k, v in before.items())


def test_router_declared_override_and_fallbacks(trained):
    model, tokenizer, adapters = trained
    scorer = LossScorer(model, tokenizer, {p: adapters[p] for p in PERSONAS})
    prompt = prompts("field", 1, 7)[0]
    declared = Router(scorer, PERSONAS).route(prompt, declared="exec")
    assert (declared.persona, declared.source, declared.scores) == ("exec", "declared", {})
    shown = Router(scorer, PERSONAS, score_declared=True).route(prompt, declared="exec")
    assert shown.persona == "exec" and shown.scores["field"] < shown.scores["exec"]
    with pytest.raises(ValueError, match="unknown persona 'ceo'"):
        Router(scorer, PERSONAS).route(prompt, declared="ceo")
    partial = Router(scorer, PERSONAS, available={"field"})
    assert partial.route(prompt, declared="exec").persona == "global"
    cold = Router(scorer, PERSONAS, available=set()).route(prompt)
    assert (cold.persona, cold.source) == ("global", "global") and "cold start" in cold.reason


def test_generate_answer_is_greedy_and_stops(trained):
    model, tokenizer, adapters = trained
    load_adapter_arrays(model.lm, adapters["exec"])
    try:
        ids = prompt_ids(tokenizer, "kindly arrange the briefing")
        free = greedy_ids(model, ids, 6, stop=())
        assert len(free) == 6
        # same tokens as transformers' own greedy decoding of the peft model (no user embedding)
        import torch

        reference = model.lm.generate(
            torch.tensor([ids]), max_new_tokens=6, min_new_tokens=6, do_sample=False
        )
        assert reference[0, len(ids) :].tolist() == free
        k = next(i for i in range(1, 6) if free[i] not in free[:i])
        assert greedy_ids(model, ids, 6, stop={free[k]}) == free[:k]  # stops before a stop token
        answer = generate_answer(model, tokenizer, "kindly arrange the briefing", max_new_tokens=5)
        assert isinstance(answer, str)
        assert len(greedy_ids(model, ids, 5, stop_ids(model, tokenizer))) <= 5
        assert tokenizer.eos_token_id in stop_ids(model, tokenizer)
        model.user_embedding = UserEmbedding.public_init(
            2, model.lm.get_input_embeddings(), tokenizer
        )
        model.use_user_embedding = True
        assert isinstance(generate_answer(model, tokenizer, "hello", max_new_tokens=3), str)
    finally:
        model.user_embedding, model.use_user_embedding = None, False
        load_adapter_arrays(model.lm, adapters["global"])


def route(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedpers")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["route", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def run_dir(trained, tmp_path_factory):
    model, _, adapters = trained
    run = tmp_path_factory.mktemp("run")
    write_json(
        run / RUN_CONFIG,
        {"model": "tiny", "lora": dataclasses.asdict(SETTINGS), "personas": PERSONAS},
    )
    for name, arrays in adapters.items():
        save_adapter(run, name, model.lm, arrays)
    load_adapter_arrays(model.lm, adapters["global"])
    return run


def test_route_cli_json_end_to_end(run_dir, capsys):
    prompt = prompts("exec", 1, 200)[0]
    assert route([str(run_dir), prompt, "--json", "--max-new-tokens", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["persona"] == "exec" and out["source"] == "inferred"
    assert set(out["scores"]) == set(PERSONAS) and out["scores"]["exec"] < out["scores"]["field"]
    assert isinstance(out["answer"], str)
    assert route([str(run_dir), prompt, "--persona", "field", "--no-answer", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["persona"], out["source"], out["answer"]) == ("field", "declared", None)


def test_route_cli_text_output_and_errors(run_dir, capsys, tmp_path):
    assert route([str(run_dir), prompts("field", 1, 300)[0], "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "adapter: field (lowest LossScorer score" in out and "answer:" in out and "exec" in out
    with pytest.raises(ValueError, match="unknown persona 'ceo'"):
        route([str(run_dir), "hi", "--persona", "ceo", "--no-answer"])
    with pytest.raises(FileNotFoundError, match="run.json"):
        route([str(tmp_path), "hi"])


def test_route_cli_shows_its_stages_on_standard_error(run_dir, capsys):
    """Loading, scoring and answering each end with a line on standard error (a live line with the
    adapters scored on a terminal); standard output holds the result alone."""
    assert route([str(run_dir), prompts("exec", 1, 200)[0], "--json", "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["persona"] == "exec"
    lines = captured.err.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("route · loading tiny and the run's adapters: 3 adapters · ")
    assert lines[1].startswith(
        "route · scoring the prompt under 2 persona adapters: exec (inferred) · "
    )
    assert lines[2].startswith("route · answering with the exec adapter: ")


def test_the_loss_scorer_counts_the_adapters_it_scored(trained):
    import io

    from fedpers.progress import Progress

    model, tokenizer, adapters = trained
    progress = Progress(io.StringIO(), live=False, tick=None)
    with progress.stage("scoring") as stage:
        LossScorer(model, tokenizer, adapters, progress=stage).score("hello", PERSONAS)
        assert (stage.done, stage.total, stage.unit) == (2, 2, "adapters")
