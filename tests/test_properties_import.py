"""Properties of the importer and of adapter loading on arbitrary input (hypothesis).

The JSONL reader answers any bytes with conversations or issues, never another exception; what
``write_jsonl`` writes reads back equal; a corrupted adapters blob or adapter file raises a clear
error and never loads wrong tensors.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fedpers.adapters import AdapterFormatError, adapters_from_bytes, adapters_to_bytes
from fedpers.data import Conversation, DataValidationError, Feedback, Turn, read_jsonl, write_jsonl
from fedpers.data.schema import DataFileError, ValidationIssue, parse_line
from fedpers.rundir import ADAPTERS, load_adapters

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------ JSONL


def _record_like() -> st.SearchStrategy:
    """JSON values shaped like (and often nearly) a conversation record."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
    )
    json_values = st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )
    turn = st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "bot", ""]),
            "text": st.text(max_size=30),
        },
        optional={
            "ts": st.one_of(st.text(max_size=25), st.just("2024-03-05T09:14:00Z")),
            "feedback": st.one_of(
                json_values,
                st.fixed_dictionaries(
                    {},
                    optional={
                        "rating": st.one_of(st.integers(-2, 8), st.floats(), st.booleans()),
                        "sentiment": st.text(max_size=10),
                        "comment": json_values,
                    },
                ),
            ),
            "extra": json_values,
        },
    )
    record = st.fixed_dictionaries(
        {},
        optional={
            "user_id": st.one_of(st.text(max_size=10), json_values),
            "conversation_id": st.one_of(st.text(max_size=10), json_values),
            "persona": st.one_of(st.none(), st.text(max_size=10), json_values),
            "profile": st.one_of(
                st.dictionaries(st.text(max_size=6), json_values, max_size=3), json_values
            ),
            "turns": st.one_of(st.lists(st.one_of(turn, json_values), max_size=4), json_values),
            "usr_id": json_values,
        },
    )
    return st.one_of(record, json_values)


def _lines() -> st.SearchStrategy[bytes]:
    """One physical line's bytes: random bytes, random text, or the JSON of a near-record, maybe mutated."""
    encoded = _record_like().map(lambda v: json.dumps(v).encode())
    return st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
        encoded,
        st.tuples(encoded, st.integers(0, 400), st.binary(min_size=1, max_size=3)).map(
            lambda x: x[0][: x[1]] + x[2] + x[0][x[1] :]
        ),
        st.integers(1, 200).map(lambda n: b"[" * n + b"]" * n),
    )


@given(st.lists(_lines(), max_size=6))
@SETTINGS
def test_the_reader_answers_any_bytes_with_conversations_or_issues(lines):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "any.jsonl"
        path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
        result = read_jsonl(path, mode="skip")  # never raises for a readable file
        assert all(isinstance(c, Conversation) for c in result.conversations)
        assert all(isinstance(i, ValidationIssue) and i.line >= 1 for i in result.issues)
        for issue in result.issues:
            text = str(issue)
            text.encode("utf-8")  # printable: no lone surrogate, no line break
            assert "\n" not in text
        try:
            strict = read_jsonl(path, mode="strict")
        except DataFileError:  # pragma: no cover - the path is a readable file
            raise
        except DataValidationError as err:
            assert result.issues and err.issues == result.issues
        else:
            assert not result.issues and strict.conversations == result.conversations
        # what skip keeps is what each line alone gives
        kept = [
            conv
            for n, raw in enumerate(path.read_bytes().split(b"\n")[:-1], start=1)
            if raw.strip()
            for conv in [parse_line(raw, str(path), n)[0]]
            if conv is not None
        ]
        keys = [(c.user_id, c.conversation_id) for c in result.conversations]
        assert len(set(keys)) == len(keys)
        assert set(keys) <= {(c.user_id, c.conversation_id) for c in kept}


@given(_lines())
@SETTINGS
def test_one_line_gives_a_conversation_or_issues_never_an_exception(raw):
    conv, issues = parse_line(raw, "f.jsonl", 7)
    assert (conv is None) == bool(issues)
    assert all(i.path == "f.jsonl" and i.line == 7 for i in issues)
    if conv is not None:  # a conversation that was accepted writes back to a line that is accepted
        again, more = parse_line(json.dumps(conv.to_dict(), ensure_ascii=False).encode(), "g", 1)
        assert not more and again == conv


@given(_record_like())
@SETTINGS
def test_from_dict_raises_only_its_documented_error(value):
    try:
        conv = Conversation.from_dict(value)
    except DataValidationError as err:
        assert err.issues
    else:
        assert conv.to_dict()["turns"]


# text the format accepts: no NUL, no lone surrogate, not only whitespace
_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=40,
).filter(lambda t: t.strip())
_key = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
)
_turn = st.builds(
    Turn,
    role=st.sampled_from(["user", "assistant", "system"]),
    text=_text,
    ts=st.one_of(st.none(), st.datetimes().map(lambda d: d.isoformat())),
    feedback=st.one_of(
        st.none(),
        st.builds(
            Feedback,
            rating=st.one_of(st.none(), st.integers(1, 5), st.floats(1, 5)),
            sentiment=st.one_of(st.none(), st.sampled_from(["positive", "neutral", "negative"])),
            comment=st.one_of(st.none(), _text),
        ),
    ),
)


@st.composite
def _conversations(draw) -> list[Conversation]:
    out, seen = [], set()
    for _ in range(draw(st.integers(0, 5))):
        user, conv_id = draw(_text), draw(_text)
        assume((user, conv_id) not in seen)
        seen.add((user, conv_id))
        turns = draw(st.lists(_turn, min_size=0, max_size=3))
        turns.insert(draw(st.integers(0, len(turns))), Turn("assistant", draw(_text)))
        out.append(
            Conversation(
                user_id=user,
                conversation_id=conv_id,
                turns=tuple(turns),
                persona=draw(st.one_of(st.none(), _text)),
                profile=draw(st.dictionaries(_key, _scalar, max_size=3)),
            )
        )
    return out


@given(_conversations())
@SETTINGS
def test_valid_conversations_round_trip_through_write_and_read(convs):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.jsonl"
        assert write_jsonl(path, convs) == len(convs)
        assert read_jsonl(path).conversations == convs


@given(
    st.builds(
        Conversation,
        user_id=st.text(max_size=5),
        conversation_id=st.text(max_size=5),
        turns=st.lists(
            st.builds(Turn, role=st.text(max_size=10), text=st.text(max_size=10)), max_size=3
        ).map(tuple),
        persona=st.one_of(st.none(), st.text(max_size=5)),
    )
)
@SETTINGS
def test_write_refuses_what_read_would_reject_and_writes_the_rest_faithfully(conv):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.jsonl"
        try:
            write_jsonl(path, [conv])
        except DataValidationError as err:
            assert err.issues and not path.exists()
        else:
            assert read_jsonl(path).conversations == [conv]


# --------------------------------------------------------------------------- adapters

_shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)
_dtypes = st.sampled_from([np.float32, np.float64, np.float16])


@st.composite
def _adapters(draw) -> dict:
    names = draw(
        st.lists(
            st.sampled_from(["global", "leadership", "field_worker"]),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    out = {}
    for name in names:
        tensors = draw(
            st.lists(
                st.sampled_from(["a.lora_A.weight", "a.lora_B.weight", "b.lora_A.weight"]),
                min_size=1,
                max_size=3,
                unique=True,
            )
        )
        out[name] = {}
        for key in tensors:
            shape, dtype = draw(_shapes), draw(_dtypes)
            values = draw(
                st.lists(
                    st.floats(-4, 4, width=16),
                    min_size=int(np.prod(shape)),
                    max_size=int(np.prod(shape)),
                )
            )
            out[name][key] = np.array(values, dtype=dtype).reshape(shape)
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[n].keys() == b[n].keys()
        and all(a[n][k].dtype == b[n][k].dtype and np.array_equal(a[n][k], b[n][k]) for k in a[n])
        for n in a
    )


@given(_adapters())
@SETTINGS
def test_adapters_round_trip_through_bytes(adapters):
    assert _same(adapters_from_bytes(adapters_to_bytes(adapters)), adapters)


@given(_adapters(), st.data())
@SETTINGS
def test_a_corrupted_adapters_blob_raises_and_never_loads_other_tensors(adapters, data):
    blob = bytearray(adapters_to_bytes(adapters))
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "overwrite"]))
    if how == "flip":
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
    elif how == "extend":
        blob += data.draw(st.binary(min_size=1, max_size=16))
    else:
        i = data.draw(st.integers(0, len(blob) - 1))
        patch = data.draw(st.binary(min_size=1, max_size=8))
        blob[i : i + len(patch)] = patch
    try:
        loaded = adapters_from_bytes(bytes(blob))
    except AdapterFormatError as err:
        assert str(err).startswith("adapters blob:")
    else:  # only a change that leaves the content as it was (e.g. header whitespace) may load
        assert _same(loaded, adapters)


@given(st.binary(max_size=300))
@SETTINGS
def test_arbitrary_bytes_are_not_an_adapters_blob(data):
    with pytest.raises(AdapterFormatError):
        adapters_from_bytes(data)


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_a_corrupted_adapter_file_in_a_run_directory_names_the_file(data):
    from safetensors.numpy import save

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        folder = run_dir / ADAPTERS / "leadership"
        folder.mkdir(parents=True)
        arrays = {"a.lora_A.weight": np.arange(12, dtype=np.float32).reshape(3, 4)}
        blob = bytearray(save(arrays))
        how = data.draw(st.sampled_from(["truncate", "nan", "header"]))
        if how == "truncate":
            blob = blob[: data.draw(st.integers(0, len(blob) - 1))]
        elif how == "nan":
            blob[-4:] = np.float32(np.nan).tobytes()
        else:
            blob[data.draw(st.integers(0, 7))] ^= 0xFF
        (folder / "adapter_model.safetensors").write_bytes(bytes(blob))
        with pytest.raises(AdapterFormatError, match="leadership/adapter_model.safetensors"):
            load_adapters(run_dir)


def test_the_fuzz_benchmark_runs_clean_on_a_few_lines():
    from simulations.bench_fuzz_jsonl import report, run

    result = run(400, seed=1, oversize=1)
    assert not result["unexpected"] and result["reader_agrees"]
    assert result["accepted"] + result["rejected"] == 400
    assert result["by_kind"]["valid"]["rejected"] == 0
    assert result["by_kind"]["over the size limit"]["rejected"] == 1
    text = "\n".join(report(result))
    assert "unexpected exceptions: 0" in text and "| valid |" in text
