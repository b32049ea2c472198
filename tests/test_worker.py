"""The device worker: answers through its socket equal the in-process ones, refusals still refuse, the
ClientApp computes in-process without it, the socket is the user's alone, the worker leaves with its
parent, and no ClientApp process imports torch when a worker serves the device."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import flwr.compat.common.recorddict_compat as compat
import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, ndarrays_to_parameters

from clients import app as clientapp
from clients.cli import main as client_main
from clients.consent import OVER_BUDGET, ParticipationRefused
from clients.device import DeviceStore
from clients.join import run_supernode, worker_command
from clients.unlock import KEY_FILE_ENV
from clients.worker_protocol import (
    ERROR,
    MAGIC,
    OK,
    Request,
    Response,
    VersionMismatch,
    exchange,
    read_frame,
    socket_path,
)
from fedpers.data import SyntheticConfig, generate, write_jsonl
from fedpers.federated import FederatedConfig

REPO = Path(__file__).resolve().parents[1]
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
STARTUP_SECONDS = 240  # the worker imports torch, transformers, peft and Opacus before it answers


def _env(key: Path) -> dict:
    """The environment a worker gets from ``join``: the store key, and this checkout on the path."""
    return {
        **os.environ,
        KEY_FILE_ENV: str(key),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }


def _make_store(root: Path) -> tuple[Path, Path]:
    """A store of USER with its conversations, opted in; its directory and key file."""
    convs = generate(
        SyntheticConfig(
            users_per_persona=1, conversations_per_user=8, personas=("leadership", "field_worker")
        )
    )
    data = root / "mine.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    write_jsonl(data, [c for c in convs if c.user_id == USER])
    store, key = root / "store", root / "store.key"
    args = ["--store", str(store), "--key-file", str(key)]
    for command in (["init", "--user-id", USER], ["import", str(data)], ["consent", "--opt-in"]):
        assert client_main([*args, *command]) == 0
    return store, key


def _wait_for_worker(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        assert proc.poll() is None, "the worker exited"
        response = exchange(path, Request("ping"))
        if response is not None and response.status == OK:
            return
        assert time.monotonic() < deadline, "the worker did not answer"
        time.sleep(0.2)


def _worker_log(store: Path) -> Path:
    return store.parent / "worker.log"


def _start_worker(store: Path, key: Path, parent_pid: int | None = None) -> subprocess.Popen:
    with open(_worker_log(store), "wb") as log:
        proc = subprocess.Popen(
            worker_command(store, parent_pid or os.getpid()),
            env=_env(key),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    _wait_for_worker(socket_path(store), proc)
    return proc


def _wait_for_log(store: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in _worker_log(store).read_text():
        assert time.monotonic() < deadline, f"the worker never logged {text!r}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Store A, served by a worker; store B, the same user and data, with no worker."""
    root = tmp_path_factory.mktemp("worker")
    store_a, key_a = _make_store(root / "a")
    store_b, key_b = _make_store(root / "b")
    worker = _start_worker(store_a, key_a)
    yield (store_a, key_a), (store_b, key_b), worker
    worker.terminate()
    worker.wait(timeout=30)


def _messages(task: str = "train", **changes):
    """``message(server_round)``: a training message as the ServerApp sends it (plain aggregation); with
    ``task="persona"``, the query for the persona in clear."""
    from fedpers.models import adapter_arrays, attach_lora, load_base_model
    from server.app import initial_adapters
    from server.strategy import PersonaTraining, persona_adapters

    config = FederatedConfig.from_flat(SETTINGS | changes).validated()
    base, _ = load_base_model("tiny")
    adapters = initial_adapters(config, adapter_arrays(attach_lora(base, config.lora())))
    strategy = PersonaTraining(config, "run-w", 2, False, persona_adapters(config, adapters))

    def message(server_round: int) -> Message:
        if task == "persona":
            record = ConfigRecord(strategy.instructions(server_round, task).to_record())
            return Message(
                RecordDict({"config": record}), dst_node_id=1, message_type=MessageType.QUERY
            )
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


def _context(store: Path) -> Context:
    return Context(
        run_id=1, node_id=1, node_config={"store": str(store)}, state=RecordDict(), run_config={}
    )


def _upload(reply: Message) -> tuple[list[np.ndarray], dict]:
    fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
    from flwr.common import parameters_to_ndarrays

    return parameters_to_ndarrays(fitres.parameters), dict(fitres.metrics)


def test_the_protocol_carries_json_and_raw_bytes_and_checks_its_version():
    record = {"task": "train", "server-round": 2, "final": False, "adapters": b"\x00\xffblob"}
    request = Request("train", record, {"store": "/s", "user-id": "u"})
    a, b = socket.socketpair()
    with a, b:
        a.sendall(request.encode())
        assert Request.decode(*read_frame(b)) == request
        arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([4.0], np.float32)]
        a.sendall(Response(OK, arrays, {"persona-index": 1}, timings={"answer": 0.5}).encode())
        back = Response.decode(*read_frame(b))
        assert back.metrics == {"persona-index": 1} and back.timings == {"answer": 0.5}
        assert all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(arrays, back.arrays))
        a.sendall(MAGIC[:3] + bytes([MAGIC[3] + 1]) + request.encode()[4:])
        with pytest.raises(VersionMismatch):
            read_frame(b)
    with pytest.raises(TypeError, match="cannot travel"):
        Request("train", {"x": object()}).encode()
    # no pickle: a JSON header, then the raw bytes
    frame = request.encode()
    length = int.from_bytes(frame[4:8], "big")
    header = json.loads(frame[8 : 8 + length])
    assert header["record"]["adapters"] == {"attachment": 0} and header["attachments"] == [6]
    assert frame[8 + length :] == b"\x00\xffblob"


def test_the_socket_is_the_users_alone_and_serves_only_its_store(served):
    (store_a, _), (store_b, _), worker = served
    # a check whether a worker listens (as a second join's worker makes), a garbled request, and a
    # client that leaves before the answer: the worker carries on
    for data in (b"", b"FPW\x01\x00\x00\x00\xffnot json", Request("ping").encode()):
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(socket_path(store_a)))
        client.sendall(data)
        client.close()
    assert exchange(socket_path(store_a), Request("ping")).status == OK and worker.poll() is None
    mode = os.stat(socket_path(store_a)).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    other = exchange(socket_path(store_a), Request("train", {}, {"store": str(store_b)}))
    assert other.status == ERROR and other.error_type == "PermissionError"
    assert "this worker serves store" in other.detail


def test_a_request_through_the_worker_gives_the_in_process_upload(served, task_identity):
    (store_a, key_a), (store_b, key_b), worker = served
    message = _messages()
    # a socket file nobody listens on (a worker that died): store B computes in-process
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path(store_b)))
    stale.close()

    os.environ[KEY_FILE_ENV] = str(key_a)
    remote = _upload(clientapp.train(message(1), _context(store_a)))
    assert "worker" in clientapp.TIMINGS["handler"]
    _wait_for_log(store_a, "next round's budget check computed ahead")
    os.environ[KEY_FILE_ENV] = str(key_b)
    local = _upload(clientapp.train(message(1), _context(store_b)))
    assert "worker" not in clientapp.TIMINGS["handler"]
    assert "prepare" in clientapp.TIMINGS["handler"]

    assert remote[1] == local[1]
    assert len(remote[0]) == len(local[0]) > 1
    for x, y in zip(remote[0], local[0], strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    assert any(np.abs(x).sum() > 0 for x in remote[0])
    device_a = DeviceStore.open(store_a, key_file=key_a)
    device_b = DeviceStore.open(store_b, key_file=key_b)
    entries = [(e.purpose, e.details.get("round")) for e in device_a.ledger().entries]
    assert entries == [(e.purpose, e.details.get("round")) for e in device_b.ledger().entries]
    assert entries == [("clip-quantile", None), ("dp-sgd", 1)]

    # what the worker computes between rounds is what the next round's budget check asks for
    from clients.worker import anticipate_budget_checks
    from fedpers.privacy.accounting import _epsilon

    os.environ[KEY_FILE_ENV] = str(key_b)
    _epsilon.cache_clear()
    first = clientapp._instructions(message(1))
    assert anticipate_budget_checks(first, {"store": str(store_b)}) == 1
    clientapp.train(message(2), _context(store_b))
    assert _epsilon.cache_info().hits >= 2  # the cap check's composition, by both accountants

    # the persona in clear (no persona hiding) comes through the worker too, and is refused as
    # in-process when the run hides personas
    query = _messages("persona", persona_hiding=False)(2)
    os.environ[KEY_FILE_ENV] = str(key_a)
    index = clientapp.persona(query, _context(store_a)).content["metrics"]["persona-index"]
    assert "worker" in clientapp.TIMINGS["handler"]
    os.environ[KEY_FILE_ENV] = str(key_b)
    assert clientapp.persona(query, _context(store_b)).content["metrics"]["persona-index"] == index
    os.environ[KEY_FILE_ENV] = str(key_a)
    with pytest.raises(PermissionError, match="hides personas"):
        clientapp.persona(_messages("persona")(2), _context(store_a))

    # a retried round: the same upload from the store's cache, nothing charged again
    os.environ[KEY_FILE_ENV] = str(key_a)
    again = _upload(clientapp.train(message(1), _context(store_a)))
    assert all(np.array_equal(x, y) for x, y in zip(again[0], remote[0], strict=True))
    assert len(device_a.ledger().entries) == 2

    # past the consented budget: refused through the worker as in-process, nothing run
    spent = device_a.ledger().spent().epsilon
    args = ["--store", str(store_a), "--key-file", str(key_a)]
    assert client_main([*args, "consent", "--budget", f"{spent * 1.01:.6f}"]) == 0
    with pytest.raises(ParticipationRefused) as refused:
        clientapp.train(message(2), _context(store_a))
    assert str(refused.value) == OVER_BUDGET and USER not in str(refused.value)
    assert re.search(rf"{USER}: refused to train: .*'dp-sgd' would bring", refused.value.detail)
    assert len(device_a.ledger().entries) == 2
    assert client_main([*args, "consent", "--opt-out"]) == 0
    with pytest.raises(ParticipationRefused, match="has not opted in"):
        clientapp.train(message(2), _context(store_a))
    assert worker.poll() is None


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_the_worker_stops_when_its_parent_exits(tmp_path):
    store, key = _make_store(tmp_path)
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time; from clients.join import worker_command; "
            f"w = subprocess.Popen(worker_command({str(store)!r}, os.getpid())); "
            "print(w.pid, flush=True); time.sleep(600)",
        ],
        env=_env(key),
        stdout=subprocess.PIPE,
        text=True,
    )
    worker_pid = int(parent.stdout.readline())
    deadline = time.monotonic() + STARTUP_SECONDS
    while not socket_path(store).exists():
        assert time.monotonic() < deadline and not _gone(worker_pid)
        time.sleep(0.1)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 60
    while not _gone(worker_pid):
        assert time.monotonic() < deadline, "the worker outlived its parent"
        time.sleep(0.2)
    assert not socket_path(store).exists()


def test_join_stops_the_worker_once_the_supernode_exits(tmp_path):
    store, key = _make_store(tmp_path)
    # a stand-in SuperNode that leaves once the worker listens
    supernode = [
        sys.executable,
        "-c",
        f"import os, time\nwhile not os.path.exists({str(socket_path(store))!r}): time.sleep(0.1)",
    ]
    assert run_supernode(supernode, _env(key), store, os.getpid()) == 0
    assert not socket_path(store).exists()
    assert exchange(socket_path(store), Request("ping")) is None


STAGES_SCRIPT = r"""
import json, sys
from pathlib import Path

import flwr.compat.common.recorddict_compat as compat
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, Parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.supercore.task_identity import TaskIdentity

from clients.app import make_client_app
from clients.worker_protocol import Request, read_frame

for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
    setattr(TaskIdentity, name, value)
store, instructions, phase = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
app = make_client_app()
nodes = (11, 12, 13)
contexts = {n: Context(run_id=1, node_id=n, node_config={"store": store}, state=RecordDict(),
                       run_config={}) for n in nodes}


class Frame:
    def __init__(self, data): self.data = data
    def recv(self, n):
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk


def send(nid, configs, content=None):
    content = content or RecordDict()
    content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(configs)
    reply = app(Message(content, dst_node_id=nid, message_type=MessageType.TRAIN, group_id="1"),
                contexts[nid])
    assert not reply.has_error(), reply.error
    return reply.content.config_records[RECORD_KEY_CONFIGS]


keys = {n: send(n, {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: 3, Key.SHARE_NUMBER: 3,
                    Key.THRESHOLD: 2, Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 1 << 20,
                    Key.MOD_RANGE: 1 << 32, Key.MAX_WEIGHT: 1.0}) for n in nodes}
public = {str(n): [keys[n][Key.PUBLIC_KEY_1], keys[n][Key.PUBLIC_KEY_2]] for n in nodes}
shares = {n: send(n, {Key.STAGE: Stage.SHARE_KEYS, **public}) for n in nodes}
heavy = [m for m in ("torch", "transformers", "peft", "opacus") if m in sys.modules]
if phase == "train":
    record = Request.decode(*read_frame(Frame(instructions.read_bytes()))).record
    node = nodes[0]
    srcs = [n for n in nodes if node in shares[n][Key.DESTINATION_LIST]]
    ciphers = [shares[n][Key.CIPHERTEXT_LIST][list(shares[n][Key.DESTINATION_LIST]).index(node)]
               for n in srcs]
    content = compat.fitins_to_recorddict(FitIns(Parameters([], ""), record), keep_input=True)
    masked = send(node, {Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: ciphers,
                         Key.SOURCE_LIST: srcs}, content)
    assert masked[Key.MASKED_PARAMETERS]
    send(node, {Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: [node, nodes[1]],
                Key.DEAD_NODE_ID_LIST: [nodes[2]]})
heavy += [m for m in ("torch", "transformers", "peft", "opacus") if m in sys.modules]
print(json.dumps(sorted(set(heavy))))
"""


def _stages(store: Path, key: Path, instructions: Path, phase: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", STAGES_SCRIPT, str(store), str(instructions), phase],
        env=_env(key),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_no_clientapp_process_imports_torch_when_a_worker_serves_the_device(
    tmp_path, task_identity
):
    """The SecAgg+ stages a ``flwr-clientapp`` process runs for each message, each in a fresh interpreter:
    setup and share keys never import the model libraries; with a worker, collecting the masked vector
    (the training message) and unmasking do not either."""
    store, key = _make_store(tmp_path)
    fitins = compat.recorddict_to_fitins(_messages(secure_aggregation=True)(1).content, True)
    instructions = tmp_path / "instructions.bin"
    instructions.write_bytes(Request("train", dict(fitins.config)).encode())
    assert _stages(store, key, instructions, "setup") == []
    worker = _start_worker(store, key)
    try:
        assert _stages(store, key, instructions, "train") == []
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    device = DeviceStore.open(store, key_file=key)
    assert [e.purpose for e in device.ledger().entries] == ["clip-quantile", "dp-sgd"]


def test_the_supernode_asks_sooner_only_while_a_run_is_active(monkeypatch):
    import inspect

    import flwr.supernode.start_client_internal as loop

    from clients.supernode import FollowUpClock, install

    # the waits this entry point shortens are Flower's, where it expects them
    source = inspect.getsource(loop)
    assert "time.sleep(3)" in source and "time.sleep(0.5)" in source
    pulled = iter([None, 7])
    monkeypatch.setattr(loop, "time", loop.time)
    monkeypatch.setattr(loop, "_pull_and_store_message", lambda **kwargs: next(pulled))
    clock = FollowUpClock(follow_up=60.0)
    assert install(loop, clock) and loop.time is clock
    assert loop._pull_and_store_message() is None and not clock.active()
    assert clock.wait_for(3) == 3 and clock.wait_for(0.5) == 0.5  # idle: Flower's waits
    assert loop._pull_and_store_message() == 7 and clock.active()
    assert clock.wait_for(3) == 0.25 and clock.wait_for(0.5) == 0.1 and clock.wait_for(1) == 1
    assert loop.time.monotonic() > 0  # everything else is the time module
    clock.last_message -= 61
    assert clock.wait_for(3) == 3
    assert not install(type(loop)("not_flower"), FollowUpClock())
