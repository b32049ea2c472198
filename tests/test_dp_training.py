"""DP-SGD invariants: exactly the trainable parameters change, frozen weights stay bit-identical,
the adapter reloads in peft format, and the user-embedding scheme keeps the shared update private."""

import numpy as np
import pytest
import torch
from conftest import personalized
from peft import PeftModel

from fedpers.local import LocalTrainConfig, train_local
from fedpers.models import adapter_arrays, collate, load_base_model
from fedpers.privacy import DPConfig, PrivacyLedger, TrainConfig, train
from fedpers.privacy.accounting import BudgetExceededError
from fedpers.privacy.dp_sgd import per_sample_grad_norms, private_quantile

FAST = TrainConfig(steps=6, batch_size=6, learning_rate=5e-2, noise_seed=7)
DP = DPConfig(noise_multiplier=1.0, max_grad_norm=0.5)


def snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_dp_training_changes_exactly_the_trainable_parameters(tiny, examples, tmp_path):
    model, tok = tiny
    net = personalized(model, tok)
    net.user_embedding.requires_grad_(False)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = snapshot(net)
    ledger = PrivacyLedger(tmp_path / "ledger.json", "u")
    train(net, examples, tok.pad_token_id, FAST, DP, ledger)
    after = snapshot(net)
    for name in before:
        if name in trainable:
            assert not torch.equal(before[name], after[name]), f"{name} did not change"
        else:
            assert torch.equal(before[name], after[name]), f"frozen {name} changed"
    assert not any(hasattr(p, "grad_sample") for p in net.parameters())  # Opacus hooks removed


def test_adapter_reloads_in_peft_format_with_identical_outputs(tiny, examples, tmp_path):
    model, tok = tiny
    net = personalized(model, tok)
    net.user_embedding.requires_grad_(False)
    train(net, examples, tok.pad_token_id, FAST, DP, PrivacyLedger(tmp_path / "l.json", "u"))
    net.lm.save_pretrained(tmp_path / "adapter")
    fresh_base, _ = load_base_model("tiny")
    reloaded = PeftModel.from_pretrained(fresh_base, tmp_path / "adapter")
    batch = collate(examples[:4], tok.pad_token_id)
    with torch.no_grad():
        expected = net.lm(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
        got = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(expected, got)
    for k, v in adapter_arrays(net.lm).items():
        np.testing.assert_array_equal(v, adapter_arrays(reloaded)[k])


def test_ledger_receives_spending_and_empty_batches_still_take_noisy_steps(
    tiny, examples, tmp_path
):
    model, tok = tiny
    net = personalized(model, tok)
    net.user_embedding.requires_grad_(False)
    ledger = PrivacyLedger(tmp_path / "l.json", "u")
    # many empty samples
    sparse = TrainConfig(steps=8, batch_size=1, learning_rate=1e-2, noise_seed=3)
    before = snapshot(net)
    result = train(net, examples[:20], tok.pad_token_id, sparse, DP, ledger)
    assert any(np.isnan(result.losses)), "expected some empty Poisson samples"
    assert result.sample_rate == pytest.approx(1 / 20)
    entry = PrivacyLedger(tmp_path / "l.json", "u").entries[-1]
    assert entry.status == "completed" and entry.events[0].steps == 8
    assert entry.events[0].sample_rate == pytest.approx(1 / 20)
    changed = [
        n for n, p in net.named_parameters() if p.requires_grad and not torch.equal(before[n], p)
    ]
    assert changed  # noise moved the adapter even on empty steps


def test_two_phase_update_does_not_depend_on_the_user_embedding(tiny, examples, tmp_path):
    """The shared LoRA update must be the same whatever the (non-private) embedding holds."""
    deltas, embeddings = [], []
    for fill in (0.0, 3.0):
        model, tok = load_base_model("tiny")
        net = personalized(model, tok)
        with torch.no_grad():
            net.user_embedding.embedding.weight.fill_(fill)
        config = LocalTrainConfig(
            lora=FAST, dp=DP, embedding=TrainConfig(steps=4, batch_size=6, learning_rate=5e-2)
        )
        result = train_local(
            net, examples, tok.pad_token_id, config, PrivacyLedger(tmp_path / f"{fill}.json", "u")
        )
        deltas.append(result.delta.arrays)
        embeddings.append(net.user_embedding.embedding.weight.detach().clone())
        assert not torch.all(embeddings[-1] == fill), "phase 2 must fit the embedding"
        assert not any(p.requires_grad for p in net.parameters())
    for k in deltas[0]:
        np.testing.assert_array_equal(deltas[0][k], deltas[1][k])


def test_joint_dp_trains_embedding_under_the_same_dp_step(tiny, examples, tmp_path):
    model, tok = tiny
    net = personalized(model, tok)
    before = net.user_embedding.embedding.weight.detach().clone()
    ledger = PrivacyLedger(tmp_path / "l.json", "u")
    train_local(
        net,
        examples,
        tok.pad_token_id,
        LocalTrainConfig(lora=FAST, dp=DP, scheme="joint_dp"),
        ledger,
    )
    assert not torch.equal(before, net.user_embedding.embedding.weight)
    assert [e.purpose for e in ledger.entries] == ["dp-sgd"]


def test_private_quantile_finds_the_quantile_and_is_accounted(tiny, examples, tmp_path):
    rng = np.random.default_rng(0)
    values = np.exp(rng.normal(np.log(0.03), 0.3, size=2000))
    estimate = private_quantile(values, 0.5, 1e-5, 10.0, 12, noise_multiplier=4.0, rng=rng)
    assert estimate == pytest.approx(np.median(values), rel=0.1)

    model, tok = tiny
    net = personalized(model, tok)
    net.user_embedding.requires_grad_(False)
    norms = per_sample_grad_norms(net, examples, tok.pad_token_id)
    assert norms.shape == (len(examples),) and (norms > 0).all()
    ledger = PrivacyLedger(tmp_path / "l.json", "u")
    result = train(
        net,
        examples,
        tok.pad_token_id,
        FAST,
        DPConfig(noise_multiplier=1.0, max_grad_norm=None),
        ledger,
    )
    assert [e.purpose for e in ledger.entries] == ["clip-quantile", "dp-sgd"]
    assert norms.min() / 8 < result.max_grad_norm < norms.max() * 8
    assert ledger.entries[0].events[0].sample_rate == 1.0


def test_calibrated_training_meets_target_epsilon(tiny, examples, tmp_path):
    model, tok = tiny
    net = personalized(model, tok)
    net.user_embedding.requires_grad_(False)
    ledger = PrivacyLedger(tmp_path / "l.json", "u")
    dp = DPConfig(target_epsilon=5.0, max_grad_norm=0.5)
    result = train(net, examples, tok.pad_token_id, FAST, dp, ledger)
    assert result.epsilon.epsilon <= 5.0
    assert result.epsilon.epsilon > 4.5  # not wastefully noisy
    entries = len(ledger.entries)
    with pytest.raises(BudgetExceededError):
        train(
            net,
            examples,
            tok.pad_token_id,
            FAST,
            DPConfig(target_epsilon=4.0, max_grad_norm=0.5),
            ledger,
        )
    assert len(ledger.entries) == entries  # a refused training records nothing
    # what is left of 5.0 needs far more noise
    again = train(net, examples, tok.pad_token_id, FAST, dp, ledger)
    assert again.noise_multiplier > 2 * result.noise_multiplier and again.epsilon.epsilon <= 5.0


def test_dp_requires_a_ledger(tiny, examples):
    model, tok = tiny
    net = personalized(model, tok)
    with pytest.raises(ValueError, match="ledger"):
        train(net, examples, tok.pad_token_id, FAST, DP, None)


def test_one_model_serves_users_one_after_another_even_after_a_failure(tiny, examples, tmp_path):
    """A client process reuses one model; an interrupted pass must not break the next user's training."""
    model, tok = tiny
    net = personalized(model, tok)
    net.user_embedding.requires_grad_(False)
    net.eval()  # as from_pretrained leaves it
    norms = per_sample_grad_norms(net, examples, tok.pad_token_id)
    assert norms.shape == (len(examples),) and not net.training

    def crash(step, loss):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        train(
            net,
            examples,
            tok.pad_token_id,
            FAST,
            DP,
            PrivacyLedger(tmp_path / "a.json", "a"),
            on_step=crash,
        )
    result = train(
        net, examples[:10], tok.pad_token_id, FAST, DP, PrivacyLedger(tmp_path / "b.json", "b")
    )
    assert len(result.losses) == FAST.steps
    assert not any(hasattr(p, "grad_sample") or hasattr(p, "summed_grad") for p in net.parameters())


def test_a_plan_the_budget_cannot_hold_is_refused_before_the_clip_estimate_spends(
    tiny, examples, tmp_path
):
    from fedpers.privacy import GaussianEvent
    from fedpers.privacy.dp_sgd import plan_dp
    from fedpers.privacy.ledger import LedgerEntry

    model, tok = tiny
    net = personalized(model, tok)
    net.user_embedding.requires_grad_(False)
    ledger = PrivacyLedger(tmp_path / "l.json", "u", 1e-5)
    ledger.record(LedgerEntry("dp-sgd", [GaussianEvent(1.0, 0.1, 100)], {}))
    spent = ledger.spent().epsilon
    assert 7.0 < spent < 8.0  # most of a run epsilon of 8 already spent
    dp = DPConfig(target_epsilon=8.0, max_grad_norm=None, clip_quantile=0.25)
    for _attempt in range(3):  # SecAgg+ retries the round: each attempt plans again
        with pytest.raises(BudgetExceededError):
            plan_dp(net, examples, tok.pad_token_id, dp, ledger, 4, 24, seed=1)
    assert len(ledger.entries) == 1 and ledger.spent().epsilon == pytest.approx(spent)


def test_a_calibrated_plan_counts_its_clip_estimate_within_the_target(tiny, examples, tmp_path):
    from fedpers.privacy import GaussianEvent
    from fedpers.privacy.accounting import epsilon_report
    from fedpers.privacy.dp_sgd import plan_dp

    model, tok = tiny
    net = personalized(model, tok)
    net.user_embedding.requires_grad_(False)
    ledger = PrivacyLedger(tmp_path / "l.json", "u", 1e-5)
    dp = DPConfig(target_epsilon=3.0, max_grad_norm=None, clip_quantile=0.25)
    plan = plan_dp(net, examples, tok.pad_token_id, dp, ledger, 4, 24, seed=1)
    assert [e.purpose for e in ledger.entries] == ["clip-quantile"]
    training = GaussianEvent(plan.noise_multiplier, plan.sample_rate, plan.planned_steps)
    total = epsilon_report([*ledger.events(), training], 1e-5).epsilon
    assert 2.8 < total <= 3.0
