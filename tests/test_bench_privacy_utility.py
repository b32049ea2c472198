"""The privacy-utility benchmark: user-level noise as planned, kept figures from the rows, the written outputs."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from fedpers.federated import FederatedConfig
from simulations import bench_privacy_utility as bench

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ADAPTER = {
    "layer.q_proj.lora_A.weight": np.zeros((4, 16), np.float32),
    "layer.q_proj.lora_B.weight": np.zeros((16, 4), np.float32),
}


def _config(**changes) -> FederatedConfig:
    values = {"model": "tiny", "users_per_persona": 2, "rounds": 2} | changes
    return FederatedConfig.from_flat(values).validated()


def test_calibration_reaches_the_target_epsilon_in_the_devices_ledger():
    from fedpers.aggregation.slots import SlotLayout
    from fedpers.instructions import round_slots
    from fedpers.privacy.skellam import noise_variance_for_epsilon, skellam_epsilon
    from fedpers.privacy.user_level import DistributedNoise

    config = _config()
    plans = {eps: bench.plan_user_level(config, ADAPTER, eps) for eps in (2.0, 8.0)}
    dimension = SlotLayout.for_adapter(ADAPTER, round_slots(config)).upload_size
    for eps, plan in plans.items():
        assert plan.noise == DistributedNoise.for_settings(
            plan.noise.noise_multiplier, config.aggregation.update_clip, dimension
        )
        unit = DistributedNoise.for_settings(1.0, config.aggregation.update_clip, dimension)
        target = noise_variance_for_epsilon(
            eps, config.privacy.delta, unit.l2_sensitivity, unit.l1_sensitivity, 2
        )
        assert plan.noise.variance == pytest.approx(target, rel=1e-6)
        assert 0.99 * eps <= plan.epsilon <= eps
        events = [plan.noise.event()] * config.server.rounds
        assert skellam_epsilon(events, config.privacy.delta) == pytest.approx(plan.epsilon)
    assert plans[2.0].noise.noise_multiplier > plans[8.0].noise.noise_multiplier


def test_secagg_session_and_threshold_follow_the_run():
    # 5 personas x 2 users: every device of the run is in the session; Flower's threshold 0.5 of 10 shares
    config = _config()
    plan = bench.plan_user_level(config, ADAPTER, 4.0)
    assert (plan.sampled, plan.threshold) == (10, 5)
    assert plan.sum_variance == pytest.approx(10 / 5 * plan.noise.variance)
    assert bench.secagg_threshold(15, 1.0, 0.5) == 8
    assert bench.secagg_threshold(3, 1.0, 0.5) == 2
    assert bench.secagg_threshold(20, 0.5, 0.5) == 6  # 11 shares (made odd), round(5.5) = 6


def test_user_level_noise_in_a_sum_and_a_count_has_the_planned_variance():
    config = _config()
    plan = bench.plan_user_level(config, ADAPTER, 4.0)
    s, variance = plan.noise.levels_per_unit, plan.sum_variance
    rng = np.random.default_rng(0)
    size = 40_000
    deltas = [{"w": rng.normal(size=size)} for _ in range(3)]
    truth = sum(d["w"] for d in deltas)
    sums, _ = bench.noised_sum_and_count(deltas, variance, s, plan.count_value, rng)
    noise = (sums["w"] - truth) * s
    # sample variance of n draws: relative standard error sqrt(2 / (n - 1)); 6 of them
    assert abs(noise.var() / variance - 1) < 6 * math.sqrt(2 / (size - 1))
    assert abs(noise.mean()) < 6 * math.sqrt(variance / size)
    draws = 4_000
    counts = np.array(
        [
            bench.noised_sum_and_count(
                [{"w": np.zeros(1)}] * 3, variance, s, plan.count_value, rng
            )[1]
            for _ in range(draws)
        ]
    )
    count_noise = (counts - 3) * plan.count_value * s
    assert abs(count_noise.var() / variance - 1) < 6 * math.sqrt(2 / (draws - 1))
    # in the adapter's units: std of the persona sum = sqrt(N / t) * z * C
    assert plan.sum_std == pytest.approx(
        math.sqrt(plan.sampled / plan.threshold) * plan.noise.noise_multiplier * plan.noise.clip
    )


def test_the_aggregate_is_the_noised_sum_over_the_noised_count_and_gates_small_counts():
    from fedpers.data.synthetic import derive_seed

    config = _config()
    plan = bench.plan_user_level(config, ADAPTER, 8.0)
    rng = np.random.default_rng(1)
    deltas = [{k: rng.normal(size=v.shape) for k, v in ADAPTER.items()} for _ in range(3)]
    aggregate = bench.UserLevelAggregate(plan, min_clients=1)
    seed = derive_seed(bench.NOISE_SEED, "user-level", "leadership", 1)
    sums, count = bench.noised_sum_and_count(
        deltas,
        plan.sum_variance,
        plan.noise.levels_per_unit,
        plan.count_value,
        np.random.default_rng(seed),
    )
    mean = aggregate("leadership", 1, deltas)
    if count >= 1:
        for k in ADAPTER:
            np.testing.assert_allclose(mean[k], sums[k] / count, rtol=1e-5)
        assert aggregate.gated == []
    else:
        assert mean is None and aggregate.gated == [("leadership", 1)]
    never = bench.UserLevelAggregate(plan, min_clients=10**9)
    assert never("leadership", 2, deltas) is None and never.gated == [("leadership", 2)]


def test_the_warm_start_is_computed_once_per_settings(monkeypatch):
    import fedpers.warmstart

    calls = []

    def fake(config, arrays):
        calls.append(config.dataset.public_steps)
        return {k: v + len(calls) for k, v in arrays.items()}

    monkeypatch.setattr(fedpers.warmstart, "public_warm_start", fake)
    monkeypatch.setattr(bench, "_WARM", {})
    warm = _config(public_data="synthetic", public_steps=5)
    first = bench.warm_start(warm, ADAPTER)
    again = bench.warm_start(
        _config(public_data="synthetic", public_steps=5, users_per_persona=7, dp=False), ADAPTER
    )
    assert again is first and calls == [5]
    bench.warm_start(_config(public_data="synthetic", public_steps=6), ADAPTER)
    assert calls == [5, 6]
    bench.warm_start(_config(), ADAPTER)  # no warm start: not memoized
    assert calls == [5, 6, 0]


def _fake_result() -> dict:
    def rows(losses, mode):
        out = []
        for eps, loss in zip((1.0, 4.0), losses):
            row = {"epsilon": eps, "dp": loss, "seconds": 1.0, "kept": (3.0 - loss) / (3.0 - 2.0)}
            if mode == "user-level":
                row |= {
                    "z": 1.0,
                    "ledger_epsilon": eps,
                    "sum_std": 10.0,
                    "sampled": 10,
                    "threshold": 5,
                    "gated": 0,
                    "releases": 2,
                }
            out.append(row)
        return out

    cohort = {
        "users": {"leadership": ["u1", "u2"]},
        "base": 3.0,
        "nodp": 2.0,
        "nodp_seconds": 1.0,
        "rounds": 2,
        "delta": 1e-5,
        "rows": {
            "record-level": rows((2.9, 2.4), "record-level"),
            "user-level": rows((2.5, 5.0), "user-level"),
        },
    }
    return {
        "epsilons": [1.0, 4.0],
        "personas": ["leadership"],
        "cohorts": {2: cohort},
        "seconds": 1.0,
    }


def test_the_conclusion_is_computed_from_the_rows():
    line = bench.conclusion(_fake_result())
    # record-level keeps 10 % and 60 %; user-level 50 % then -200 %: it wins at eps 1 only
    assert "record-level DP keeps 60 % (2 users/persona) at eps 4" in line
    assert "half of the gain from eps 4 (2)" in line
    assert "user-level DP keeps -200 % (2 users/persona) at eps 4" in line
    assert "half of the gain from eps 1 (2)" in line
    assert "at 1 of 2 (cohort, eps) points" in line


def test_the_plot_marks_points_below_its_floor(tmp_path):
    path = bench.plot(_fake_result(), tmp_path / "sub" / "p.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def _table(lines: list[str], title: str) -> list[list[str]]:
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    table = []
    for line in lines[start + 4 :]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip("|").split("|")])
    return table


def test_a_tiny_run_writes_the_section_and_the_png(tmp_path, monkeypatch, capsys):
    from simulations import bench_dp_step

    monkeypatch.setattr(bench_dp_step, "ROOT", tmp_path)
    (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks\n\nearlier section\n")
    captured = {}
    measure = bench.measure

    def keep(*args, **kwargs):
        captured["result"] = measure(*args, **kwargs)
        return captured["result"]

    monkeypatch.setattr(bench, "measure", keep)
    plot = tmp_path / "figures" / "pu.png"
    argv = ["--scenario", "tiny", "--rounds", "1", "--local-steps", "1", "--cohorts", "2"]
    argv += ["--epsilons", "8,1", "--plot", str(plot), "--write"]
    assert bench.main(argv) == 0

    result = captured["result"]
    assert result["epsilons"] == [1.0, 8.0]
    cohort = result["cohorts"][2]
    for mode in bench.MODES:
        assert [r["epsilon"] for r in cohort["rows"][mode]] == [1.0, 8.0]
        for r in cohort["rows"][mode]:
            assert r["kept"] == (cohort["base"] - r["dp"]) / (cohort["base"] - cohort["nodp"])
    out = capsys.readouterr().out
    progress = [line for line in out.splitlines() if line.startswith("[2 users/persona]")]
    assert len(progress) == 1 + 2 * 2

    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "earlier section" in text
    section = text[
        text.index("<!-- privacy-utility:begin -->") : text.index("<!-- privacy-utility:end -->")
    ]
    lines = section.splitlines()
    record = _table(lines, "Record-level DP")
    user = _table(lines, "User-level DP")
    assert [row[0] for row in record] == ["1", "8"] and [row[0] for row in user] == ["1", "8"]
    assert f"DP-SGD clip {bench.RECORD_CLIP:g} (fixed)" in section
    for table, rows, loss_col, kept_col in (
        (record, cohort["rows"]["record-level"], 1, 2),
        (user, cohort["rows"]["user-level"], 5, 6),
    ):
        for cells, r in zip(table, rows):
            assert float(cells[loss_col]) == pytest.approx(r["dp"], abs=5e-5)
            assert cells[kept_col] == f"**{100 * r['kept']:.0f} %**"
            part = (cohort["start"] - r["dp"]) / (cohort["start"] - cohort["nodp"])
            assert cells[kept_col + 1] == f"{100 * part:.0f} %"
    assert re.search(r"Conclusion \(computed from the rows\)", section)
    assert "x86_64" in section or "torch threads" in section
    assert plot.read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "docs").exists()  # --plot chose the path


def test_a_private_clip_estimate_dearer_than_the_smallest_epsilon_is_refused_up_front(capsys):
    cost = bench.clip_estimate_epsilon(_config(dp=True))
    assert 1.0 < cost < 2.0  # five Gaussian queries at noise multiplier 5, delta 1e-5
    with pytest.raises(SystemExit):
        bench.main(["--scenario", "tiny", "--clip", "0", "--epsilons", "1,8"])
    assert "the private clip estimate alone costs epsilon" in capsys.readouterr().err


def test_a_public_clip_a_changed_setting_and_a_label_of_its_own(tmp_path, monkeypatch, capsys):
    from simulations import bench_dp_step

    monkeypatch.setattr(bench_dp_step, "ROOT", tmp_path)
    (tmp_path / "BENCHMARKS.md").write_text(
        "# Benchmarks\n\n<!-- privacy-utility:begin -->\nmain\n<!-- privacy-utility:end -->\n"
    )
    captured = {}
    measure = bench.measure
    seen = []
    clip = bench.public_clip

    def keep(*args, **kwargs):
        captured["result"] = measure(*args, **kwargs)
        return captured["result"]

    def record(config, start):
        seen.append(config)
        return clip(config, start)

    monkeypatch.setattr(bench, "measure", keep)
    monkeypatch.setattr(bench, "public_clip", record)
    argv = ["--scenario", "tiny", "--rounds", "1", "--local-steps", "1", "--cohorts", "2"]
    argv += ["--epsilons", "8", "--public-steps", "2", "--user-clip", "public"]
    argv += [
        "--set",
        "lora_layers=1",
        "--set",
        "lora-targets=v_proj",
        "--label",
        "small",
        "--write",
    ]
    assert bench.main(argv) == 0

    result = captured["result"]
    norms = result["public_clip"]["norms"]
    assert len(norms) == 10  # the synthetic public split: 2 users of each of 5 personas
    assert result["public_clip"]["clip"] == pytest.approx(float(np.median(norms)))
    assert all(n > 0 for n in norms)
    (row,) = result["cohorts"][2]["rows"]["user-level"]
    assert row["clip"] == result["public_clip"]["clip"]
    (config,) = seen
    assert config.model.lora_layers == 1 and config.model.lora_targets == "v_proj"
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "\nmain\n" in text  # the main section is left as it was
    section = text[text.index("<!-- privacy-utility-small:begin -->") :]
    assert "(small)" in section.splitlines()[1]
    assert f"U = {row['clip']:.4g}" in section
    assert "lora_layers = 1" in section and "lora_targets = 'v_proj'" in section
    assert (tmp_path / "docs" / "privacy-utility-small.png").read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "docs" / "privacy-utility.png").exists()


def test_a_bad_setting_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--scenario", "tiny", "--set", "lora_layers"])
    assert "expected KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--scenario", "tiny", "--set", "no_such_setting=1"])
    assert "--set" in capsys.readouterr().err


def test_a_benchmark_federation_starts_from_the_seeded_lora_init_whatever_the_model_holds(tmp_path):
    """A process's cached model keeps the last adapter loaded into it (an in-process simulation's, say): a
    benchmark must still start from the seeded initialisation, not from those weights."""
    from fedpers.models import adapter_arrays, load_adapter_arrays
    from fedpers.models.environment import model_environment
    from fedpers.userdata import user_ids
    from simulations.bench_levers import _Cache, _persona, federate

    config = _config(rounds=1, local_steps=2)
    env = model_environment(config)
    initial = env.initial_adapter
    assert initial and any(np.any(v != 0) for v in initial.values())  # A is random, B zero
    load_adapter_arrays(env.model.lm, {k: np.zeros_like(v) for k, v in initial.items()})
    users = {"leadership": [u for u in user_ids(config) if _persona(config, u) == "leadership"]}
    out = federate(config, users, _Cache(), tmp_path)
    for k, v in initial.items():
        np.testing.assert_array_equal(out["start"][k], v)
    trained = out["adapters"]["leadership"]
    assert any(np.any(trained[k] != initial[k]) for k in initial)
    assert {k: v.shape for k, v in adapter_arrays(env.model.lm).items()} == {
        k: v.shape for k, v in initial.items()
    }
