"""The layout of ``audit.html``: every table fits a printed page, no empty header rows, counts are whole numbers."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

from fedpers.audit.html import render_html
from fedpers.audit.report import build_audit, spent_section
from fedpers.federated import FederatedConfig
from fedpers.privacy.accounting import GaussianEvent
from fedpers.privacy.ledger import LedgerEntry, PrivacyLedger
from fedpers.wirelog import MANIFEST, WIRE
from server.outputs import write_metrics, write_run_config

# An A4 page with 12 mm margins holds about 110 characters of the print style's table font.
PAGE_CHARACTERS = 110
USERS = {"user000": "knowledge_worker", "user001": "knowledge_worker", "user002": "leadership"}


class _Tables(HTMLParser):
    """Every table of a page as rows of ``(tag, css class, text)`` cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[tuple[str, str, str]]]] = []
        self._cell: list | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("th", "td"):
            self._cell = [tag, dict(attrs).get("class") or "", ""]
        elif tag == "wbr":
            self.handle_startendtag(tag, attrs)

    def handle_startendtag(self, tag, attrs):
        if tag == "wbr" and self._cell is not None:  # a line break opportunity
            self._cell[2] += " "

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            self.tables[-1][-1].append(tuple(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2] += data


def tables(page: str) -> list[list[list[tuple[str, str, str]]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def narrowest(table: list[list[tuple[str, str, str]]]) -> int:
    """The table's narrowest layout in characters: header cells and left-aligned text cells wrap at
    spaces (at any character past a word), numbers never wrap; each cell pads about one character a side."""
    widths: dict[int, int] = {}
    for row in table:
        for i, (tag, cls, text) in enumerate(row):
            wraps = tag == "th" or "l" in cls.split()
            need = max((len(w) for w in text.split()), default=0) if wraps else len(text.strip())
            widths[i] = max(widths.get(i, 0), need + 2)
    return sum(widths.values())


def _run(run_dir: Path) -> dict:
    """A run whose every client has a DP-SGD ledger, and whose smallest released count was noised
    (user-level DP): the report as ``fedpers audit`` renders it."""
    config = FederatedConfig.from_flat(
        {"model": "tiny", "rounds": 2, "state_dir": str(run_dir / "client-state")}
    ).validated()
    write_run_config(run_dir, config, "r1")
    write_metrics(
        run_dir,
        {
            "run_id": "r1",
            "engine": "deployment",
            "settings": config.to_record(),
            "aggregation": {"secure": True, "persona_hiding": True, "slots": ["global"]},
            "rounds": [
                {
                    "round": 1,
                    "participants": 3,
                    "released": ["knowledge_worker"],
                    "contributors": {"knowledge_worker": 2.987, "leadership": "<2"},
                }
            ],
            "wall_seconds": 1.0,
        },
    )
    line = {
        "recorded_by": "server",
        "session": "training",
        "node_id": 7,
        "partition_id": None,
        "round": 1,
        "message_type": "train",
        "task": None,
        "secagg_stage": "collect masked vectors",
        "arrays": [],
        "metric_keys": {},
        "config_keys": {},
        "payload_bytes": 200,
        "payload_sha256": "0" * 64,
    }
    (run_dir / WIRE).mkdir(parents=True)
    (run_dir / WIRE / MANIFEST).write_text(json.dumps(line) + "\n")
    for user in USERS:
        ledger = PrivacyLedger(run_dir / "client-state" / user / "ledger.json", user, 1e-5)
        for _ in range(2):
            entry = LedgerEntry(
                "dp-sgd", [GaussianEvent(1.05, 0.44, 3)], details={"max_grad_norm": 0.0274}
            )
            ledger.complete(ledger.record(entry))
    audit = build_audit(run_dir, progress=False)
    # the clients' ledgers, as a simulation's report reads them
    audit["spent"] = spent_section(config, list(USERS), USERS, run_dir)
    return audit


def test_every_table_fits_a_printed_page(tmp_path):
    page = render_html(_run(tmp_path))
    found = tables(page)
    assert found
    for table in found:
        assert narrowest(table) <= PAGE_CHARACTERS, table[0]
    # the per-client figures are all there, split over tables that fit
    cells = {text for table in found for row in table for _, _, text in row}
    for header in ("Opacus RDP", "dp-accounting PLD", "noise multiplier", "sampling rate", "steps"):
        assert header in cells
    clients = [t for t in found if any(text == "user002" for row in t for _, _, text in row)]
    assert len(clients) == 2 and all(len(t) == 1 + len(USERS) for t in clients)


def test_no_table_has_an_empty_header_row(tmp_path):
    for table in tables(render_html(_run(tmp_path))):
        for row in table:
            assert any(text.strip() for _, _, text in row) or not all(
                tag == "th" for tag, _, _ in row
            ), table


def test_counts_print_as_whole_numbers(tmp_path):
    audit = _run(tmp_path)
    assert audit["wire"]["min_clients_released"] == 2.987
    rows = {row[0][2]: row for table in tables(render_html(audit)) for row in table if row}
    assert rows["smallest released aggregate (observed)"][1][2] == "3"
    assert rows["minimum clients per released aggregate (setting)"][1][2] == "2"
    steps = {row[0][2]: row[-2][2] for row in rows.values() if row[0][2] in USERS}
    assert steps == dict.fromkeys(USERS, "6")
