"""User-level DP is charged on the device, before the upload leaves, in a per-user ledger that composes across runs."""

from __future__ import annotations

import flwr.compat.common.recorddict_compat as compat
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.supercore.task_identity import TaskIdentity

from clients.app import make_client_app
from fedpers.federated import FederatedConfig, load_config_file
from fedpers.models import adapter_arrays, attach_lora, load_base_model
from fedpers.privacy import PrivacyLedger
from fedpers.privacy.skellam import SkellamEvent
from fedpers.userdata import user_ids
from server.app import initial_adapters
from server.strategy import PersonaTraining, persona_adapters
from simulations.simulate import SCENARIOS

SIGMA = 2.0
USER_LEVEL_PURPOSE = "user-level-dp-skellam"
UPDATE_CLIP = 0.5


@pytest.fixture
def user_dp_round(tmp_path, monkeypatch):
    """``message(run_id, server_round)``: a user-level DP training message as the ServerApp sends it."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    values = load_config_file(SCENARIOS / "tiny.toml") | {
        "state_dir": str(tmp_path / "client-state"),
        "noise_seed": 3,
        "user_dp": True,
        "user_noise_multiplier": SIGMA,
        "update_clip": UPDATE_CLIP,
        "secure_aggregation": True,
        "rounds": 2,
        "local_steps": 2,
        "embedding_steps": 1,
        "noise_multiplier": 1.0,
    }
    config = FederatedConfig.from_flat(values).validated()
    base, _ = load_base_model("tiny")
    adapters = initial_adapters(config, adapter_arrays(attach_lora(base, config.lora())))

    def message(run_id: str, server_round: int) -> Message:
        strategy = PersonaTraining(
            config, run_id, len(user_ids(config)), False, persona_adapters(config, adapters)
        )
        instructions = strategy.instructions(server_round).to_record()
        fit_ins = FitIns(ndarrays_to_parameters(strategy.reference()), instructions)
        return Message(
            compat.fitins_to_recorddict(fit_ins, keep_input=True),
            dst_node_id=1,
            message_type=MessageType.TRAIN,
        )

    message.noise = PersonaTraining(  # type: ignore[attr-defined]
        config, "run", len(user_ids(config)), False, persona_adapters(config, adapters)
    ).user_level_noise()
    return config, message


def test_the_device_charges_its_user_level_ledger_before_the_upload_leaves_and_composes_runs(
    user_dp_round,
):
    import dp_accounting
    from dp_accounting import rdp

    config, message = user_dp_round
    user = user_ids(config)[0]
    path = f"{config.outputs.state_dir}/{user}/user-level-ledger.json"
    seen = []

    def at_upload(msg, context, call_next):
        """Sees the plain upload the moment the task returns it, before it is clipped, masked and sent."""
        reply = call_next(msg, context)
        assert not reply.has_error()
        seen.append(
            [
                (e.purpose, e.events, e.details.get("run_id"), e.details.get("round"))
                for e in PrivacyLedger(path, user, config.privacy.delta).entries
            ]
        )
        return reply

    app = make_client_app([at_upload])
    context = Context(
        run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={}
    )
    for run_id, server_round in (("run-a", 1), ("run-a", 2), ("run-b", 1)):
        app(message(run_id, server_round), context)
    # one Skellam release of the whole upload per round, on the grid SecAgg+ noises in
    event = [message.noise.event()]
    assert isinstance(event[0], SkellamEvent) and event[0].variance == pytest.approx(
        (SIGMA * 2**0.5 * UPDATE_CLIP * 2**17 / (2 * UPDATE_CLIP)) ** 2
    )
    assert seen == [
        [(USER_LEVEL_PURPOSE, event, "run-a", 1)],
        [(USER_LEVEL_PURPOSE, event, "run-a", 1), (USER_LEVEL_PURPOSE, event, "run-a", 2)],
        [
            (USER_LEVEL_PURPOSE, event, "run-a", 1),
            (USER_LEVEL_PURPOSE, event, "run-a", 2),
            (USER_LEVEL_PURPOSE, event, "run-b", 1),
        ],
    ]
    ledger = PrivacyLedger(path, user, config.privacy.delta)
    assert all(
        e.status == "completed" and e.details["clip"] == pytest.approx(0.5 * 2**0.5)
        for e in ledger.entries
    )
    # the second run composes on top of the first: three releases, never reported below the Gaussian of the
    # same noise std (the Skellam bound adds the rounding to the sensitivity and a discreteness term)
    google = rdp.RdpAccountant().compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(SIGMA), 3)
    )
    assert ledger.spent().epsilon >= 0.99 * google.get_epsilon(config.privacy.delta)
    assert ledger.spent().epsilon == pytest.approx(
        google.get_epsilon(config.privacy.delta), rel=0.10
    )
    # the record-level ledger is a separate one: DP-SGD and the clipping quantile only
    record = PrivacyLedger(
        f"{config.outputs.state_dir}/{user}/ledger.json", user, config.privacy.delta
    )
    assert {e.purpose for e in record.entries} == {"clip-quantile", "dp-sgd"}
