"""A modified device on Flower's deployment engine: its masked SecAgg+ upload shifted by 2**36 levels.

The device runs the app bundle the server sent, changed on the device (here: a ``sitecustomize`` in its
processes' ``PYTHONPATH`` that wraps Flower's ``ClientApp`` and adds 2**36 to every coordinate of the masked
vector it uploads, after the honest clip, modulo the SecAgg+ field). The other two devices are honest. The
round must be rejected with a logged error, nothing applied or published, and the audit report must say so."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fedpers.aggregation.secure import QuantizationPlan
from fedpers.data import SyntheticConfig, generate
from simulations.federation import local_federation

pytestmark = pytest.mark.slow  # deployment engine: SuperLink and SuperNodes as processes

PERSONAS = ("leadership", "field_worker", "new_employee")
UPDATE_CLIP = 1.0
SETTINGS = (
    'model="tiny" rounds=1 min-nodes=3 min-clients=1 personas="leadership,field_worker,new_employee" '
    "local-steps=2 embedding-steps=1 batch-size=2 max-length=48 lora-layers=2 data-seed=5 "
    f"secure-aggregation=true persona-hiding=true evaluate=false secagg-timeout=300.0 update-clip={UPDATE_CLIP}"
)
SHIFT = 2**36

SITECUSTOMIZE = """
import os

if os.environ.get("HOSTILE_SHIFT"):
    from flwr.clientapp.client_app import ClientApp
    from flwr.common import bytes_to_ndarray, ndarray_to_bytes
    from flwr.common.secure_aggregation.ndarrays_arithmetic import parameters_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    _call = ClientApp.__call__

    def _shifted(self, message, context):
        reply = _call(self, message, context)
        record = None if reply.has_error() else reply.content.config_records.get(RECORD_KEY_CONFIGS)
        if record and Key.MASKED_PARAMETERS in record:
            shift, modulus = int(os.environ["HOSTILE_SHIFT"]), int(os.environ["HOSTILE_MODULUS"])
            arrays = [bytes_to_ndarray(b) + shift for b in record[Key.MASKED_PARAMETERS]]
            record[Key.MASKED_PARAMETERS] = [ndarray_to_bytes(a) for a in parameters_mod(arrays, modulus)]
            with open(os.environ["HOSTILE_MARK"], "a") as fh:
                fh.write("shifted\\n")
        return reply

    ClientApp.__call__ = _shifted
"""


def test_a_device_shifting_its_masked_upload_gets_the_deployment_round_rejected(tmp_path: Path):
    conversations = generate(
        SyntheticConfig(users_per_persona=1, conversations_per_user=8, seed=5, personas=PERSONAS)
    )
    hook = tmp_path / "hostile"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    mark = tmp_path / "shifted.txt"
    users = len({c.user_id for c in conversations})
    modulus = QuantizationPlan.for_bound(UPDATE_CLIP, max(1000, users)).modulus_range
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
    hostile = {
        "PYTHONPATH": path,
        "HOSTILE_SHIFT": str(SHIFT),
        "HOSTILE_MODULUS": str(modulus),
        "HOSTILE_MARK": str(mark),
    }
    with local_federation(tmp_path, conversations, device_env={1: hostile}) as federation:
        run_dir, registry = tmp_path / "run", tmp_path / "registry"
        run = federation.run(SETTINGS, run_dir, registry, timeout=420)
        server_log = federation.procs.log("superlink")
    output = f"{run.stdout}\n{run.stderr}"
    assert mark.is_file() and mark.read_text().count("shifted") >= 1, "the device never shifted"

    assert (run_dir / "metrics.json").is_file(), output[-6000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rejected_rounds"]] == [1], output[-4000:]
    assert metrics["rounds"][0]["released"] == []
    assert not registry.exists() or not any(registry.iterdir())  # nothing published
    assert "REJECTED" in output + server_log + "".join(
        p.read_text(errors="replace") for p in run_dir.glob("*.log")
    )
    audit = json.loads((run_dir / "audit.json").read_text())
    assert any(f["level"] == "problem" and "REJECTED" in f["text"] for f in audit["findings"])
    # the router's session after the round: the same device shifted its masked upload there too (the shift
    # reaches the weighting factor, which would otherwise scale it away); rejected, no router saved
    assert metrics["router"]["status"] == "rejected", metrics["router"]
    assert "weights add up to" in metrics["router"]["reason"]
    assert not (run_dir / "router").exists()
    assert audit["spent"]["router"]["status"] == "rejected"
