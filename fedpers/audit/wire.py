"""What crossed the wire: the recorded manifest summarized per client and round, and the leak scan.

Reads ``RUN_DIR/wire`` (:mod:`fedpers.wire`; written by the devices in a simulation, by the server in a
deployment): one manifest line per reply, and in a simulation the serialized payloads. The scan searches each client's payloads for that
user's own text fragments (5-word runs, UTF-8 and UTF-16) and token-id 8-grams (int16/32/64 and
decimal text) with :func:`fedpers.audit.scan.find`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from tqdm.auto import tqdm

from fedpers.audit.scan import find, user_patterns
from fedpers.federated import FederatedConfig
from fedpers.wirelog import WIRE, payload_path

NGRAM = 8


def summarize(manifest: list[dict], users: list[str]) -> dict:
    """Message counts and bytes per client, per round and per SecAgg+ stage; every tensor name that left a device."""
    per_client: dict[str, dict] = defaultdict(lambda: {"messages": 0, "bytes": 0})
    per_round: dict[str, dict] = defaultdict(lambda: {"messages": 0, "bytes": 0})
    per_stage: dict[str, dict] = defaultdict(lambda: {"messages": 0, "bytes": 0})
    tensors: dict[str, dict] = {}
    for e in manifest:
        pid = e.get("partition_id")
        user = users[pid] if isinstance(pid, int) and pid < len(users) else f"node {e['node_id']}"
        for bucket in (
            per_client[user],
            per_round[str(e.get("round"))],
            per_stage[e.get("secagg_stage") or "plain"],
        ):
            bucket["messages"] += 1
            bucket["bytes"] += e["payload_bytes"]
        for t in e.get("arrays", []):
            key = f"{t['record']}/{t['name'].split('[')[0]}"
            seen = tensors.setdefault(key, {"dtypes": set(), "messages": 0, "bytes": 0})
            seen["dtypes"].add(t["dtype"])
            seen["messages"] += 1
            seen["bytes"] += t["bytes"]
    for seen in tensors.values():
        seen["dtypes"] = sorted(seen["dtypes"])
    return {
        "messages": len(manifest),
        "bytes": sum(e["payload_bytes"] for e in manifest),
        "per_client": dict(per_client),
        "per_round": dict(per_round),
        "per_stage": dict(per_stage),
        "tensors": tensors,
    }


def scan_run(
    run_dir: Path, config: FederatedConfig, manifest: list[dict], progress: bool = True
) -> dict:
    """Search every recorded payload of each client for that user's text fragments and token-id n-grams."""
    from fedpers.models.environment import model_environment
    from fedpers.userdata import conversations, user_data, user_ids

    users = user_ids(config)
    env = model_environment(config)
    by_client: dict[int, list[dict]] = defaultdict(list)
    for e in manifest:
        by_client[e["partition_id"]].append(e)
    scanned = missing = pattern_count = 0
    leaks: list[dict] = []
    for pid, entries in tqdm(
        sorted(by_client.items()), desc="wire scan", disable=not progress, leave=False
    ):
        user = users[pid]
        texts = [t.text for c in conversations(config) if c.user_id == user for t in c.turns]
        data = user_data(config, user, env)
        patterns = user_patterns(texts, [e.input_ids for e in data.train + data.heldout], NGRAM)
        blobs = []
        for e in entries:
            path = payload_path(run_dir, e)
            if path.exists():
                blobs.append(path.read_bytes())
            else:
                missing += 1
        found = find(blobs, patterns)
        scanned += len(blobs)
        pattern_count += len(patterns)
        leaks += [
            {"user_id": user, "what": label, "bytes_hex": needle.hex()[:64]}
            for needle, label in found.items()
        ]
    return {
        "payloads_scanned": scanned,
        "payloads_missing": missing,
        "patterns": pattern_count,
        "ngram": NGRAM,
        "leaks": leaks,
    }


def prune_payloads(run_dir: Path) -> int:
    """Delete the recorded payloads (the manifest keeps their SHA-256); returns how many."""
    paths = list((Path(run_dir) / WIRE).glob("*.bin"))
    for p in paths:
        p.unlink()
    return len(paths)
