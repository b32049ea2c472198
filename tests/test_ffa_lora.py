"""FFA-LoRA (``lora_train_a = false``): only the B matrices are trained, and no round moves A."""

from __future__ import annotations

import numpy as np
import torch
from conftest import personalized

from fedpers.adapters import GLOBAL
from fedpers.aggregation.rounds import RoundSums, apply_round
from fedpers.federated import FederatedConfig
from fedpers.local import LocalTrainConfig, train_local
from fedpers.privacy import DPConfig, PrivacyLedger, TrainConfig
from server.strategy import persona_adapters


def test_dp_sgd_under_ffa_trains_b_only_and_leaves_a_bit_identical(tiny, examples, tmp_path):
    model, tok = tiny
    net = personalized(model, tok)
    net.train_lora_a = False
    before = {n: p.detach().clone() for n, p in net.lm.named_parameters() if "lora_" in n}
    result = train_local(
        net,
        examples,
        tok.pad_token_id,
        LocalTrainConfig(
            lora=TrainConfig(steps=4, batch_size=6, learning_rate=5e-2, noise_seed=3),
            dp=DPConfig(noise_multiplier=1.0, max_grad_norm=0.5),
            embedding=TrainConfig(steps=0),
        ),
        PrivacyLedger(tmp_path / "ledger.json", "u"),
    )
    after = dict(net.lm.named_parameters())
    a_names = [n for n in before if "lora_A" in n]
    b_names = [n for n in before if "lora_B" in n]
    assert a_names and b_names
    assert all(torch.equal(before[n], after[n]) for n in a_names)
    assert all(not torch.equal(before[n], after[n]) for n in b_names)
    deltas = result.delta.arrays
    assert all(not deltas[k].any() for k in deltas if "lora_A" in k)
    assert any(deltas[k].any() for k in deltas if "lora_B" in k)


def test_the_server_never_moves_a_under_ffa_even_when_the_sums_carry_noise_there():
    config = FederatedConfig.from_flat(
        {"model": "tiny", "personas": "a,b", "lora_train_a": False, "min_clients": 1}
    ).validated()
    rng = np.random.default_rng(0)
    adapter = {"x.lora_A.weight": rng.normal(size=(2, 3)), "x.lora_B.weight": np.zeros((3, 2))}
    state = persona_adapters(config, {name: dict(adapter) for name in (GLOBAL, "a", "b")})
    assert state.frozen == {"x.lora_A.weight"}
    noisy = {k: rng.normal(size=v.shape) for k, v in adapter.items()}  # noise lands on A too
    apply_round(state, RoundSums(1, {"a": noisy, "b": noisy}, {"a": 1.0, "b": 1.0}, 2, 0), True)
    for name in (GLOBAL, "a", "b"):
        assert np.array_equal(state.adapters[name]["x.lora_A.weight"], adapter["x.lora_A.weight"])
        assert state.adapters[name]["x.lora_B.weight"].any()
    # with A trained, the same sums move it
    trained = persona_adapters(
        FederatedConfig.from_flat(
            {"model": "tiny", "personas": "a,b", "min_clients": 1}
        ).validated(),
        {name: dict(adapter) for name in (GLOBAL, "a", "b")},
    )
    apply_round(trained, RoundSums(1, {"a": noisy, "b": noisy}, {"a": 1.0, "b": 1.0}, 2, 0), True)
    assert not np.array_equal(trained.adapters["a"]["x.lora_A.weight"], adapter["x.lora_A.weight"])
