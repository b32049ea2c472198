"""The audit report of a deployment run: what the server holds, and no figure the server cannot stand behind."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from fedpers.audit.report import build_audit, write_audit
from fedpers.federated import FederatedConfig
from fedpers.wirelog import MANIFEST, WIRE
from server.outputs import write_metrics, write_run_config

SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "audit-schema.json").read_text())


def _deployment_run(run_dir: Path, **settings) -> FederatedConfig:
    config = FederatedConfig.from_flat({"model": "tiny", "rounds": 1} | settings).validated()
    write_run_config(run_dir, config, "r1")
    write_metrics(
        run_dir,
        {
            "run_id": "r1",
            "engine": "deployment",
            "settings": config.to_record(),
            "aggregation": {
                "secure": True,
                "persona_hiding": True,
                "slots": ["global"],
                "sessions": [],
            },
            "rounds": [{"round": 1, "participants": 3}],
            "wall_seconds": 1.0,
        },
    )
    masked = {
        "record": "secaggplus_configs",
        "name": "masked_params[0]",
        "shape": [4],
        "dtype": "int64",
        "bytes": 160,
        "sha256": "0" * 64,
    }
    lines = [
        {
            "recorded_by": "server",
            "session": "training",
            "node_id": node,
            "partition_id": None,
            "round": 1,
            "message_type": "train",
            "task": None,
            "secagg_stage": "collect masked vectors",
            "arrays": [masked],
            "metric_keys": {},
            "config_keys": {},
            "payload_bytes": 200,
            "payload_sha256": f"{node:064x}",
        }
        for node in (7, 8, 9)
    ]
    (run_dir / WIRE).mkdir(parents=True)
    (run_dir / WIRE / MANIFEST).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return config


def test_a_deployment_report_gives_the_ceiling_devices_enforce_and_the_servers_manifest(tmp_path):
    _deployment_run(tmp_path, epsilon=4.0)
    audit = write_audit(tmp_path, progress=False)
    jsonschema.validate(audit, SCHEMA, format_checker=jsonschema.FormatChecker())
    spent, wire = audit["spent"], audit["wire"]
    assert audit["run"]["engine"] == "deployment" and audit["run"]["clients"] == 3
    assert (
        spent["ledgers"] == "devices"
        and spent["ceiling"] == 4.0
        and spent["clients"] == []
        and spent["max_epsilon"] is None
    )
    assert wire["recorded_by"] == "server" and wire["scan"] is None
    assert wire["summary"]["messages"] == 3 and set(wire["summary"]["per_client"]) == {
        "node 7",
        "node 8",
        "node 9",
    }
    texts = " ".join(f["text"] for f in audit["findings"])
    assert "stays within epsilon = 4" in texts and "leak scan needs each user's text" in texts
    page = (tmp_path / "audit.html").read_text()
    assert (
        "at most 4 (the ceiling every device enforces" in page and "received by the server" in page
    )


def test_with_a_hand_set_noise_multiplier_the_report_claims_no_ceiling(tmp_path):
    _deployment_run(tmp_path, epsilon=4.0, noise_multiplier=0.3)
    audit = build_audit(tmp_path, progress=False)
    jsonschema.validate(audit, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert audit["spent"]["ceiling"] is None
    (finding,) = [f for f in audit["findings"] if "ledger stays on its device" in f["text"]]
    assert finding["level"] == "warning" and "bounds no client's spending" in finding["text"]


def test_without_dp_a_deployment_report_is_a_problem(tmp_path):
    _deployment_run(tmp_path, dp=False)
    audit = build_audit(tmp_path, progress=False)
    assert audit["spent"]["ceiling"] is None
    assert any(f["level"] == "problem" and "DP-SGD was off" in f["text"] for f in audit["findings"])


def _run_spent(dp: bool, router: dict | None) -> dict:
    """``spent`` as a simulation's report has it (the run reads every ledger): one client, within budget."""
    client = {
        "user_id": "u0",
        "over_budget": False,
        "prv_vs_pld_relative_difference": 0.001,
        "unfinished_entries": 0,
    }
    return {
        "dp": dp,
        "ledgers": "run",
        "ceiling": None,
        "budget": 8.0 if dp else None,
        "delta": 1e-5,
        "clients": [client],
        "max_epsilon": 7.9 if dp else 0.4,
        "router": router,
    }


@pytest.mark.parametrize("router", [None, {"status": "saved"}, {"status": "failed"}])
def test_the_findings_of_a_run_without_dp_and_the_router_round_are_their_own(router):
    """A simulation without DP-SGD (an inferred-persona run still spends on its persona choice) reports the
    missing DP and no budget line; the router's outcome never hides the ledgers' findings."""
    from fedpers.audit.report import _findings

    wire = {"secure_aggregation": True, "persona_hiding": True, "recorded": False}
    off = [f["text"] for f in _findings(_run_spent(False, router), wire, None)]
    assert any("DP-SGD was off" in t for t in off)
    assert not any("over the budget" in t for t in off)
    on = [f["text"] for f in _findings(_run_spent(True, router), wire, None)]
    assert any("0 of 1 clients over the budget epsilon = 8" in t for t in on), on
    assert any("router round failed" in t for t in on) == (router == {"status": "failed"})
