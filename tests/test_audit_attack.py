"""What an attacker can still learn: canary statistics, the one-run bound, and the attack on tiny-model runs."""

import json
import math
import shutil

import pytest

from fedpers.audit.canaries import (
    SECRET_SPACE,
    auc,
    epsilon_lower_bound,
    exposure,
    inserted_coin,
    make_canaries,
    membership_score,
    one_run_bound,
    p_value,
)


def test_canaries_are_split_by_fair_coins_and_render_as_conversations():
    canaries = make_canaries({"u1": "leadership", "u2": "field_worker"}, 200, seed=3)
    assert 70 < sum(c.inserted for c in canaries) < 130
    # recomputable from the seed
    assert [c.inserted for c in canaries] == [inserted_coin(3, i) for i in range(200)]
    # fair: 400 expected, sd 14
    assert 340 < sum(inserted_coin(s, i) for s in range(4) for i in range(200)) < 460
    assert len({c.secret for c in canaries}) == 200
    # dealt in turn: no user swamped by copies
    assert sum(c.user_id == "u1" for c in canaries) == 100
    conv = canaries[0].conversation("1 2 3 4 5 6")
    assert conv.user_id == canaries[0].user_id and conv.turns[1].text.endswith("is 1 2 3 4 5 6.")
    copies = canaries[0].copies(3)
    assert len({c.conversation_id for c in copies}) == 3 and len({c.turns for c in copies}) == 1
    assert make_canaries({"u1": "a"}, 10, seed=3) == make_canaries({"u1": "a"}, 10, seed=3)


def test_one_run_bound_matches_the_closed_form_and_is_zero_for_chance():
    # delta = 0 and all r guesses right: the bound solves q^r = p with q = e^eps / (1 + e^eps)
    q = 0.05 ** (1 / 20)
    assert epsilon_lower_bound(40, 20, 20, 0.0, 0.05) == pytest.approx(
        math.log(q / (1 - q)), rel=1e-6
    )
    assert p_value(40, 20, 20, math.log(q / (1 - q)), 0.0) == pytest.approx(0.05, rel=1e-6)
    assert epsilon_lower_bound(40, 20, 10, 1e-5, 0.05) == 0.0  # half right: no evidence
    assert epsilon_lower_bound(40, 20, 20, 1e-5, 0.05) <= epsilon_lower_bound(40, 20, 20, 0.0, 0.05)
    perfect = one_run_bound(list(range(40)), [i >= 20 for i in range(40)], 1e-5)
    assert (
        perfect["best"]["correct"] == perfect["best"]["guesses"] == 40 and perfect["epsilon"] > 2.0
    )
    assert one_run_bound(list(range(40)), [i % 2 == 0 for i in range(40)], 1e-5)["epsilon"] == 0.0


def test_membership_score_standardizes_the_secret_against_its_candidates():
    candidates = [0.1 * i for i in range(-50, 51)]
    sd = float(__import__("numpy").std(candidates, ddof=1))
    assert membership_score([2 * sd, *candidates]) == pytest.approx(2.0)
    assert membership_score([0.0, *candidates]) == pytest.approx(0.0, abs=1e-12)


def test_group_epsilon_is_the_sample_level_one_for_one_copy_and_grows_with_copies():
    from fedpers.audit.spent import group_epsilon, independent_epsilon
    from fedpers.privacy.accounting import GaussianEvent

    events = (GaussianEvent(2.0, 1.0, 1), GaussianEvent(1.1, 0.12, 24))
    one = group_epsilon(events, 1e-5, 1)
    assert one == pytest.approx(independent_epsilon(list(events), 1e-5)["pld"], rel=0.02)
    assert one < group_epsilon(events, 1e-5, 2) < group_epsilon(events, 1e-5, 4) <= 4 * one * 1.5
    # an unsampled query: a group of r is a Gaussian of sensitivity r, i.e. noise multiplier sigma / r
    assert group_epsilon((GaussianEvent(4.0, 1.0, 1),), 1e-5, 2) == pytest.approx(
        group_epsilon((GaussianEvent(2.0, 1.0, 1),), 1e-5, 1), rel=0.01
    )


def test_prefix_reuse_scores_the_same_losses_as_full_forward_passes():
    """Scoring the secret with the shared prefix's cache equals scoring every whole sequence (tiny model, trained-like adapter)."""
    import random

    import numpy as np
    import torch

    from fedpers.audit.canaries import random_secret
    from fedpers.audit.scoring import full_secret_losses, secret_losses, secret_set
    from fedpers.models import LoraSettings, PersonalizedLM, attach_lora, load_base_model

    base, tokenizer = load_base_model("tiny")
    peft = attach_lora(
        base, LoraSettings(r=4, alpha=8, target_modules=("q_proj", "v_proj"), top_layers=2)
    )
    torch.manual_seed(0)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            # a non-zero adapter, so its keys and values differ from the base model's
            p.data.normal_(0, 0.5)
    model = PersonalizedLM(peft).eval()
    rng = random.Random(0)
    for canary in make_canaries({"u1": "a", "u2": "b"}, 3, seed=5):
        secrets = secret_set(
            tokenizer,
            [canary.conversation(), *(canary.conversation(random_secret(rng)) for _ in range(9))],
            64,
        )
        assert len(secrets.prefix) > 20 and all(len(c) < 40 for c in secrets.continuations)
        full = full_secret_losses(model, secrets, tokenizer.pad_token_id)
        np.testing.assert_allclose(
            secret_losses(model, secrets, batch_size=4), full, rtol=1e-5, atol=1e-4
        )
        with peft.disable_adapter():
            np.testing.assert_allclose(
                secret_losses(model, secrets),
                full_secret_losses(model, secrets, tokenizer.pad_token_id),
                rtol=1e-5,
                atol=1e-4,
            )


def test_auc_and_exposure():
    assert auc([3, 4, 1, 2], [True, True, False, False]) == 1.0
    assert auc([1, 2, 3, 4], [True, True, False, False]) == 0.0
    assert auc([1, 1], [True, False]) == 0.5
    candidates = [0.1 * i for i in range(-50, 51)]
    # capped at the secret space
    assert exposure(100.0, candidates)["normal_fit"] == pytest.approx(math.log2(SECRET_SPACE))
    # the median: one bit
    assert exposure(0.0, candidates)["normal_fit"] == pytest.approx(1.0, abs=0.05)
    # 51 candidates score at least as high (ties count against)
    assert exposure(0.0, candidates)["rank"] == 52


@pytest.mark.slow  # Ray
def test_attack_runs_keep_the_training_settings_and_never_audit_themselves(tmp_path):
    from fedpers.federated import FederatedConfig
    from simulations.attack import attack_settings

    config = FederatedConfig.from_flat({"audit_attack": True, "epsilon": 3.0, "rounds": 4})
    variant = attack_settings(config, False, tmp_path / "c.jsonl", tmp_path / "no-dp")
    assert not (
        variant.outputs.audit_attack
        or variant.outputs.audit
        or variant.outputs.record_wire
        or variant.outputs.evaluate
        or variant.privacy.dp
    )
    assert (variant.privacy.epsilon, variant.server.rounds, variant.model.model) == (
        3.0,
        4,
        config.model.model,
    )
    assert (
        variant.outputs.state_dir
        == str(tmp_path / "no-dp" / "client-state")
        != config.outputs.state_dir
    )


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    """The tiny scenario with strong DP (epsilon 0.5, fixed clipping) attacked with 64 canaries (4 copies each), and with DP off."""
    from fedpers.audit.attack import AttackConfig
    from fedpers.federated import FederatedConfig, load_config_file
    from simulations.attack import run_attack
    from simulations.simulate import SCENARIOS

    run_dir = tmp_path_factory.mktemp("attack")
    values = load_config_file(SCENARIOS / "tiny.toml") | {
        "epsilon": 0.5,
        "clip": 1.0,
        "noise_seed": 7,
    }
    config = FederatedConfig.from_flat(values).validated()
    return run_dir, run_attack(
        config, run_dir, AttackConfig(canaries=64, candidates=32, repeats=4, seed=1, progress=False)
    )


@pytest.mark.slow  # Ray
def test_with_dp_off_the_attack_finds_the_canaries(attacked):
    """The power check: without DP the attack separates inserted canaries and bounds epsilon well above zero."""
    _, result = attacked
    off = result["runs"]["no-dp"]
    assert off["theoretical_epsilon"] is None and off["record_epsilon"] is None
    assert off["auc"] > 0.8
    assert off["exposure"]["inserted_mean"] > 3 * off["exposure"]["held_back_mean"]
    assert off["lower_bound"]["epsilon"] > 1.0


@pytest.mark.slow  # Ray
def test_with_strong_dp_it_does_not_and_the_bound_stays_below_the_theory(attacked):
    """With DP the bound never exceeds the group epsilon of the 4 copies (itself above the per-conversation 0.5)."""
    _, result = attacked
    dp = result["runs"]["dp"]
    assert dp["record_epsilon"] == pytest.approx(0.5, rel=0.05)
    assert dp["record_epsilon"] < dp["theoretical_epsilon"] < 4 * dp["record_epsilon"] * 1.5
    assert dp["auc"] < 0.7
    assert (
        dp["lower_bound"]["epsilon"] <= dp["theoretical_epsilon"] and not dp["bound_exceeds_theory"]
    )
    assert dp["lower_bound"]["epsilon"] < result["runs"]["no-dp"]["lower_bound"]["epsilon"]


@pytest.mark.slow  # Ray
def test_the_attack_goes_into_the_report(attacked, tmp_path):
    """The attack's results appear in audit.json (valid against the schema) and as a section of audit.html."""
    from pathlib import Path

    import jsonschema

    from fedpers.audit.report import write_audit

    run_dir, _ = attacked
    config_run = run_dir / "attack" / "dp"  # a complete run directory of its own
    target = tmp_path / "run"
    shutil.copytree(config_run, target)
    shutil.copytree(
        run_dir / "attack", target / "attack", ignore=shutil.ignore_patterns("dp", "no-dp")
    )
    audit = write_audit(target, progress=False)
    schema = json.loads((Path(__file__).parent.parent / "docs" / "audit-schema.json").read_text())
    jsonschema.validate(
        json.loads((target / "audit.json").read_text()),
        schema,
        format_checker=jsonschema.FormatChecker(),
    )
    assert list(audit["attack"]["runs"]) == ["dp", "no-dp"]
    assert any(
        "Canary attack on DP training" in f["text"]
        and "with DP off" in f["text"]
        and f["level"] == "ok"
        for f in audit["findings"]
    )
    from fedpers.audit.report import attack_power

    power = [f for f in audit["findings"] if f["text"].startswith("Attack power check (DP off)")]
    assert len(power) == 1 and power[0]["level"] == (
        "ok" if attack_power(audit["attack"]["runs"]["no-dp"]) else "warning"
    )
    html = (target / "audit.html").read_text()
    assert (
        "epsilon lower bound" in html
        and "Steinke" in html
        and html.count("data:image/png;base64,") >= 2
    )
    # the two runs side by side: one column each, DP first
    assert html.index('<th class="">DP as audited</th>') < html.index(
        '<th class="">DP off (power check)</th>'
    )
    assert "group of 4 copies" in html


def test_the_audit_command_offers_the_attack_only_with_a_runner_and_with_its_defaults():
    """``fedpers audit --attack`` runs simulations, so the library's parser offers it only when the ``fedpers``
    command (simulations/cli.py) passes a runner; its defaults are the attack's."""
    import argparse

    from fedpers.audit.attack import AttackConfig
    from fedpers.audit.cli import register

    def parse(attack):
        parser = argparse.ArgumentParser()
        register(parser.add_subparsers(dest="command"), attack)
        return parser

    args = parse(lambda run_dir, settings: None).parse_args(["audit", "RUN"])
    assert (args.canaries, args.repeats, args.candidates) == (
        AttackConfig.canaries,
        AttackConfig.repeats,
        AttackConfig.candidates,
    )
    with pytest.raises(SystemExit):
        parse(None).parse_args(["audit", "RUN", "--attack"])
