"""The device side: ``fedpers-client`` and the ClientApp reading an encrypted store, consent and budget."""

from __future__ import annotations

import json
import math
import re

import flwr.compat.common.recorddict_compat as compat
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.supercore.task_identity import TaskIdentity

from clients.app import app as client_app
from clients.app import train as client_train
from clients.cli import main
from clients.consent import OVER_BUDGET, ParticipationRefused
from clients.device import DeviceStore
from clients.unlock import KEY_FILE_ENV
from fedpers.data import SyntheticConfig, generate, write_jsonl
from fedpers.federated import FederatedConfig
from fedpers.models import adapter_arrays, attach_lora, load_base_model
from server.app import initial_adapters
from server.strategy import PersonaTraining, persona_adapters

USER = "user000"
SETTINGS = dict(
    model="tiny",
    personas="leadership,field_worker",
    rounds=3,
    local_steps=2,
    embedding_steps=1,
    batch_size=2,
    max_length=48,
    lora_layers=2,
    secure_aggregation=False,
    noise_seed=1,
)


@pytest.fixture
def device(tmp_path, monkeypatch):
    """An initialised store of USER (key file), its conversations imported; the key in the environment."""
    convs = generate(
        SyntheticConfig(
            users_per_persona=1, conversations_per_user=8, personas=("leadership", "field_worker")
        )
    )
    data = tmp_path / "mine.jsonl"
    write_jsonl(data, [c for c in convs if c.user_id == USER])
    args = ["--store", str(tmp_path / "store"), "--key-file", str(tmp_path / "store.key")]
    assert main([*args, "init", "--user-id", USER]) == 0
    assert main([*args, "import", str(data)]) == 0
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "store.key"))
    return args, DeviceStore.open(tmp_path / "store", key_file=tmp_path / "store.key")


def _status(args, capsys) -> dict:
    capsys.readouterr()
    assert main([*args, "status", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_bad_line_names_file_line_and_field_and_stores_nothing(device, tmp_path, capsys):
    args, store = device
    good = store.conversations()[0].to_dict()
    bad = tmp_path / "bad.jsonl"
    lines = [
        dict(good, conversation_id="new-1"),
        dict(good, conversation_id="new-2", turns=[{"role": "robot", "text": "hi"}]),
        dict(good, conversation_id="new-3", user_id="someone-else"),
        dict(good, conversation_id="new-4"),
    ]
    bad.write_text("".join(json.dumps(line) + "\n" for line in lines))
    capsys.readouterr()
    assert main([*args, "import", str(bad)]) == 2
    err = capsys.readouterr().err
    assert (
        f"{bad}:2: turns[0].role: must be one of 'user', 'assistant', 'system', got 'robot'" in err
    )
    assert _status(args, capsys)["conversations"] == 8  # nothing of the file was stored

    bad.write_text("".join(json.dumps(line) + "\n" for line in (lines[0], lines[2], dict(good))))
    assert main([*args, "import", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: user_id: 'someone-else' is not this device's user '{USER}'" in err
    assert f"{bad}:3: conversation_id: '{good['conversation_id']}' is already in the store" in err
    assert _status(args, capsys)["conversations"] == 8


def test_status_reports_data_persona_consent_and_budget(device, capsys):
    args, _ = device
    capsys.readouterr()
    assert main([*args, "consent", "--opt-in", "--budget", "3.5"]) == 0
    assert main([*args, "status"]) == 0
    out = capsys.readouterr().out
    assert f"user           {USER}" in out and "conversations  8 (0 rated answers)" in out
    assert "consent        opted in, budget epsilon 3.5" in out
    assert (
        "privacy        epsilon 0.000 spent of 3.5" in out
        and "adapters       none received yet" in out
    )
    assert main([*args, "consent", "--opt-out"]) == 0
    report = _status(args, capsys)
    assert report["consent"]["opted_in"] is False and report["consent"]["budget"] == 3.5
    assert report["persona"] is None and report["user_embedding"] is False


def _round_messages(monkeypatch, run_id: str = "run-a", **changes):
    """``message(server_round)``: a training message as the ServerApp sends it (the training message itself,
    without SecAgg+'s stage records)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    config = FederatedConfig.from_flat(SETTINGS | changes).validated()
    base, _ = load_base_model("tiny")
    adapters = initial_adapters(config, adapter_arrays(attach_lora(base, config.lora())))
    strategy = PersonaTraining(config, run_id, 2, False, persona_adapters(config, adapters))

    def message(server_round: int) -> Message:
        fit_ins = FitIns(
            ndarrays_to_parameters(strategy.reference()),
            strategy.instructions(server_round).to_record(),
        )
        return Message(
            compat.fitins_to_recorddict(fit_ins, keep_input=True),
            dst_node_id=1,
            message_type=MessageType.TRAIN,
        )

    return message


@pytest.fixture
def round_message(monkeypatch):
    return _round_messages(monkeypatch)


def _context(store: DeviceStore) -> Context:
    return Context(
        run_id=1,
        node_id=1,
        node_config={"store": str(store.directory)},
        state=RecordDict(),
        run_config={},
    )


def test_a_run_the_budget_cannot_hold_is_refused_before_anything_is_spent_and_names_its_limit(
    device, monkeypatch
):
    args, store = device
    assert main([*args, "consent", "--opt-in", "--budget", "20"]) == 0
    first = _round_messages(monkeypatch, "run-a", epsilon=4.0)
    assert not client_train(first(1), _context(store)).has_error()
    entries = [e.purpose for e in store.ledger().entries]
    spent = store.ledger().spent().epsilon
    # a second run whose own epsilon leaves almost nothing: the consented 20 is not the limit
    second = _round_messages(monkeypatch, "run-b", epsilon=round(spent + 0.05, 3))
    for _attempt in range(3):  # SecAgg+ retries: every attempt plans again
        with pytest.raises(ParticipationRefused) as refused:
            client_train(second(1), _context(store))
        assert str(refused.value) == OVER_BUDGET
        assert "limit the run's epsilon" in refused.value.detail
        assert "consented budget" not in refused.value.detail
    assert [e.purpose for e in store.ledger().entries] == entries
    assert store.ledger().spent().epsilon == pytest.approx(spent)


def test_client_trains_from_the_store_and_refuses_past_the_consented_budget(
    device, round_message, capsys
):
    args, store = device
    # consent not given yet: nothing runs
    with pytest.raises(ParticipationRefused, match="has not opted in"):
        client_app(round_message(1), _context(store))
    assert store.ledger().entries == []

    assert main([*args, "consent", "--opt-in", "--budget", "6"]) == 0
    reply = client_train(round_message(1), _context(store))
    assert not reply.has_error()
    ledger = store.ledger()
    assert [e.purpose for e in ledger.entries] == ["clip-quantile", "dp-sgd"]
    spent = ledger.spent().epsilon
    assert 0 < spent <= 6
    assert (
        sorted(store.adapter_names()) == ["field_worker", "global", "leadership"]
        and store.embedding() is not None
    )
    assert store.adapters_info()["settings"]["model"] == "tiny"

    # the user lowers the cap
    assert main([*args, "consent", "--budget", f"{spent * 1.01:.6f}"]) == 0
    with pytest.raises(ParticipationRefused) as refused:
        client_train(round_message(2), _context(store))
    # what the server learns
    assert str(refused.value) == OVER_BUDGET and USER not in str(refused.value)
    # the device's log
    assert re.search(
        rf"{USER}: refused to train: .*'dp-sgd' would bring user {USER}'s epsilon from {spent:.3f} to .*"
        r"over the consented budget of .*nothing was run",
        refused.value.detail,
    )
    # nothing recorded, nothing run
    assert [e.purpose for e in store.ledger().entries] == [
        "clip-quantile",
        "dp-sgd",
    ]

    # a budget of what was spent, rounded down (rounded to nearest it can exceed the spending by 5e-7)
    assert main([*args, "consent", "--budget", f"{math.floor(spent * 1e6) / 1e6:.6f}"]) == 0
    with pytest.raises(ParticipationRefused, match="privacy budget is spent"):
        client_train(round_message(2), _context(store))
    capsys.readouterr()
    assert (
        main([*args, "join", "--superlink", "127.0.0.1:8000", "--insecure", "--print-command"]) == 2
    )
    assert "privacy budget is spent" in capsys.readouterr().err


def test_forget_keeps_only_the_ledger(device, round_message, capsys):
    args, store = device
    assert main([*args, "consent", "--opt-in"]) == 0
    client_train(round_message(1), _context(store))
    spent = store.ledger().spent().epsilon
    assert main([*args, "forget", "--yes"]) == 0
    assert store.store.names() == ["ledger"]
    report = _status(args, capsys)
    assert report["user_id"] == USER and report["conversations"] == 0 and report["adapters"] is None
    assert report["consent"]["opted_in"] is False and report["privacy"][
        "epsilon_spent"
    ] == pytest.approx(spent)
    with pytest.raises(ParticipationRefused):
        client_app(round_message(2), _context(store))


def test_user_level_dp_is_charged_on_the_device_within_the_consented_cap(
    device, monkeypatch, capsys
):
    args, store = device
    message = _round_messages(
        monkeypatch,
        user_dp=True,
        secure_aggregation=True,
        user_noise_multiplier=2.0,
        update_clip=0.5,
        noise_multiplier=3.0,
    )
    assert main([*args, "consent", "--opt-in", "--budget", "6"]) == 0
    assert not client_train(message(1), _context(store)).has_error()
    user_level = store.user_level_ledger()
    assert [(e.purpose, e.status, e.details["round"]) for e in user_level.entries] == [
        ("user-level-dp-skellam", "completed", 1)
    ]
    spent, record_level = user_level.spent().epsilon, store.ledger().spent().epsilon
    assert user_level.cap == 6 and user_level.delta == store.ledger().delta
    assert spent > record_level > 0
    report = _status(args, capsys)
    assert report["privacy"]["epsilon_spent"] == pytest.approx(record_level)
    assert report["privacy"]["user_level_epsilon_spent"] == pytest.approx(spent)
    assert main([*args, "status"]) == 0
    assert f"user-level     epsilon {spent:.3f} spent of 6" in capsys.readouterr().out

    # a cap below what the next round's user-level release needs: refused before anything is trained or sent
    assert main([*args, "consent", "--budget", f"{spent * 1.01:.6f}"]) == 0
    entries = [e.purpose for e in store.ledger().entries]
    with pytest.raises(ParticipationRefused) as refused:
        client_train(message(2), _context(store))
    assert str(refused.value) == OVER_BUDGET
    assert "'user-level-dp-skellam' would bring user" in refused.value.detail
    assert [
        e.purpose for e in store.ledger().entries
    ] == entries  # no DP-SGD ran for the refused round
    assert len(store.user_level_ledger().entries) == 1

    assert main([*args, "forget", "--yes"]) == 0  # both ledgers are kept: they must keep counting
    assert store.store.names() == ["ledger", "user-level-ledger"]
    assert _status(args, capsys)["privacy"]["user_level_epsilon_spent"] == pytest.approx(spent)


def test_join_runs_flower_supernode_with_tls_auth_and_the_store_but_never_the_key(
    device, tmp_path, capsys
):
    args, store = device
    ca, key = tmp_path / "ca.crt", tmp_path / "node.key"
    ca.write_text("ca"), key.write_text("key")
    join = [
        *args,
        "join",
        "--superlink",
        "192.0.2.10:8000",
        "--root-certificates",
        str(ca),
        "--auth-key",
        str(key),
        "--print-command",
    ]
    capsys.readouterr()
    assert main(join) == 2
    assert "has not opted in" in capsys.readouterr().err
    assert main([*args, "consent", "--opt-in"]) == 0
    capsys.readouterr()
    assert main(join) == 0
    command = capsys.readouterr().out
    # Flower's flower-supernode, through the entry point that shortens its waits during a run
    assert "-m clients.supernode --superlink 192.0.2.10:8000" in command
    assert f"--root-certificates {ca} --auth-supernode-private-key {key}" in command
    assert f"--node-config store='{store.directory.resolve()}' user-id='{USER}'" in command
    assert "store.key" not in command
    assert main([*args, "join", "--superlink", "192.0.2.10", "--insecure"]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_trunk_states_are_computed_once_and_kept_encrypted_in_the_store(
    device, round_message, monkeypatch
):
    import fedpers.userdata as userdata
    from clients.device import ACTIVATIONS
    from fedpers.models.trunk import states_from_bytes

    args, store = device
    assert main([*args, "consent", "--opt-in"]) == 0
    assert not client_train(round_message(1), _context(store)).has_error()
    item = store.store.get(ACTIVATIONS)
    key, data = item[:32].decode(), item[32:]
    states = states_from_bytes(data)
    assert len(states) == len(store.conversations())  # every conversation: train and held out
    on_disk = (store.directory / f"{ACTIVATIONS}.enc").read_bytes()
    assert states[0].numpy().tobytes()[:64] not in on_disk  # encrypted like the conversations

    def recomputed(*a, **k):
        raise AssertionError("trunk states recomputed although the store holds them")

    monkeypatch.setattr(userdata, "layer_states", recomputed)
    assert not client_train(round_message(2), _context(store)).has_error()
    assert store.activations(key) == data
