"""The server's round checkpoint and resumed runs: write/read round trip, atomicity, refusals, and a
resumed run that ends exactly as an uninterrupted one (no round repeated or counted twice).

The run-level tests drive :func:`server.app.run_server` with the tiny model and a scripted aggregation
(the same sums every time for a given round and adapter state), so the server's own bookkeeping is what
is compared; ``tests/test_resume_deploy.py`` runs the real thing across processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from safetensors.numpy import load_file

from fedpers import atomic
from fedpers.adapters import GLOBAL
from fedpers.aggregation.optimizers import FedAdamOptimizer, FedAvgOptimizer
from fedpers.aggregation.rounds import RoundSums
from fedpers.federated import FederatedConfig
from fedpers.wirelog import MANIFEST, WIRE, append_manifest, read_manifest
from server import app as server_app
from server import checkpoint as ck
from server.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    CheckpointError,
    check_settings,
    checkpoint_dir,
    differing_settings,
    optimizer_state,
    read_checkpoint,
    request_resume,
    restore_manifest,
    restore_optimizer,
    write_checkpoint,
)
from server.cli import main as server_main

PERSONAS = ("leadership", "field_worker")


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layers.0.q_proj.lora_A.weight": rng.normal(size=(4, 8)).astype(np.float32),
        "layers.0.q_proj.lora_B.weight": rng.normal(size=(8, 4)).astype(np.float32),
    }


def _checkpoint(server_round: int = 1) -> Checkpoint:
    adam = FedAdamOptimizer()
    params = _arrays(0)
    for i in range(server_round):
        params = adam.step(params, _arrays(10 + i))
    settings = FederatedConfig().to_record()
    return Checkpoint(
        round=server_round,
        run_id="ab" * 16,
        settings=settings,
        adapters={GLOBAL: params, **{p: _arrays(i + 1) for i, p in enumerate(PERSONAS)}},
        trained=["leadership"],
        optimizers={
            GLOBAL: optimizer_state(adam),
            "leadership": optimizer_state(FedAvgOptimizer()),
        },
        history=[{"round": r, "participants": 3, "train_seconds": 0.1 * r} for r in range(1, 2)],
        sessions=[[{"round": 1, "attempt": 1, "dropped": {"setup": 1}, "seconds": 1 / 3}]],
        mixing={"leadership": {"weight": 0.5, "source": "fixed", "conversations": 0}},
        ledgers={"global.json": '{"events": []}\n'},
        manifest={"bytes": 0, "sha256": ck._sha256(b"")},
        nodes=3,
        wall_seconds=12.5,
    )


def test_a_checkpoint_reads_back_exactly_what_was_written(tmp_path):
    saved = _checkpoint(2)
    write_checkpoint(tmp_path, saved)
    loaded = read_checkpoint(tmp_path)
    for name, arrays in saved.adapters.items():
        assert loaded.adapters[name].keys() == arrays.keys()
        for key, value in arrays.items():
            assert loaded.adapters[name][key].dtype == value.dtype
            assert np.array_equal(loaded.adapters[name][key], value)
    assert (loaded.round, loaded.run_id, loaded.settings) == (2, saved.run_id, saved.settings)
    assert (loaded.history, loaded.sessions, loaded.mixing, loaded.ledgers) == (
        saved.history,
        saved.sessions,
        saved.mixing,
        saved.ledgers,
    )
    assert loaded.trained == ["leadership"] and loaded.nodes == 3 and loaded.wall_seconds == 12.5
    # the optimizer state comes back: the next step is the same as the uninterrupted optimizer's
    adam = FedAdamOptimizer()
    restore_optimizer(adam, loaded.optimizers[GLOBAL], GLOBAL)
    original = FedAdamOptimizer()
    restore_optimizer(original, saved.optimizers[GLOBAL], GLOBAL)
    assert adam.t == 2
    a, b = (
        adam.step(loaded.adapters[GLOBAL], _arrays(99)),
        original.step(saved.adapters[GLOBAL], _arrays(99)),
    )
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(CheckpointError, match="optimizers.global.kind"):
        restore_optimizer(FedAvgOptimizer(), loaded.optimizers[GLOBAL], GLOBAL)
    # tensors as safetensors, the rest as JSON: no pickle anywhere
    folder = checkpoint_dir(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [CHECKPOINT_FILE, "round-0002.safetensors"]
    assert load_file(str(folder / "round-0002.safetensors"))


def test_a_crash_while_writing_leaves_the_previous_checkpoint_readable(tmp_path, monkeypatch):
    write_checkpoint(tmp_path, _checkpoint(1))
    real_replace = os.replace
    for crash_at in (1, 2):  # 1: while the tensors are written, 2: at the commit (checkpoint.json)
        calls = []

        def replace(src, dst, calls=calls, crash_at=crash_at):
            calls.append(dst)
            if len(calls) == crash_at:
                raise OSError("power cut")
            real_replace(src, dst)

        monkeypatch.setattr(atomic.os, "replace", replace)
        with pytest.raises(OSError, match="power cut"):
            write_checkpoint(tmp_path, _checkpoint(2))
        monkeypatch.setattr(atomic.os, "replace", real_replace)
        loaded = read_checkpoint(tmp_path)
        assert loaded.round == 1
        assert np.array_equal(
            loaded.adapters[GLOBAL]["layers.0.q_proj.lora_B.weight"],
            _checkpoint(1).adapters[GLOBAL]["layers.0.q_proj.lora_B.weight"],
        )
    # a temporary file a killed writer left behind (no rename) does not disturb the next write
    (checkpoint_dir(tmp_path) / f".{CHECKPOINT_FILE}.x{atomic.TEMP_SUFFIX}").write_text("{")
    write_checkpoint(tmp_path, _checkpoint(2))
    assert read_checkpoint(tmp_path).round == 2
    assert sorted(p.name for p in checkpoint_dir(tmp_path).iterdir()) == [
        CHECKPOINT_FILE,
        "round-0002.safetensors",
    ]


@pytest.mark.parametrize(
    "damage, message",
    [
        ("flip a tensor byte", "SHA-256 differs"),
        ("truncate the json", "not JSON"),
        ("edit the round", "field 'digest' does not match"),
        ("remove the tensors", "which is missing"),
        ("drop a field", "field 'digest' does not match"),
    ],
)
def test_a_damaged_checkpoint_is_refused_naming_what_is_wrong(tmp_path, damage, message):
    write_checkpoint(tmp_path, _checkpoint(1))
    folder = checkpoint_dir(tmp_path)
    tensors, document = folder / "round-0001.safetensors", folder / CHECKPOINT_FILE
    if damage == "flip a tensor byte":
        data = bytearray(tensors.read_bytes())
        data[-3] ^= 0x01
        tensors.write_bytes(bytes(data))
    elif damage == "truncate the json":
        document.write_bytes(document.read_bytes()[:100])
    elif damage == "edit the round":
        record = json.loads(document.read_text())
        record["round"] = 2
        document.write_text(json.dumps(record))
    elif damage == "remove the tensors":
        tensors.unlink()
    else:
        record = json.loads(document.read_text())
        del record["history"]
        document.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(tmp_path)
    # the CLI refuses to resume it, naming the file
    assert server_main(["run", "--resume", str(tmp_path), "--print-command"]) == 2


def test_resuming_with_changed_settings_is_refused_naming_the_setting(tmp_path, capsys):
    saved = _checkpoint(1)
    changed = {**saved.settings, "lora_r": 8, "registry": "/elsewhere", "secagg_timeout": 10.0}
    assert differing_settings(saved.settings, changed) == ["lora_r"]
    with pytest.raises(CheckpointError, match=r"lora_r: checkpoint 4, now 8"):
        check_settings(saved, changed, tmp_path)
    write_checkpoint(tmp_path, saved)
    assert (
        server_main(
            ["run", "--resume", str(tmp_path), "--run-config", "rounds=5", "--print-command"]
        )
        == 2
    )
    assert "rounds: checkpoint 3, now 5" in capsys.readouterr().err
    # the same settings given again are accepted; the checkpoint's run directory and settings are used
    assert (
        server_main(
            ["run", "--resume", str(tmp_path), "--run-config", "rounds=3", "--print-command"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert (
        f'run-dir="{tmp_path.resolve()}"' in out
        and "lora-r=4" in out
        and "after round 1 of 3" in out
    )
    # a new run never overwrites the unfinished one
    assert server_main(["run", "--run-dir", str(tmp_path), "--print-command"]) == 2
    assert "--resume" in capsys.readouterr().err
    # a finished run has nothing to resume
    saved.finished = True
    write_checkpoint(tmp_path, saved)
    assert server_main(["run", "--resume", str(tmp_path), "--print-command"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_the_manifest_is_cut_back_to_the_checkpoint_and_the_rest_kept_aside(tmp_path):
    path = tmp_path / WIRE / MANIFEST
    append_manifest(path, {"round": 1})
    state = ck.manifest_state(path)
    append_manifest(path, {"round": 2})
    aside = tmp_path / "aside.jsonl"
    assert restore_manifest(path, state, aside) == 1
    assert read_manifest(tmp_path) == [{"round": 1}] and json.loads(aside.read_text()) == {
        "round": 2
    }
    path.write_text('{"round": 9}\n')
    with pytest.raises(CheckpointError, match="manifest"):
        restore_manifest(path, state, aside)


# ---- whole runs of the server with a scripted aggregation


class LostSuperLink(RuntimeError):
    pass


class FakeGrid:
    def __init__(self, nodes: int = 4) -> None:
        self.nodes = list(range(1, nodes + 1))
        self.run = type("Run", (), {"run_id": 1})()

    def get_node_ids(self):
        return list(self.nodes)


class ScriptedRounds:
    """Every round: each persona slot gets two uploads whose sum depends only on the round and the current
    global adapter, and two reply lines reach the manifest. ``lose_at`` raises mid-round."""

    def __init__(self, training, run_dir: Path, lose_at: int | None = None) -> None:
        self.training, self.run_dir, self.lose_at = training, run_dir, lose_at

    def collect(self, grid, context, server_round):
        for node in (1, 2):
            append_manifest(
                self.run_dir / WIRE / MANIFEST, {"round": server_round, "node_id": node}
            )
        if server_round == self.lose_at:
            raise LostSuperLink(f"SuperLink gone in round {server_round}")
        base = self.training.state.adapters[GLOBAL]
        rng = np.random.default_rng(server_round)
        sums = {
            slot: {
                k: (0.01 * rng.standard_normal(v.shape) + 0.001 * np.asarray(v, np.float64))
                for k, v in base.items()
            }
            for slot in self.training.slots
        }
        counts = {slot: 2.0 for slot in self.training.slots}
        return RoundSums(server_round, sums, counts, 2 * len(sums), 0)


SETTINGS = {
    "model": "tiny",
    "rounds": 3,
    "personas": ",".join(PERSONAS),
    "min_clients": 2,
    "server_optimizer": "fedadam",
    "secure_aggregation": True,
    "persona_hiding": True,
    "user_dp": True,
    "lora_layers": 1,
    "evaluate": False,
    "audit": False,
    "record_wire": True,
}


def _run(
    run_dir: Path, monkeypatch, lose_at: int | None = None, crash_checkpoint_at: int | None = None
):
    config = FederatedConfig.from_flat(SETTINGS).validated()
    monkeypatch.setattr(
        server_app,
        "round_mode",
        lambda training, session: ScriptedRounds(training, run_dir, lose_at),
    )
    # the scripted sums are not clipped uploads: the aggregate checks are tested elsewhere
    monkeypatch.setattr(server_app, "check_round_sums", lambda *a: [])
    real_write = ck.write_checkpoint  # the real one, whatever an earlier call patched

    def write(run_dir_, checkpoint):
        if checkpoint.round == crash_checkpoint_at and not checkpoint.finished:
            raise LostSuperLink("killed before the checkpoint of the round was written")
        return real_write(run_dir_, checkpoint)

    monkeypatch.setattr(server_app, "write_checkpoint", write)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    return server_app.run_server(FakeGrid(), context, config, run_dir, expected_nodes=4)


def _comparable(metrics: dict) -> dict:
    """metrics.json without wall times and the resume marker."""
    out = {k: v for k, v in metrics.items() if k not in ("wall_seconds", "resumed_after_rounds")}
    out["rounds"] = [{k: v for k, v in r.items() if k != "train_seconds"} for r in out["rounds"]]
    return out


def _adapters(run_dir: Path) -> dict:
    return {
        p.parent.name: load_file(str(p))
        for p in (run_dir / "adapters").glob("*/adapter_model.safetensors")
    }


def _ledger_rounds(run_dir: Path) -> dict[str, list]:
    out = {}
    for path in sorted((run_dir / "user-level-dp").glob("*.json")):
        entries = json.loads(path.read_text())["entries"]
        out[path.stem] = [e["details"]["round"] for e in entries]
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    try:
        _run(run_dir, mp)
    finally:
        mp.undo()
    return run_dir


@pytest.mark.parametrize("lost", ["mid-round", "before the round's checkpoint"])
def test_a_resumed_run_ends_as_the_uninterrupted_one_without_counting_a_round_twice(
    tmp_path, monkeypatch, uninterrupted, lost
):
    run_dir = tmp_path / "run"
    with pytest.raises(LostSuperLink):
        if lost == "mid-round":
            _run(run_dir, monkeypatch, lose_at=2)
        else:  # round 2 applied, ledgers charged, then killed before its checkpoint
            _run(run_dir, monkeypatch, crash_checkpoint_at=2)
    assert read_checkpoint(run_dir).round == 1
    assert not (run_dir / "metrics.json").exists()
    # a new run in the same directory is refused: the checkpoint is not overwritten
    with pytest.raises(CheckpointError, match="unfinished run"):
        _run(run_dir, monkeypatch)
    assert read_checkpoint(run_dir).round == 1

    request_resume(run_dir)
    payload = _run(run_dir, monkeypatch)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    expected = json.loads((uninterrupted / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    assert (
        metrics["resumed_after_rounds"] == [1]
        and payload["run_id"] == read_checkpoint(run_dir).run_id
    )
    assert _comparable(metrics) == {**_comparable(expected), "run_id": metrics["run_id"]}
    # the adapters, bit for bit
    ours, theirs = _adapters(run_dir), _adapters(uninterrupted)
    assert ours.keys() == theirs.keys() == {GLOBAL, *PERSONAS}
    for name in ours:
        assert all(np.array_equal(ours[name][k], theirs[name][k]) for k in theirs[name]), (
            name,
            {k: float(np.abs(ours[name][k] - theirs[name][k]).max()) for k in theirs[name]},
        )
    # every round charged once in the server's user-level ledgers, every round's replies once
    assert _ledger_rounds(run_dir) == _ledger_rounds(uninterrupted)
    assert all(rounds == [1, 2, 3] for rounds in _ledger_rounds(run_dir).values())
    assert [e["round"] for e in read_manifest(run_dir)] == [
        e["round"] for e in read_manifest(uninterrupted)
    ]
    aside = list(checkpoint_dir(run_dir).glob("interrupted-round-2-*"))
    assert len(aside) == 1 and aside[0].read_text().count("\n") == 2
    # the finished run has nothing left to resume; a new run may reuse the directory
    assert read_checkpoint(run_dir).finished
    request_resume(run_dir)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        _run(run_dir, monkeypatch)


def test_a_resume_with_other_settings_is_refused_by_the_server_too(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    with pytest.raises(LostSuperLink):
        _run(run_dir, monkeypatch, lose_at=2)
    request_resume(run_dir)
    monkeypatch.setitem(SETTINGS, "server_optimizer", "fedavg")
    with pytest.raises(
        CheckpointError, match="server_optimizer: checkpoint 'fedadam', now 'fedavg'"
    ):
        _run(run_dir, monkeypatch)
    assert read_checkpoint(run_dir).round == 1


def test_a_run_directory_in_use_by_a_live_server_run_is_refused(tmp_path):
    from server.checkpoint import hold_run_dir

    held = hold_run_dir(tmp_path)
    try:
        with pytest.raises(CheckpointError, match="another server run is still using"):
            hold_run_dir(tmp_path)
    finally:
        os.close(held)
    os.close(hold_run_dir(tmp_path))  # released with its holder


def test_a_resumed_run_keeps_the_update_clip_it_chose_on_public_data(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    public = {"update_clip_public": True, "public_data": "synthetic", "public_steps": 2}
    for key, value in public.items():
        monkeypatch.setitem(SETTINGS, key, value)
    with pytest.raises(LostSuperLink):
        _run(run_dir, monkeypatch, lose_at=2)
    chosen = read_checkpoint(run_dir).settings["update_clip"]
    assert chosen != 32.0 and chosen > 0
    assert json.loads((run_dir / "run.json").read_text())["settings"]["update_clip"] == chosen

    def not_again(*args, **kwargs):
        raise AssertionError("a resumed run chose its update clip again")

    monkeypatch.setattr(server_app, "public_update_clip", not_again)
    request_resume(run_dir)
    _run(run_dir, monkeypatch)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["settings"]["update_clip"] == chosen
    assert metrics["update_clip_public"] == {"update_clip": chosen, "from": "checkpoint"}
    # only a run that still chooses the clip on public data may resume with the chosen one
    saved = {**SETTINGS, "update_clip": chosen}
    current = FederatedConfig.from_flat(SETTINGS).validated().to_record()
    assert "update_clip" not in ck.differing_settings(saved, current)
    monkeypatch.setitem(SETTINGS, "update_clip_public", False)
    current = FederatedConfig.from_flat(SETTINGS).validated().to_record()
    assert {"update_clip", "update_clip_public"} <= set(ck.differing_settings(saved, current))
