"""``audit.html``: one self-contained page (plots embedded as PNG) for readers who will not read code.

The page follows ``audit.json`` section by section: findings first, then what was spent, what
crossed the wire and what an attacker could still learn, each claim next to its evidence.
``render_pdf`` prints the page with headless Chromium when it is installed.
"""

from __future__ import annotations

import base64
import html
import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from fedpers.releases import SERVER_LEARNS

ICONS = {"ok": "&#10004;", "warning": "&#9888;", "problem": "&#10008;"}
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1d2330;line-height:1.45}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #d8dde6;padding-bottom:.2em;margin-top:2em}
.meta{color:#5a6475} table{border-collapse:collapse;margin:.8em 0;font-size:.92em;max-width:100%} th,td{border:1px solid #d8dde6;padding:.3em .6em;text-align:right}
th{background:#f2f4f8;vertical-align:bottom} td{white-space:nowrap} td.l,th.l{text-align:left} td.l{white-space:normal;overflow-wrap:anywhere}
.finding{padding:.5em .8em;margin:.35em 0;border-radius:6px}
.ok{background:#e7f6ec} .warning{background:#fff4dc} .problem{background:#fde4e4} .over{color:#b00020;font-weight:600}
img{max-width:100%;border:1px solid #e3e7ee;border-radius:6px} details{margin:.6em 0} summary{cursor:pointer;font-weight:600}
.note{color:#5a6475;font-size:.92em} code{background:#f2f4f8;padding:0 .25em;border-radius:3px}
@page{size:A4;margin:12mm} @media print{body{max-width:none;margin:0;padding:0;font-size:10pt} table{font-size:.85em}}
"""


def _e(value) -> str:
    return html.escape(str(value))


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _num(value, digits: int = 3) -> str:
    return (
        "—" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else _e(value)
    )


def _count(value) -> str:
    """A count of clients, messages, rounds or steps: always a whole number (a count noised under
    user-level DP is rounded); ``"<N"`` (below the gate) as written."""
    if value is None:
        return "—"
    if isinstance(value, int | float):
        return str(round(value))
    return _e(value)


def _table(header: list[str] | None, rows: list[list], left: int = 1) -> str:
    """A table; with no ``header``, a table of labelled rows (the first ``left`` cells are the labels)."""
    head = (
        "<tr>"
        + "".join(
            f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(header)
        )
        + "</tr>"
        if header
        else ""
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table>{head}{body}</table>"


def _epsilon_plots(spent: dict) -> str:
    clients = [c for c in spent["clients"] if c["cumulative"]]
    if not clients:
        return ""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for c in clients:
        sgd = [p for p in c["cumulative"] if p["purpose"] != "clip-quantile"] or c["cumulative"]
        left.plot(range(1, len(sgd) + 1), [p["epsilon"] for p in sgd], marker="o", alpha=0.6, lw=1)
    left.axhline(spent["budget"], color="#b00020", ls="--", label=f"budget {spent['budget']:g}")
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set(
        xlabel="training round (ledger entry)",
        ylabel="epsilon spent so far",
        title="Epsilon over rounds, one line per client",
    )
    left.legend()
    left.grid(alpha=0.3)
    values = [c["epsilon"] for c in spent["clients"]]
    right.hist(values, bins=min(20, max(5, len(values))), color="#3b6fb6")
    right.axvline(spent["budget"], color="#b00020", ls="--", label="budget")
    right.set(
        xlabel="epsilon (most conservative accountant)",
        ylabel="clients",
        title="Distribution across clients",
    )
    right.legend()
    right.grid(alpha=0.3)
    return _png(fig)


def _user_level_html(user_level: dict | None) -> list[str]:
    if not user_level:
        return []
    out = [
        f"<h3>User-level DP (distributed Skellam noise)</h3><p>Whole-update clipping on the devices, and Skellam noise "
        f"that the devices add inside SecAgg+ before masking (noise multiplier {user_level['noise_multiplier']:g} on "
        "every sum the server unmasks, counts included), protect a whole user: the server never unmasks an un-noised "
        f"sum. Dropout assumption: {_e(user_level.get('dropout_assumption', ''))}. Each device "
        "charges every round it uploads in to its own user-level ledger before the upload leaves, composed over runs: "
        "that ledger is the user's guarantee."
    ]
    if user_level["ledgers"] == "devices":
        out.append(
            " The user-level ledgers stay on the devices (<code>fedpers-client status</code> shows them).</p>"
        )
    else:
        out.append(
            "</p>"
            + _table(
                ["client", "persona", "user-level epsilon (quoted)", "rounds charged"],
                [
                    [
                        _e(c["user_id"]),
                        _e(c["persona"]),
                        _num(c["epsilon"]),
                        _count(c["ledger_entries"]),
                    ]
                    for c in user_level["clients"]
                ],
                left=2,
            )
        )
    rows = [
        [_e(name), _num(s["epsilon"]), _count(len(s["entries"]))]
        for name, s in user_level["adapters"].items()
    ]
    return [
        *out,
        "<p>The server's record of this run's releases, per adapter:</p>",
        _table(["adapter", "user-level epsilon (this run)", "rounds"], rows),
    ]


def _router_html(router: dict | None) -> list[str]:
    """The learned router's private statistics: what each user spent on them, like the user-level spend."""
    if not router:
        return []
    status = {
        "saved": "the router was learned and saved beside the adapters",
        "failed": "the router round FAILED: the run has no router",
        "rejected": "the router round was REJECTED by the aggregate checks: the run has no router",
        "off": "the run had no router round",
    }.get(router["status"], f"status {_e(str(router['status']))}")
    epsilon = (
        "" if router.get("epsilon") is None else f" (epsilon {_num(router['epsilon'])} per release)"
    )
    out = [
        "<h3>Learned router (private statistics)</h3><p>After the last round every device sent its per-persona "
        "mean prompt embedding, context and count share once, with its share of Skellam noise added inside "
        f"SecAgg+ for epsilon = {router['router_epsilon']:g}, delta = {router['delta']:g}{epsilon}: {status}. "
        f"Dropout assumption: {_e(router.get('dropout_assumption', ''))}. Each device charged the release to its "
        "user-level ledger before it left."
    ]
    if router["ledgers"] == "devices":
        out.append(
            " The user-level ledgers stay on the devices (<code>fedpers-client status</code> shows them).</p>"
        )
        return out
    out.append(
        "</p>"
        + _table(
            [
                "client",
                "persona",
                "user-level epsilon (quoted, router included)",
                "router releases",
            ],
            [
                [
                    _e(c["user_id"]),
                    _e(c["persona"]),
                    _num(c["epsilon"]),
                    _count(c["router_releases"]),
                ]
                for c in router["clients"]
            ],
            left=2,
        )
    )
    return out


def _spent_html(spent: dict) -> str:
    if not spent["dp"]:
        return "<p class='over'>DP-SGD was off for this run: no epsilon bounds it.</p>"
    if spent.get("ledgers") == "devices":
        if spent["ceiling"] is None:
            text = (
                "<p class='over'>The clients of this run keep their privacy ledgers on their devices, and the noise "
                "multiplier was set by hand: the devices did not calibrate to an epsilon, so this report bounds no "
                "client's spending."
            )
        else:
            text = (
                f"<p>Sample-level privacy (one conversation is the unit protected), delta = {spent['delta']:g}. "
                "The clients of this run keep their privacy ledgers on their devices: the server never sees them. Every "
                f"device calibrated its DP-SGD noise so that its whole ledger, this run included, stays within epsilon = "
                f"<b>{spent['ceiling']:g}</b> under the Opacus RDP and PRV accountants, and refuses to train past its "
                "user's consented cap."
            )
        return "".join(
            [
                text
                + " A device shows its own figures with <code>fedpers-client status</code>.</p>",
                *_user_level_html(spent.get("user_level")),
                *_router_html(spent.get("router")),
            ]
        )
    # two tables of the same rows, so that each fits the page: the epsilons, then the DP-SGD settings behind them
    epsilons, settings = [], []
    for c in spent["clients"]:
        a, p = c["accountants"], c["dp_parameters"]
        cls = ' class="over"' if c["over_budget"] else ""
        who = [_e(c["user_id"]), _e(c["persona"])]
        epsilons.append(
            [
                *who,
                f"<span{cls}>{c['epsilon']:.3f}</span>",
                _num(a["opacus_rdp"]),
                _num(a["opacus_prv"]),
                _num(a["dp_accounting_pld"]),
                _num(a["dp_accounting_rdp"]),
                f"{100 * c['prv_vs_pld_relative_difference']:.2f} %",
            ]
        )
        settings.append(
            [
                *who,
                _num(p.get("noise_multiplier")),
                _num(p.get("clipping_norm"), 4),
                _num(p.get("sample_rate")),
                _count(p.get("steps")),
                _count(p.get("rounds")),
            ]
        )
    persona_rows = [
        [_e(k), _count(v["clients"]), _num(v["max_epsilon"])]
        for k, v in spent["per_persona"].items()
    ]
    out = [
        f"<p>Sample-level privacy of every client (one conversation is the unit protected), delta = {spent['delta']:g}, "
        f"budget epsilon = {spent['budget']:g}. The quoted epsilon is {_e(spent['quoted'])}; no figure in this report is "
        "lower than the most conservative accountant's. Ledgers count every entry, including interrupted ones.</p>",
        _epsilon_plots(spent),
        _table(
            [
                "client",
                "persona",
                "epsilon (quoted)",
                "Opacus RDP",
                "Opacus PRV",
                "dp-accounting PLD",
                "dp-accounting RDP",
                "PRV vs PLD",
            ],
            epsilons,
            left=2,
        ),
        "<p>The DP-SGD settings each client trained with:</p>",
        _table(
            [
                "client",
                "persona",
                "noise multiplier",
                "clipping norm",
                "sampling rate",
                "steps",
                "rounds",
            ],
            settings,
            left=2,
        ),
        "<h3>Per persona</h3>",
        _table(["persona", "clients", "largest client epsilon"], persona_rows),
    ]
    out += _user_level_html(spent.get("user_level"))
    out += _router_html(spent.get("router"))
    return "".join(out)


def _wire_html(wire: dict) -> str:
    mode = (
        "SecAgg+ (Flower, ChaCha20 masks)"
        if wire["secure_aggregation"]
        else "none (updates in clear)"
    )
    hiding = (
        "on (one slot per persona: no client sends its persona, but every slot's sum and count are unmasked)"
        if wire["persona_hiding"]
        else "off (persona sent in clear)"
    )
    out = [
        _table(
            None,
            [
                ["secure aggregation", _e(mode)],
                ["persona hiding", _e(hiding)],
                ["slots per upload", _e(", ".join(wire["slots"]) or "—")],
                ["numbers per upload", _count(wire["upload_floats"])],
                [
                    "minimum clients per released aggregate (setting)",
                    _count(wire["min_clients_setting"]),
                ],
                ["smallest released aggregate (observed)", _count(wire["min_clients_released"])],
            ],
            left=2,  # the values are text too: they wrap
        )
    ]
    if wire["secure_aggregation"]:
        out.append(
            f"<h3>What the server learns</h3><p>{_e(' '.join(SERVER_LEARNS))} The run's outputs (this report, "
            "<code>metrics.json</code>, <code>evaluation.txt</code>, the logs, the registry) show a slot's count only when "
            f"it reaches the gate ({_e(wire['min_clients_setting'])}), otherwise as "
            f"<code>&lt;{_e(wire['min_clients_setting'])}</code>; they show each round's number of participants too, "
            "so participants minus the shown counts is how many clients the slots below the gate hold together."
            + (
                ""
                if wire["persona_hiding"]
                else " With personas in clear each SecAgg+ session is one persona group: "
                "Flower's own log lines of a session still count its clients."
            )
            + "</p>"
        )
    if not wire["recorded"]:
        return "".join(out) + "<p class='over'>Messages were not recorded for this run.</p>"
    s = wire["summary"]
    scan = wire["scan"]
    if scan is not None:
        leaks = scan["leaks"]
        verdict = (
            f"<p class='over'>{len(leaks)} leaks found:</p>"
            + _table(["client", "what"], [[_e(x["user_id"]), _e(x["what"])] for x in leaks[:50]])
            if leaks
            else "<p>Nothing found.</p>"
        )
        out.append(
            f"<h3>Leak scan</h3><p>{scan['payloads_scanned']} recorded payloads were searched for "
            f"{scan['patterns']} byte patterns of their own users: every 5-word run of their conversations (UTF-8, UTF-16) "
            f"and every token-id {scan['ngram']}-gram of their training and held-out examples (int16, int32, int64, "
            f"decimal text).</p>{verdict}"
        )
    by_server = wire.get("recorded_by") == "server"
    if by_server:
        out.append(
            "<h3>Leak scan</h3><p>Not run: it searches each payload for its user's text, which stays on the devices. "
            "The manifest below is the server's record of every reply it received.</p>"
        )
    who = "received by the server" if by_server else "sent by clients"
    out.append(f"<h3>Totals</h3><p>{s['messages']} messages, {s['bytes'] / 1e6:.2f} MB {who}.</p>")
    out.append(
        _table(
            ["round", "messages", "MB"],
            [
                [_e(k), _count(v["messages"]), f"{v['bytes'] / 1e6:.3f}"]
                for k, v in s["per_round"].items()
            ],
        )
    )
    out.append(
        _table(
            ["SecAgg+ stage", "messages", "MB"],
            [
                [_e(k), _count(v["messages"]), f"{v['bytes'] / 1e6:.3f}"]
                for k, v in s["per_stage"].items()
            ],
        )
    )
    if s["tensors"]:
        out.append(
            _table(
                ["tensor that left a device (record/name)", "dtypes", "times sent", "MB"],
                [
                    [
                        _e(k),
                        _e(", ".join(v["dtypes"])),
                        _count(v["messages"]),
                        f"{v['bytes'] / 1e6:.3f}",
                    ]
                    for k, v in s["tensors"].items()
                ],
            )
        )
    out.append(
        "<h3>Release manifest</h3><p>Every kind of field a device may send, its privacy mechanism and the ledger "
        "entry written on the device before the reply leaves. The ClientApp refuses to send any other field.</p>"
    )
    out.append(
        _table(
            [
                "reply",
                "SecAgg+ stage",
                "field (record/key)",
                "mechanism",
                "ledger entry",
                "content",
            ],
            [
                [
                    _e(r["message"]),
                    _e((r["stage"] or "—").replace("_", " ")),
                    # a line may break after the slash
                    f"<code>{_e(r['record'])}/<wbr>{_e(r['key'])}</code>",
                    _e(r["mechanism"]),
                    _e(", ".join(r["ledger"]) or "—"),
                    _e(r["content"]),
                ]
                for r in wire.get("releases", [])
            ],
            left=6,  # text throughout: every column wraps
        )
    )
    out.append(
        _table(
            ["client", "messages", "MB"],
            [
                [_e(k), _count(v["messages"]), f"{v['bytes'] / 1e6:.3f}"]
                for k, v in sorted(s["per_client"].items())
            ],
        )
    )
    rows = [
        [
            _e(
                e.get("partition_id")
                if e.get("partition_id") is not None
                else f"node {e['node_id']}"
            ),
            _e(e.get("round")),
            _e(e.get("secagg_stage") or e.get("message_type")),
            _e(
                ", ".join(f"{t['name']} {t['dtype']}{t['shape']}" for t in e.get("arrays", []))
                or "—"
            ),
            _e(e["payload_bytes"]),
            f"<code>{_e(e['payload_sha256'][:16])}…</code>",
        ]
        for e in wire["manifest"]
    ]
    out.append(
        f"<details><summary>Manifest: every message ({len(rows)})</summary>"
        + _table(["client", "round", "stage", "tensors", "bytes", "SHA-256"], rows, left=4)
        + "</details>"
    )
    return "".join(out)


def _run_label(run: dict) -> str:
    return "DP as audited" if run["dp"] else "DP off (power check)"


def _attack_plot(attack: dict) -> str:
    runs = attack["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.6), squeeze=False)
    for ax, run in zip(axes[0], runs.values()):
        inside = [c["score"] for c in run["canaries"] if c["inserted"]]
        outside = [c["score"] for c in run["canaries"] if not c["inserted"]]
        ax.hist(
            [inside, outside],
            bins=12,
            label=["inserted", "never inserted"],
            color=["#b00020", "#3b6fb6"],
        )
        ax.set(
            title=f"{_run_label(run)}: AUC {run['auc']:.2f}",
            xlabel="membership score (secret's loss drop vs candidates, in sd)",
            ylabel="canaries",
        )
        ax.legend()
        ax.grid(alpha=0.3)
    return _png(fig)


def _attack_rows(attack: dict) -> list[list]:
    """One row per figure, one column per run: the two runs side by side."""
    runs = list(attack["runs"].values())

    def row(label: str, cell) -> list:
        return [_e(label), *(cell(run) for run in runs)]

    def check(run: dict) -> str:
        if run["theoretical_epsilon"] is None:
            return "—"
        return (
            "<span class='over'>ABOVE: privacy bug</span>"
            if run["bound_exceeds_theory"]
            else "below"
        )

    def seconds(run: dict, key: str) -> str:
        return _num(run.get("seconds", {}).get(key), 0)

    return [
        row("membership AUC", lambda r: f"{r['auc']:.3f}"),
        row("epsilon lower bound (95 %)", lambda r: f"{r['lower_bound']['epsilon']:.3f}"),
        row(
            "correct guesses (best k)",
            lambda r: (
                f"{r['lower_bound']['best']['correct']} / {r['lower_bound']['best']['guesses']}"
            ),
        ),
        row("exposure inserted, mean (bits)", lambda r: _num(r["exposure"]["inserted_mean"], 2)),
        row("exposure inserted, max (bits)", lambda r: _num(r["exposure"]["inserted_max"], 2)),
        row(
            "exposure never inserted, mean (bits)",
            lambda r: _num(r["exposure"]["held_back_mean"], 2),
        ),
        row(
            "theoretical epsilon the bound is compared to",
            lambda r: (
                "∞ (no DP)"
                if r["theoretical_epsilon"] is None
                else f"{r['theoretical_epsilon']:.3f}"
            ),
        ),
        row("sample-level epsilon (one conversation)", lambda r: _num(r.get("record_epsilon"))),
        row("bound vs theory", check),
        row("training wall time (s)", lambda r: seconds(r, "training")),
        row("scoring wall time (s)", lambda r: seconds(r, "scoring")),
    ]


def _attack_html(attack: dict | None) -> str:
    if attack is None:
        return (
            "<p class='over'>Not run for this run.</p><p>Run <code>fedpers audit RUN_DIR --attack</code>: it trains two more "
            "simulations with these settings and secret canaries (one with DP as set, one with DP off), attacks the "
            "released persona adapters and bounds epsilon from below.</p>"
        )
    s = attack["settings"]
    repeats = attack.get("repeats", 1)
    copies = (
        "once"
        if repeats == 1
        else f"{repeats} times (so the bound speaks of a group of {repeats} copies, and is "
        f"compared to the group-privacy epsilon of {repeats} records, accounted tightly for DP-SGD's sampling)"
    )
    return (
        f'<p>{s["canaries"]} secret canaries ("The door code for room 417 is 4 8 1 5 …", {attack["secret_digits"]} random '
        f"digits) were dealt to the users in random order; each was inserted into its user's training data with "
        f"probability 1/2, by a fair coin from the recorded seed ({attack['inserted']} inserted), {copies}. Two simulations trained with these "
        "settings: DP as audited, and DP off, which shows whether the attack finds the canaries when nothing protects them. "
        "The attacker scores every canary on the released adapter of its user's persona: the loss drop of the secret's "
        f"tokens (base model minus adapter) against {s['candidates']} random secrets after the same question, in standard "
        "deviations. <b>Exposure</b> (Carlini et al., The Secret Sharer) ranks the true secret among random ones (bits; about "
        f"1 means no better than chance, at most {attack['secret_digits'] * 3.32:.1f}). The <b>lower bound</b> is the one-run "
        "audit of Steinke, Nasr and Jagielski (NeurIPS 2023) at 95 % confidence: any epsilon below it is contradicted by the "
        "attacker's correct guesses. It must stay below the theoretical epsilon.</p>"
        + _table(["", *(_run_label(r) for r in attack["runs"].values())], _attack_rows(attack))
        + _attack_plot(attack)
    )


def render_html(audit: dict) -> str:
    run = audit["run"]
    findings = "".join(
        f'<div class="finding {f["level"]}">{ICONS[f["level"]]} {_e(f["text"])}</div>'
        for f in audit["findings"]
    )
    problems = sum(f["level"] == "problem" for f in audit["findings"])
    headline = "No problems found." if not problems else f"{problems} problem(s) need attention."
    spent = audit["spent"]
    eps = spent["max_epsilon"]
    if spent.get("ledgers") == "devices" and spent["dp"]:
        largest = (
            "unknown to the server (the ledgers stay on the devices)"
            if spent["ceiling"] is None
            else f"at most {spent['ceiling']:g} (the ceiling every device enforces; the ledgers stay on the devices)"
        )
    else:
        largest = "unbounded (DP off)" if eps is None else f"{eps:.3f}"
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>fedpers privacy audit: {_e(run["run_id"])}</title>
<style>{STYLE}</style></head><body>
<h1>Privacy audit report</h1>
<p class="meta">Run <code>{_e(run["run_id"])}</code> · {_e(run["model"])} · {run["clients"]} clients · {run["rounds"]} rounds ·
personas: {_e(", ".join(run["personas"]))} · generated {_e(audit["generated_at"])} by fedpers {_e(audit["fedpers_version"])}</p>
<h2>Summary</h2>
<p><b>{_e(headline)}</b> Largest epsilon spent by any client: <b>{_e(largest)}</b>
(delta {audit["spent"]["delta"]:g}).</p>
{findings}
<h2>1. What was spent</h2>{_spent_html(audit["spent"])}
<h2>2. What crossed the wire</h2>{_wire_html(audit["wire"])}
<h2>3. What an attacker can still learn</h2>{_attack_html(audit["attack"])}
<h2>Integrity</h2><p>This page and <code>audit.json</code> (the same facts, machine-readable; schema in
<code>docs/audit-schema.json</code>) are signed with Ed25519 in <code>audit.sig.json</code>. Check them with
<code>fedpers audit verify {_e(run["run_dir"])}</code>.</p>
<p class="note">Settings of the run: {_e(", ".join(f"{k}={v}" for k, v in run["settings"].items()))}</p>
</body></html>
"""


def chromium() -> str | None:
    return next(
        (
            p
            for p in (
                shutil.which("chromium"),
                shutil.which("chromium-browser"),
                shutil.which("google-chrome"),
            )
            if p
        ),
        None,
    )


def _headless(extra: list[str], page: Path) -> None:
    browser = chromium()
    if browser is None:
        raise FileNotFoundError(
            "no Chromium found for rendering the report (install Debian's 'chromium' package)"
        )
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *extra,
                page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def render_pdf(page: Path, target: Path) -> None:
    """Print ``page`` to ``target`` with headless Chromium."""
    _headless([f"--print-to-pdf={target.resolve()}", "--no-pdf-header-footer"], page)


def screenshot(page: Path, target: Path, width: int = 1280, height: int = 4000) -> None:
    """A PNG of ``page`` as Chromium renders it (for reviewing the layout)."""
    _headless([f"--screenshot={target.resolve()}", f"--window-size={width},{height}"], page)
