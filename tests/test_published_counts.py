"""What the server learns, said as it is; and no per-persona count below the minimum-clients gate in any output."""

from __future__ import annotations

import html
import json
import logging
import re
from pathlib import Path

import pytest
from test_simulation import tiny_config

from fedpers.data import SyntheticConfig, generate, write_jsonl
from simulations.simulate import simulate

ROOT = Path(__file__).resolve().parent.parent
SOLO = "new_employee"  # the persona with a single user: one contributor in every round


def _solo_data(path: Path) -> Path:
    """The tiny scenario's data, less one of the two users of SOLO."""
    conversations = generate(SyntheticConfig(users_per_persona=2, conversations_per_user=12))
    dropped = next(c.user_id for c in conversations if c.persona == SOLO)
    write_jsonl(path, [c for c in conversations if c.user_id != dropped])
    return path


def _values_at(document, key: str) -> list:
    """Every value stored under ``key`` anywhere in a JSON document."""
    if isinstance(document, dict):
        return [v for k, v in document.items() if k == key] + [
            x for v in document.values() for x in _values_at(v, key)
        ]
    if isinstance(document, list):
        return [x for v in document for x in _values_at(v, key)]
    return []


def _mentions_a_count_of_one(line: str) -> bool:
    return re.search(r"(?<![\w.])1(?![\w.])", re.sub(r"round \d+", "", line)) is not None


@pytest.mark.parametrize("hiding", [True, False], ids=["persona-hiding", "persona-groups"])
@pytest.mark.slow  # Ray
def test_no_output_holds_a_count_below_the_gate(tmp_path, hiding):
    """SOLO has one contributor per round: the server sees it (its slot sum is that client's update, or with
    personas in clear its group is too small to aggregate), but no file of the run directory and no server
    log line gives that count or that client's held-out loss."""
    config = tiny_config(
        tmp_path, data=str(_solo_data(tmp_path / "solo.jsonl")), rounds=2, persona_hiding=hiding
    )
    assert config.server.min_clients == 2
    log_path = tmp_path / "server.log"
    handler = logging.FileHandler(log_path)
    logger = logging.getLogger("flwr")
    logger.addHandler(handler)
    try:
        metrics = simulate(config, tmp_path / "run")
    finally:
        logger.removeHandler(handler)
        handler.close()
    run_dir = tmp_path / "run"
    gate = f"<{config.server.min_clients}"
    for r in metrics["rounds"]:
        assert SOLO not in r["released"] and r["contributors"][SOLO] == gate, r
        assert all(
            v == gate or v >= config.server.min_clients for v in r["contributors"].values()
        ), r
        assert "gated" not in r  # a gated list says "at least one, below the gate"
        assert (
            r["eval_users"].get(SOLO, gate) == gate
            and SOLO not in r["eval_heldout_loss"]
            and SOLO not in r["eval_tokens"]
        )
    assert SOLO not in metrics["evaluation"]["rows"]
    for session in metrics["aggregation"][
        "sessions"
    ]:  # with personas in clear, a session is one persona group
        assert hiding or not {"sampled", "aggregated", "dropped"} & set(session), session
    # no count of SOLO anywhere in what the run wrote (the simulation's audit lists every simulated client under
    # `spent` by design: it reads their ledgers; the server-side sections are checked)
    audit = json.loads((run_dir / "audit.json").read_text())
    for name, document in (
        ("metrics.json", json.loads((run_dir / "metrics.json").read_text())),
        ("audit.json", {k: v for k, v in audit.items() if k != "spent"}),
    ):
        assert all(v == gate for v in _values_at(document, SOLO) if not isinstance(v, dict)), name
        assert all(
            _values_at(d, "users") in ([], [gate])
            for d in _values_at(document, SOLO)
            if isinstance(d, dict)
        ), name
    assert audit["wire"]["min_clients_released"] >= config.server.min_clients
    # the table's row for SOLO says why it has no figures, with its count as the gate shows it
    solo_rows = [
        line
        for line in (run_dir / "evaluation.txt").read_text().splitlines()
        if line.startswith(SOLO)
    ]
    assert len(solo_rows) == 1 and gate in solo_rows[0], solo_rows
    assert not re.search(r"\d\.\d|(?<![\w.<=])1(?![\w.])", solo_rows[0]), solo_rows
    solo_lines = [line for line in log_path.read_text().splitlines() if SOLO in line]
    assert not [line for line in solo_lines if _mentions_a_count_of_one(line)], solo_lines
    assert not re.search(r"has \d+ client\(s\)", log_path.read_text())


def test_a_count_below_the_gate_is_published_as_below_the_gate_an_empty_slot_alike():
    from fedpers.aggregation import published_count, published_counts

    assert published_counts({"a": 0.0, "b": 1.0, "c": 2.0, "d": 7.0}, 2) == {
        "a": "<2",
        "b": "<2",
        "c": 2,
        "d": 7,
    }
    # noisy counts (user-level DP)
    assert published_count(2.4567, 2) == 2.457 and published_count(1.9, 2) == "<2"
    assert published_count(1.0, 1) == 1 and published_count(0.4, 1) == "<1"


def _normalized(text: str) -> str:
    return " ".join(text.replace("*", "").replace("`", "").split())


FALSE_CLAIMS = (
    "not any single update and not which persona a client belongs to",
    "and nothing per client",
    "the server cannot tell a client's persona",
    "the server cannot tell personas apart",
    "the server saw only sums of masked updates",
)


def test_the_readme_docs_and_report_say_what_the_server_learns(tmp_path):
    from test_audit_deployment import _deployment_run

    from fedpers.audit.html import render_html
    from fedpers.audit.report import build_audit
    from fedpers.federated import all_settings

    readme, docs = (
        _normalized((ROOT / "README.md").read_text()),
        _normalized((ROOT / "docs" / "audit.md").read_text()),
    )
    _deployment_run(tmp_path, epsilon=4.0)
    audit = build_audit(tmp_path, progress=False)
    findings = " ".join(f["text"] for f in audit["findings"])
    page = html.unescape(render_html(audit))
    for text, where in (
        (readme, "README.md"),
        (docs, "docs/audit.md"),
        (findings, "findings"),
        (page, "audit.html"),
        (" ".join(s.help for s in all_settings()), "simulate --help"),
    ):
        for claim in FALSE_CLAIMS:
            assert claim not in text, (where, claim)
    from fedpers.audit.report import SERVER_LEARNS  # the statement, written once

    for sentence in SERVER_LEARNS:
        assert (
            sentence in readme and sentence in docs and sentence in findings and sentence in page
        ), sentence
    (finding,) = [f for f in audit["findings"] if SERVER_LEARNS[0] in f["text"]]
    assert finding["level"] == "warning"
