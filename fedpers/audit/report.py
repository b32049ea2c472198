"""The privacy audit report of a run: ``audit.json`` (schema ``docs/audit-schema.json``), ``audit.html``, a signature.

Everything is read from the run directory: ``run.json`` and ``metrics.json`` (settings, aggregation
mode, released aggregates), the clients' privacy ledgers, record-level and user-level
(``settings.state_dir``), the server's record of the user-level releases (``user-level-dp/``), the wire
recording (``wire/``) and the canary attack (``attack/``).
Findings are graded ``ok``, ``warning`` or ``problem``; a problem is something a privacy officer
must act on (a client over budget, a leak found on the wire, an empirical bound above the theory).

A run on the deployment engine (``metrics.json``: ``engine``) leaves the clients' text and ledgers on
their devices: its report covers what the server holds, i.e. its record of the user-level releases, the
epsilon ceiling every device enforces and the manifest of the replies the server received.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fedpers.audit.attack import read_attack
from fedpers.audit.signing import load_or_create_key, sign_files
from fedpers.audit.spent import PLD_DISCRETIZATION, spent_from_ledger
from fedpers.audit.wire import scan_run, summarize
from fedpers.federated import FederatedConfig
from fedpers.privacy.ledger import LEDGER_FILE, USER_LEVEL_LEDGER_FILE
from fedpers.privacy.user_level import DROPOUT_ASSUMPTION
from fedpers.releases import (
    ROUTER_STATS_PURPOSE,
    SERVER_LEARNS,
    manifest_table,
    recorded_fields,
    recorded_stage,
    undeclared_fields,
)
from fedpers.rundir import METRICS, PERSONA_DISCOVERY, RUN_CONFIG, read_json, write_json
from fedpers.wirelog import WIRE, payload_path, read_manifest

SCHEMA = "fedpers-audit/1"
AUDIT_JSON = "audit.json"
AUDIT_HTML = "audit.html"
AUDIT_PDF = "audit.pdf"
SCAN = "scan.json"
POWER_AUC = 0.9  # the DP-off attack counts as strong from this AUC on (with a positive lower bound)
ACCOUNTANT_TOLERANCE = (
    0.05  # PRV (Opacus) vs PLD (dp-accounting): relative difference shown as agreeing below this
)


def _version() -> str:
    try:
        return version("fedpers")
    except PackageNotFoundError:
        return "unknown"


def _dp_parameters(entries: list[dict]) -> dict:
    """Noise, clipping, sampling rate and steps of a ledger's DP-SGD entries, as run."""
    sgd = [e for e in entries if e["purpose"] == "dp-sgd"]
    if not sgd:
        return {}
    first = sgd[-1]["events"][0]
    return {
        "noise_multiplier": first["noise_multiplier"],
        "sample_rate": first["sample_rate"],
        "clipping_norm": sgd[-1]["details"].get("max_grad_norm"),
        "steps_per_round": first["steps"],
        "rounds": len(sgd),
        "steps": sum(ev["steps"] for e in sgd for ev in e["events"]),
    }


def _client(user: str, persona: str | None, path: Path, budget: float | None) -> dict:
    """One client's ledger (record-level or user-level), accounted four ways."""
    spent = spent_from_ledger(path, budget=budget)
    return {
        "user_id": user,
        "persona": persona,
        "epsilon": spent.epsilon,
        "delta": spent.delta,
        "accountants": {
            "opacus_rdp": spent.epsilon_rdp,
            "opacus_prv": spent.epsilon_prv,
            "dp_accounting_pld": spent.independent_pld,
            "dp_accounting_rdp": spent.independent_rdp,
        },
        "prv_vs_pld_relative_difference": spent.largest_difference if spent.epsilon else 0.0,
        "over_budget": spent.over_budget,
        "unfinished_entries": spent.unfinished_entries,
        "ledger_entries": len(spent.entries),
        "dp_parameters": _dp_parameters(spent.entries),
        "cumulative": spent.cumulative,
    }


def spent_section(
    config: FederatedConfig, users: list[str], personas: dict[str, str], run_dir: Path
) -> dict:
    state = Path(config.outputs.state_dir)
    clients = [
        _client(
            u,
            personas.get(u),
            state / u / LEDGER_FILE,
            config.privacy.epsilon if config.privacy.dp else None,
        )
        for u in users
    ]
    per_persona: dict[str, dict] = {}
    for c in clients:
        p = per_persona.setdefault(c["persona"] or "unknown", {"clients": 0, "max_epsilon": 0.0})
        p["clients"] += 1
        p["max_epsilon"] = max(p["max_epsilon"], c["epsilon"])
    user_level = (
        [_client(u, personas.get(u), state / u / USER_LEVEL_LEDGER_FILE, None) for u in users]
        if config.privacy.user_dp
        else None
    )
    return {
        **_spent_common(config, run_dir, user_level),
        "ledgers": "run",
        "ceiling": None,
        "max_epsilon": max((c["epsilon"] for c in clients), default=0.0)
        if config.privacy.dp
        else None,
        "clients": clients,
        "per_persona": per_persona,
    }


def _spent_common(
    config: FederatedConfig, run_dir: Path, user_level_clients: list[dict] | None = None
) -> dict:
    """Settings of the accounting, and user-level DP: each user's guarantee is the user-level ledger on the user's
    device (``clients``, read when the report can read the devices' state; ``ledgers: devices`` otherwise), charged
    before each upload left and composed over runs; ``adapters`` is the server's record of this run's releases
    (``user-level-dp/``)."""
    user_level = None
    if config.privacy.user_dp:
        root = Path(run_dir) / "user-level-dp"
        clients = user_level_clients or []
        user_level = {
            "mechanism": "Skellam noise added on the devices inside SecAgg+ (Agarwal, Kairouz & Liu, 2021)",
            "noise_multiplier": config.privacy.user_noise_multiplier,
            "dropout_assumption": DROPOUT_ASSUMPTION,
            "delta": config.privacy.delta,
            "ledgers": "devices" if user_level_clients is None else "run",
            "clients": clients,
            "max_epsilon": max((c["epsilon"] for c in clients), default=0.0)
            if user_level_clients is not None
            else None,
            "adapters": {
                p.stem: spent_from_ledger(p).to_dict() for p in sorted(root.glob("*.json"))
            }
            if root.is_dir()
            else {},
        }
    return {
        "dp": config.privacy.dp,
        "budget": config.privacy.epsilon if config.privacy.dp else None,
        "delta": config.privacy.delta,
        "quoted": "the largest of Opacus RDP, Opacus PRV, dp-accounting PLD and dp-accounting RDP",
        "accountant_tolerance": ACCOUNTANT_TOLERANCE,
        "pld_discretization": PLD_DISCRETIZATION,
        "user_level": user_level,
    }


def router_spent(
    config: FederatedConfig,
    users: list[str],
    personas: dict[str, str],
    metrics: dict,
    devices: bool,
) -> dict | None:
    """The learned router's private statistics (one Skellam release per user and run, charged to the user's
    user-level ledger before it left; ``fedpers.personas.router_round``): per user, the user-level ledger with
    the router's releases in it, read when the report can read the devices' state (``ledgers: run``). ``None``
    for a run without a router round."""
    from fedpers.personas.router_round import router_round_off

    if router_round_off(config) is not None:
        return None
    clients = []
    if not devices:
        state = Path(config.outputs.state_dir)
        for u in users:
            c = _client(u, personas.get(u), state / u / USER_LEVEL_LEDGER_FILE, None)
            c["router_releases"] = sum(
                e["purpose"] == ROUTER_STATS_PURPOSE for e in c["cumulative"]
            )
            clients.append(c)
    done = metrics.get("router") or {}
    return {
        "mechanism": "Skellam noise added on the devices inside SecAgg+, one release per user and run",
        "purpose": ROUTER_STATS_PURPOSE,
        "router_epsilon": config.privacy.router_epsilon,
        "epsilon": done.get("epsilon"),
        "delta": config.privacy.delta,
        "dropout_assumption": DROPOUT_ASSUMPTION,
        "status": done.get("status", "unknown"),
        "devices": done.get("devices"),
        "ledgers": "devices" if devices else "run",
        "clients": clients,
        "max_epsilon": None if devices else max((c["epsilon"] for c in clients), default=0.0),
    }


def device_spent_section(config: FederatedConfig, run_dir: Path) -> dict:
    """Spending of a run whose clients keep their ledgers on their devices: the ceiling every device enforces.

    Each device calibrates its noise so that its whole ledger, this run included, stays within the run's
    epsilon under the Opacus RDP and PRV accountants, and refuses to train past its user's consented cap
    (``clients.consent``); the figures themselves stay on the device (``fedpers-client status``). With a noise
    multiplier set by hand the devices do not calibrate, and the server knows no ceiling (``None``)."""
    calibrated = config.privacy.dp and not config.privacy.noise_multiplier
    return {
        **_spent_common(config, run_dir),
        "ledgers": "devices",
        "ceiling": config.privacy.epsilon if calibrated else None,
        "max_epsilon": None,
        "clients": [],
        "per_persona": {},
    }


def _scan(
    run_dir: Path, config: FederatedConfig, manifest: list[dict], progress: bool
) -> dict | None:
    """Scan the payloads if they are still there (and store the result); else the stored result."""
    stored = Path(run_dir) / WIRE / SCAN
    if manifest and all(payload_path(run_dir, e).exists() for e in manifest):
        result = scan_run(run_dir, config, manifest, progress)
        write_json(stored, result)
        return result
    return read_json(stored) if stored.exists() else None


def wire_section(
    run_dir: Path, config: FederatedConfig, users: list[str], metrics: dict, progress: bool
) -> dict:
    manifest = read_manifest(run_dir)
    aggregation = metrics.get("aggregation", {})
    # counts below the gate are written "<N"
    released = [
        n
        for r in metrics.get("rounds", [])
        for p, n in r.get("contributors", {}).items()
        if p in r.get("released", []) and not isinstance(n, str)
    ]
    by_server = any(e.get("recorded_by") == "server" for e in manifest)
    return {
        "recorded": bool(manifest),
        "recorded_by": "server" if by_server else "clients",
        "secure_aggregation": aggregation.get("secure", config.aggregation.secure_aggregation),
        "persona_hiding": aggregation.get("persona_hiding", config.aggregation.persona_hiding),
        "slots": aggregation.get("slots", []),
        "upload_floats": aggregation.get("upload_floats"),
        "min_clients_setting": config.server.min_clients,
        "min_clients_released": min(released) if released else None,
        "sessions": aggregation.get("sessions", []),
        "summary": summarize(manifest, users),
        "scan": _scan(run_dir, config, manifest, progress) if manifest and not by_server else None,
        "manifest": manifest,
        "releases": manifest_table(),
        "undeclared": undeclared_replies(manifest),
    }


def undeclared_replies(manifest: list[dict]) -> list[dict]:
    """Recorded replies with a field the release manifest does not declare (a modified or leaking client)."""
    out = []
    for e in manifest:
        fields = undeclared_fields(e["message_type"], recorded_stage(e), recorded_fields(e))
        if fields:
            out.append(
                {
                    "node_id": e["node_id"],
                    "partition_id": e.get("partition_id"),
                    "round": e.get("round"),
                    "fields": fields,
                }
            )
    return out


def _findings(spent: dict, wire: dict, attack: dict | None) -> list[dict]:
    out = []

    def add(level: str, text: str) -> None:
        out.append({"level": level, "text": text})

    if not spent["dp"]:
        add(
            "problem",
            "DP-SGD was off: no epsilon bounds what the adapters reveal about any conversation.",
        )
    elif spent["ledgers"] == "devices" and spent["ceiling"] is None:
        add(
            "warning",
            "Every client's privacy ledger stays on its device, and the noise multiplier was set by hand, so the "
            "devices did not calibrate their noise to an epsilon: this report bounds no client's spending. Each device "
            "refuses to train past its user's consented cap; `fedpers-client status` shows its own figures.",
        )
    elif spent["ledgers"] == "devices":
        add(
            "ok",
            f"Every client's privacy ledger stays on its device. Each device calibrated its DP-SGD noise so that its "
            f"whole ledger, this run included, stays within epsilon = {spent['ceiling']:g} (delta {spent['delta']:g}) under the "
            "Opacus RDP and PRV accountants, and refuses to train past its user's consented cap; `fedpers-client status` "
            "shows a device's own figures. This report holds no per-client figures.",
        )
    else:
        over = [c["user_id"] for c in spent["clients"] if c["over_budget"]]
        add(
            "problem" if over else "ok",
            f"{len(over)} of {len(spent['clients'])} clients over the budget epsilon = "
            f"{spent['budget']:g}"
            + (f": {', '.join(over)}" if over else f"; largest epsilon {spent['max_epsilon']:.3f}")
            + ".",
        )
        worst = max((c["prv_vs_pld_relative_difference"] for c in spent["clients"]), default=0.0)
        add(
            "ok" if worst <= ACCOUNTANT_TOLERANCE else "warning",
            f"Opacus PRV and the independent dp-accounting PLD accountant differ by at most {100 * worst:.2f} % "
            f"(tolerance {100 * ACCOUNTANT_TOLERANCE:.0f} %); the quoted epsilon is the largest of four accountants.",
        )
        unfinished = sum(c["unfinished_entries"] for c in spent["clients"])
        if unfinished:
            add(
                "warning",
                f"{unfinished} ledger entries never completed (interrupted training); they are counted in full.",
            )
    router = spent.get("router") or {}  # the router round's outcome, whatever the ledgers say
    if router.get("status") == "rejected":
        add(
            "problem",
            "The router round was REJECTED: its unmasked sum is not what honest uploads can give (a device "
            "shifted its upload?); no router was saved. Each device's router release is still in its ledger.",
        )
    elif router.get("status") == "failed":
        add(
            "warning",
            "The router round failed: the run has no router (see metrics.json router). Devices that sent "
            "their upload have the release in their ledger.",
        )
    if wire["secure_aggregation"]:
        add(
            "warning",
            "Secure aggregation (SecAgg+) was on: every upload was masked. "
            + " ".join(SERVER_LEARNS)
            + (
                " Persona hiding was on: no client sent its persona, yet the counts can reveal it."
                if wire["persona_hiding"]
                else " Persona hiding was off: each client's persona was sent in clear, and each persona group was "
                "aggregated on its own."
            ),
        )
    else:
        add(
            "warning",
            "Secure aggregation was off: the server saw each client's (DP-trained) update in clear.",
        )
    if not wire["recorded"]:
        add(
            "warning",
            "What crossed the wire was not recorded for this run: no manifest and no leak scan.",
        )

    elif wire["recorded_by"] == "server":
        add(
            "warning",
            f"The server recorded the {wire['summary']['messages']} replies it received (manifest below). The leak "
            "scan needs each user's text, which stays on the devices: run `fedpers simulate` with these settings on "
            "representative data for a scan.",
        )
    elif wire["scan"] is None:
        add(
            "warning",
            "The payloads were not kept and no scan result is stored: the leak scan could not run.",
        )
    else:
        leaks = wire["scan"]["leaks"]
        add(
            "problem" if leaks else "ok",
            f"Leak scan: {wire['scan']['payloads_scanned']} payloads searched for {wire['scan']['patterns']} text fragments "
            f"and token-id n-grams of their own users; {len(leaks)} found.",
        )
    if wire["recorded"] and wire.get("undeclared"):
        fields = sorted({f for r in wire["undeclared"] for f in r["fields"]})
        add(
            "problem",
            f"{len(wire['undeclared'])} replies carried fields outside the release manifest: {', '.join(fields)}.",
        )
    elif wire["recorded"]:
        add(
            "ok",
            f"Every field of the {wire['summary']['messages']} recorded replies is in the release manifest (section 2).",
        )
    if attack is None:
        add(
            "warning",
            "The canary attack was not run for this run (fedpers audit RUN_DIR --attack runs it).",
        )
    else:
        _attack_findings(attack, add)
    return out


def aggregate_check_findings(metrics: dict) -> list[dict]:
    """What the server's aggregate checks (``fedpers.aggregation.guards``) found, from ``metrics.json``."""
    if "rejected_rounds" not in metrics:  # a run from before the checks
        return []
    rejected = metrics["rejected_rounds"]
    if not rejected:
        return [
            {
                "level": "ok",
                "text": "Every round's unmasked sums passed the aggregate checks: finite, counts consistent "
                "with the uploads summed, and every sum's norm within what clipped updates (and the planned "
                "noise) allow. A device staying within those bounds can still shift a sum by up to them.",
            }
        ]
    return [
        {
            "level": "problem",
            "text": f"Round {r['round']} was REJECTED by the aggregate checks and nothing of it was applied: "
            + "; ".join(r["problems"])
            + ". A run with a rejected round is not published to the registry.",
        }
        for r in rejected
    ]


def randomness_findings(config: FederatedConfig) -> list[dict]:
    """A run that seeded its DP randomness with the benchmark switch is not private, whatever its epsilon."""
    if config.privacy.noise_seed < 0:
        return []
    return [
        {
            "level": "problem",
            "text": f"NOT PRIVATE: DP-SGD sampling and noise were seeded with the benchmark switch "
            f"noise_seed = {config.privacy.noise_seed}; whoever knows it can replay every batch and every noise draw, so no "
            "epsilon in this report holds. Use such runs for comparisons only.",
        }
    ]


def persona_findings(
    config: FederatedConfig, run_dir: Path, settings: dict | None = None
) -> list[dict]:
    """How an inferred-persona run's devices chose their persona, and what justifies K (``persona-discovery.json``
    of a run whose devices chose from their prompts). ``settings``: the run's recorded settings; a run recorded
    before the ``persona_choice`` setting existed chose by the adapters' losses."""
    if config.dataset.persona_mode != "inferred":
        return []
    if not config.prompt_choice or (settings is not None and "persona_choice" not in settings):
        return [
            {
                "level": "ok",
                "text": f"Personas inferred on the devices from their adapters' losses (IFCA): one noisy choice "
                f"per device, in its ledger; K = {len(config.persona_names)} as set (--personas), not "
                "justified by data.",
            }
        ]
    path = run_dir / PERSONA_DISCOVERY
    if not path.is_file():
        return [
            {
                "level": "problem",
                "text": f"Personas were to be chosen from the prompts, but the run has no {PERSONA_DISCOVERY}: "
                "what the devices chose against is not recorded.",
            }
        ]
    found = read_json(path)
    table = ", ".join(f"K={k}: {s:.3f}" for k, s in found["silhouette_by_k"].items())
    same = found["k"] == found["favoured_k"]
    return [
        {
            "level": "ok" if same else "warning",
            "text": f"Personas inferred on the devices from their prompts: each device scored its own prompts "
            f"against {found['k']} persona centroids placed on {found['public_users']} public users, and chose "
            "with Gaussian noise (one release per device, in its ledger). Centroid silhouette of the public "
            f"clustering: {table}; "
            + (
                f"it favours K = {found['favoured_k']}, as set."
                if same
                else f"it favours K = {found['favoured_k']}, not the {found['k']} set (--personas)."
            ),
        }
    ]


def attack_power(run: dict) -> bool:
    """Whether the attack found the canaries on a run: AUC at least ``POWER_AUC`` and a positive lower bound."""
    return run["auc"] >= POWER_AUC and run["lower_bound"]["epsilon"] > 0


def _attack_findings(attack: dict, add) -> None:
    runs = attack["runs"]
    off, dp = runs.get("no-dp"), runs.get("dp")
    if dp is not None:
        repeats = attack.get("repeats", 1)
        unit = (
            "one conversation"
            if repeats == 1
            else f"the {repeats} copies of a canary, by group privacy; {dp['record_epsilon']:.2f} per conversation"
        )
        power = (
            ""
            if off is None
            else f" The same attack with DP off: AUC {off['auc']:.2f}, lower bound epsilon >= {off['lower_bound']['epsilon']:.2f}."
        )
        add(
            "problem" if dp["bound_exceeds_theory"] else "ok",
            f"Canary attack on DP training: empirical lower bound epsilon >= {dp['lower_bound']['epsilon']:.2f} "
            f"({'ABOVE' if dp['bound_exceeds_theory'] else 'below'} the theoretical {dp['theoretical_epsilon']:.2f} for {unit}); "
            f"membership AUC {dp['auc']:.2f}." + power,
        )
    if off is not None:
        strong = attack_power(off)
        add(
            "ok" if strong else "warning",
            f"Attack power check (DP off): membership AUC {off['auc']:.2f}, lower bound epsilon >= "
            f"{off['lower_bound']['epsilon']:.2f}"
            + (
                "; the attack finds the canaries when nothing protects them, so a low bound with DP is evidence."
                if strong
                else f"; the attack is weak on these settings (AUC below {POWER_AUC} or no "
                "positive bound), so a low bound with DP says little."
            ),
        )


def build_audit(run_dir: Path, progress: bool = True) -> dict:
    """Every fact of the report, as ``audit.json`` holds it."""
    from fedpers.userdata import conversations, user_ids

    run_dir = Path(run_dir).resolve()
    run_config = read_json(run_dir / RUN_CONFIG)
    metrics = read_json(run_dir / METRICS)
    config = FederatedConfig.from_record(run_config["settings"])
    if metrics.get("engine", "simulation") == "simulation":
        users = user_ids(config)
        personas = {c.user_id: c.persona for c in conversations(config)}
        spent = spent_section(config, users, personas, run_dir)
        clients = len(users)
    else:  # the clients' data and ledgers are on their devices: the server audits what it holds
        users, personas = [], {}
        spent = device_spent_section(config, run_dir)
        clients = max((r.get("participants", 0) for r in metrics.get("rounds", [])), default=0)
    engine = metrics.get("engine", "simulation")
    spent["router"] = router_spent(config, users, personas, metrics, engine != "simulation")
    wire = wire_section(run_dir, config, users, metrics, progress)
    attack = read_attack(run_dir)
    return {
        "schema": SCHEMA,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "fedpers_version": _version(),
        "run": {
            "run_id": run_config["run_id"],
            "run_dir": str(run_dir),
            "model": run_config["model"],
            "personas": run_config["personas"],
            "clients": clients,
            "engine": metrics.get("engine", "simulation"),
            "rounds": len(metrics.get("rounds", [])),
            "wall_seconds": metrics.get("wall_seconds"),
            "settings": run_config["settings"],
        },
        "findings": randomness_findings(config)
        + aggregate_check_findings(metrics)
        + persona_findings(config, run_dir, run_config["settings"])
        + _findings(spent, wire, attack),
        "spent": spent,
        "wire": wire,
        "attack": attack,
    }


def write_audit(
    run_dir: Path, pdf: bool = False, key_path: Path | None = None, progress: bool = True
) -> dict:
    """Build the report, write ``audit.json`` and ``audit.html`` (and ``audit.pdf``), sign them; returns the facts."""
    from fedpers.audit.html import render_html, render_pdf

    run_dir = Path(run_dir)
    audit = build_audit(run_dir, progress)
    (run_dir / AUDIT_JSON).write_text(json.dumps(audit, indent=1, default=str) + "\n")
    (run_dir / AUDIT_HTML).write_text(render_html(audit))
    names = [AUDIT_JSON, AUDIT_HTML]
    if pdf:
        render_pdf(run_dir / AUDIT_HTML, run_dir / AUDIT_PDF)
        names.append(AUDIT_PDF)
    sign_files(run_dir, names, load_or_create_key(key_path))
    return audit
