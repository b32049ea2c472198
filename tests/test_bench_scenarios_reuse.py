"""bench_scenarios: a finished run is reused only when its settings are the scenario's; persona-vs-global lines."""

from __future__ import annotations

import json

import pytest

from simulations.bench_scenarios import persona_vs_global_lines, reusable, run_or_reuse, scenario


def _write(run_dir, settings: dict, evaluation: dict | None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(
        json.dumps({"settings": settings, "evaluation": evaluation})
    )


def test_a_run_is_reused_only_with_the_scenarios_settings(tmp_path):
    config, run_dir = scenario("tiny", tmp_path)
    evaluation = {"rows": {"a": {"global": 2.0, "persona": 1.9}}, "mean": {}}
    assert reusable(config, run_dir) is None  # nothing there
    record = config.to_record()
    _write(run_dir, record | {"state_dir": "/elsewhere/client-state"}, evaluation)
    assert reusable(config, run_dir)["evaluation"] == evaluation
    _write(run_dir, record | {"epsilon": record["epsilon"] + 1}, evaluation)
    assert reusable(config, run_dir) is None
    _write(run_dir, record, None)  # no evaluation recorded
    assert reusable(config, run_dir) is None
    # a setting newer than the run: the same run only when the scenario keeps it at its default
    public = record | {"public_data": "synthetic", "public_steps": 2}
    _write(run_dir, {k: v for k, v in public.items() if k != "update_clip_public"}, evaluation)
    assert reusable(type(config).from_flat(public), run_dir) is not None
    newer = type(config).from_flat(public | {"update_clip_public": True})
    assert reusable(newer, run_dir) is None


def test_a_data_file_named_by_another_path_is_the_same_only_with_the_same_bytes(tmp_path):
    config, run_dir = scenario("tiny", tmp_path / "runs")
    wanted, elsewhere = tmp_path / "data.jsonl", tmp_path / "copy" / "data.jsonl"
    elsewhere.parent.mkdir()
    wanted.write_text("same\n")
    elsewhere.write_text("same\n")
    config = type(config).from_flat(config.to_record() | {"data": str(wanted)})
    evaluation = {"rows": {}, "mean": {}}
    _write(run_dir, config.to_record() | {"data": str(elsewhere)}, evaluation)
    assert reusable(config, run_dir) is not None
    elsewhere.write_text("other\n")
    assert reusable(config, run_dir) is None
    _write(run_dir, config.to_record() | {"data": str(tmp_path / "missing.jsonl")}, evaluation)
    assert reusable(config, run_dir) is None


def test_persona_vs_global_counts_the_better_personas_and_the_largest_excess():
    metrics = {
        "evaluation": {
            "rows": {
                "a": {"global": 2.0, "persona": 1.9},
                "b": {"global": 2.0, "persona": 2.004},
                "c": {"users": "<2"},
            }
        }
    }
    line = persona_vs_global_lines("default-dp", metrics)[0]
    assert "1 of 2 personas" in line and "0.004 nats" in line


def test_a_run_directory_holding_another_run_is_not_run_into_again(tmp_path, monkeypatch):
    import simulations.bench_scenarios as bench

    config, run_dir = scenario("tiny", tmp_path)
    _write(run_dir, config.to_record() | {"epsilon": 1.0}, {"rows": {}, "mean": {}})
    monkeypatch.setattr(bench, "simulate", lambda *a: pytest.fail("ran into a used run directory"))
    for reuse in (True, False):
        with pytest.raises(SystemExit, match="holds another run"):
            run_or_reuse("tiny", config, run_dir, reuse)
    assert (run_dir / "metrics.json").is_file()  # left as it was
