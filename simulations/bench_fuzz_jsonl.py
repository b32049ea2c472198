"""Benchmark: the conversation JSONL parser against N random and mutated lines.

Lines are drawn (seeded) from a mix: valid synthetic conversations, as they are and mutated (bytes
flipped, inserted, deleted; cut short; a field dropped, retyped or renamed; a key given twice; a
NUL or a lone surrogate escaped into a string; invalid UTF-8), random bytes, random Unicode text,
bracket bombs past the nesting limit and a few lines past the size limit. Each line goes through
:func:`fedpers.data.schema.parse_line`, timed and with its peak of Python memory (tracemalloc); then
the whole set is written as one file and read back with :func:`fedpers.data.read_jsonl` in skip
mode, which must keep exactly the lines accepted one by one (less repeated ids). Reported: lines
accepted and rejected per reason (:func:`fedpers.data.issues.reason`), time and memory per line
(mean, 99th percentile, largest), and the exceptions other than the parser's answers (must be none;
the exit status is 1 otherwise).

    python -m simulations.bench_fuzz_jsonl            # 20,000 lines, seed 0
    python -m simulations.bench_fuzz_jsonl --write    # and put the section into BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from fedpers.data import SyntheticConfig, generate, read_jsonl
from fedpers.data.issues import reason
from fedpers.data.schema import MAX_LINE_BYTES, MAX_NESTING_DEPTH, parse_line
from simulations.bench_dp_step import print_section

MARK = "fuzz-jsonl"
Mutation = Callable[[random.Random, bytes], bytes]


def _flip(rng: random.Random, line: bytes) -> bytes:
    data = bytearray(line)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def _insert(rng: random.Random, line: bytes) -> bytes:
    i = rng.randrange(len(line) + 1)
    return line[:i] + rng.randbytes(rng.randint(1, 8)) + line[i:]


def _delete(rng: random.Random, line: bytes) -> bytes:
    i = rng.randrange(len(line))
    return line[:i] + line[i + rng.randint(1, 16) :]


def _truncate(rng: random.Random, line: bytes) -> bytes:
    return line[: rng.randrange(len(line))]


def _schema(rng: random.Random, line: bytes) -> bytes:
    """A decoded record with one field dropped, retyped, renamed or a turn's role changed."""
    record = json.loads(line)
    turns = record["turns"]
    choice = rng.randrange(6)
    if choice == 0:
        record.pop(rng.choice(["user_id", "conversation_id", "turns"]))
    elif choice == 1:
        record[rng.choice(["user_id", "conversation_id", "persona", "profile", "turns"])] = (
            rng.choice([None, 7, 1.5, True, [], {}, "", " "])
        )
    elif choice == 2:
        record["usr_id"] = record.pop("user_id")
    elif choice == 3:
        turns[rng.randrange(len(turns))]["role"] = rng.choice(["bot", "", "USER", 3])
    elif choice == 4:
        record["turns"] = [t for t in turns if t["role"] != "assistant"]
    else:
        turns[-1]["feedback"] = {"rating": rng.choice([0, 6, "5", float("nan")])}
    return json.dumps(record, ensure_ascii=rng.random() < 0.5).encode()


def _duplicate_key(rng: random.Random, line: bytes) -> bytes:
    key = rng.choice([b'"user_id"', b'"conversation_id"'])
    return line.replace(b"{", b"{" + key + b': "x", ', 1)


def _bad_escape(rng: random.Random, line: bytes) -> bytes:
    escape = rng.choice([b"\\u0000", b"\\ud800", b"\\udfff", b"\\ud83d"])
    i = line.find(b'"text": "')
    return line if i < 0 else line[: i + 9] + escape + line[i + 9 :]


def _bad_utf8(rng: random.Random, line: bytes) -> bytes:
    i = rng.randrange(len(line))
    return line[:i] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"]) + line[i:]


MUTATIONS: dict[str, Mutation] = {
    "bit flips": _flip,
    "bytes inserted": _insert,
    "bytes deleted": _delete,
    "cut short": _truncate,
    "schema change": _schema,
    "duplicate key": _duplicate_key,
    "NUL or surrogate escape": _bad_escape,
    "invalid UTF-8": _bad_utf8,
}


def fuzz_lines(n: int, seed: int, oversize: int) -> list[tuple[str, bytes]]:
    """``n`` lines ``(kind, bytes)`` without line endings, ``oversize`` of them past the size limit."""
    rng = random.Random(seed)
    corpus = [
        json.dumps(c.to_dict(), ensure_ascii=False).encode()
        for c in generate(
            SyntheticConfig(users_per_persona=4, conversations_per_user=25, seed=seed)
        )
    ]
    lines: list[tuple[str, bytes]] = []
    for _ in range(n - oversize):
        roll = rng.random()
        if roll < 0.15:
            lines.append(("valid", rng.choice(corpus)))
        elif roll < 0.75:
            kind = rng.choice(list(MUTATIONS))
            lines.append((kind, MUTATIONS[kind](rng, rng.choice(corpus))))
        elif roll < 0.87:
            lines.append(("random bytes", rng.randbytes(rng.randint(0, 400))))
        elif roll < 0.97:
            text = "".join(
                chr(rng.choice([rng.randrange(32, 127), rng.randrange(0x10FFFF)]))
                for _ in range(rng.randint(0, 200))
            )
            lines.append(("random text", text.encode("utf-8", "surrogatepass")))
        else:
            depth = rng.randint(MAX_NESTING_DEPTH - 2, 50_000)
            lines.append(("bracket bomb", b'{"turns": ' + b"[" * depth + b"]" * depth + b"}"))
    for _ in range(oversize):
        lines.append(
            (
                "over the size limit",
                b'{"user_id": "' + b"a" * (MAX_LINE_BYTES + rng.randint(1, 1 << 20)) + b'"}',
            )
        )
    rng.shuffle(lines)
    return [(kind, raw.replace(b"\n", b" ").replace(b"\r", b" ")) for kind, raw in lines]


def memory_peaks(lines: list[tuple[str, bytes]]) -> list[int]:
    """Each line's peak of Python memory while it is parsed, above what was held before (a second pass:
    tracemalloc slows parsing several times over, so the timing pass runs without it)."""
    peaks = []
    tracemalloc.start()
    try:
        for lineno, (_, raw) in enumerate(lines, start=1):
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            try:
                parse_line(raw, "fuzz.jsonl", lineno)
            except Exception:  # counted in the timing pass
                pass
            peaks.append(tracemalloc.get_traced_memory()[1] - base)
    finally:
        tracemalloc.stop()
    return peaks


def run(n: int, seed: int, oversize: int) -> dict:
    t0 = time.perf_counter()
    lines = fuzz_lines(n, seed, oversize)
    generate_seconds = time.perf_counter() - t0
    seconds: list[float] = []
    accepted: list[tuple[str, str]] = []
    reasons: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    unexpected: Counter[str] = Counter()
    examples: dict[str, str] = {}
    slowest = (0.0, "")
    started = time.perf_counter()
    for lineno, (kind, raw) in enumerate(lines, start=1):
        t0 = time.perf_counter()
        try:
            conv, issues = parse_line(raw, "fuzz.jsonl", lineno)
        except Exception as err:  # what the benchmark is here to find
            unexpected[type(err).__name__] += 1
            examples.setdefault(type(err).__name__, f"{kind}: {err!r}"[:200])
            continue
        finally:
            dt = time.perf_counter() - t0
            seconds.append(dt)
            if dt > slowest[0]:
                slowest = (dt, kind)
        outcome = "accepted" if conv is not None else "rejected"
        by_kind.setdefault(kind, Counter())[outcome] += 1
        if conv is not None:
            accepted.append((conv.user_id, conv.conversation_id))
        else:
            reasons.update({reason(i) for i in issues})
    parse_seconds = time.perf_counter() - started
    t0 = time.perf_counter()
    peaks = memory_peaks(lines)
    memory_seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.jsonl"
        path.write_bytes(b"".join(raw + b"\n" for _, raw in lines))
        t0 = time.perf_counter()
        try:
            result = read_jsonl(path, mode="skip")
        except Exception as err:
            unexpected[f"read_jsonl: {type(err).__name__}"] += 1
            examples.setdefault(f"read_jsonl: {type(err).__name__}", repr(err)[:200])
            kept = None
        else:
            kept = [(c.user_id, c.conversation_id) for c in result.conversations]
        read_seconds = time.perf_counter() - t0
    first_of_each = list(dict.fromkeys(accepted))
    return {
        "lines": n,
        "seed": seed,
        "accepted": len(accepted),
        "rejected": n - len(accepted) - sum(unexpected.values()),
        "reasons": reasons,
        "by_kind": by_kind,
        "unexpected": unexpected,
        "examples": examples,
        "parse_seconds": parse_seconds,
        "generate_seconds": generate_seconds,
        "memory_seconds": memory_seconds,
        "read_seconds": read_seconds,
        "reader_agrees": kept == first_of_each,
        "seconds": seconds,
        "peaks": peaks,
        "slowest": slowest,
        "largest_line": max(len(raw) for _, raw in lines),
    }


def _q(values: list, q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def report(r: dict) -> list[str]:
    ms = [s * 1e3 for s in r["seconds"]]
    kib = [p / 1024 for p in r["peaks"]]
    lines = [
        "## JSONL parser under fuzzing",
        "",
        f"`python -m simulations.bench_fuzz_jsonl --write` — {r['lines']:,} lines (seed {r['seed']}) on this machine "
        f"({platform.machine()}, Python {platform.python_version()}): valid synthetic conversations, the same mutated "
        "(bit flips, bytes inserted or deleted, cut short, schema changes, duplicate keys, NUL and surrogate escapes, "
        "invalid UTF-8), random bytes, random text, bracket bombs and lines over the 1 MiB limit (largest "
        f"{r['largest_line'] / 2**20:.1f} MiB). Each line through `parse_line`, then all of them as one file through "
        '`read_jsonl(mode="skip")`.',
        "",
        f"- accepted {r['accepted']:,}, rejected {r['rejected']:,}; **unexpected exceptions: "
        f"{sum(r['unexpected'].values())}**"
        + ("" if not r["unexpected"] else f" ({dict(r['unexpected'])}; e.g. {r['examples']})"),
        f"- time per line: mean {statistics.mean(ms):.3f} ms, 99th percentile {_q(ms, 0.99):.3f} ms, largest "
        f"{max(ms):.1f} ms ({r['slowest'][1]}); all lines {r['parse_seconds']:.1f} s one by one, "
        f"{r['read_seconds']:.1f} s as one file (making the lines took {r['generate_seconds']:.1f} s, the "
        f"memory pass {r['memory_seconds']:.1f} s)",
        f"- Python memory per line (tracemalloc peak above the line's start, a second pass): mean {statistics.mean(kib):.1f} KiB, "
        f"99th percentile {_q(kib, 0.99):.1f} KiB, largest {max(kib):.1f} KiB",
        f"- the file reader keeps exactly the lines accepted one by one (less repeated ids): "
        f"{'yes' if r['reader_agrees'] else 'NO'}",
        "",
        "| lines | accepted | rejected |",
        "|-------|---------:|---------:|",
    ]
    for kind, counts in sorted(r["by_kind"].items()):
        lines.append(f"| {kind} | {counts['accepted']:,} | {counts['rejected']:,} |")
    lines += [
        "",
        "| rejection reason (a line counts once under each of its reasons) | lines |",
        "|---|---:|",
    ]
    top = r["reasons"].most_common(20)
    for text, count in top:
        cell = text.replace("|", "\\|")
        lines.append(f"| `{cell}` | {count:,} |")
    rest = sum(r["reasons"].values()) - sum(c for _, c in top)
    if rest:
        lines.append(f"| {len(r['reasons']) - len(top)} other reasons | {rest:,} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=20_000, help="lines to fuzz (default 20,000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the lines (default 0)")
    p.add_argument(
        "--oversize", type=int, default=5, help="of them, lines over the 1 MiB limit (default 5)"
    )
    p.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    args = p.parse_args(argv)
    result = run(args.lines, args.seed, args.oversize)
    print_section(report(result), args.write, MARK)
    return 1 if result["unexpected"] or not result["reader_agrees"] else 0


if __name__ == "__main__":
    sys.exit(main())
