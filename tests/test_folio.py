"""Genre personas for tinyshakespeare: every speaker with 30 answers has one play's genre but the shared parts;
the import declares them; public speakers are set aside; the genre scenario takes its users from the file."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import pytest

from fedpers.data import import_shakespeare, read_jsonl
from fedpers.data.cli import register
from fedpers.data.folio import (
    GENRES,
    PLAY_GENRES,
    SPEAKER_PLAYS,
    public_speakers,
    speaker_genre,
    with_genres,
)


@pytest.fixture(scope="module")
def speakers() -> list:
    return import_shakespeare(min_speeches=30)


def test_every_speaker_has_one_play_but_the_parts_plays_share(speakers) -> None:
    slugs = {c.user_id for c in speakers}
    assert {s for s in slugs if speaker_genre(s) is None} == {
        "first-citizen",
        "servant",
        "messenger",
    }
    assert set(SPEAKER_PLAYS) <= slugs  # no stale names in the table
    assert set(PLAY_GENRES.values()) == set(GENRES)
    assert speaker_genre("romeo") == "tragedy"
    assert speaker_genre("petruchio") == "comedy"
    assert speaker_genre("king-richard-ii") == "history"


def test_genres_are_declared_and_speakers_without_one_left_out(speakers) -> None:
    declared = with_genres(speakers)
    assert {c.user_id for c in declared} == {c.user_id for c in speakers} - {
        "first-citizen",
        "servant",
        "messenger",
    }
    assert all(c.persona == speaker_genre(c.user_id) for c in declared)
    assert len(declared) == sum(1 for c in speakers if speaker_genre(c.user_id) is not None)


def test_public_speakers_are_the_fewest_answers_of_each_genre(speakers) -> None:
    declared = with_genres(speakers)
    answers = Counter(c.user_id for c in declared)
    public = public_speakers(declared, 3)
    assert len(public) == 9
    for genre in GENRES:
        mine = [s for s in public if speaker_genre(s) == genre]
        rest = [s for s in answers if speaker_genre(s) == genre and s not in public]
        assert len(mine) == 3
        assert max(answers[s] for s in mine) <= min(answers[s] for s in rest)
    assert public_speakers(declared, 0) == set()
    with pytest.raises(ValueError, match="per_genre"):
        public_speakers(declared, -1)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedpers")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_devices_and_public_files_apart(tmp_path: Path, capsys) -> None:
    devices, public = tmp_path / "devices.jsonl", tmp_path / "public.jsonl"
    argv = ["import-shakespeare", "--genres", "--out", str(devices)]
    assert _cli([*argv, "--public-out", str(public)]) == 0
    out = capsys.readouterr().out
    assert "9 speakers: users per persona: comedy 3, history 3, tragedy 3" in out
    assert "64 speakers: users per persona: comedy 28, history 22, tragedy 14" in out
    held = read_jsonl(devices, mode="strict").conversations
    shared = read_jsonl(public, mode="strict").conversations
    assert not {c.user_id for c in held} & {c.user_id for c in shared}
    assert {c.persona for c in held} == {c.persona for c in shared} == set(GENRES)
    assert all(c.persona == speaker_genre(c.user_id) for c in [*held, *shared])


def test_cli_refuses_a_public_file_without_genres(tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.jsonl"
    argv = ["import-shakespeare", "--out", str(out), "--public-out", str(tmp_path / "p.jsonl")]
    assert _cli(argv) == 2
    assert "--public-out needs --genres" in capsys.readouterr().err
    assert not out.exists()
    assert (
        _cli(["import-shakespeare", "--genres", "--out", str(out), "--public-per-genre", "-1"]) == 2
    )


def test_the_genre_scenario_takes_five_devices_per_genre_none_of_them_public(
    tmp_path: Path, monkeypatch
) -> None:
    from fedpers.federated import FederatedConfig, load_config_file
    from fedpers.userdata import conversations, user_ids
    from fedpers.warmstart import public_conversations
    from simulations.bench_scenarios import genre_files
    from simulations.simulate import SCENARIOS

    monkeypatch.chdir(tmp_path)
    config = FederatedConfig.from_flat(load_config_file(SCENARIOS / "genres.toml")).validated()
    genre_files(config)
    assert Path(config.dataset.data).is_file() and Path(config.dataset.public_data).is_file()
    users = user_ids(config)
    personas = Counter({c.user_id: c.persona for c in conversations(config)}.values())
    assert len(users) == 15 and personas == {g: 5 for g in GENRES}
    public = {c.user_id for c in public_conversations(config)}
    assert len(public) == 9 and not public & set(users)
