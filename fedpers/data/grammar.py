"""Template grammar of the synthetic service desk: parse, expand and tidy templates, paraphrase the result.

A template is text with ``[a|b]`` inline choices (nestable; an empty alternative makes the choice optional),
``{slot}`` references and ``\\`` escapes. Slots resolve to per-conversation values first, then to rules: a rule
is either a tuple of templates (one is drawn and expanded recursively) or a callable that draws a value.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, cached_property

Rule = tuple[str, ...] | Callable[[random.Random], str]
Rules = Mapping[str, Rule]
Node = str | tuple[str, object]


@cache
def parse_template(template: str) -> tuple[Node, ...]:
    """Parse ``[a|b]`` choices (nestable; an empty alternative makes it optional), ``{slot}`` and ``\\`` escapes."""
    nodes, pos = _parse_seq(template, 0, depth=0)
    if pos != len(template):
        raise ValueError(f"unbalanced ']' at {pos} in {template!r}")
    return nodes


def _parse_seq(t: str, pos: int, depth: int) -> tuple[tuple[Node, ...], int]:
    nodes: list[Node] = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            nodes.append("".join(buf))
            buf.clear()

    while pos < len(t):
        ch = t[pos]
        if ch == "\\" and pos + 1 < len(t) and t[pos + 1] in "[]|{}\\":
            buf.append(t[pos + 1])
            pos += 2
        elif ch == "[":
            flush()
            alts = []
            pos += 1
            while True:
                seq, pos = _parse_seq(t, pos, depth + 1)
                alts.append(seq)
                if pos >= len(t):
                    raise ValueError(f"unclosed '[' in {t!r}")
                pos += 1
                if t[pos - 1] == "]":
                    break
            nodes.append(("alt", tuple(alts)))
        elif ch == "]" or (ch == "|" and depth > 0):
            break
        elif ch == "{":
            flush()
            end = t.find("}", pos)
            if end < 0:
                raise ValueError(f"unclosed '{{' at {pos} in {t!r}")
            nodes.append(("slot", t[pos + 1 : end]))
            pos = end + 1
        else:
            buf.append(ch)
            pos += 1
    flush()
    return tuple(nodes), pos


def expand(template: str, rng: random.Random, rules: Rules, ctx: Mapping[str, str]) -> str:
    """Expand ``template``: choices at random, slots from ``ctx`` first, then ``rules`` (recursively)."""
    out: list[str] = []
    _render(parse_template(template), rng, rules, ctx, out)
    return "".join(out)


def _render(
    nodes: tuple[Node, ...],
    rng: random.Random,
    rules: Rules,
    ctx: Mapping[str, str],
    out: list[str],
) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
            continue
        kind, value = node
        if kind == "alt":
            alts: tuple[tuple[Node, ...], ...] = value  # type: ignore[assignment]
            _render(alts[rng.randrange(len(alts))], rng, rules, ctx, out)
            continue
        name: str = value  # type: ignore[assignment]
        if name in ctx:
            out.append(ctx[name])
        elif name not in rules:
            raise KeyError(f"unknown template slot {{{name}}}")
        elif callable(rule := rules[name]):
            out.append(rule(rng))
        else:
            _render(parse_template(rule[rng.randrange(len(rule))]), rng, rules, ctx, out)


def _tidy_prose(p: str) -> str:
    p = re.sub(r"[ \t]+", " ", p)
    p = re.sub(r" ([,.;:!?)])", r"\1", p)
    p = re.sub(r"([,;:])(?=[,.;:!?])", "", p)
    p = re.sub(r"\.\.+", ".", p)
    p = re.sub(r"([!?])[.,]", r"\1", p)
    return re.sub(r"([.!?] )([a-z])", lambda m: m.group(1) + m.group(2).upper(), p)


def tidy(text: str) -> str:
    """Normalize spacing and punctuation outside inline code; capitalize after sentence ends."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = _tidy_prose(parts[i])
    return "`".join(parts).strip()


def cap(text: str) -> str:
    """Capitalize the first character."""
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class Paraphraser:
    """Safe rewrites of prose: contractions written out in full, words swapped for synonyms.

    ``contractions`` maps a contraction to its full form; ``synonyms`` maps a word or phrase to the alternatives
    that may replace it (the word itself included). Matches are whole words, lower-case anywhere or capitalized
    at the start of a sentence or line; longer keys win over shorter ones.
    """

    contractions: Mapping[str, str]
    synonyms: Mapping[str, tuple[str, ...]]

    @cached_property
    def _pattern(self) -> re.Pattern[str]:
        keys = sorted({**self.contractions, **self.synonyms}, key=len, reverse=True)
        return re.compile(
            r"(?<![\w'-])("
            + "|".join(re.escape(k) for k in keys)
            + r")(?![\w'-])"
            + r"|(?:^|(?<=[.!?:] )|(?<=\n))("
            + "|".join(re.escape(cap(k)) for k in keys)
            + r")(?![\w'-])"
        )

    def vary(self, text: str, rng: random.Random, expand_rate: float) -> str:
        """Paraphrase prose outside inline code: expand contractions with ``expand_rate``, swap safe synonyms."""

        def swap(m: re.Match[str]) -> str:
            word = m.group(0)
            known = word in self.contractions or word in self.synonyms
            key = word if known else word[0].lower() + word[1:]
            if key in self.contractions:
                out = self.contractions[key] if rng.random() < expand_rate else key
            else:
                out = rng.choice(self.synonyms[key])
            return cap(out) if word[0].isupper() else out

        parts = text.split("`")
        for i in range(0, len(parts), 2):
            parts[i] = self._pattern.sub(swap, parts[i])
        return "`".join(parts)
