"""Synthetic IT service-desk conversations: five personas with distinct topics and answer styles, per-user quirks.

Text is built compositionally from a small template grammar (:mod:`fedpers.data.grammar`) over the phrase banks
shipped as JSON (:mod:`fedpers.data.phrasebank`), with many randomized slots, so held-out conversations share a
persona's style and topics but rarely its exact sentences. This module makes the users, composes each persona's
answers and assembles conversations. Everything is drawn from ``random.Random`` instances seeded by a SHA-256 of
``(config.seed, ...)``; no global random state.
"""

from __future__ import annotations

import hashlib
import random
from collections import ChainMap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from fedpers.data.grammar import Rule, cap, expand, parse_template, tidy
from fedpers.data.personas import PERSONAS
from fedpers.data.phrasebank import PersonaSpec, Topic, load_phrasebank
from fedpers.data.schema import Conversation, Feedback, Turn

_BANK = load_phrasebank(PERSONAS)
PERSONA_SPECS: Mapping[str, PersonaSpec] = _BANK.personas
COMMON_RULES: dict[str, Rule] = dict(_BANK.common.rules)
FIRST_NAMES = _BANK.common.first_names
SURNAMES = _BANK.common.surnames
HELPER_NAMES = _BANK.common.helper_names
LOCATIONS = _BANK.common.locations
GREETINGS = _BANK.common.greetings
CLOSINGS = _BANK.common.closings
CHANNELS = _BANK.common.channels
SIGN_OFFS = _BANK.common.sign_offs
FIELD_SIGN_OFFS = _BANK.common.field_sign_offs
FEEDBACK_COMMENTS = _BANK.common.feedback_comments
_PARAPHRASER = _BANK.common.paraphraser
DETAIL_LEVELS = {"brief": -1, "standard": 0, "detailed": 1}
"""Per-user shift of the number of steps in an answer."""
FORMALITY = {"casual": 0.0, "neutral": None, "formal": 0.9}
"""Per-user probability of writing contractions out in full; ``None`` keeps the persona's rate."""

__all__ = [
    "FIRST_NAMES",
    "HELPER_NAMES",
    "PERSONAS",
    "PERSONA_SPECS",
    "PersonaSpec",
    "SyntheticConfig",
    "SyntheticUser",
    "Topic",
    "derive_seed",
    "expand",
    "generate",
    "generate_conversation",
    "make_users",
    "parse_template",
]


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and randomness of a synthetic dataset."""

    users_per_persona: int = 8
    conversations_per_user: int = 24
    seed: int = 0
    personas: tuple[str, ...] = PERSONAS
    exchange_weights: tuple[float, float, float] = (0.45, 0.35, 0.2)
    feedback_rate: float = 0.3
    start_date: str = "2024-01-08"
    days: int = 180

    def __post_init__(self) -> None:
        if self.users_per_persona < 1 or self.conversations_per_user < 1:
            raise ValueError("users_per_persona and conversations_per_user must be >= 1")
        unknown = set(self.personas) - set(PERSONAS)
        if unknown or not self.personas:
            raise ValueError(
                f"personas must be a non-empty subset of {PERSONAS}, got {self.personas}"
            )
        if len(self.personas) * self.users_per_persona > len(FIRST_NAMES):
            raise ValueError(
                f"at most {len(FIRST_NAMES)} users in total (one distinct first name each)"
            )
        if (
            len(self.exchange_weights) != 3
            or min(self.exchange_weights) < 0
            or sum(self.exchange_weights) <= 0
        ):
            raise ValueError(
                "exchange_weights must be three non-negative weights for 1, 2 and 3 exchanges"
            )
        if not 0.0 <= self.feedback_rate <= 1.0:
            raise ValueError("feedback_rate must be in [0, 1]")


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from ``parts`` via SHA-256 (stable, unlike ``hash()``)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


# ------------------------------------------- users -------------------------------------------


@dataclass(frozen=True)
class SyntheticUser:
    """A generated user: identifiers, persona, profile and the slot values that carry their quirks."""

    user_id: str
    persona: str
    first: str
    profile: Mapping[str, str]
    topic_order: tuple[int, ...]
    ctx: Mapping[str, str]
    style: Mapping[str, Rule]
    expand_rate: float


def make_users(config: SyntheticConfig) -> list[SyntheticUser]:
    """All users of a config, persona by persona; first names are unique across the dataset."""
    names = list(FIRST_NAMES)
    random.Random(derive_seed(config.seed, "names")).shuffle(names)
    users = []
    for p_index, persona in enumerate(config.personas):
        spec = PERSONA_SPECS[persona]
        for i in range(config.users_per_persona):
            n = p_index * config.users_per_persona + i
            rng = random.Random(derive_seed(config.seed, "user", persona, i))
            users.append(_make_user(spec, f"user{n:03d}", names[n], rng))
    return users


def _make_user(spec: PersonaSpec, user_id: str, first: str, rng: random.Random) -> SyntheticUser:
    full = f"{first} {rng.choice(SURNAMES)}"
    location = rng.choice(LOCATIONS)
    device = rng.choice(spec.devices)
    sign_offs = SIGN_OFFS + (FIELD_SIGN_OFFS if spec.name == "field_worker" else ())
    profile = {
        "name": full,
        "role": rng.choice(spec.roles),
        "department": rng.choice(spec.departments),
        "location": location,
        "device": device,
        "greeting": rng.choice(GREETINGS),
        "contact_channel": rng.choice(CHANNELS),
        "sign_off": rng.choice(sign_offs).format(first=first, full=full, location=location),
        "assistant_closing": rng.choice(CLOSINGS),
        "detail": rng.choice(tuple(DETAIL_LEVELS)),
        "formality": rng.choice(tuple(FORMALITY)),
    }
    ctx = {
        "name": first,
        "hello": f"{profile['greeting']} {first}",
        "device": device,
        "location": location,
        "channel": profile["contact_channel"],
    }
    if spec.name == "leadership":
        profile["delegate"] = ctx["delegate"] = rng.choice(HELPER_NAMES)
    elif spec.name == "new_employee":
        profile["buddy"] = ctx["buddy"] = rng.choice(HELPER_NAMES)
    elif spec.name == "field_worker":
        profile["base"] = ctx["base"] = f"the {location} depot"
    elif spec.name == "knowledge_worker":
        ctx["team"] = f"the {location} platform team"
    order = list(range(len(spec.topics)))
    rng.shuffle(order)
    style = {name: _user_subset(spec.rules[name], rng) for name in spec.user_style}
    rate = FORMALITY[profile["formality"]]
    return SyntheticUser(
        user_id,
        spec.name,
        first,
        profile,
        tuple(order),
        ctx,
        style,
        spec.expand_rate if rate is None else rate,
    )


def _user_subset(rule: Rule, rng: random.Random) -> Rule:
    """The user's habitual share of a rule's alternatives: about two thirds of them, at least one."""
    if callable(rule) or len(rule) < 2:
        return rule
    return tuple(rng.sample(rule, max(1, round(len(rule) * 2 / 3))))


# ------------------------------------------- composition -------------------------------------------


class _Composer:
    """Expands templates for one conversation with its rng, rules and fixed slot values."""

    def __init__(self, spec: PersonaSpec, user: SyntheticUser, rng: random.Random) -> None:
        self.spec, self.user, self.rng = spec, user, rng
        self.ctx: dict[str, str] = dict(user.ctx)
        self.rules: ChainMap[str, Rule] = ChainMap(
            {}, dict(user.style), dict(spec.rules), COMMON_RULES
        )
        self.used: dict[str, set[str]] = {}
        self.ask_index = 0
        self.detail = DETAIL_LEVELS[user.profile["detail"]]
        self._draw({"ticket": COMMON_RULES["ticket"]})
        self._draw(spec.fixed)

    def _draw(self, fixed: Mapping[str, Rule]) -> None:
        for name, rule in fixed.items():
            self.ctx[name] = rule(self.rng) if callable(rule) else self.x(self.rng.choice(rule))

    def use_topic(self, topic: Topic) -> None:
        """Make ``topic`` current: its rules shadow the persona's, its fixed slots are (re)drawn."""
        self.rules.maps[0] = {**topic.rules, "symptom": topic.symptom, "diag": topic.diag or ("",)}
        self._draw(topic.fixed)
        self.used.setdefault(topic.name, set())

    def x(self, template: str) -> str:
        """Expand and tidy ``template`` (no capitalization of the first letter)."""
        return tidy(expand(template, self.rng, self.rules, self.ctx))

    def s(self, template: str) -> str:
        """Expand as a sentence: tidy and capitalized."""
        return cap(self.x(template))

    def pick(self, templates: tuple[str, ...]) -> str:
        return self.s(self.rng.choice(templates))

    def ask(self, topic: Topic, prefix: str) -> str:
        """A user's opening message for ``topic``; remembers which ask was used so the lead can match it."""
        self.ask_index = self.rng.randrange(len(topic.ask))
        return _user_text(self, prefix + topic.ask[self.ask_index])

    def lead(self, topic: Topic) -> str:
        """The first sentence of an answer, restricted to the leads that fit the current ask."""
        allowed = topic.match[self.ask_index] if topic.match else range(len(topic.lead))
        return self.s(topic.lead[self.rng.choice(list(allowed))])

    def rule(self, name: str) -> str:
        return self.s("{" + name + "}")

    def distinct(self, name: str, k: int) -> list[str]:
        """``k`` expansions of rule ``name`` from different alternatives where possible (e.g. 'then', 'next')."""
        options = list(self.rules[name])  # type: ignore[arg-type]
        picks = self.rng.sample(options, min(k, len(options))) + self.rng.choices(
            options, k=max(0, k - len(options))
        )
        return [self.x(p) for p in picks]

    def steps(self, topic: Topic, counts: tuple[int, ...]) -> list[str]:
        """Unused steps of ``topic``: ``counts[g]`` from group ``g`` (topped up from other groups).

        Steps are shuffled within their group unless the topic is ``ordered``.
        """
        chosen_all: list[str] = []
        used = self.used[topic.name]
        for group, k in zip(topic.steps, counts):
            free = [s for s in group if s not in used]
            chosen = self.rng.sample(free, min(k, len(free)))
            if topic.ordered:
                chosen.sort(key=group.index)
            used.update(chosen)
            chosen_all += chosen
        missing = sum(counts) - len(chosen_all)
        if missing > 0:
            spare = [s for group in topic.steps for s in group if s not in used][:missing]
            used.update(spare)
            chosen_all += spare
        return [self.x(s) for s in chosen_all]

    def remaining(self, topic: Topic) -> int:
        return sum(1 for group in topic.steps for s in group if s not in self.used[topic.name])


def _counts(c: _Composer, topic: Topic, total: int) -> tuple[int, ...]:
    """Spread ``total`` steps (shifted by the user's detail preference) over the groups, one from the largest."""
    total = max(1, total + c.detail)
    sizes = [len(g) for g in topic.steps]
    main = max(range(len(sizes)), key=lambda i: sizes[i])
    counts = [0] * len(sizes)
    counts[main] = 1
    for _ in range(total - 1):
        counts[c.rng.choices(range(len(sizes)), weights=sizes)[0]] += 1
    return tuple(counts)


def _answer_leadership(c: _Composer, topic: Topic) -> str:
    """Bottom line first, one or two supporting facts, optional delegation; 20-50 words."""
    parts = [f"{c.ctx['hello']} — {c.lead(topic)}"]
    parts += [cap(s) for s in c.steps(topic, _counts(c, topic, c.rng.choice((1, 1, 2))))]
    if c.rng.random() < 0.45:
        parts.append(c.rule("delegate_line"))
    return " ".join(parts)


def _answer_knowledge(c: _Composer, topic: Topic) -> str:
    """Diagnosis, then a long numbered list of concrete commands, then how to follow up."""
    steps = c.steps(topic, _counts(c, topic, c.rng.randint(4, 6)))
    body = "\n".join(f"{i}. {cap(s)}" for i, s in enumerate(steps, 1))
    c.ctx["k"] = str(c.rng.randint(1, len(steps)))
    return (
        f"{c.ctx['hello']},\n\n{c.lead(topic)}\n\n{c.rule('intro')}\n{body}\n\n{c.rule('closing')}"
    )


def _answer_field(c: _Composer, topic: Topic) -> str:
    """Practical: cause, two or three quick actions, always an offline fallback."""
    steps = c.steps(topic, _counts(c, topic, c.rng.randint(2, 3)))
    links = c.distinct("link", len(steps) - 1)
    linked = [cap(steps[0])] + [cap(f"{link} {s}") for link, s in zip(links, steps[1:])]
    if topic.extra and c.rng.random() < 0.5:
        fallback = c.pick(topic.extra)
    else:
        fallback = c.s("{fb_a} {fb_b}")
    return " ".join([f"{c.ctx['hello']} — {c.lead(topic)}", *linked, fallback])


def _answer_admin(c: _Composer, topic: Topic) -> str:
    """Friendly and procedural: First/Next/Finally steps and a warm sign-off."""
    steps = c.steps(topic, _counts(c, topic, c.rng.randint(3, 4)))
    n = len(steps)
    words = (
        [c.x("{first}")] if n == 1 else [c.x("{first}"), *c.distinct("next", n - 2), c.x("{last}")]
    )
    seq = [cap(tidy(f"{w} {s}")) for w, s in zip(words, steps)]
    opener = [c.rule("opener")] if c.rng.random() < 0.6 else []
    return " ".join([f"{c.ctx['hello']}!", *opener, c.lead(topic), *seq, c.rule("reassure")])


def _answer_new(c: _Composer, topic: Topic) -> str:
    """Warm and explanatory: welcome, a definition of the key term, explained steps, encouragement."""
    steps = c.steps(topic, _counts(c, topic, c.rng.randint(2, 3)))
    seq = [
        cap(tidy(f"{w} {s}"))
        for w, s in zip([c.x("{seq1}"), *c.distinct("seqn", len(steps) - 1)], steps)
    ]
    welcome = c.s("{wel_a} {wel_b}") if c.rng.random() < 0.5 else c.rule("wel_a")
    parts = [f"{c.ctx['hello']}! {welcome}"]
    if topic.extra and c.rng.random() < 0.8:
        parts.append(c.pick(topic.extra))
    parts += [c.lead(topic), *seq]
    if c.rng.random() < 0.6:
        parts.append(c.rule("encourage"))
    return " ".join(parts)


ANSWER_STYLES: dict[str, Callable[[_Composer, Topic], str]] = {
    "leadership": _answer_leadership,
    "knowledge_worker": _answer_knowledge,
    "field_worker": _answer_field,
    "admin_hr": _answer_admin,
    "new_employee": _answer_new,
}


def _followup_answer(c: _Composer, topic: Topic) -> str:
    """Answer to 'still broken': acknowledge by name, remaining steps in persona style, escalation."""
    persona = c.spec.name
    if persona == "knowledge_worker":
        steps = c.steps(topic, _counts(c, topic, c.rng.randint(2, 3)))
        body = "\n".join(f"{i}. {cap(s)}" for i, s in enumerate(steps, 1))
        return f"{c.rule('ack2')}\n{body}\n\n{c.rule('escalate')}"
    steps = c.steps(topic, _counts(c, topic, 1 if persona == "leadership" else 2))
    if persona == "admin_hr":
        steps = [c.x(f"{{next}} {s}") for s in steps]
    return " ".join([c.rule("ack"), *(cap(s) for s in steps), c.rule("escalate")])


def _user_text(c: _Composer, template: str) -> str:
    return f"{c.s(template)}\n{c.user.profile['sign_off']}"


def _exchanges(
    c: _Composer, topics: tuple[Topic, ...], first_topic: int, n_exchanges: int
) -> list[tuple[str, str]]:
    """``(user, assistant)`` texts: the opening problem, then 'still broken', another topic or thanks."""
    topic = topics[first_topic]
    c.use_topic(topic)
    answer = ANSWER_STYLES[c.spec.name]
    out = [(c.ask(topic, "{ask_pre}"), answer(c, topic))]
    while len(out) < n_exchanges:
        kinds = ["still", "another"] + (["thanks"] if len(out) == n_exchanges - 1 else [])
        if c.remaining(topic) == 0:
            kinds.remove("still")
        kind = c.rng.choice(kinds)
        if kind == "thanks":
            out.append((_user_text(c, "{thanks}"), c.rule("close_a")))
        elif kind == "still":
            out.append((_user_text(c, "{still}"), _followup_answer(c, topic)))
        else:
            topic = topics[c.rng.choice([i for i, t in enumerate(topics) if t is not topic])]
            c.use_topic(topic)
            out.append((c.ask(topic, "{also}"), answer(c, topic)))
    return out


def _timestamps(rng: random.Random, config: SyntheticConfig, n: int) -> list[str]:
    start = datetime.fromisoformat(config.start_date) + timedelta(
        days=rng.randrange(config.days), hours=rng.randint(7, 18), minutes=rng.randrange(60)
    )
    out = []
    for _ in range(n):
        out.append(start.strftime("%Y-%m-%dT%H:%M:%SZ"))
        start += timedelta(seconds=rng.randint(30, 600))
    return out


def _feedback(rng: random.Random) -> Feedback:
    rating = rng.choices((5, 4, 3, 2), weights=(5, 4, 2, 1))[0]
    sentiment = "positive" if rating >= 4 else "neutral" if rating == 3 else "negative"
    comment = rng.choice(FEEDBACK_COMMENTS)
    return Feedback(rating=rating, sentiment=sentiment, comment=comment)


def _closing_sep(text: str) -> str:
    return "\n\n" if "\n" in text else " "


def generate_conversation(config: SyntheticConfig, user: SyntheticUser, index: int) -> Conversation:
    """Conversation ``index`` of ``user``; depends only on the seed, the user and ``index``."""
    spec = PERSONA_SPECS[user.persona]
    rng = random.Random(derive_seed(config.seed, "conversation", user.user_id, index))
    c = _Composer(spec, user, rng)
    n_exchanges = rng.choices((1, 2, 3), weights=config.exchange_weights)[0]
    exchanges = _exchanges(
        c, spec.topics, user.topic_order[index % len(user.topic_order)], n_exchanges
    )
    stamps = _timestamps(rng, config, 2 * len(exchanges))
    turns: list[Turn] = []
    for i, (user_text, assistant_text) in enumerate(exchanges):
        turns.append(Turn(role="user", text=user_text, ts=stamps[2 * i]))
        varied = _PARAPHRASER.vary(assistant_text, rng, user.expand_rate)
        answer = f"{varied}{_closing_sep(assistant_text)}{user.profile['assistant_closing']}"
        turns.append(Turn(role="assistant", text=answer, ts=stamps[2 * i + 1]))
    if rng.random() < config.feedback_rate:
        last = turns[-1]
        turns[-1] = Turn(role=last.role, text=last.text, ts=last.ts, feedback=_feedback(rng))
    return Conversation(
        user_id=user.user_id,
        conversation_id=f"{user.user_id}-c{index:03d}",
        turns=tuple(turns),
        persona=user.persona,
        profile=dict(user.profile),
    )


def generate(config: SyntheticConfig | None = None) -> list[Conversation]:
    """The full synthetic dataset for ``config``: users in persona order, conversations in index order."""
    config = config or SyntheticConfig()
    return [
        generate_conversation(config, user, i)
        for user in make_users(config)
        for i in range(config.conversations_per_user)
    ]
