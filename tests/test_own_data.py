"""Own data in the federated simulation: bad lines skipped and reported, users chosen per declared persona,
conversations sampled, and every imbalanced, missing or gated persona said in the summary, the table and
metrics.json."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from test_simulation import tiny_config

from fedpers.data import Conversation, DataValidationError, Turn, read_jsonl, write_jsonl
from fedpers.userdata import conversations, user_ids
from simulations.cli import build_parser, main

PERSONAS = ("leadership", "knowledge_worker", "field_worker", "admin_hr", "new_employee")
SHAPE = {
    "leadership": 8,
    "knowledge_worker": 8,
    "field_worker": 3,
    "admin_hr": 1,
    "new_employee": 0,
}
"""Users per persona in the file: the user's report (8/8/3/1/0 after taking the first 20 in file order)."""
CONVERSATIONS = 12
NO_ASSISTANT = "turns: must contain at least one assistant turn"


def conversation(user: str, i: int, persona: str | None) -> Conversation:
    return Conversation(
        user_id=user,
        conversation_id=f"{user}-c{i:02d}",
        persona=persona,
        turns=(
            Turn("user", f"{user} asks question {i} about the VPN."),
            Turn("assistant", f"Answer {i} for {user}: restart the client."),
        ),
    )


def own_conversations(shape: dict[str, int] = SHAPE, per_user: int = CONVERSATIONS) -> list:
    """Users grouped by persona, interleaved in the file (a real export is ordered by time, not persona)."""
    out = []
    for persona, n in shape.items():
        for u in range(n):
            out += [conversation(f"{persona[:4]}{u:02d}", i, persona) for i in range(per_user)]
    random.Random(3).shuffle(out)
    return out


def bad_line(user: str, i: int) -> str:
    """A conversation without an assistant turn (the user's 26 lines)."""
    return json.dumps(
        {
            "user_id": user,
            "conversation_id": f"{user}-bad{i}",
            "persona": "leadership",
            "turns": [{"role": "user", "text": "hello?"}],
        }
    )


def own_file(tmp_path: Path, bad: int = 3, name: str = "own.jsonl", **kw) -> tuple[Path, list]:
    """The valid conversations, then ``bad`` lines without an assistant turn spread through the file."""
    good = own_conversations(**kw)
    path = tmp_path / name
    write_jsonl(path, good)
    lines = path.read_text().splitlines()
    for i in range(bad):
        lines.insert(5 + 7 * i, bad_line("lead00", i))
    path.write_text("\n".join(lines) + "\n")
    return path, good


def clean_file(tmp_path: Path, name: str = "clean.jsonl", **kw) -> Path:
    path = tmp_path / name
    write_jsonl(path, own_conversations(**kw))
    return path


def data_selection(config):
    from fedpers.userdata import data_selection as selection

    return selection(config)


def config_for(tmp_path: Path, data: Path, **changes):
    return tiny_config(tmp_path, data=str(data), personas=",".join(PERSONAS), **changes)


def per_persona(config) -> dict[str, int]:
    persona = {c.user_id: c.persona for c in conversations(config)}
    counts = dict.fromkeys(PERSONAS, 0)
    for user in user_ids(config):
        counts[persona[user]] += 1
    return counts


# ------------------------------------------------------------------ bad lines: --on-error


def test_simulate_takes_on_error_like_the_importer():
    parser = build_parser()
    assert parser.parse_args(["simulate"]).on_error == "strict"
    assert parser.parse_args(["simulate", "--on-error", "skip"]).on_error == "skip"
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "--on-error", "ignore"])


def test_skip_drops_bad_lines_reports_them_by_reason_and_runs_on_a_valid_copy(tmp_path):
    from simulations.simulate import prepare_data

    path, good = own_file(tmp_path, bad=3)
    config = config_for(tmp_path, path)
    run_dir = tmp_path / "run"
    with pytest.raises(DataValidationError):
        prepare_data(config, run_dir, "strict")
    used, record = prepare_data(config, run_dir, "skip")
    assert record["source"] == str(path) and record["on_error"] == "skip"
    assert record["dropped_lines"] == 3 and record["conversations"] == len(good)
    assert record["dropped_by_reason"] == {NO_ASSISTANT: 3}
    assert record["first_dropped"] == [f"{path}:6", f"{path}:13", f"{path}:20"]
    copy = Path(record["valid_copy"])
    assert copy.parent.parent == run_dir and used.dataset.data == str(copy)
    assert read_jsonl(copy).conversations == read_jsonl(path, mode="skip").conversations
    # the devices, the evaluator and the audit read the copy: the bad lines are gone for all of them
    assert all(c.conversation_id.split("-")[-1][:3] != "bad" for c in conversations(used))


def test_a_clean_file_is_used_as_it_is(tmp_path):
    from simulations.simulate import prepare_data

    path = clean_file(tmp_path)
    config = config_for(tmp_path, path)
    used, record = prepare_data(config, tmp_path / "run", "skip")
    assert used.dataset.data == str(path) and record["dropped_lines"] == 0
    assert "valid_copy" not in record and not (tmp_path / "run" / "data").exists()
    synthetic = tiny_config(tmp_path)
    assert prepare_data(synthetic, tmp_path / "run", "skip") == (synthetic, None)


def test_strict_simulate_names_both_ways_out(tmp_path, capsys):
    path, _ = own_file(tmp_path, bad=2)
    code = main(
        ["simulate", "--data", str(path), "--model", "tiny", "--run-dir", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert f"{path}:6: {NO_ASSISTANT}" in err
    assert "--on-error skip" in err and "--write-valid" in err
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_validate_writes_the_valid_conversations_out(tmp_path, capsys):
    path, good = own_file(tmp_path, bad=3)
    out = tmp_path / "valid.jsonl"
    assert (
        main(["data", "validate", "--on-error", "skip", "--write-valid", str(out), str(path)]) == 1
    )
    captured = capsys.readouterr()
    assert read_jsonl(out).conversations == read_jsonl(path, mode="skip").conversations
    assert len(read_jsonl(out).conversations) == len(good)
    assert f"3 × {NO_ASSISTANT}" in captured.err
    assert f"wrote {len(good)} valid conversations to {out}" in captured.err
    # standard output is the issues, one a line, as without --write-valid
    assert captured.out.splitlines() == [str(i) for i in read_jsonl(path, mode="skip").issues]
    # strict: any problem fails the file, nothing is written
    out.unlink()
    assert main(["data", "validate", "--write-valid", str(out), str(path)]) == 1
    assert not out.exists()
    assert "nothing written" in capsys.readouterr().err


def test_validate_says_how_many_users_declare_each_persona(tmp_path, capsys):
    path = clean_file(tmp_path)
    assert main(["data", "validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert (
        captured.out.strip() == f"{path}: OK, {sum(SHAPE.values()) * CONVERSATIONS} conversations"
    )
    out = captured.err
    assert "users per persona: knowledge_worker 8, leadership 8, field_worker 3, admin_hr 1" in out


# ---------------------------------------------------------- users per persona, conversations


def test_users_per_persona_chooses_that_many_users_of_each_declared_persona(tmp_path):
    path = clean_file(tmp_path)
    config = config_for(tmp_path, path, users_per_persona=2)
    assert per_persona(config) == {
        "leadership": 2,
        "knowledge_worker": 2,
        "field_worker": 2,
        "admin_hr": 1,
        "new_employee": 0,
    }


def test_the_choice_is_seeded_and_independent_of_file_order(tmp_path):
    path = clean_file(tmp_path)
    shuffled = tmp_path / "shuffled.jsonl"
    lines = path.read_text().splitlines()
    random.Random(9).shuffle(lines)
    shuffled.write_text("\n".join(lines) + "\n")

    def chosen(data: Path, seed: int) -> set[str]:
        return set(user_ids(config_for(tmp_path, data, users_per_persona=2, data_seed=seed)))

    assert chosen(path, 0) == chosen(shuffled, 0)
    assert len({frozenset(chosen(path, seed)) for seed in range(5)}) > 1
    # not simply the first users of each persona
    firsts = {f"{p[:4]}{u:02d}" for p in PERSONAS for u in range(2)}
    assert any(chosen(path, seed) - firsts for seed in range(5))


def test_max_users_caps_the_total_round_robin_over_personas(tmp_path):
    path = clean_file(tmp_path)
    every = config_for(tmp_path, path, users_per_persona=0, max_users=0)
    assert per_persona(every) == SHAPE
    capped = config_for(tmp_path, path, users_per_persona=0, max_users=10)
    assert per_persona(capped) == {
        "leadership": 3,
        "knowledge_worker": 3,
        "field_worker": 3,
        "admin_hr": 1,
        "new_employee": 0,
    }
    selection = data_selection(capped)
    assert selection is not None and selection.capped
    # the default: 3 per persona, under the cap of 20
    assert per_persona(config_for(tmp_path, path, users_per_persona=3))["leadership"] == 3


def test_conversations_per_user_are_sampled_not_the_first_in_file_order(tmp_path):
    path = clean_file(tmp_path)
    config = config_for(tmp_path, path, users_per_persona=8, conversations_per_user=4)
    mine: dict[str, list[str]] = {}
    for c in conversations(config):
        mine.setdefault(c.user_id, []).append(c.conversation_id)
    assert mine and all(len(ids) == 4 for ids in mine.values())
    in_file: dict[str, list[str]] = {}
    for c in read_jsonl(path).conversations:
        in_file.setdefault(c.user_id, []).append(c.conversation_id)
    assert any(ids != in_file[user][:4] for user, ids in mine.items())
    # seeded: the same settings choose the same conversations, another seed others
    again = conversations(config_for(tmp_path, path, users_per_persona=8, conversations_per_user=4))
    assert [c.conversation_id for c in again] == [c.conversation_id for c in conversations(config)]
    other = config_for(
        tmp_path, path, users_per_persona=8, conversations_per_user=4, data_seed=1, max_users=0
    )
    assert {c.conversation_id for c in conversations(other) if c.user_id == "lead00"} != set(
        mine.get("lead00", [])
    ) or "lead00" not in mine


def test_users_outside_the_declared_personas_are_left_out_and_counted(tmp_path):
    path = tmp_path / "extra.jsonl"
    convs = own_conversations({"leadership": 3, "field_worker": 3})
    convs += [conversation("robo00", i, "robot") for i in range(4)]
    convs += [conversation("anon00", i, None) for i in range(4)]
    write_jsonl(path, convs)
    config = config_for(tmp_path, path)
    assert "robo00" not in user_ids(config) and "anon00" not in user_ids(config)
    selection = data_selection(config)
    assert selection.unlisted == {"robot": 1} and selection.unlabelled == 1


def test_a_file_without_personas_takes_max_users_users_at_random(tmp_path):
    path = tmp_path / "anon.jsonl"
    write_jsonl(path, [conversation(f"anon{u:02d}", i, None) for u in range(30) for i in range(3)])
    config = tiny_config(tmp_path, data=str(path), persona_mode="inferred", max_users=6)
    users = user_ids(config)
    assert len(users) == 6 and users != [f"anon{u:02d}" for u in range(6)]


def test_a_file_whose_personas_are_none_of_the_declared_ones_is_an_error(tmp_path):
    path = tmp_path / "other.jsonl"
    write_jsonl(path, own_conversations({"pilot": 2, "chef": 2}))
    with pytest.raises(
        ValueError, match=r"declares any of the personas .*the file declares: chef, pilot"
    ):
        user_ids(config_for(tmp_path, path))


def test_synthetic_data_is_unchanged(tmp_path):
    config = tiny_config(tmp_path)
    assert data_selection(config) is None
    assert len(user_ids(config)) == 10 and len(conversations(config)) == 10 * 12


def test_the_help_says_how_users_are_chosen(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--on-error {strict,skip}" in text
    assert "chosen at random (data_seed) among the users declaring each persona" in text
    assert "round-robin over the personas" in text


# ------------------------------------------------------ missing, gated, imbalanced personas


def _metrics(released: list[str], scored: dict[str, int], declared: list[str]) -> dict:
    """A run's metrics.json as the server writes it (the evaluation through server.outputs)."""
    from server.outputs import evaluation_table

    losses = {
        p: {"base": 3.0, "global": 2.0, "persona": 1.9, "persona-embedding": 1.8} for p in scored
    }
    final = {
        "round": 2,
        "heldout_loss": losses,
        "users": {p: scored.get(p, "<2") for p in declared},
    }
    rounds = [{"round": r, "released": released, "contributors": {}} for r in (1, 2)]
    return {"rounds": rounds, "evaluation": evaluation_table(final), "settings": {}}


def test_coverage_names_missing_gated_and_imbalanced_personas(tmp_path):
    from simulations.evaluator import persona_coverage

    path = clean_file(tmp_path)
    config = config_for(tmp_path, path, users_per_persona=3)
    # selected: 3, 3, 3, 1, 0 -> admin_hr and new_employee below min_clients = 2
    metrics = _metrics(
        ["leadership", "knowledge_worker", "field_worker"],
        {"leadership": 3, "knowledge_worker": 3, "field_worker": 3},
        list(PERSONAS),
    )
    coverage = persona_coverage(config, metrics, data_selection(config))
    rows = coverage["personas"]
    assert [rows[p]["status"] for p in PERSONAS] == [
        "trained",
        "trained",
        "trained",
        "below_gate",
        "below_gate",
    ]
    # no count below the gate in the record, an empty persona and a single user alike
    assert rows["admin_hr"]["users"] == rows["new_employee"]["users"] == "<2"
    assert rows["leadership"]["users"] == 3
    assert coverage["declared"] == 5 and coverage["scored"] == 3
    assert coverage["imbalanced"] is True
    notes = " ".join(coverage["notes"])
    assert "admin_hr" in notes and "new_employee" in notes and "min_clients" in notes
    assert "users per persona differ" in notes
    assert "1 user" not in notes and " 0 " not in notes


def test_a_persona_with_users_that_never_reached_the_gate_in_a_round_is_named(tmp_path):
    from simulations.evaluator import persona_coverage

    path = clean_file(tmp_path, shape={"leadership": 3, "field_worker": 3})
    config = tiny_config(
        tmp_path, data=str(path), personas="leadership,field_worker", users_per_persona=3
    )
    metrics = _metrics(
        ["leadership"], {"leadership": 3, "field_worker": 3}, ["leadership", "field_worker"]
    )
    coverage = persona_coverage(config, metrics, data_selection(config))
    assert coverage["personas"]["field_worker"]["status"] == "not_released"
    assert coverage["imbalanced"] is False
    assert "field_worker" in " ".join(coverage["notes"])


def test_balanced_synthetic_run_has_nothing_to_say(tmp_path):
    from simulations.evaluator import persona_coverage

    config = tiny_config(tmp_path)
    names = config.persona_names
    coverage = persona_coverage(config, _metrics(names, dict.fromkeys(names, 2), names), None)
    assert coverage["notes"] == [] and coverage["imbalanced"] is False
    assert all(row["status"] == "trained" for row in coverage["personas"].values())


def test_the_table_gets_a_row_for_every_declared_persona_saying_why(tmp_path):
    from server.outputs import format_table
    from simulations.evaluator import amend_table, persona_coverage

    path = clean_file(tmp_path)
    config = config_for(tmp_path, path, users_per_persona=3)
    metrics = _metrics(
        ["leadership", "knowledge_worker", "field_worker"],
        {"leadership": 3, "knowledge_worker": 3, "field_worker": 3},
        list(PERSONAS),
    )
    coverage = persona_coverage(config, metrics, data_selection(config))
    table = format_table(metrics["evaluation"], "DP off") + "\nevaluated by someone"
    assert "for 3 of 3 personas" in table  # what the server writes: the two others are not there
    amended = amend_table(table, coverage)
    lines = amended.splitlines()
    for persona in ("admin_hr", "new_employee"):
        (row,) = [line for line in lines if line.startswith(persona)]
        assert "<2" in row and "min_clients" in row
    mean = next(i for i, line in enumerate(lines) if line.startswith("mean"))
    assert all(
        next(i for i, line in enumerate(lines) if line.startswith(p)) < mean for p in PERSONAS
    )
    assert "for 3 of 3 scored personas (5 declared" in amended
    assert "users per persona differ" in amended
    # a run with every persona scored and balanced keeps the server's table as it is
    synthetic = tiny_config(tmp_path)
    names = synthetic.persona_names
    balanced = _metrics(names, dict.fromkeys(names, 2), names)
    text = format_table(balanced["evaluation"], "DP off")
    assert amend_table(text, persona_coverage(synthetic, balanced, None)) == text


# ---------------------------------------------------------------------------- end to end


@pytest.mark.slow  # Ray
def test_own_data_end_to_end(tmp_path, capsys):
    """The user's case, small: bad lines skipped, 2 users per persona chosen, one persona below the gate and
    one missing; the summary, the table and metrics.json say so."""
    shape = {"leadership": 4, "field_worker": 3, "admin_hr": 1, "new_employee": 0}
    path, _ = own_file(tmp_path, bad=2, shape=shape, per_user=6)
    run_dir = tmp_path / "run"
    code = main(
        [
            "simulate",
            "--config",
            str(Path(__file__).resolve().parents[1] / "simulations" / "scenarios" / "tiny.toml"),
            "--data",
            str(path),
            "--on-error",
            "skip",
            "--personas",
            ",".join(shape),
            "--users-per-persona",
            "2",
            "--rounds",
            "1",
            "--no-audit",
            "--no-record-wire",
            "--run-dir",
            str(run_dir),
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["data"]["dropped_lines"] == 2
    assert metrics["data"]["dropped_by_reason"] == {NO_ASSISTANT: 2}
    rows = metrics["persona_coverage"]["personas"]
    assert rows["leadership"]["users"] == rows["field_worker"]["users"] == 2
    assert rows["admin_hr"]["status"] == rows["new_employee"]["status"] == "below_gate"
    table = (run_dir / "evaluation.txt").read_text()
    assert [line for line in table.splitlines() if line.startswith("new_employee")]
    assert "4 declared" in table
    assert "2 line(s) dropped" in out.out + out.err
    assert "new_employee" in out.out
