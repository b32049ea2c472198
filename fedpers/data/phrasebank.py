"""Phrase banks of the synthetic service desk: JSON files shipped in ``fedpers/data/phrases``, loaded and checked.

``common.json`` holds what every persona shares (slot rules, user names, profile choices, paraphrases);
``<persona>.json`` holds one persona's users, rules and topics. A rule in a file is one of:

- a list of templates (see :mod:`fedpers.data.grammar`), one drawn and expanded per use;
- ``{"list": "words"}``: a named list from ``common.json``'s ``lists``, used as templates;
- ``{"rule": "meeting"}``: the same rule as the persona's (or else the common) rule of that name;
- ``{"fn": ...}``: a value drawn by code, one of :data:`FUNCTIONS` (``num``, ``join``, ``some``).

Every file is validated on load; a :class:`PhraseBankError` names the file and the offending key.
"""

from __future__ import annotations

import json
import random
from collections import ChainMap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, NoReturn

from fedpers.data.grammar import Paraphraser, Rule, parse_template

PHRASES_PACKAGE = "fedpers.data"
PHRASES_DIR = "phrases"
COMMON_FILE = "common.json"

Draw = Callable[[random.Random], str]


class PhraseBankError(ValueError):
    """A phrase-bank file does not have the expected shape; the message names the file and the key."""


@dataclass(frozen=True)
class Topic:
    """One support topic of a persona.

    ``steps`` are groups applied in order (e.g. check, fix, verify); order inside a group is free.
    Step templates are lower-case imperatives or statements; the persona style capitalizes or prefixes them.
    ``extra`` holds persona-specific optional sentences (offline fallback, definition of a term).
    ``fixed`` slots are drawn once per conversation so a value stays consistent across its turns.
    """

    name: str
    ask: tuple[str, ...]
    lead: tuple[str, ...]
    steps: tuple[tuple[str, ...], ...]
    symptom: tuple[str, ...]
    extra: tuple[str, ...] = ()
    diag: tuple[str, ...] = ()
    fixed: Mapping[str, Rule] = field(default_factory=dict)
    rules: Mapping[str, Rule] = field(default_factory=dict)
    match: tuple[tuple[int, ...], ...] = ()
    """For each ``ask`` template, the indices of the ``lead`` templates that answer it (empty: any lead fits)."""
    ordered: bool = False
    """Keep chosen steps in their written order (for procedures); otherwise order inside a group is random."""


@dataclass(frozen=True)
class PersonaSpec:
    """Everything that makes a persona: who its users are, what they ask, how answers are shaped."""

    name: str
    roles: tuple[str, ...]
    departments: tuple[str, ...]
    devices: tuple[str, ...]
    topics: tuple[Topic, ...]
    rules: Mapping[str, Rule]
    fixed: Mapping[str, Rule] = field(default_factory=dict)
    expand_rate: float = 0.2
    """Probability of writing a contraction out in full (formality of the answers)."""
    user_style: tuple[str, ...] = ()
    """Rules whose alternatives each user narrows to a personal subset (how the assistant habitually phrases things)."""


@dataclass(frozen=True)
class CommonBank:
    """Phrases every persona shares: slot rules, the names and profile choices of users, paraphrases."""

    lists: Mapping[str, tuple[str, ...]]
    """Named word lists that rules of any file may use (``{"list": name}``)."""
    rules: Mapping[str, Rule]
    first_names: tuple[str, ...]
    surnames: tuple[str, ...]
    helper_names: tuple[str, ...]
    locations: tuple[str, ...]
    greetings: tuple[str, ...]
    closings: tuple[str, ...]
    channels: tuple[str, ...]
    sign_offs: tuple[str, ...]
    """``str.format`` templates with ``{first}``, ``{full}`` and ``{location}``."""
    field_sign_offs: tuple[str, ...]
    feedback_comments: tuple[str | None, ...]
    paraphraser: Paraphraser


@dataclass(frozen=True)
class PhraseBank:
    """The common bank and one :class:`PersonaSpec` per persona, in the order asked for."""

    common: CommonBank
    personas: Mapping[str, PersonaSpec]


# ------------------------------------------------------------------------------------------ file access


@cache
def load_phrasebank(personas: tuple[str, ...]) -> PhraseBank:
    """Read and validate ``common.json`` and ``<persona>.json`` for each of ``personas`` (cached)."""
    common = build_common(read_phrase_file(COMMON_FILE))
    return PhraseBank(
        common, {p: build_persona(p, read_phrase_file(f"{p}.json"), common) for p in personas}
    )


def read_phrase_file(filename: str) -> dict[str, Any]:
    """The parsed JSON object of ``phrases/<filename>`` from the installed package."""
    source = f"{PHRASES_DIR}/{filename}"
    try:
        text = (resources.files(PHRASES_PACKAGE) / PHRASES_DIR / filename).read_text(
            encoding="utf-8"
        )
    except FileNotFoundError:
        raise PhraseBankError(f"{source}: not found in package {PHRASES_PACKAGE}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PhraseBankError(
            f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(data, dict):
        raise PhraseBankError(f"{source}: expected a JSON object at the top level")
    return data


# ------------------------------------------------------------------------------------------ validation


@dataclass(frozen=True)
class _At:
    """A position in a phrase-bank file (file name and key path) for error messages."""

    source: str
    path: str = ""

    def __truediv__(self, key: str | int) -> _At:
        if isinstance(key, int):
            return _At(self.source, f"{self.path}[{key}]")
        return _At(self.source, f"{self.path}.{key}" if self.path else key)

    def fail(self, problem: str) -> NoReturn:
        raise PhraseBankError(f"{self.source}: {self.path or 'top level'}: {problem}")


def _object(at: _At, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        at.fail(f"expected an object, got {type(value).__name__}")
    return value


def _fields(
    at: _At, value: object, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    value = _object(at, value)
    for name in required:
        if name not in value:
            at.fail(f"missing field {name!r}")
    unknown = [k for k in value if k not in required and k not in optional]
    if unknown:
        at.fail(f"unknown field {unknown[0]!r} (allowed: {', '.join(required + optional)})")
    return value


def _strings(
    at: _At, value: object, *, templates: bool = False, unique: bool = False
) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        at.fail("expected a non-empty list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            (at / i).fail(f"expected a string, got {type(item).__name__}")
        if templates:
            try:
                parse_template(item)
            except ValueError as exc:
                (at / i).fail(f"bad template: {exc}")
    if unique and len(set(value)) != len(value):
        at.fail(f"duplicate entry {next(v for i, v in enumerate(value) if v in value[:i])!r}")
    return tuple(value)


def _integer(at: _At, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        at.fail(f"expected an integer, got {value!r}")
    return value


def _rate(at: _At, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        at.fail(f"expected a number in [0, 1], got {value!r}")
    return float(value)


def _named_list(
    at: _At, value: dict[str, Any], lists: Mapping[str, tuple[str, ...]]
) -> tuple[str, ...]:
    name = _fields(at, value, ("list",))["list"]
    if name not in lists:
        (at / "list").fail(f"unknown list {name!r} (common.json lists: {', '.join(lists)})")
    return lists[name]


# ------------------------------------------------------------------------------------------ rules


def _fn_num(at: _At, spec: dict[str, Any], lists: Mapping[str, tuple[str, ...]]) -> Draw:
    """``{"fn": "num", "lo": 2, "hi": 45, "format": "02d"}``: a random integer in ``[lo, hi]``, formatted."""
    _fields(at, spec, ("fn", "lo", "hi"), ("format",))
    lo, hi = _integer(at / "lo", spec["lo"]), _integer(at / "hi", spec["hi"])
    fmt = spec.get("format", "")
    if lo > hi:
        at.fail(f"lo ({lo}) is greater than hi ({hi})")
    try:
        format(lo, fmt)
    except (TypeError, ValueError):
        (at / "format").fail(f"not an integer format spec: {fmt!r}")
    return lambda r: format(r.randint(lo, hi), fmt)


def _fn_join(at: _At, spec: dict[str, Any], lists: Mapping[str, tuple[str, ...]]) -> Draw:
    """``{"fn": "join", "parts": [...], "sep": "-"}``: parts drawn in order and joined.

    A part is literal text (a string), one item of a list (a list, or ``{"list": name}``) or a nested ``fn``.
    """
    _fields(at, spec, ("fn", "parts"), ("sep",))
    sep = spec.get("sep", "")
    if not isinstance(sep, str):
        (at / "sep").fail("expected a string")
    if not isinstance(spec["parts"], list) or not spec["parts"]:
        (at / "parts").fail("expected a non-empty list")
    parts: list[Draw] = []
    for i, part in enumerate(spec["parts"]):
        where = at / "parts" / i
        if isinstance(part, str):
            parts.append(_literal(part))
        elif isinstance(part, list) or (isinstance(part, dict) and "list" in part):
            parts.append(
                _choice(
                    _strings(where, part)
                    if isinstance(part, list)
                    else _named_list(where, part, lists)
                )
            )
        elif isinstance(part, dict) and "fn" in part:
            parts.append(_fn(where, part, lists))
        else:
            where.fail('expected a string, a list, {"list": name} or {"fn": ...}')
    return lambda r: sep.join(part(r) for part in parts)


def _literal(text: str) -> Draw:
    return lambda r: text


def _choice(items: tuple[str, ...]) -> Draw:
    return lambda r: r.choice(items)


def _fn_some(at: _At, spec: dict[str, Any], lists: Mapping[str, tuple[str, ...]]) -> Draw:
    """``{"fn": "some", "items": [...], "lo": 1, "hi": 3, "last": " and "}``: a random subset as an English list."""
    _fields(at, spec, ("fn", "items", "lo", "hi"), ("last",))
    raw = spec["items"]
    items = (
        _named_list(at / "items", raw, lists)
        if isinstance(raw, dict)
        else _strings(at / "items", raw)
    )
    lo, hi = _integer(at / "lo", spec["lo"]), _integer(at / "hi", spec["hi"])
    last = spec.get("last", " and ")
    if not 1 <= lo <= hi:
        at.fail(f"need 1 <= lo <= hi, got lo={lo}, hi={hi}")
    if not isinstance(last, str):
        (at / "last").fail("expected a string")

    def pick(r: random.Random) -> str:
        chosen = r.sample(items, r.randint(lo, min(hi, len(items))))
        return chosen[0] if len(chosen) == 1 else ", ".join(chosen[:-1]) + last + chosen[-1]

    return pick


FUNCTIONS: dict[str, Callable[[_At, dict[str, Any], Mapping[str, tuple[str, ...]]], Draw]] = {
    "num": _fn_num,
    "join": _fn_join,
    "some": _fn_some,
}
"""The ``fn`` names a phrase-bank rule may use, each with the builder that checks its fields."""


def _fn(at: _At, spec: dict[str, Any], lists: Mapping[str, tuple[str, ...]]) -> Draw:
    name = spec["fn"]
    if not isinstance(name, str) or name not in FUNCTIONS:
        (at / "fn").fail(f"unknown fn {name!r} (known: {', '.join(FUNCTIONS)})")
    return FUNCTIONS[name](at, spec, lists)


def _rule(
    at: _At, value: object, lists: Mapping[str, tuple[str, ...]], scope: Mapping[str, Rule]
) -> Rule:
    if isinstance(value, list):
        return _strings(at, value, templates=True)
    if isinstance(value, dict) and "fn" in value:
        return _fn(at, value, lists)
    if isinstance(value, dict) and "list" in value:
        return _strings(at, list(_named_list(at, value, lists)), templates=True)
    if isinstance(value, dict) and "rule" in value:
        name = _fields(at, value, ("rule",))["rule"]
        if name not in scope:
            (at / "rule").fail(f"unknown rule {name!r}")
        return scope[name]
    at.fail('expected a list of templates, {"list": name}, {"rule": name} or {"fn": ...}')


def _rules(
    at: _At, value: object, lists: Mapping[str, tuple[str, ...]], scope: Mapping[str, Rule]
) -> dict[str, Rule]:
    return {name: _rule(at / name, rule, lists, scope) for name, rule in _object(at, value).items()}


# ------------------------------------------------------------------------------------------ banks

_NAME_LISTS = (
    "first_names",
    "surnames",
    "helper_names",
    "locations",
    "greetings",
    "closings",
    "channels",
    "sign_offs",
    "field_sign_offs",
)


def build_common(
    data: Mapping[str, Any], source: str = f"{PHRASES_DIR}/{COMMON_FILE}"
) -> CommonBank:
    """Check the common bank's JSON object and build it."""
    at = _At(source)
    _fields(
        at,
        data,
        ("lists", "rules", "contractions", "paraphrases", *_NAME_LISTS, "feedback_comments"),
    )
    lists = {
        name: _strings(at / "lists" / name, items)
        for name, items in _object(at / "lists", data["lists"]).items()
    }
    rules = _rules(at / "rules", data["rules"], lists, {})
    if not callable(rules.get("ticket")):
        (at / "rules").fail(
            "needs a 'ticket' rule drawn by a {\"fn\": ...} (every conversation has a ticket number)"
        )
    names = {key: _strings(at / key, data[key], unique=key == "first_names") for key in _NAME_LISTS}
    for key in ("sign_offs", "field_sign_offs"):
        for i, template in enumerate(names[key]):
            try:
                template.format(first="", full="", location="")
            except (KeyError, IndexError, ValueError) as exc:
                (at / key / i).fail(
                    f"only {{first}}, {{full}} and {{location}} may be used: {exc!r}"
                )
    contractions = _object(at / "contractions", data["contractions"])
    for word, full in contractions.items():
        if not isinstance(full, str):
            (at / "contractions" / word).fail("expected a string")
    synonyms = {
        word: _strings(at / "paraphrases" / word, alts)
        for word, alts in _object(at / "paraphrases", data["paraphrases"]).items()
    }
    comments = data["feedback_comments"]
    if (
        not isinstance(comments, list)
        or not comments
        or not all(c is None or isinstance(c, str) for c in comments)
    ):
        (at / "feedback_comments").fail("expected a non-empty list of strings or nulls")
    return CommonBank(
        lists=lists,
        rules=rules,
        **names,
        feedback_comments=tuple(comments),
        paraphraser=Paraphraser(dict(contractions), synonyms),
    )


def build_persona(
    name: str, data: Mapping[str, Any], common: CommonBank, source: str | None = None
) -> PersonaSpec:
    """Check one persona's JSON object and build its :class:`PersonaSpec` (rules may refer to ``common``'s)."""
    at = _At(source or f"{PHRASES_DIR}/{name}.json")
    _fields(
        at,
        data,
        ("roles", "departments", "devices", "rules", "topics"),
        ("fixed", "expand_rate", "user_style"),
    )
    lists = common.lists
    rules = _rules(at / "rules", data["rules"], lists, common.rules)
    scope = ChainMap(rules, dict(common.rules))
    user_style = (
        _strings(at / "user_style", data["user_style"], unique=True) if "user_style" in data else ()
    )
    for i, rule in enumerate(user_style):
        if rule not in rules:
            (at / "user_style" / i).fail(f"{rule!r} is not one of this persona's rules")
    if not isinstance(data["topics"], list) or not data["topics"]:
        (at / "topics").fail("expected a non-empty list of topics")
    topics = tuple(_topic(at / "topics" / i, t, lists, scope) for i, t in enumerate(data["topics"]))
    seen = [t.name for t in topics]
    if len(set(seen)) != len(seen):
        (at / "topics").fail(
            f"duplicate topic name {next(n for i, n in enumerate(seen) if n in seen[:i])!r}"
        )
    return PersonaSpec(
        name=name,
        roles=_strings(at / "roles", data["roles"]),
        departments=_strings(at / "departments", data["departments"]),
        devices=_strings(at / "devices", data["devices"]),
        topics=topics,
        rules=rules,
        fixed=_rules(at / "fixed", data.get("fixed", {}), lists, scope),
        expand_rate=_rate(at / "expand_rate", data.get("expand_rate", 0.2)),
        user_style=user_style,
    )


def _topic(
    at: _At, value: object, lists: Mapping[str, tuple[str, ...]], scope: Mapping[str, Rule]
) -> Topic:
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        at = _At(at.source, f"{at.path} ({value['name']})")
    t = _fields(
        at,
        value,
        ("name", "ask", "lead", "steps", "symptom"),
        ("extra", "diag", "fixed", "rules", "match", "ordered"),
    )
    if not isinstance(t["name"], str) or not t["name"]:
        (at / "name").fail("expected a non-empty string")
    ask, lead = (
        _strings(at / "ask", t["ask"], templates=True),
        _strings(at / "lead", t["lead"], templates=True),
    )
    if not isinstance(t["steps"], list) or not t["steps"]:
        (at / "steps").fail("expected a non-empty list of step groups")
    steps = tuple(_strings(at / "steps" / i, g, templates=True) for i, g in enumerate(t["steps"]))
    match: tuple[tuple[int, ...], ...] = ()
    if "match" in t:
        if not isinstance(t["match"], list) or len(t["match"]) != len(ask):
            (at / "match").fail(f"expected one list of lead indices per ask template ({len(ask)})")
        for i, leads in enumerate(t["match"]):
            if not isinstance(leads, list) or not leads:
                (at / "match" / i).fail("expected a non-empty list of lead indices")
            for j, index in enumerate(leads):
                if not 0 <= _integer(at / "match" / i / j, index) < len(lead):
                    (at / "match" / i / j).fail(
                        f"lead index {index} out of range (0..{len(lead) - 1})"
                    )
        match = tuple(tuple(leads) for leads in t["match"])
    if not isinstance(t.get("ordered", False), bool):
        (at / "ordered").fail("expected true or false")
    topic_rules = _rules(at / "rules", t.get("rules", {}), lists, scope)
    for reserved in ("symptom", "diag"):
        if reserved in topic_rules:
            (at / "rules" / reserved).fail(f"{reserved!r} is a topic field, not a rule")
    return Topic(
        name=t["name"],
        ask=ask,
        lead=lead,
        steps=steps,
        symptom=_strings(at / "symptom", t["symptom"], templates=True),
        extra=_strings(at / "extra", t["extra"], templates=True) if "extra" in t else (),
        diag=_strings(at / "diag", t["diag"], templates=True) if "diag" in t else (),
        fixed=_rules(at / "fixed", t.get("fixed", {}), lists, scope),
        rules=topic_rules,
        match=match,
        ordered=t.get("ordered", False),
    )
