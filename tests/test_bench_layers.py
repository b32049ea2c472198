"""The layered-weight sweep: it scores as the evaluator does, and its table reads the sweep right."""

from __future__ import annotations

import numpy as np
import pytest

from fedpers.adapters import GLOBAL
from fedpers.federated import FederatedConfig
from fedpers.models import adapter_arrays
from fedpers.models.environment import model_environment
from fedpers.personas.layered import MixChoice
from simulations import bench_layers
from simulations.evaluator import SimulationEvaluator


def test_the_sweep_ends_are_the_evaluators_global_and_persona_rows(tmp_path):
    from fedpers.userdata import user_ids

    config = FederatedConfig.from_flat(
        {
            "model": "tiny",
            "users_per_persona": 2,
            "conversations_per_user": 6,
            "max_length": 48,
            "state_dir": str(tmp_path / "client-state"),
        }
    ).validated()
    start = adapter_arrays(model_environment(config).model.lm)
    rng = np.random.default_rng(3)
    adapters = {
        name: {
            k: (v + 0.05 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in start.items()
        }
        for name in [GLOBAL, *config.persona_names]
    }
    losses, counts = bench_layers.weight_sweep(config, adapters, "run", grid=(0.0, 0.5, 1.0))
    rows = SimulationEvaluator(config, user_ids(config))(
        1, adapters, set(config.persona_names), "run", final=False
    )["heldout_loss"]
    assert set(losses) == set(rows) == set(config.persona_names)
    assert all(n == 2 for n in counts.values())
    for persona, row in losses.items():
        assert row[0.0] == pytest.approx(rows[persona]["global"], rel=1e-6)
        assert row[1.0] == pytest.approx(rows[persona]["persona"], rel=1e-6)
        assert row[0.5] not in (row[0.0], row[1.0])


def test_the_table_names_each_personas_best_weight_its_margin_and_autos():
    losses = {
        "a": {0.0: 4.0, 0.5: 3.9, 1.0: 4.2},
        "b": {0.0: 4.0, 0.5: 4.1, 1.0: 4.3},
        "c": {0.0: 4.0, 0.5: 4.0, 1.0: 4.0},
    }
    lines = bench_layers.table(
        losses, {"a": 3, "b": 3, "c": 2}, {"a": MixChoice(1.0), "b": MixChoice(0.0)}
    )
    a, b, c = (next(line for line in lines if line.startswith(p + " ")) for p in "abc")
    assert a.split()[-4:] == ["0.5", "-0.1000", "1", "+0.2000"]
    assert b.split()[-4:] == ["0", "+0.0000", "0", "+0.0000"]
    assert c.split()[-4:] == [
        "0",
        "+0.0000",
        "—",
        "—",
    ]  # ties go to the smaller weight; no auto weight
    assert lines[-1].endswith("for 1 of 3 personas")
