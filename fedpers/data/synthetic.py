"""Synthetic IT service-desk conversations: five personas with distinct topics and answer styles, per-user quirks.

Text is built compositionally from a small template grammar (``[a|b|]`` inline choices, ``{slot}``
references to rules or per-conversation values) with many randomized slots, so held-out conversations
share a persona's style and topics but rarely its exact sentences. Everything is drawn from
``random.Random`` instances seeded by a SHA-256 of ``(config.seed, ...)``; no global random state.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import ChainMap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache

from fedpers.data.schema import Conversation, Feedback, Turn

PERSONAS = ("leadership", "knowledge_worker", "field_worker", "admin_hr", "new_employee")

Rule = tuple[str, ...] | Callable[[random.Random], str]
Rules = Mapping[str, Rule]


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
            raise ValueError(f"personas must be a non-empty subset of {PERSONAS}, got {self.personas}")
        if len(self.personas) * self.users_per_persona > len(FIRST_NAMES):
            raise ValueError(f"at most {len(FIRST_NAMES)} users in total (one distinct first name each)")
        if len(self.exchange_weights) != 3 or min(self.exchange_weights) < 0 or sum(self.exchange_weights) <= 0:
            raise ValueError("exchange_weights must be three non-negative weights for 1, 2 and 3 exchanges")
        if not 0.0 <= self.feedback_rate <= 1.0:
            raise ValueError("feedback_rate must be in [0, 1]")


def derive_seed(*parts: object) -> int:
    """A 64-bit seed from ``parts`` via SHA-256 (stable, unlike ``hash()``)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


# ---------------------------------------------------------------------------------------------
# Template grammar
# ---------------------------------------------------------------------------------------------

Node = str | tuple[str, object]


@lru_cache(maxsize=None)
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
        elif ch in "|]" and depth > 0:
            break
        elif ch == "]":
            break
        elif ch == "{":
            flush()
            end = t.index("}", pos)
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


def _render(nodes: tuple[Node, ...], rng: random.Random, rules: Rules, ctx: Mapping[str, str], out: list[str]) -> None:
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


_CONTRACTIONS = {
    "can't": "cannot", "don't": "do not", "won't": "will not", "doesn't": "does not", "isn't": "is not",
    "didn't": "did not", "aren't": "are not", "you'll": "you will", "I'll": "I will", "we'll": "we will",
    "you're": "you are", "we're": "we are", "they're": "they are", "I've": "I have", "we've": "we have",
}
_PARAPHRASES = {
    "usually": ("usually", "normally", "typically", "generally"),
    "sign in": ("sign in", "log in"),
    "log in": ("log in", "sign in"),
    "make sure": ("make sure", "ensure", "check"),
    "again": ("again", "once more"),
    "select": ("select", "choose"),
    "choose": ("choose", "select"),
    "click": ("click", "press"),
    "your phone": ("your phone", "your mobile"),
    "in the office": ("in the office", "at the office"),
    "straight away": ("straight away", "right away"),
}
_VARY_KEYS = sorted({**_CONTRACTIONS, **_PARAPHRASES}, key=len, reverse=True)
_VARY = re.compile(
    r"(?<![\w'-])(" + "|".join(re.escape(k) for k in _VARY_KEYS) + r")(?![\w'-])"
    + r"|(?:^|(?<=[.!?:] )|(?<=\n))(" + "|".join(re.escape(cap(k)) for k in _VARY_KEYS) + r")(?![\w'-])"
)


def vary(text: str, rng: random.Random, expand_rate: float) -> str:
    """Paraphrase prose outside inline code: expand contractions with ``expand_rate``, swap safe synonyms."""

    def swap(m: re.Match[str]) -> str:
        word = m.group(0)
        key = word if word in _CONTRACTIONS or word in _PARAPHRASES else word[0].lower() + word[1:]
        if key in _CONTRACTIONS:
            out = _CONTRACTIONS[key] if rng.random() < expand_rate else key
        else:
            out = rng.choice(_PARAPHRASES[key])
        return cap(out) if word[0].isupper() else out

    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = _VARY.sub(swap, parts[i])
    return "`".join(parts)


# ---------------------------------------------------------------------------------------------
# Slot values
# ---------------------------------------------------------------------------------------------


def _num(lo: int, hi: int) -> Callable[[random.Random], str]:
    return lambda r: str(r.randint(lo, hi))


def _clock(r: random.Random) -> str:
    return f"{r.randint(7, 18)}:{r.choice(('00', '05', '10', '15', '20', '25', '30', '35', '40', '45', '50', '55'))}"


def _version(r: random.Random) -> str:
    return f"{r.randint(1, 9)}.{r.randint(0, 24)}.{r.randint(0, 12)}"


def _ticket(r: random.Random) -> str:
    return f"{r.choice(('INC', 'INC', 'REQ', 'RITM'))}{r.randint(1000000, 9999999)}"


def _hex(r: random.Random) -> str:
    return f"0x{r.choice(('8007', '8004', 'CAA2', '8018', '8009'))}{r.randint(0, 0xFFFF):04X}"


def _ip(r: random.Random) -> str:
    return f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"


def _joiner(*lists: tuple[str, ...], sep: str = "-") -> Callable[[random.Random], str]:
    return lambda r: sep.join(r.choice(items) for items in lists)


def _some(items: tuple[str, ...], lo: int, hi: int, last: str = " and ") -> Callable[[random.Random], str]:
    """A random subset of ``items`` (``lo``..``hi`` of them) in random order, joined as an English list."""

    def pick(r: random.Random) -> str:
        chosen = r.sample(items, r.randint(lo, min(hi, len(items))))
        return chosen[0] if len(chosen) == 1 else ", ".join(chosen[:-1]) + last + chosen[-1]

    return pick


def _host(r: random.Random) -> str:
    role = r.choice(("app", "api", "build", "db", "etl", "web", "worker", "k8s", "batch", "cache"))
    site = r.choice(("ams", "ber", "dub", "fra", "lis", "mad", "osl", "par", "sea", "wrs", "zrh", "tor"))
    return f"{role}-{site}-{r.choice(('prod', 'stg', 'dev', 'qa'))}{r.randint(1, 40):02d}"


_PROJ_A = ("billing", "forecast", "ingest", "pricing", "ledger", "telemetry", "payments", "search", "catalog", "routing",
           "invoice", "reporting", "identity", "inventory", "quotes", "metrics", "claims", "orders")
_PROJ_B = ("api", "etl", "service", "worker", "pipeline", "dashboard", "sync", "gateway", "jobs", "core", "loader")
_WORDS = ("alpha", "atlas", "beacon", "cobalt", "delta", "ember", "falcon", "granite", "harbor", "iris", "juniper",
          "kestrel", "lumen", "meridian", "nimbus", "orbit", "pylon", "quartz", "raven", "sierra", "tundra", "vertex")

COMMON_RULES: dict[str, Rule] = {
    "ticket": _ticket,
    "clock": _clock,
    "ver": _version,
    "mins": _num(2, 45),
    "secs": _num(5, 60),
    "n": _num(2, 19),
    "pct": _num(12, 97),
    "gb": _num(2, 64),
    "hexcode": _hex,
    "host": _host,
    "ip": _ip,
    "proj": _joiner(_PROJ_A, _PROJ_B),
    "weekday": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"),
    "colleague": ("Sanna from Finance", "Bertrand in Legal", "Odette from Strategy", "Lukas in Treasury",
                  "Mirela from Comms", "Gideon in IR", "Helga from the CFO office", "Anselm in Sales Ops"),
    "tech": ("Ravi", "Bettina", "Kofi", "Lucia", "Dorian", "Mette", "Jasper", "Nuala"),
}


# ---------------------------------------------------------------------------------------------
# Content model
# ---------------------------------------------------------------------------------------------


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
    """For each ``ask`` template, the indices of the ``lead`` templates that answer it (empty: any lead fits any ask)."""
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


# ----------------------------------------- leadership -----------------------------------------

_LEAD_RULES: dict[str, Rule] = {
    "bl": ("Bottom line", "Short answer", "Short version", "Headline", "In short", "Net", "Answer first",
           "Quick answer", "The gist", "TL;DR", "Upshot"),
    "meeting": ("board meeting", "investor briefing", "ExCo session", "quarterly review", "audit committee",
                "town hall", "leadership offsite", "analyst call", "strategy day", "budget review", "partner dinner"),
    "when": ("at {clock}", "in {mins} minutes", "in {mins} min", "after lunch", "first thing tomorrow", "on {weekday}",
             "at {clock} sharp", "{weekday} at {clock}"),
    "room": ("the boardroom", "Boardroom {n}", "the exec suite", "the {n}th-floor meeting room", "the town-hall space",
             "Room {n}.{n}", "the {location} boardroom"),
    "deck": ("board deck", "Q{q} results deck", "strategy pack", "investor update", "budget slides", "FY{yy} plan",
             "M&A summary", "pricing proposal", "risk register", "capex paper"),
    "q": ("1", "2", "3", "4"),
    "yy": ("25", "26", "27"),
    "spoofed": ("the CEO", "our bank", "a board member", "the auditors", "DocuSign", "a key supplier", "the chairman",
                "our law firm", "the tax office"),
    "amount": ("€{n}0,000", "${n}0k", "£{n}5,000", "€{n}.{n} million", "${n}{n}0,000"),
    "country": ("China", "the US", "Brazil", "India", "the UAE", "Turkey", "South Africa", "Japan", "Mexico", "Singapore"),
    "threat": ("the {vendor} breach", "ransomware exposure", "last week's phishing wave", "our MFA coverage",
               "the new {vendor} vulnerability", "supplier access risk", "the {vendor} outage"),
    "vendor": ("MOVEit", "Okta", "Citrix", "Fortinet", "Ivanti", "Atlassian", "Cisco", "Salesforce"),
    "phone": ("iPhone", "phone", "Pixel", "Galaxy"),
    "delegate_line": (
        "{delegate} can [handle|take|finish|wrap up] the rest [with us|with the desk|directly|] [today|this afternoon|before {clock}|].",
        "I've [looped in|copied|briefed|updated] {delegate} [so it's handled|so you don't have to|in case you're tied up|so nothing waits on you].",
        "{delegate} [has|now has|was sent] the [details|steps|reference {ticket}] [if you'd rather hand it off|should you want to delegate|for follow-up|].",
        "[Happy to|We can|{tech} can] [walk|take] {delegate} through it [instead|on your behalf|at {clock}|after the {meeting}].",
        "[No action needed from you|Nothing needed from you] [— {delegate} and I will close it out|; {delegate} is covering the follow-up|beyond this]."
    ),
    "close_a": (
        "[Good|Great|Glad] [to hear|it's sorted|it works], {name}[ — {ticket} closed|. Closing {ticket}|; {delegate} has the reference {ticket}].",
        "[Noted|Perfect|Excellent|Good], {name}. [I'll close {ticket}|{ticket} is resolved|Closing {ticket} at {clock}].",
        "[Thanks|Good news], {name} — [{ticket} is closed|closing {ticket}][; {delegate} has the summary| if it recurs, reply here|].",
    ),
    "ack": ("[Understood|Noted|Got it|Right|Clear], {name}.", "[On it|Understood], {name}.", "{name}, [understood|noted|acknowledged]."),
    "escalate": (
        "[A technician|{tech}|Our senior engineer] [will call you|is calling you|will ring you] [on your {device}|] [within {mins} minutes|now|before {clock}].",
        "[Escalated|Raised] to [the senior desk|priority one|the VIP desk] [under {ticket}|as {ticket}|] [— update by {clock}|; you'll hear back within {mins} min|].",
        "[{tech} will come to you|Someone will be at your desk|{tech} is on the way] [in {mins} minutes|before {clock}|before the {meeting}].",
    ),
    "ask_pre": ("", "", "", "Urgent: ", "Quick one: ", "Need help: ", "{delegate} says to ask you: "),
    "still": ("[Still not working|Still broken|No change|Didn't help|Not fixed][.| —] {symptom}.", "{symptom}. [Now what?|Next?|Please fix.|Escalate.]"),
    "thanks": ("[Works now|Sorted|Fixed|That did it][, thanks|. Thanks|].", "[All good|Working|Done], [thanks|cheers|thank you]."),
    "also": ("Also: ", "Separate thing: ", "One more: ", "And — ", "Second item: "),
}

_LEADERSHIP_TOPICS = (
    Topic(
        name="board_av",
        ask=(
            "{meeting} {when} and the screen in {room} [won't detect|isn't picking up|keeps dropping] my {device}. [Fix?|Need this working.|Can someone come up?]",
            "Can't [get|put] the {deck} on the [big screen|display|wall screen] in {room}. {meeting} [starts|kicks off] {when}.",
            "[The room system|Teams Room] in {room} [shows|says] [no signal|input not found|a black screen] with my {device}. {meeting} {when}.",
        ),
        lead=(
            "{bl}: [use|switch to] [wireless casting|the room console|the HDMI cable at the head of the table] [— it's the fastest route|and you're up in a minute|; it skips the adapter|, no dongle needed].",
            "{bl}: [{tech}|a technician|someone from AV] [is on the way to|will be in|is heading up to] {room} [in {mins} minutes|now|before {clock}].",
            "{bl}: [present from the room PC|join from the room console and share] [— the {deck} is in your OneDrive|; your {device} can stay closed|, it's already signed in].",
        ),
        steps=((
            "[reconnect|replug|reseat] the [USB-C|HDMI] adapter [firmly|at the table end|on your side] [and wait {secs} seconds|; the display needs {secs} seconds|].",
            "[press|tap] [Share|Cast|Present] on the [room panel|console|touch panel] and [pick|choose|select] your {device} [from the list|].",
            "[a backup copy of the deck|the latest {deck}|a copy of your slides] [is|sits|was put] on the room PC [desktop|under Recent|as of {clock}].",
            "[the room was rebooted|we restarted the room system|the display was reset] [remotely|from here] [at {clock}|a minute ago|].",
        ),),
        symptom=("[screen still black|still no signal|it drops every few minutes|the image flickers|sound but no picture]",),
    ),
    Topic(
        name="phishing",
        ask=(
            "[Got|Received] an email [from|supposedly from] {spoofed} asking for [an urgent|a same-day|a confidential] [wire transfer|payment] of {amount}. [Legit?|Looks off.|Real or phishing?]",
            "[Odd|Suspicious|Strange] [message|email|text] [on my {device}|this morning|at {clock}] asking me to [approve|sign] [a contract|an invoice|a payment] [via a link|through a portal I don't recognise]. [Safe?|Should I act?]",
        ),
        lead=(
            "{bl}: [don't|do not] [click|reply|act on it] [— it's phishing|— it's a spoofed sender|; it didn't come from {spoofed}|, it's fake].",
            "{bl}: [it's|this is] [a phishing attempt|fraudulent|a known scam|impersonation] [— no action needed from you|; ignore the link|— please don't respond|, already flagged].",
        ),
        steps=((
            "[we've|security has|I've] [blocked the sender|quarantined the message|pulled it from {n} other inboxes] [at {clock}|just now|].",
            "[genuine|real|all] payment requests [still need|go through] [the two-person approval|the finance portal|a call-back to a known number] [— no exceptions|, as usual|].",
            "[if you already clicked|in case you opened the link], [reset your password|I'll reset your session|we'll revoke your sessions] [— two minutes|today|now].",
            "[{n} other executives|the finance team|your direct reports] [got|received] the same [lure|email|message] [today|this week] [— all blocked|; warned|].",
        ),),
        symptom=("[got another one|a second email came in|now there's a text too|{delegate} got one as well|it came from a new address]",),
    ),
    Topic(
        name="deck_version",
        match=((0,), (1,)),
        ask=(
            "[Which|Where's the] latest [version of the|copy of the] {deck}? [I see|There are] {n} copies in [Teams|SharePoint|OneDrive].",
            "The {deck} won't open on my {device} — [says|error says] [file locked|needs repair|read-only]. [Presenting|Need it] {when}.",
        ),
        lead=(
            "{bl}: the [current|right|final] version is the one [edited by {colleague} at {clock}|pinned in the channel|in the Board folder|shared by {colleague}].",
            "{bl}: [open it in the browser|use PowerPoint online] [— the desktop app has a stale lock|; your local copy is out of sync|; the desktop copy is corrupt].",
        ),
        steps=((
            "[I've|we've] [cleared the lock|restored the {clock} version|removed the duplicate copies|merged the two versions].",
            "[close|quit] PowerPoint on your {device} and [reopen|open it again] from [the link|OneDrive|Teams] [I sent at {clock}|].",
            "[version history|the history panel] shows [every edit|who changed what] [if you need to compare|before the {meeting}|].",
            "[{colleague}|the author] [has been asked|was told] to [stop editing|work on a copy] [until after the {meeting}|for now].",
        ),),
        symptom=("[still says locked|it opened an old version|slides are missing|comments are gone]",),
    ),
    Topic(
        name="delegate_access",
        ask=(
            "[Please|Can you] give {delegate} [access to|edit rights on] my [calendar|inbox|travel folder] [from {weekday}|this week|while I travel].",
            "{delegate} [can't see|can't accept] [my meeting invites|my calendar] [since|after] [the migration|{weekday}]. [Sort it?|Fix please.]",
        ),
        lead=(
            "[Done|Sorted|All set]: {delegate} [now has|has] [delegate|editor] access to your [calendar|inbox and calendar|travel folder] [as of {clock}|].",
            "{bl}: [the permission was|access was] [lost in the mailbox migration|removed by the {weekday} policy change] [— restored now|; I've re-added it|, fixed at {clock}].",
        ),
        steps=((
            "[changes|access] can take [up to|about] {mins} minutes to [sync|show up] [on {delegate}'s side|in Outlook].",
            "[private items|anything marked private] [stay|remains] hidden [unless you say otherwise|by default].",
            "[I'll|we'll] [review|revisit] the access [after your trip|on {weekday}] [so nothing stays open|].",
            "{delegate} should [restart|reopen] Outlook [once|] [to pick it up|to see it].",
        ),),
        symptom=("{delegate} [still can't see it|sees only free/busy|gets an error]",),
    ),
    Topic(
        name="travel",
        fixed={"country": _LEAD_RULES["country"]},
        ask=(
            "[Travelling|Flying|Heading] to {country} [next week|on {weekday}|for the {meeting}]. [Anything I should know security-wise?|Can I take my {device}?|Rules for laptops?]",
            "[Off|Going] to {country} [with the deal team|for {n} days]. [Need email and the {deck} there.|What's the policy?]",
        ),
        lead=(
            "{bl}: [take a loaner|use a clean travel device] [for {country}|] [and leave your {device} here|, not your {device}].",
            "{bl}: [your {device} is fine|you can take your {device}], [but|provided] [VPN stays on|you keep it with you] [throughout|at all times].",
        ),
        steps=((
            "[IT|we] can [have|prepare] a loaner [ready|set up] by {weekday} [with mail and files|, mail and calendar only|with the {deck} preloaded].",
            "[avoid|skip] [hotel Wi-Fi|public Wi-Fi] for [anything sensitive|board material|deal documents]; [use your phone's hotspot|tether to your phone].",
            "[report|tell us about] [a lost device|any device inspection at the border] [immediately|within the hour] [so we can lock it|].",
            "[roaming|your data plan] [is|has been] [enabled|extended] for {country} [from {weekday}|for the trip].",
        ),),
        symptom=("[the loaner won't sync|VPN won't connect abroad|mail stopped on the loaner]",),
    ),
    Topic(
        name="lost_device",
        fixed={"country": _LEAD_RULES["country"]},
        ask=(
            "[Left|Lost] my {device} [in a taxi|at the airport|on the train] [this morning|in {country}|]. [What now?|Can you wipe it?|Board papers are on it.]",
            "[Can't find|Misplaced] my {phone} [since the {meeting}|since {clock}]. [Lock it?|Is data at risk?]",
        ),
        lead=(
            "{bl}: [your device is locked|it's locked and a remote wipe is queued] [— your data is safe|; nothing is readable without your PIN|, encrypted too].",
            "[Done|Handled]: [the device is locked|it's locked remotely] [and sessions revoked|] [at {clock}|just now].",
        ),
        steps=((
            "[all|your] sessions [were|are] signed out [at {clock}|a few minutes ago].",
            "[a replacement|a new one] [will be|is] [ready|waiting] at [reception|the {location} office] [by {clock}|tomorrow morning].",
            "[if it turns up|should it be found], [we can reverse|we'll cancel] the wipe [before it syncs|while it's still offline].",
            "[the board papers|your files] [are|stay] [encrypted|protected] [and|;] [access was revoked|links were disabled] [at {clock}|too].",
        ),),
        symptom=("[the replacement isn't syncing mail|still no replacement|I found it — now it's locked]",),
    ),
    Topic(
        name="security_brief",
        ask=(
            "[Need|Want] a [two-minute|short|one-slide] [summary|briefing] on {threat} for the {meeting}. [Where do we stand?|Are we exposed?]",
            "[Board|The chair] [asked|is asking] about {threat}. [Give me three lines.|What do I say?]",
        ),
        lead=(
            "{bl}: [we're not affected|we're covered|exposure is low] [— patched on {weekday}|— no customer data involved|; {pct}% of laptops were already protected].",
            "{bl}: [residual risk is moderate|one gap remains] [— {n} legacy servers|, closed by {weekday}|, tracked in {ticket}].",
        ),
        steps=((
            "[the CISO's team|security] [will send|can send] [a one-page summary|three bullet points] [by {clock}|before the {meeting}].",
            "[key stat|number to quote]: {pct}% of [staff|devices] [now use MFA|are fully patched].",
            "[I'd|I would] [frame it|position it] as [contained|under control] [with one follow-up item|].",
            "[no|zero] [customer records|financial systems] [were|are] [touched|in scope] [— confirmed at {clock}|per the vendor].",
        ),),
        symptom=("[the chair wants more detail|they asked about suppliers too|need the numbers by {clock}]",),
    ),
    Topic(
        name="mfa_phone",
        ask=(
            "[New|Got a new] {phone}. [Authenticator didn't transfer|MFA codes gone|Can't approve sign-ins]. [Locked out on my {device}.|Need email back {when}.]",
            "MFA [prompts|approvals] [stopped coming|go to my old phone]. [Sort it.|Need access {when}.]",
        ),
        lead=(
            "{bl}: [I've reset your MFA|your MFA is reset] [— register the new {phone} and you're in|; re-enrol takes two minutes].",
            "{bl}: [approvals still go to the old phone|the old phone is still registered] [— I've removed it|; removed now|, fixed at {clock}].",
        ),
        steps=((
            "[open|go to] aka.ms/mfasetup [on your {device}|from your laptop] and scan the code with the new {phone}.",
            "[keep|hold on to] the old phone [until|till] the new one [approves a sign-in|works once].",
            "[or|alternatively] {delegate} can [bring it to the desk|drop it off] and [we'll do it|it's done in five minutes].",
            "[a temporary pass|a one-time code] [was sent to|is waiting on] your {device} [— valid {mins} minutes|until {clock}].",
        ),),
        symptom=("[the QR code expired|still no prompt|it says number mismatch]",),
    ),
    Topic(
        name="call_quality",
        ask=(
            "[Investors|The client|The other side] [couldn't hear me|said I kept freezing|heard an echo] on [this morning's|the {clock}] call. [Not acceptable.|Fix before the next one.|Why?]",
            "[Video|Audio] [kept dropping|was choppy] [during|on] the {meeting} [from|in] {location}. [Cause?|Fix it.]",
        ),
        lead=(
            "{bl}: [it was the network at your end|your {device} was on weak Wi-Fi|the headset firmware] [— use a wired connection|; use the room system] [next time|for the {clock} call].",
            "{bl}: [the {location} office link was saturated|a backup job ran during the call] [— fixed now|; moved to off-hours|, rescheduled].",
        ),
        steps=((
            "[we've|I've] [sent|couriered] a [tested|new] headset [to {location}|to your office].",
            "[before|ahead of] [the next|your {clock}] call, [{tech} can run|we'll run] a [two-minute|quick] test [with you|with {delegate}].",
            "[join|dial in] by phone [as a fallback|if video drops again].",
            "[bandwidth|the link] [in {location}|at your office] [was|has been] [doubled|upgraded] [as of {weekday}|overnight].",
        ),),
        symptom=("[it happened again at {clock}|still an echo|the headset won't pair]",),
    ),
)

# ---------------------------------------- knowledge worker ---------------------------------------

_KW_RULES: dict[str, Rule] = {
    "pkg": ("pandas", "numpy", "requests", "pydantic", "sqlalchemy", "fastapi", "polars", "boto3", "pyarrow", "httpx", "lxml"),
    "pyver": ("3.9", "3.10", "3.11", "3.12"),
    "venv": (".venv", "venv", ".env", "env"),
    "script": _joiner(("run", "etl", "main", "train", "export", "sync", "load", "report"), ("", "_job", "_all", "_daily"), sep=""),
    "branch": _joiner(("feature", "fix", "chore", "hotfix"), _WORDS, sep="/"),
    "file": _joiner(("src/", "app/", "lib/", "config/"), ("settings", "models", "router", "schema", "utils", "client", "handlers"), ("", "_v2", "_base"), sep=""),
    "githost": ("gitlab.corp.local", "github.com", "git.internal", "bitbucket.org"),
    "keyname": ("id_ed25519", "id_rsa", "id_ed25519_work", "gitlab_key"),
    "port": ("5432", "8080", "3000", "8000", "6379", "5000", "9200", "8443", "27017"),
    "image": _joiner(("registry.corp.local/", "ghcr.io/corp/"), _PROJ_A, (":latest", ":1.4", ":dev", ":2024.1"), sep=""),
    "service": _joiner(_PROJ_A, ("-api", "-worker", "-db", "-cache", "-web"), sep=""),
    "dbhost": _joiner(("pg", "db", "postgres"), ("-primary", "-replica", "-01", "-02", "-analytics"), sep=""),
    "db": _joiner(_PROJ_A, ("", "_prod", "_db"), sep=""),
    "table": ("orders", "invoices", "events", "customers", "line_items", "sessions", "payments", "audit_log", "shipments"),
    "col": ("customer_id", "created_at", "status", "account_id", "order_id", "updated_at", "tenant_id"),
    "ms": _num(40, 900),
    "job": _num(18000, 99999),
    "ciimage": ("node:20-alpine", "python:3.11-slim", "maven:3.9-eclipse-temurin-17", "gradle:8-jdk17", "rust:1.77"),
    "logfile": ("app.log", "error.log", "worker.log", "access.log", "gc.log"),
    "hours": _num(2, 12),
    "user": ("deploy", "ubuntu", "ec2-user", "svc-build", "admin"),
    "ok": ("this [usually|almost always|typically|most likely] means", "[classic|common|typical] cause:",
           "[I'm fairly sure|most likely|my guess is|I suspect|looks like|from the error,]"),
    "intro": (
        "[here's what I'd try|try these|work through these|here's the sequence|do this|suggested fix][ on your {device}| on the {device}|][, in order|, roughly in this order|, top to bottom|]:",
        "[let's|we'll] [sort this out|narrow it down|get you unblocked|fix it] [in {k2} steps|step by step|quickly|]:",
        "[steps|plan|checklist][ (about {mins} min)| for {proj}|]:",
    ),
    "closing": (
        "[if it still fails,|if that doesn't fix it,|still stuck after that?|no luck?] [paste|send me|share|post] the output of `{diag}` [here|in {ticket}|on {channel}|in the thread] [and I'll dig in|and we'll take it from there|so I can compare|].",
        "[ping me on {channel}|reply on {ticket}|let me know|drop a note here] [if any step errors out|if step {k} behaves differently|with whatever the last command prints|once it's green][; I can jump on a screen share| — I'm around until {clock}|].",
        "[if step {k} fails|should anything error out], [grab|capture|copy] [the full error|the last {n}0 lines of output] and [attach it to {ticket}|send it on {channel}][ — it usually points straight at the cause|].",
    ),
    "k": _num(2, 4),
    "k2": ("three", "four", "a few", "five"),
    "ack2": ("[OK|Got it|Thanks|Right], {name}. [Let's go deeper|Next layer then|Two more things to check|Then it's something else].",
             "[Annoying|Hmm|Interesting], {name} — [let's dig further|a couple more checks|that narrows it down]."),
    "escalate": (
        "[if none of that helps|failing that|if it's still red], I'll [escalate|hand it] to [the platform team|{team}|the DBA on call|SRE] [under {ticket}|with your logs attached|] [today|before {clock}|].",
        "[worst case|if it persists], [we can pair on it|I'll join a call|let's screen-share] [at {clock}|on {channel}|after standup] [— bring the logs|; have the terminal open|].",
    ),
    "close_a": (
        "[Nice|Great|Good|Excellent], {name}. [I'll close {ticket}|Closing {ticket}|Marking {ticket} resolved] [— reopen it if it comes back|; ping me if it recurs|].",
        "[Glad that worked|Good to hear], {name}. [Worth adding a note to the {proj} README|Consider pinning the version in {proj}|Maybe add a check to CI for {proj}] [so it doesn't bite again|for the next person|]. [{ticket} closed.|Closing {ticket}.]",
    ),
    "still": (
        "[Tried that|Did all of it|Went through the steps] — [still failing|same thing|no luck]: {symptom}.",
        "[Steps 1–{k} worked|Got partway|Step {k} worked] [but|and then] {symptom}.",
    ),
    "thanks": ("[That fixed it|Works now|All green|Build passes now], thanks!", "[Sorted|Fixed], cheers. [It was the {culprit}.|]"),
    "culprit": ("cache", "lockfile", "stale config", "wrong interpreter", "old key", "port clash", "DNS", "firewall rule"),
    "also": ("Also, unrelated: ", "Different issue while I have you: ", "Second thing: ", "Another one: "),
    "ask_pre": ("", "", "Hey — ", "Quick debugging question: ", "Context: {proj}. "),
}

_KNOWLEDGE_TOPICS = (
    Topic(
        name="python_env",
        match=((0,), (1,), (2,)),
        fixed={"pkg": _KW_RULES["pkg"], "venv": _KW_RULES["venv"], "script": _KW_RULES["script"]},
        ask=(
            "Running `python {script}.py` in {proj} fails with `ModuleNotFoundError: No module named '{pkg}'` even though I [installed it|ran pip install {pkg}] [this morning|yesterday|an hour ago]. [Python {pyver} on my {device}.|I'm on Python {pyver}.]",
            "`pip install -r requirements.txt` in {proj} [dies|fails] on `{pkg}` with a [build error|resolver conflict|wheel error] [on Python {pyver}|after I upgraded to {pyver}].",
            "[VS Code|PyCharm|My editor] [says|flags] `import {pkg}` [can't be resolved|as missing], but [the terminal|a shell] can [import it|start {script}.py] fine.",
        ),
        lead=(
            "{ok} `pip` [installed {pkg} into|put {pkg} in] a different interpreter than the one running {script}.py[, often the system Python| — not your `{venv}`|].",
            "{ok} the `{venv}` [was created with|points at] [an older|a different] Python, so the wheel for {pkg} [doesn't match|can't build|isn't available].",
            "{ok} [the editor|your IDE] [uses|is pointed at] [the global interpreter|a different environment] [rather than|instead of] `{venv}`.",
        ),
        steps=(
            (
                "check [which interpreter is active|what you're actually running]: [`which python`|`command -v python`|`type -a python`] [and|then] `python -c 'import sys; print(sys.[executable|prefix])'`[ — it should be inside `{venv}`|].",
                "[list|check] what's [installed|present] [there|in that interpreter]: [`python -m pip list \\| grep -i {pkg}`|`python -m pip freeze \\| grep -i {pkg}`].",
                "[compare|check] [the versions|what each one reports]: `python --version` [versus|vs] `pip --version`[ — the paths should match|; they should point at the same place|].",
            ),
            (
                "[activate the environment|activate `{venv}`] [explicitly|first]: `source {venv}/bin/activate`[ (on Windows `{venv}\\Scripts\\activate`)|].",
                "install with the interpreter [itself|directly][, not a bare pip|]: `python -m pip install [{pkg}=={ver}|'{pkg}>={ver}'|--upgrade {pkg}]`.",
                "[recreate|rebuild] the env [if it's on the wrong Python|cleanly]: `rm -rf {venv} && python{pyver} -m venv {venv}`[, then reinstall the requirements|].",
                "[purge|clear] the pip cache [in case a broken wheel is cached|first]: [`python -m pip cache purge`|`python -m pip install --no-cache-dir {pkg}`].",
                "[upgrade|update] the build tooling: `python -m pip install -U pip [setuptools wheel|wheel setuptools|setuptools]`.",
                "[install|pull in] the system headers [if the build needs them|for compiled packages]: `sudo apt install [python{pyver}-dev build-essential|build-essential python{pyver}-dev]`.",
            ),
            (
                "[confirm|verify] [the install|where it landed] with `python -m pip show {pkg}`[ and check the Location line| — Location should be under `{venv}`|].",
                "[in|for] [VS Code|the editor|PyCharm], [select|pick] `{venv}/bin/python` [via|in] [the status bar|Python: Select Interpreter|the interpreter settings].",
                "[run|smoke-test] `python -c 'import {pkg}; print({pkg}.__version__)'` [from the project root|inside `{venv}`].",
            ),
        ),
        symptom=("`pip show {pkg}` [shows|points to] `/usr/lib/python3/dist-packages`", "[the same|a new] `ImportError` [mentions|about] `{pkg}._libs`"),
        diag=("python -m pip debug --verbose", "python -m pip show {pkg}", "which -a python"),
    ),
    Topic(
        name="git_rebase",
        match=((0,), (1,)),
        fixed={"branch": _KW_RULES["branch"], "file": _KW_RULES["file"]},
        ask=(
            "`git push origin {branch}` [gets rejected|fails] with `non-fast-forward` [since this morning|after a rebase|on {proj}]. [Any idea?|What am I missing?]",
            "[Got|Hit] a merge conflict [in|on] `{file}.py` [after pulling|while rebasing onto] `main` in {proj} and `git status` [says I'm mid-rebase|shows both modified]. [How do I get out cleanly?|Best way to resolve?]",
        ),
        lead=(
            "{ok} [your local `{branch}` is behind the remote|someone pushed to `{branch}` after your last fetch|the remote branch was force-updated].",
            "{ok} [the rebase stopped at a commit that touches `{file}.py`|`main` and your branch both changed `{file}.py`] — [nothing is lost|your work is safe|it's recoverable].",
        ),
        steps=(
            (
                "[fetch first|start with a fetch] [and look at the divergence|to see what changed]: [`git fetch origin && git log --oneline --graph HEAD..origin/{branch}`|`git fetch && git status -sb`|`git fetch origin && git log --oneline -{n} origin/{branch}`].",
                "[make a safety branch|back up your work] [before anything else|first]: [`git branch backup/{branch_tail}-{n}`|`git tag before-rebase-{n}`].",
                "[list|see] the conflicted files: [`git diff --name-only --diff-filter=U`|`git status --short \\| grep '^UU'`].",
            ),
            (
                "rebase your commits on top: [`git pull --rebase origin {branch}`|`git rebase origin/{branch}`][, then fix conflicts file by file|].",
                "[edit the conflict markers in `{file}.py`|resolve the hunks in `{file}.py`|fix `{file}.py` in your editor], then `git add {file}.py` and `git rebase --continue`.",
                "[to bail out|if you want to start over], `git rebase --abort` [puts you back|restores the pre-rebase state|undoes everything].",
                "[take|keep] [their|your] version of a file [wholesale|if that's simpler] with `git checkout --[theirs|ours] {file}.py`.",
                "[use|open] a merge tool [for bigger conflicts|if the diff is large]: `git mergetool[ --tool=vimdiff| --tool=meld|]`.",
            ),
            (
                "push [again|once more]: [`git push origin {branch}`|`git push --force-with-lease origin {branch}` (only if you rebased a branch nobody else uses)][ — no force needed|; avoid plain `--force` on shared branches|].",
                "[sanity-check|verify] the result with [`git log --oneline -{n}`|`git log --graph --oneline -{n}`] [before pushing|].",
                "[run|rerun] the tests [locally|quickly] [after resolving|before pushing] — [conflict fixes|merged files] [break things more often than you'd think|are a classic source of bugs].",
            ),
        ),
        symptom=("`git rebase --continue` [says|complains] `{file}.py: needs merge`", "[now|it] [says|prints] `Updates were rejected because the tip of your current branch is behind`"),
        diag=("git status", "git log --oneline --graph -15", "git reflog -10"),
        rules={"branch_tail": _WORDS},
    ),
    Topic(
        name="git_ssh",
        match=((0,), (1,)),
        ask=(
            "[SSH auth to|Cloning from] {githost} [started failing|fails] with `Permission denied (publickey)` on my {device} [since|after] [the laptop swap|{weekday}|the key rotation].",
            "`git fetch` in {proj} [asks for a password|prompts for credentials] [every time|since {weekday}] [even though I set up SSH|although I have a key].",
        ),
        lead=(
            "{ok} [your new key isn't loaded in the agent|{githost} still has your old public key|SSH offers the wrong key first].",
            "{ok} the remote [is|still points at] an HTTPS URL[, so your SSH key is never used| — SSH never gets a chance|].",
        ),
        steps=(
            (
                "check [which key|the key] SSH [offers|is using]: [`ssh -vT git@{githost}`|`ssh -vvT git@{githost} 2>&1 \\| grep -i offer`][ — look for 'Offering public key'|].",
                "[look at|check] the remote URL: [`git remote -v`|`git config --get remote.origin.url`].",
                "[list|check] [loaded keys|what the agent holds]: `ssh-add -l`[ — an empty list explains it|].",
            ),
            (
                "[load|add] your key [into|to] the agent: `ssh-add ~/.ssh/{keyname}`[ and confirm with `ssh-add -l`|].",
                "[upload|register] `~/.ssh/{keyname}.pub` [in|under] [your {githost} profile|SSH keys in settings][ — paste the whole line|].",
                "[generate|create] a fresh key [if you lost the old one|if in doubt]: `ssh-keygen -t ed25519 -C '{name}@{device_tag}'`.",
                "[pin|set] the key for the host in `~/.ssh/config`: `Host {githost}` with `IdentityFile ~/.ssh/{keyname}`[ and `IdentitiesOnly yes`|].",
                "[switch|change] the remote to SSH: `git remote set-url origin git@{githost}:{group}/{proj}.git`.",
            ),
            (
                "[test|verify] with `ssh -T git@{githost}`[ — it should greet you by username|] [and then|, then] [`git fetch`|`git pull`].",
            ),
        ),
        symptom=("[it still|ssh] [says|prints] `Permission denied (publickey)`", "`ssh-add -l` [says|prints] `The agent has no identities`"),
        diag=("ssh -vT git@{githost}", "ssh-add -l", "git remote -v"),
        rules={"group": ("platform", "data", "backend", "infra", "analytics"), "device_tag": ("laptop", "workstation", "mbp", "dev")},
    ),
    Topic(
        name="docker_port",
        match=((0,), (1,)),
        fixed={"port": _KW_RULES["port"], "service": _KW_RULES["service"]},
        ask=(
            "`docker compose up` for {proj} [fails|dies] with `Bind for 0.0.0.0:{port} failed: port is already allocated`. [Worked yesterday.|Any ideas?|Blocking me.]",
            "`{service}` [exits|dies] [right after|straight after] `docker compose up` [with code {code}|and restarts in a loop] [on my {device}|]. [Logs are empty.|No idea why.]",
        ),
        lead=(
            "{ok} [another container|a leftover process|a previous compose project] [is still bound to|still holds] port {port}.",
            "{ok} `{service}` [can't reach its dependency at startup|reads a missing env var|runs out of memory] and [exits|crashes] before logging much.",
        ),
        steps=(
            (
                "[see|find out] what holds the port: [`docker ps --filter publish={port}`|`docker ps --format 'table \\{\\{.Names\\}\\}\\t\\{\\{.Ports\\}\\}'`] [and|or] [`sudo lsof -i :{port}`|`sudo ss -ltnp \\| grep {port}`].",
                "[tail|look at] the service logs: `docker compose logs [--tail=100|--tail={n}0|-f] {service}`.",
                "[inspect|check] the exit reason: `docker inspect {service} --format '\\{\\{.State.ExitCode\\}\\} \\{\\{.State.OOMKilled\\}\\}'`.",
            ),
            (
                "stop [the old stack|the leftover containers]: [`docker compose -p {proj} down`|`docker compose down --remove-orphans`][, or `docker rm -f` the container ID|].",
                "[change|remap] the host port [in `compose.yaml`|for {service}] to `{port2}:{port}` [if something else needs {port}|].",
                "[add|set] `depends_on` with `condition: service_healthy` [for|on] {service} [so it waits for the database|so startup order is right].",
                "[check|compare] `.env` against `.env.example` [for missing variables|— a new variable was added {weekday}|; `docker compose config` shows the resolved values].",
                "[raise|give it more] memory [with|via] `mem_limit: {gb}g` [on {service}|in `compose.yaml`] [if it's OOM-killed|when exit code is 137].",
            ),
            (
                "[bring it back up|restart] with [`docker compose up -d --build`|`docker compose up -d --force-recreate {service}`] [and watch|then check] `docker compose ps`.",
                "[hit|curl] the [health endpoint|service] [to confirm|once it's up]: `curl -fsS localhost:{port}/[health|healthz|status]`.",
            ),
        ),
        symptom=("`{service}` [now exits|exits] with code {code}", "[the port is free now but|now] `curl localhost:{port}` [hangs|returns connection reset]"),
        diag=("docker compose ps -a", "docker compose logs {service}", "docker compose config"),
        rules={"port2": _num(18000, 19999), "code": ("137", "1", "139", "143", "127")},
    ),
    Topic(
        name="docker_disk",
        match=((0,), (1,)),
        fixed={"image": _KW_RULES["image"]},
        ask=(
            "[Builds|Image builds] [started failing|fail] with `no space left on device` on my {device} [even though|and] the disk [shows|has] {gb} GB free.",
            "`docker build` for {proj} [takes ages|sends a {gb} GB build context] [and then dies|and fills the disk].",
        ),
        lead=(
            "{ok} Docker's [own disk image|VM disk|build cache] is full, not your main disk[ — it has its own limit|].",
            "{ok} [the build context includes|Docker is sending] [`node_modules`, data dumps or `.git`|everything in the repo, including data files] [because `.dockerignore` is missing|].",
        ),
        steps=(
            (
                "check [how much Docker is using|Docker's usage]: [`docker system df`|`docker system df -v`].",
                "[see|check] [the context size|what's being sent] [in the first lines of|at the top of] `docker build --progress=plain .`.",
                "[find|spot] [the biggest images|what's taking space]: `docker images --format '\\{\\{.Size\\}\\} \\{\\{.Repository\\}\\}' \\| sort -h \\| tail`.",
            ),
            (
                "[reclaim|free] space: [`docker builder prune -f`|`docker builder prune --all`] [then|and if needed] [`docker image prune -a`|`docker image prune --filter until=72h`].",
                "[remove|drop] dangling volumes [only if you don't need their data|carefully]: `docker volume prune`.",
                "[raise|increase] the disk limit [in Docker Desktop → Resources|of the Docker VM] to [{gb} GB|at least {gb} GB].",
                "[add|create] a `.dockerignore` [with|listing] {ignores}.",
                "[use|switch to] a multi-stage build [so build tools stay out of the final image|to keep {image} small].",
            ),
            (
                "[rebuild|build again] [and compare|then check] [the context size|timings]: `docker build [-t {image} .|--no-cache -t {image} .]`.",
            ),
        ),
        symptom=("`docker system df` still [shows|reports] {gb} GB of build cache", "[it still fails|still dies] at [layer {n}|`RUN pip install`]"),
        diag=("docker system df -v", "docker info", "du -sh ."),
        rules={"ignores": _some(("`.git`", "`node_modules`", "`data/`", "`*.parquet`", "`dist/`", "`.venv`", "`*.csv`", "`coverage/`"), 3, 5)},
    ),
    Topic(
        name="db_connect",
        fixed={"dbhost": _KW_RULES["dbhost"], "db": _KW_RULES["db"]},
        ask=(
            "[Can't connect to|Connection refused on] `{dbhost}:5432` from {proj} [since the deploy|this afternoon|after the maintenance window]. `psql` [says|gives] `connection refused`.",
            "{proj} [can't reach|times out connecting to] `{db}` on `{dbhost}` [from my {device}|over VPN] [— works from CI though|; colleagues are fine].",
        ),
        lead=(
            "{ok} [the connection is blocked before it reaches Postgres|the new security group doesn't allow your subnet|`pg_hba.conf` doesn't cover your host].",
            "{ok} [`{dbhost}` now resolves to a new address|your `DATABASE_URL` still points at the old primary|the VPN doesn't route the database subnet].",
        ),
        steps=(
            (
                "[test|check] reachability [first|from your machine]: `pg_isready -h {dbhost} -p 5432` [and|then] [`nc -vz {dbhost} 5432`|`telnet {dbhost} 5432`].",
                "[check|confirm] what the name resolves to: [`dig +short {dbhost}`|`nslookup {dbhost}`|`getent hosts {dbhost}`].",
                "[print|echo] the URL {proj} [actually uses|really uses]: [`echo $DATABASE_URL`|`grep DATABASE_URL .env`].",
            ),
            (
                "[ask|request] [the platform team|{team}] to [add|allow] your [subnet|IP {ip}] in the [security group|firewall rule] [for 5432|].",
                "[connect|try] with TLS [explicitly|forced]: `psql 'host={dbhost} dbname={db} sslmode=[require|verify-full]'`.",
                "[update|fix] `DATABASE_URL` in `.env` [to the new primary|to point at `{dbhost}`] [and restart|, then restart] {proj}.",
                "[reconnect|restart] the VPN [and pick|with] the [Engineering|Dev] profile [so the database subnet is routed|].",
                "[flush|clear] your DNS cache [if the address changed|after the failover]: [`sudo resolvectl flush-caches`|`sudo dscacheutil -flushcache`].",
            ),
            (
                "[retry|run] `psql -h {dbhost} -d {db} -c 'select [1|now()|version()]'` [to confirm|as a smoke test].",
            ),
        ),
        symptom=("`pg_isready` [now says|reports] `no response`", "`psql` [now fails with|says] `FATAL: no pg_hba.conf entry for host`"),
        diag=("pg_isready -h {dbhost} -p 5432", "nc -vz {dbhost} 5432", "ip route"),
    ),
    Topic(
        name="db_slow",
        match=((0,), (1,)),
        fixed={"table": _KW_RULES["table"], "col": _KW_RULES["col"], "db": _KW_RULES["db"]},
        ask=(
            "[A query on|Selecting from] `{table}` [went from|jumped from] {ms} ms to [several seconds|{n} s] [overnight|after yesterday's migration]. [Nothing else changed.|Filter is on `{col}`.]",
            "[The|Our] dashboard for {proj} [times out|is crawling] [and|—] `pg_stat_activity` shows [queries on `{table}`|a query] [running for minutes|stuck for {mins} min].",
        ),
        lead=(
            "{ok} the planner [stopped using|can't use] an index on `{col}`[ — stale statistics after a big load| since the migration rewrote `{table}`|].",
            "{ok} [a long-running transaction|an idle-in-transaction session] [holds locks on|is blocking] `{table}` [and everything queues behind it|].",
        ),
        steps=(
            (
                "look at the plan: `EXPLAIN [(ANALYZE, BUFFERS)|ANALYZE|(ANALYZE, VERBOSE)] SELECT [*|count(*)|id] FROM {table} WHERE {col} = $1;`",
                "[find|list] [blockers|long runners]: `SELECT pid, [state|wait_event], query_start, query FROM pg_stat_activity WHERE [state <> 'idle'|datname = '{db}'];`",
                "[check|look at] the [top|slowest] statements in `pg_stat_statements` [ordered by|sorted by] `[total_exec_time|mean_exec_time]`.",
            ),
            (
                "[refresh|update] statistics: `ANALYZE {table};`[ — cheap and often enough|].",
                "[add|create] the index without locking writes: `CREATE INDEX CONCURRENTLY idx_{table}_{col} ON {table} ({col});`",
                "[end|stop] the blocking session [once you've checked it|if it's safe]: `SELECT pg_[terminate|cancel]_backend(<pid>);`",
                "[run|schedule] `VACUUM (ANALYZE) {table};` [if the table is bloated|after the big delete].",
                "[set|add] `statement_timeout` [for the dashboard role|on the {proj} connection] [so one bad query can't pile up|to cap runaway queries].",
            ),
            (
                "[re-run|rerun] the query [and compare timings|and check it uses an Index Scan] [with `\\\\timing` on in psql|].",
            ),
        ),
        symptom=("the plan still [shows|does] a `Seq Scan on {table}`", "[the index build|`CREATE INDEX`] [is stuck|hangs] at {pct}%"),
        diag=("EXPLAIN (ANALYZE, BUFFERS) ...", "SELECT * FROM pg_locks WHERE NOT granted;", "\\\\d+ {table}"),
    ),
    Topic(
        name="ci_build",
        ask=(
            "CI job #{job} for {proj} [fails|is red] at the [test|build|lint] stage with `{builderr}` but [it passes locally|works on my {device}].",
            "[Our|The] pipeline for {proj} [started failing|broke] [overnight|after a dependency bump] with `{builderr}`. [Nobody changed the code.|Only the lockfile changed.]",
        ),
        lead=(
            "{ok} [CI runs a different toolchain than your machine|the CI image moved to a newer base|the runner has less memory than your {device}].",
            "{ok} [the lockfile and the manifest disagree|a transitive dependency published a breaking release|the cache restored stale artifacts].",
        ),
        steps=(
            (
                "[compare|check] versions [on both sides|locally vs CI]: {versions} [in the job log|against your shell].",
                "[reproduce|run] the job image locally: `docker run --rm -it [{ciimage} bash|-v $PWD:/src -w /src {ciimage} sh]`[ and run the same commands|].",
                "[diff|compare] the lockfile [against main|with the last green build]: [`git diff main -- package-lock.json`|`git log -p -1 -- poetry.lock`].",
            ),
            (
                "[use|switch to] [a clean install|the lockfile] [in CI|]: `npm ci` [instead of|rather than] `npm install`.",
                "[clear|invalidate] the CI cache [key|for this branch] [and re-run|, then retry] job #{job}.",
                "[refresh|force-refresh] dependencies: [`./gradlew build --refresh-dependencies`|`mvn -U clean verify`|`poetry lock --no-update && poetry install`].",
                "[pin|lock] the [offending|broken] package to the last good version [in the manifest|] and [regenerate|update] the lockfile.",
                "[if it's exit code 137|for the OOM case], [raise the memory limit|set `memory: {gb}Gi`] [on the runner|in the job].",
            ),
            (
                "[push|commit] the fix on a branch and [watch|check] [the pipeline|the job log] [before merging|].",
            ),
        ),
        symptom=("job #{job2} now fails [earlier|at checkout] with `{builderr}`", "[it passes|it's green] [locally|on retry] but [fails|is red] again on `main`"),
        diag=("npm ls --all", "./gradlew dependencies", "env \\| sort"),
        rules={
            "builderr": ("npm ERR! code ERESOLVE", "Could not resolve dependencies for project", "exit code 137",
                         "error: linker `cc` not found", "ModuleNotFoundError: No module named 'conftest'", "Killed"),
            "job2": _num(18000, 99999),
            "versions": _some(("`node --version`", "`python --version`", "`java -version`", "`npm --version`", "`gcc --version`"), 2, 3, last=" and "),
        },
    ),
    Topic(
        name="service_logs",
        fixed={"service": _KW_RULES["service"]},
        ask=(
            "`{service}` on `{host}` [keeps restarting|crashed twice|dies every ~{mins} min] [overnight|since {weekday}]. [Where do I start?|Not sure which logs to read.]",
            "[Disk on|`/var` on] `{host}` [is at|hit] {pct}% [and|—] `{service}` [stopped writing|started failing]. [Logs?|Rotation broken?]",
        ),
        lead=(
            "{ok} [the process is being OOM-killed|a health check fails and systemd restarts it|logrotate isn't running, so `/var/log` fills up].",
            "{ok} [a bad config reload|an unhandled exception at startup|a full disk] [takes it down|kills it] [before it logs much|].",
        ),
        steps=(
            (
                "[check|look at] the unit [state|status]: [`systemctl status {service}`|`systemctl status {service} --no-pager -l`].",
                "[read|pull] [the recent logs|errors only]: `journalctl -u {service} --since '{hours} hours ago'[ -p err| -p warning|]`.",
                "[look|check] for OOM kills: [`dmesg -T \\| grep -i -E 'killed process\\|oom'`|`journalctl -k \\| grep -i oom`].",
                "[see|check] disk usage: `df -h /var` and [`du -sh /var/log/* \\| sort -h \\| tail`|`sudo du -xh /var \\| sort -h \\| tail -{n}`].",
            ),
            (
                "[tail|follow] the app log [directly|]: `tail -n [200|500|{n}00] -F /var/log/{proj}/{logfile}`.",
                "[force|run] a rotation [now|manually]: `sudo logrotate -f /etc/logrotate.d/{proj}`.",
                "[raise|increase] `MemoryMax=` in the unit [override|drop-in] (`systemctl edit {service}`) [and reload|, then reload].",
                "[roll back|revert] [the last config change|to the previous release] [and restart|] with `sudo systemctl restart {service}`.",
                "[vacuum|trim] the journal [if it's the culprit|when it's huge]: `sudo journalctl --vacuum-[size=500M|time=7d]`.",
            ),
            (
                "[watch|follow] it for a few minutes: [`journalctl -fu {service}`|`watch -n5 systemctl is-active {service}`].",
            ),
        ),
        symptom=("[it restarted again at {clock}|restart count is now {n}]", "`journalctl` shows `code=killed, status=9/KILL`"),
        diag=("journalctl -u {service} -n 300", "systemctl show {service} -p NRestarts", "free -m"),
    ),
    Topic(
        name="ssh_access",
        ask=(
            "`ssh {user}@{host}` [hangs|times out|returns Permission denied] [from home|over VPN|since the key rotation]. [Worked last week.|Need it for a deploy.]",
            "[Can't reach|No route to] `{host}` [through the bastion|from my {device}] [since|after] [{weekday}|the network change]: `ssh: connect to host port 22: Operation timed out`.",
        ),
        lead=(
            "{ok} [the host is only reachable via the bastion now|your key isn't in the new access group|the key file permissions are too open, so SSH ignores it].",
            "{ok} [your VPN profile doesn't route the server subnet|port 22 is blocked from the VPN range] [since the change|].",
        ),
        steps=(
            (
                "[run|try] it verbose [to see where it stops|]: `ssh -[vvv|vv] {user}@{host}`.",
                "[check|confirm] the route: [`ip route get {ip}`|`traceroute -T -p 22 {host}`|`mtr -T -P 22 {host}`].",
            ),
            (
                "[go through|use] the bastion: `ssh -J bastion.corp.local {user}@{host}`.",
                "[fix|tighten] key permissions: `chmod 600 ~/.ssh/{keyname}` [and|plus] `chmod 700 ~/.ssh`.",
                "[add|put] a `Host` block for `{host}` in `~/.ssh/config` [with `ProxyJump bastion.corp.local`|so you don't retype it|with `User {user}` and the jump host].",
                "[request|ask for] the `{group}` group [in the access portal|via {ticket}] [if the key is rejected|].",
                "[renew|refresh] your SSH certificate [— they expire every {n} hours|if you use short-lived certs]: `corp-ssh login`.",
            ),
            (
                "[reconnect|try again] and [check|confirm] with [`whoami && hostname`|`id && uptime`].",
            ),
        ),
        symptom=("[the bastion|it] [now|still] [says|returns] `Permission denied (publickey)`", "[it|ssh] [hangs|stops] at `debug1: Connecting to {host}`"),
        diag=("ssh -vvv {user}@{host}", "ssh-add -l", "ip route"),
        rules={"group": ("ssh-prod", "ssh-staging", "platform-ops", "db-admins")},
    ),
    Topic(
        name="wsl_network",
        ask=(
            "WSL [can't reach|loses] the internet [after connecting to VPN|since the Windows update]: `{netcmd}` [times out|fails] [on my {device}|].",
            "[Inside|From] WSL, [DNS|name resolution] [is broken|fails] [on VPN|at the office] — `ping {githost}` [says|gives] `Temporary failure in name resolution`.",
        ),
        lead=(
            "{ok} [the VPN pushes DNS servers WSL doesn't see|WSL's generated `resolv.conf` points at a gateway the VPN blocks|NAT mode doesn't play well with the VPN client].",
            "{ok} [the Windows update reset your WSL network config|the VPN client grabs the routes WSL depends on].",
        ),
        steps=(
            (
                "[look at|check] [the resolver|what WSL uses]: `cat /etc/resolv.conf`.",
                "[compare|check] with Windows: [`ipconfig /all`|`Get-DnsClientServerAddress`] [and note|to find] the VPN DNS [servers|server].",
                "[test|check] [raw connectivity|IP-level reachability] [without DNS|first]: `ping -c 3 {ip}`.",
            ),
            (
                "[stop|disable] auto-generation: [put|add] `generateResolvConf = false` under `\\[network\\]` in `/etc/wsl.conf`.",
                "[write|set] the VPN DNS [yourself|manually]: `echo 'nameserver {ip}' \\| sudo tee /etc/resolv.conf`.",
                "[switch|move] to mirrored networking: `networkingMode=mirrored` [in|under `\\[wsl2\\]` in] `%UserProfile%\\.wslconfig`.",
                "[update|upgrade] WSL: `wsl --update`[ (needs admin)|].",
                "[lower|set] the MTU [if big downloads stall|when TLS handshakes hang]: `sudo ip link set dev eth0 mtu [1350|1400]`.",
            ),
            (
                "[restart|reboot] WSL [from PowerShell|]: `wsl --shutdown`, [then|and] [open a new shell|reopen the terminal] and [retry|test again].",
            ),
        ),
        symptom=("`resolv.conf` [gets overwritten|resets] [after every restart|on reboot]", "[DNS works|names resolve] but `curl` [still|now] [hangs|times out]"),
        diag=("cat /etc/resolv.conf", "ip addr", "wsl --version"),
        rules={"netcmd": ("pip install", "curl https://pypi.org", "apt update", "git fetch", "npm install"), "githost": _KW_RULES["githost"]},
    ),
    Topic(
        name="k8s_pod",
        match=((0,), (1,)),
        fixed={"service": _KW_RULES["service"], "ns": ("dev", "staging", "team-{proj}", "sandbox")},
        ask=(
            "`{service}` in namespace `{ns}` [is stuck in|keeps going into] `CrashLoopBackOff` [after my deploy|since {weekday}]. [Logs show nothing useful.|Rollback?]",
            "[My|The] `{service}` pod [sits in|is stuck at] `[Pending|ImagePullBackOff|ContainerCreating]` [in `{ns}`|on the dev cluster] [for {mins} min|since this morning].",
        ),
        lead=(
            "{ok} [the container exits on startup|a liveness probe kills it before it's ready|a missing secret or config map stops it].",
            "{ok} [the scheduler can't place it — requests are too high|the image tag doesn't exist or the pull secret expired|a volume can't be attached].",
        ),
        steps=(
            (
                "[describe|inspect] the pod [and read the Events at the bottom|for events]: `kubectl -n {ns} describe pod -l app={service}`.",
                "[read|get] the logs of the [previous|crashed] container: `kubectl -n {ns} logs deploy/{service} --previous[ --tail={n}0|]`.",
                "[check|list] recent events [sorted by time|in order]: `kubectl -n {ns} get events --sort-by=.lastTimestamp \\| tail -{n}`.",
            ),
            (
                "[relax|lengthen] the liveness probe: [`initialDelaySeconds: {secs}`|a `startupProbe`] [so slow starts aren't killed|for the warm-up].",
                "[lower|reduce] the resource requests [in the values file|in the manifest] to [`cpu: {n}00m`|`memory: {n}00Mi`] [so it fits a node|].",
                "[recreate|refresh] the pull secret: `kubectl -n {ns} create secret docker-registry regcred ... --dry-run=client -o yaml \\| kubectl apply -f -`.",
                "[roll back|undo the deploy] [if you need it up now|while you debug]: `kubectl -n {ns} rollout undo deploy/{service}`.",
            ),
            (
                "[watch|follow] the rollout: `kubectl -n {ns} rollout status deploy/{service}`.",
            ),
        ),
        symptom=("[it's still|still] `CrashLoopBackOff` [with exit code {code}|after the rollback]", "`describe` [shows|says] `0/{n} nodes are available`"),
        diag=("kubectl -n {ns} describe pod -l app={service}", "kubectl -n {ns} get events", "kubectl -n {ns} get deploy {service} -o yaml"),
        rules={"code": ("1", "137", "139", "2")},
    ),
)

# ----------------------------------------- field worker -----------------------------------------

_FIELD_RULES: dict[str, Rule] = {
    "app": ("FieldPro", "the work order app", "Maximo Mobile", "the inspection app", "SAP Field Service", "the job app"),
    "site": ("substation {n}", "the {road} Road site", "pumping station {n}", "the wind farm at {town}", "depot {n}",
             "the {town} tower", "the {road} cabinet", "a customer site in {town}", "the {town} reservoir", "bridge {n}{n}"),
    "road": ("Mill", "Harbour", "Quarry", "Station", "Ridge", "Canal", "Forge", "Meadow", "Brook", "Kiln", "Orchard"),
    "town": ("Elmridge", "Stonebury", "Westhollow", "Kirkby", "Ashford", "Lowmoor", "Dunmere", "Oakvale", "Fernley", "Hexham"),
    "signal": ("one bar", "no 4G", "patchy 3G", "signal in and out", "two bars at best", "barely any signal", "E only"),
    "ack": ("[OK|Right|Got it|Understood], {name}.", "[Thanks|Understood|Cheers], {name} —", "[Right then|OK], {name}, [next try|plan B]:"),
    "fb_a": ("No signal at all?", "If coverage drops out completely,", "Fully offline?", "Offline fallback:", "If you lose signal at {site},",
             "Worst case, with no bars,", "Out of coverage?", "No data?", "If the {device} can't get online,", "Backup plan:"),
    "fb_b": (
        "[keep working in {app}|carry on in {app}|just keep going in {app}] [— it queues everything|; it stores jobs locally|, it holds up to {n}0 jobs offline] and [syncs|uploads] [back at {base}|on the Wi-Fi at {base}|at the next spot with coverage|when you're back in range].",
        "[fill in|use] the [paper form|paper job sheet|backup sheet in the van] [and photograph it|and snap a photo of it] [to upload later|to upload at {base}|for when you're back in coverage].",
        "[write down|jot down|note] the readings [with the time|and the asset number|on the job card] and [enter|type] them [later|at {base}|when you're back in range].",
        "[ring|call] dispatch [on {ext}|on extension {ext}|from any phone] [to close the job for you|and they'll log it for you|] [— voice works without data|; calls need no data].",
        "[text|SMS] [the job number|job {ext}{n}] [and the status|with 'done'] to [dispatch|the field line] [— texts get through on one bar|; SMS needs almost no signal].",
    ),
    "escalate": (
        "[if it's still down|still no luck?|no change?] [call the desk on|ring] [the field line|extension {ext}] [— that works without data|from any phone|and ask for {tech}].",
        "[I've logged|logged] it as {ticket}; [{tech} can swap the device at {base}|bring the device to {base} on {weekday}|a spare is waiting at {base}] [if it keeps happening|].",
    ),
    "close_a": (
        "[Great|Good stuff|Nice one|Brilliant], {name}. [Safe driving|Stay safe out there|Enjoy the rest of the shift] — [closing {ticket}|{ticket} closed|I'll close {ticket}].",
        "[Glad it's working|Good to hear], {name} — [I'll close {ticket}|closing {ticket}][; shout if it drops again at {site}|].",
    ),
    "still": ("[Tried that|Did that] — {symptom}.", "[Still|No joy]. {symptom} [at {site}|]."),
    "thanks": ("[Working now|That did it|Back online], thanks.", "[Sorted|All good], [ta|thanks|cheers]!"),
    "also": ("Also — ", "While I have you — ", "Another one: "),
    "ask_pre": ("", "", "Hi — ", "Quick one from site: ", "From the van: "),
    "ext": _num(2200, 2299),
    "link": ("then", "after that", "also", "if not,", "next", "failing that,", "and"),
}

_FIELD_TOPICS = (
    Topic(
        name="vpn_drop",
        ask=(
            "VPN [keeps dropping|disconnects] every {mins} min [at {site}|on site] on my {device}. [Signal is {signal}.|{signal} here.] Can't [close jobs|submit readings] in {app}.",
            "[Can't get|No] VPN [from|at] {site} — [it spins|it just spins] on [connecting|authenticating]. [Phone has {signal}.|Hotspot is on.]",
        ),
        lead=(
            "[weak|patchy] signal [drops|kills] the [default|standard] VPN tunnel[ — switch to the field profile, it reconnects on its own|; the always-on profile copes better|].",
            "[that's|sounds like] the VPN [timing out|losing the tunnel] on a [weak|flaky] link[, not your {device}|].",
            "[at|around] {site} [the mast is far|coverage is thin], [and|so] the VPN [gives up|times out] [before it connects|on the handshake][ — there's a profile built for that|].",
        ),
        steps=((
            "[pick|choose] the [Field - Always On|Field TCP] profile in the VPN client [instead of Standard|].",
            "[turn off|disable] battery saver [on the {device}|] — it [cuts|suspends] the tunnel [in the background|when idle].",
            "[move|stand] [near a window|outside|by the van] [for a minute|] [while it connects|to get a bar more].",
            "[update|upgrade] the VPN client to {ver} [from Company Portal|when you're on Wi-Fi].",
            "[toggle|switch] airplane mode [off and on|on for ten seconds] [to grab a fresh tower|].",
            "[plug|connect] the {device} [into|to] the van's [roof antenna|booster] [if your van has one|— it adds a bar or two].",
            "[lock|set] the modem to [4G only|LTE] [in network settings|under Mobile network] [so it stops hopping to 3G|].",
        ),),
        extra=(
            "[you don't need VPN for {app} sync|{app} syncs without VPN] — [it's only needed for the intranet|you only need it for the file shares].",
            "[good to know|remember]: {app} [works|syncs] [without the VPN|over plain mobile data][, so jobs can close even when the tunnel is down|].",
        ),
        symptom=("[still drops|drops] every {mins} min", "[now it won't connect at all|it says 'gateway unreachable']"),
    ),
    Topic(
        name="hotspot",
        ask=(
            "[Laptop|My {device}] [won't join|can't see] my phone hotspot [at {site}|in the van]. [Phone shows it's on.|Other phones connect fine.]",
            "Hotspot [connects|joins] but [no internet|pages won't load] on the {device} [at {site}|]. [Phone has {signal}.|]",
        ),
        lead=(
            "[usually|most of the time] it's the [5 GHz band|hotspot name] — [older|rugged] [laptops|devices] [don't see|skip] it.",
            "[that's|it's] [often|usually] the phone [dropping|pausing] the hotspot [to save battery|when the screen locks].",
            "[phone hotspots are|tethering is] [often|sometimes] [fussy|picky] [with rugged kit|with older Wi-Fi chips][, but a couple of settings fix it|; two settings usually sort it].",
        ),
        steps=((
            "[turn on|enable] [Maximise Compatibility|2.4 GHz] in the hotspot settings [on the phone|].",
            "[rename|change] the hotspot [to plain letters|without emoji or apostrophes] [and reconnect|].",
            "[forget|remove] the network on the {device} [and join again|, then rejoin].",
            "[use|try] a USB cable [instead|] — USB tethering [is steadier|doesn't drop] [in the van|on site].",
            "[keep|leave] the phone screen [on|unlocked] [while you sync|for the first minute].",
            "[check|make sure] the phone's [data plan|work SIM] [allows|has] tethering [— some plans block it|; dispatch can check your plan].",
        ),),
        extra=(
            "[if neither works|no luck?], [jobs stay queued on the {device}|{app} keeps working offline] [until you reach Wi-Fi|until {base}].",
        ),
        symptom=("[still no internet|the hotspot vanishes again]", "[it connects|connected] [then drops|for {mins} min, then dropped]"),
    ),
    Topic(
        name="offline_sync",
        match=((0, 1), (2,)),
        ask=(
            "{app} [shows|says] {n} [jobs|work orders] [stuck|waiting] to sync [since {clock}|all morning]. [Don't want to lose them.|Signal's back now.]",
            "[Sync|The sync] in {app} [fails|errors] with code {code} [since|after] [the update|{clock}] [on my {device}|]. [Jobs still pending.|]",
        ),
        lead=(
            "[your|the] [jobs|readings] are safe on the {device}[ — they sit in the sync queue|; nothing's lost] [until they upload|].",
            "[a single job with a conflict|one bad record] [blocks|holds up] the [whole|] queue[ — the rest waits behind it|].",
            "[sync errors|code {code} errors] [after an update|like this] [usually mean|normally mean] the app [needs a fresh token|lost its login][ — the data itself is fine|].",
        ),
        steps=((
            "[don't|do not] log out or [clear|reset] {app} [— that wipes the queue|until it has synced].",
            "[open|go to] [Sync status|the sync screen] and [tap|hit] [Retry|Sync now] [on Wi-Fi|once you have two bars].",
            "[plug in|charge] the {device} — [sync pauses|uploads stop] [under|below] {pct}% battery.",
            "[export|save] the queue [to the SD card|as a backup] [from the menu|via Settings → Export] [before anything else|].",
            "[long-press|open] the [red|failed] job and [choose|tap] [Resolve conflict|Keep mine] [so the rest can go|].",
            "[sign out of|re-enter your password in] [the app's account screen|Settings → Account] [only after|once] the export [is done|has finished] [to refresh the token|].",
        ),),
        extra=("[keep working|carry on] — [{app} queues everything|new jobs queue too] and [syncs|uploads] [at {base}|on the depot Wi-Fi].",),
        symptom=("[still {n} pending|the queue is stuck at {n}]", "[one job|a work order] [shows|says] [sync error {code}|conflict]"),
        rules={"code": _num(400, 599)},
    ),
    Topic(
        name="photo_upload",
        ask=(
            "[Photos|Signatures] [won't upload|stuck] in {app} [from|at] {site}. [Sync spinner forever.|Says pending.]",
            "[Can't attach|Attaching] photos to [the work order|job {job}] [fails|times out] [on the {device}|at {site}]. [Customer needs them today.|]",
        ),
        lead=(
            "[big|large] [photo|attachment] uploads [stall|time out] on a [weak|slow] [link|connection][ — the text part of the job is already through|].",
            "[full-size|high-res] photos [are|run] {n} MB each, [too much|too heavy] for {signal}[; shrink them and they'll go|].",
            "[photos|attachments] [go up|upload] [separately from|after] the job itself, [so|which means] [the job is closed|your job is safe] [even while they wait|already].",
        ),
        steps=((
            "[set|switch] photos to [reduced size|Medium] in {app} settings [before the next job|].",
            "[tick|enable] [Upload on Wi-Fi only|Wi-Fi only for attachments] [so jobs close now and photos follow|].",
            "[retake|re-attach] [one photo|the photos] [instead of all {n}|] [and check it shows a tick|].",
            "[free up|clear] storage [— the {device} is nearly full|; old jobs' photos can go] [under Settings → Storage|].",
            "[send|share] [the key photo|one photo] [by|via] [MMS|email] to dispatch [if the customer needs it now|as a stopgap].",
        ),),
        extra=("[photos stay on the {device}|the pictures are kept locally] [until they upload|] — [nothing is lost|they'll follow] [at {base}|on Wi-Fi].",),
        symptom=("[photos still show|still] [a grey clock|pending]", "[upload fails|it fails] at {pct}%"),
        rules={"job": _num(40000, 89999)},
    ),
    Topic(
        name="device_power",
        match=((0, 1, 2), (0, 1)),
        ask=(
            "[My|The] {device} [won't|doesn't] [charge|turn on] [past {pct}%|since yesterday] [and I'm at {site}|]. [Any tricks?|Need it for jobs today.]",
            "{device} [froze|is frozen] [on the logo|on a black screen] [at {site}|after an update]. [Buttons do nothing.|]",
        ),
        lead=(
            "[rugged|field] [tablets|devices] [do this|often do this] when [the battery gets cold|an update half-installs][ — usually fixable in the field|].",
            "[that's|sounds like] [a stuck update|a battery protection mode|a tired charging cable][, fixable on site|].",
            "[below freezing|in the cold], [batteries|the battery] [refuse|refuses] to charge [to protect themselves|as a safety measure][ — warming it up usually fixes it|].",
        ),
        steps=((
            "[hold|press] power [and volume down|] for {secs} seconds [to force a restart|until it vibrates].",
            "[warm it up|let it warm] [in the van|inside] [before charging|for ten minutes] [if it's been cold|].",
            "[try|use] [the van charger|a different cable] [— some ports only trickle|; the dock can be faulty].",
            "[leave|keep] it on charge [for {mins} minutes|a while] [before|then] [trying again|powering on].",
            "[swap|change] to the [spare|hot-swap] battery [if your {device} has one|in the van kit] [— no need to power off|].",
        ),),
        extra=("[meanwhile|until it's back], [use the paper job sheet|take job details by phone from dispatch] and [enter them later|upload after].",),
        symptom=("[still stuck at {pct}%|it boot-loops]", "[no lights at all|nothing happens] [on charge|]"),
    ),
    Topic(
        name="device_enrol",
        ask=(
            "{device} [asks me to|wants to] [re-enrol|sign in to Company Portal] [again|every morning] [and|—] {app} [is gone|won't open].",
            "[Got|Have] a [replacement|swapped] {device} [from {base}|today] but {app} [isn't on it|won't install]. [Jobs start at {clock}.|]",
        ),
        lead=(
            "[that's|sounds like] the device management profile [asking for a fresh sign-in|not finished yet][ — the apps come back once it's done|].",
            "[new|replacement] devices [pull|install] {app} [from Company Portal|automatically] [after the first sign-in|once enrolled], [which takes a few minutes|on Wi-Fi].",
            "[enrolment|the setup] [has to finish|must complete] [before|or] {app} [appears|won't install][ — it's waiting on your sign-in|].",
        ),
        steps=((
            "[sign in|log in] to Company Portal [with your work account|] [and let it finish|— it reinstalls {app}].",
            "[connect to|join] Wi-Fi [or a strong hotspot|] [for the install|while it downloads] [— {app} is about {n}00 MB|].",
            "[tap|press] Sync in Company Portal [under Settings|] [to speed it up|].",
            "[restart|reboot] the {device} [once|after] the profile shows [Compliant|green].",
            "[set|check] the date and time [to automatic|are correct] [— a wrong clock blocks enrolment|; sign-in fails if it's off].",
        ),),
        extra=("[until {app} is back|meanwhile], dispatch can [read you|send] today's jobs [by phone|by SMS].",),
        symptom=("Company Portal [says|shows] error {hexcode}", "[still no {app}|{app} still isn't there]"),
    ),
    Topic(
        name="remote_access",
        ask=(
            "[Can't reach|No access to] [the drawings share|the asset system|the remote desktop] from {site}. [VPN is connected.|Says access denied.]",
            "[Remote desktop|RDP] to `{host}` [fails|drops] [from the van|on site] [with|—] [error {hexcode}|'credentials did not work'].",
        ),
        lead=(
            "[from the field|on mobile data], [the web portal|the browser version] [is the easier way in|works better than RDP][ — less data, fewer drops|].",
            "[that's|it's] [the new sign-in policy|an expired password on the remote session] [blocking|stopping] it[, not the VPN|].",
            "[remote desktop|RDP] [over mobile data|on a weak link] [is|can be] [heavy|fragile]; [a lighter route|the portal] [usually works|gets you there] [first time|more reliably].",
        ),
        steps=((
            "[open|use] [portal.corp.local|the remote web portal] in the browser [instead of the RDP app|].",
            "[reset|change] your password [in the self-service page|] [then wait {mins} minutes|] [before retrying|].",
            "[lower|reduce] display quality in the RDP [settings|options] [to save data|for weak signal].",
            "[ask|get] dispatch to [email|send] you [the drawing|the file] [as a PDF|directly] [if you're stuck|].",
            "[save|store] [the connection|the .rdp file] [with|using] your [full username|corp\\\\ username] [so it stops asking|to avoid the prompt].",
        ),),
        extra=("[download|save] the [drawings|documents] [you need|for tomorrow] [at {base}|on Wi-Fi] [so they're on the {device} offline|].",),
        symptom=("[still 'access denied'|the portal loops back to login]", "RDP [now|still] [drops|freezes] after {mins} min"),
    ),
    Topic(
        name="roaming",
        ask=(
            "[No data|Mobile data gone] [since crossing into|over the border in] {country2} [— phone says|and it shows] [emergency calls only|no service].",
            "[SIM|Data] [stopped working|not working] [at {site}|today] on my {device}. [Calls work, data doesn't.|Nothing at all.]",
        ),
        lead=(
            "[roaming|data roaming] is [off by default|blocked until you switch it on] for [work|company] SIMs.",
            "[it's|likely] [the APN|the data profile] [after the SIM swap|after the update][ — easy to fix|].",
            "[company SIMs|work SIMs] [need|require] [two settings|a couple of settings] [right|correct] [abroad|for data], [and|but] [both|they] [take a minute|are quick to check].",
        ),
        steps=((
            "[turn on|enable] data roaming [under Mobile data|in Settings → Mobile network].",
            "[check|set] the APN to `corp.m2m` [if it's blank|under Access Point Names].",
            "[restart|reboot] the {device} [after changing it|once roaming is on].",
            "[pick|select] the network [manually|by hand] [if it picks the wrong one|].",
            "[check|look at] [the SIM tray|whether the SIM is seated] [— reseat it if the {device} took a knock|].",
        ),),
        extra=("[calls and SMS still work|you can still call the desk] [without data|] — [ring extension {ext}|text dispatch] [if you get stuck|].",),
        symptom=("[still 'no service'|data shows but nothing loads]", "[it|the {device}] [connects to|picks] [the wrong network|a partner network] again"),
        rules={"country2": ("Belgium", "Germany", "France", "Austria", "Denmark", "Switzerland", "the Netherlands")},
    ),
    Topic(
        name="offline_docs",
        ask=(
            "[Going to|Heading to] {site} [tomorrow|on {weekday}] — [no signal there|zero coverage]. [How do I get the manuals|How can I have the drawings] offline?",
            "[Maps|Navigation] [won't load|is blank] [near|around] {site}. [Need the route to|How do I get to] the [cabinet|access gate].",
        ),
        lead=(
            "[easiest is to|best is to] [download|sync] [what you need|the files] [before you leave|at {base}] [so it's on the {device}|].",
            "[save|pin] [the area|the files] [for offline use|offline] [while you still have coverage|on Wi-Fi][ — takes a minute|].",
            "[plan ahead|prepare] [at {base}|the night before]: [files and maps|manuals and the route] [can all be kept|can be stored] [on the {device}|locally] [for no-signal sites|offline].",
        ),
        steps=((
            "[mark|set] the [job folder|manuals folder] as [Always keep on this device|available offline] [in OneDrive|].",
            "[download|save] the offline map [for {town}|area] [in the maps app|] [on Wi-Fi|].",
            "[screenshot|photograph] the [access notes|gate code and route] [as a backup|].",
            "[open|check] each file once [to confirm|so you know] it [opens|is cached] [offline|].",
            "[turn on|switch to] airplane mode [at {base}|before you leave] [and test|to test] [that everything opens|the files] [without signal|offline].",
        ),),
        extra=("[also|and], [dispatch can read the route to you|the site folder has a printed copy] [by phone|in the van] [if all else fails|].",),
        symptom=("[files still say 'online only'|the map area won't download]", "[one manual|a drawing] [won't open|is blank] offline"),
    ),
    Topic(
        name="mobile_printer",
        ordered=True,
        match=((0, 2), (1,)),
        ask=(
            "[The|My] [Bluetooth|van] printer [won't pair|isn't found] [with|by] the {device} [at {site}|today]. [Need to print the customer receipt.|Customer is waiting.]",
            "[Receipts|Job sheets] [print|come out] [blank|garbled|cut off] [on the van printer|from {app}] [since|after] [the update|{weekday}].",
        ),
        lead=(
            "[van printers|mobile printers] [lose|drop] their pairing [after updates|when the battery runs flat][ — re-pairing takes a minute|].",
            "[garbled|blank] [prints|receipts] [usually mean|normally mean] the [wrong paper setting|printer language] [in {app}|after the update].",
            "[the printer|it] [only pairs|pairs] with [one device at a time|a single device][, so it may still be linked to another {device}|; another tablet may be holding it].",
        ),
        steps=((
            "[switch|turn] the printer off and on [and hold the feed button|, holding feed,] [to print its pairing code|until it prints a status page].",
            "[forget|remove] the printer in Bluetooth settings [on the {device}|] and [pair again|re-pair] [using the code on the status page|with PIN 0000].",
            "[select|pick] [the printer|it] [again|] in {app} [under Settings → Printer|in the print dialog].",
            "[set|change] [the paper type|the label size] to [receipt|58 mm] [in {app}|in the printer settings].",
            "[charge|swap] the printer battery [— a low battery prints faint or blank|if the light is amber].",
        ),),
        extra=("[if it won't print,|no printer?] [email the receipt from {app}|send the customer a PDF] [instead|— it counts as proof of service].",),
        symptom=("[still not found|it pairs then drops]", "[receipts|prints] [still come out|are still] [blank|garbled]"),
    ),
    Topic(
        name="barcode_scanner",
        ask=(
            "[The scanner on my|My] {device} [won't read|isn't reading] [asset tags|barcodes|meter labels] [at {site}|today]. [Beeps but nothing appears.|Nothing happens when I press scan.]",
            "[Scanning|Barcode scanning] in {app} [puts|types] [the wrong number|garbage|only half the code] [into the field|into the job] [since|after] [the update|{weekday}].",
        ),
        lead=(
            "[scanners|the built-in scanner] [usually|normally] [stop working|go quiet] when [the scan app loses its profile|the lens is dirty or scratched|{app} doesn't have focus][ — all fixable on site|].",
            "[wrong|garbled] [numbers|codes] [mean|point to] [the scanner adding a prefix|a keyboard setting] [since the update|after the update][; a quick settings change fixes it|].",
        ),
        steps=((
            "[wipe|clean] the scanner window [with a soft cloth|with your sleeve] [— dust and fingerprints block the beam|; dirt is the usual culprit].",
            "[tap|touch] the [asset field|number field] in {app} [before pressing scan|first, then scan] [so the result lands there|].",
            "[open|check] [DataWedge|the scan settings] and [select|pick] [the Field profile|the profile for {app}] [again|].",
            "[turn off|remove] [the prefix and suffix|the extra Enter key] [under Keystroke output|in the scan profile].",
            "[type|key in] the number [by hand|manually] [for now|as a stopgap] [and add a photo of the tag|with a photo of the label].",
        ),),
        extra=("[if the scanner stays dead|no luck with the scanner?], [manual entry|typing the number] [works offline too|is accepted] — [add a photo|snap the tag] [so the office can check it|as proof].",),
        symptom=("[still no beep|nothing appears] when I scan", "[it still adds|there's still] [extra characters|a prefix] [to every code|before the number]"),
        match=((0,), (1,)),
    ),
    Topic(
        name="timesheet_app",
        ask=(
            "[Timesheet|My hours] [won't submit|keeps failing] in the [mobile|time] app [from the van|at {site}]. [Deadline is {weekday}.|It just spins.]",
            "[The time app|Hours app] [shows|has] [yesterday's job|the wrong job] [on my {device}|] and [won't let me change it|I can't edit it].",
        ),
        lead=(
            "[timesheets|hours] [need|want] [a short window of signal|a decent connection] to [submit|send][ — they're small, so one bar usually does|], [and|but] [they're saved on the device until then|nothing is lost in the meantime].",
            "[jobs|entries] [lock|become read-only] [once the job is closed|after dispatch closes the job][, so edits go through the office|; the office can reopen it].",
        ),
        steps=((
            "[save|keep] the timesheet as a draft [and send it|then submit it] [at the next spot with two bars|back at {base}].",
            "[pull down|swipe down] [to refresh|on the job list] [so|and] the app [picks up|fetches] [today's jobs|the latest job list].",
            "[ask|ring] dispatch [on {ext}|on extension {ext}] to [reopen|unlock] the job [so you can fix the hours|for editing].",
            "[update|install] the time app [from Company Portal|] [— version {ver} fixes the spinning submit|on Wi-Fi].",
            "[note|write down] [your hours|start and finish times] [in the job notes|on the job card] [as a backup|in case it fails again].",
        ),),
        extra=("[the deadline|payroll] [can wait|is flexible] [for field staff|if you're out of coverage] — [a draft counts|drafts saved before {weekday} are accepted] [as long as it's sent within a day|].",),
        symptom=("[it still spins|still stuck] on Submit", "the job [is still locked|still won't open for editing]"),
        match=((0,), (1,)),
    ),
)

# ------------------------------------------- admin / HR -------------------------------------------

_ADMIN_RULES: dict[str, Rule] = {
    "hrsys": ("Workday", "SuccessFactors", "ADP", "the payroll portal", "BambooHR"),
    "xlfile": _joiner(("staff", "payroll", "leave", "headcount", "expenses", "rota", "training", "onboarding"), ("_list", "_tracker", "_report", "_summary"), ("_Q1", "_Q2", "_2024", "_final", "_v3", ""), sep=""),
    "mailbox": ("hr-team", "payroll", "recruitment", "facilities", "reception", "benefits", "office-admin"),
    "sheet": ("Sheet1", "Data", "Summary", "Staff", "Lookup", "Master"),
    "colx": ("B", "C", "D", "E", "F", "G"),
    "rowz": _num(50, 900),
    "floor": ("2nd", "3rd", "4th", "5th", "ground", "first"),
    "colleague2": ("Maureen", "Jonathan", "Aylin", "Dragan", "Siobhan"),
    "portal": ("the service portal", "ServiceHub"),
    "opener": (
        "[happy to help|good question|no problem at all|easy one|thanks for asking|lovely to hear from you|oh, I know this one]!",
        "[sure thing|of course|absolutely], [this is a common one|let's sort it out|we'll get it fixed|it happens to everyone]!",
        "[thanks for the detail|thanks for reaching out|good timing][ on this|][ — this one's quick|; we'll have it sorted soon|]!",
    ),
    "first": ("first,", "to start,", "first of all,", "step one:", "to begin,"),
    "next": ("next,", "then", "after that,", "now", "second,", "then,"),
    "last": ("finally,", "last of all,", "to finish,", "once that's done,", "and lastly,"),
    "reassure": (
        "[let me know|just reply here|shout|give me a shout] if [anything looks off|it doesn't work|you get stuck|the {weekday} deadline is at risk][ — I'm on {channel} all day|; I'm around until {clock}|; I can also remote into your {device}|].",
        "[you should be all set|that should do it|you're good to go] [now|from here]! [Have a lovely {weekday}.|Any questions, I'm on {channel}.|I'll keep {ticket} open until {clock} just in case.|]",
        "[if you'd like|if it helps|happy to help further:] [I can|we can] [walk through it together|do it with you|go through it step by step] [on {channel}|by screen share|in person] [at {clock}|this afternoon|on {weekday}|].",
        "[I'll|I will] [check back|follow up] [on {ticket}|with you] [at {clock}|on {weekday}|tomorrow morning] [to make sure it's working|to see how it went|].",
    ),
    "ack": ("[Oh no|Ah, sorry about that|Oh dear], {name}!", "[Thanks for checking|Thanks for trying that|Thanks for letting me know], {name}!"),
    "escalate": (
        "[I've|I have] [passed this to|raised it with] [our applications team|the second-line team|a specialist colleague] [under {ticket}|] [and they'll contact you by {clock}|— they're quick].",
        "[if it's still stuck|failing that], [I can remote into your {device}|we can share screens|I can connect to your {device}] [on {channel}|] [at {clock}|this afternoon].",
    ),
    "close_a": (
        "[Wonderful|Brilliant|Fantastic], {name}! [Glad that's sorted|Happy it worked]. [I'll close {ticket}.|Closing {ticket} now.]",
        "[Yay|Great news], {name}! [Don't hesitate to ask if anything else comes up|Enjoy the rest of your {weekday}] — [{ticket} is closed|I've closed {ticket}].",
    ),
    "still": ("[Hmm, I tried that|Thanks — I tried those steps] but {symptom}.", "[Sorry|Apologies], still no luck: {symptom}."),
    "thanks": ("[That worked|Perfect, that did it]! Thank you so much!", "[All sorted|Working now], [thanks a lot|many thanks]!"),
    "also": ("Oh, and one more question: ", "Also, while I have you — ", "Another quick one: "),
    "ask_pre": ("", "Hi! ", "Hello, ", "Quick question — ", "Good morning! "),
}

_ADMIN_TOPICS = (
    Topic(
        name="excel_lookup",
        match=((0, 2), (1,)),
        fixed={"xlfile": _ADMIN_RULES["xlfile"], "sheet": _ADMIN_RULES["sheet"]},
        ask=(
            "My VLOOKUP in {xlfile}.xlsx [shows|returns] #N/A for [some|about {n}] [employees|rows] even though the IDs [are definitely there|match]. [What am I doing wrong?|Any idea?]",
            "[How do I|Can you show me how to] [pull|bring] [salaries|cost centres|start dates] from the {sheet} tab into {xlfile}.xlsx [by employee ID|automatically]?",
        ),
        lead=(
            "[most of the time|usually|nine times out of ten] #N/A [means|comes from] [hidden spaces|IDs stored as text in one sheet and numbers in the other|a lookup range that moved].",
            "[the|a] [neat|simple|tidy] way is XLOOKUP[ — it's easier than VLOOKUP|, which doesn't care about column order|, available in your version of Excel].",
            "[lookups|formulas like VLOOKUP] [are fussy about|need] [an exact match|identical IDs], [so|and] [one stray space|a text-formatted number] [is enough to break them|breaks the match].",
        ),
        steps=((
            "[click|select] an empty [cell|column] and [type|enter] `=TRIM({colx}2)` [to clean stray spaces|to strip hidden spaces].",
            "[use|try] `=XLOOKUP(A2,{sheet}!A:A,{sheet}!{colx}:{colx},\"Not found\")` [in the first row|] and [drag it down|double-click the fill handle].",
            "[lock|fix] the range with dollar signs, like `$A$2:${colx}${rowz}`, [so it doesn't shift|so it stays put when you copy it].",
            "[convert|turn] text-numbers into numbers [with Data → Text to Columns → Finish|using the little green triangle → Convert to Number].",
            "[check|make sure] [both sheets|the two tabs] use the same ID format[ — leading zeros matter|].",
            "[wrap|put] the formula in `IFERROR(...,\"check\")` [so gaps are easy to spot|to flag the missing ones] [instead of #N/A|].",
            "[filter|sort] [the result column|column {colx}] [for|by] [\"Not found\"|the errors] [to see|and review] [which IDs are really missing|the {n} problem rows].",
        ),),
        symptom=("[a few rows|{n} rows] still show #N/A", "XLOOKUP [gives|shows] #NAME?"),
    ),
    Topic(
        name="excel_pivot",
        match=((0, 2), (1,)),
        fixed={"xlfile": _ADMIN_RULES["xlfile"], "sheet": _ADMIN_RULES["sheet"]},
        ask=(
            "The pivot table in {xlfile}.xlsx [doesn't show|isn't picking up] the [new|latest] rows I added [this week|on {weekday}]. [Help!|What did I miss?]",
            "[Totals|Numbers] in my pivot [look wrong|don't match] the {sheet} tab in {xlfile}.xlsx[ — off by {n}|].",
        ),
        lead=(
            "[pivots|pivot tables] don't [update|refresh] on their own, and [the source range|the data range] [probably stops before your new rows|may not include the new rows].",
            "[usually|often] [some numbers are stored as text|there are blank or duplicate rows] [in the source|on the {sheet} tab], so [they're counted instead of summed|the totals drift].",
            "[a pivot|the pivot] [is a snapshot|only reflects the data] [from the last refresh|as of its last refresh], [so|which means] [new rows|recent changes] [need a nudge|don't appear automatically].",
        ),
        steps=((
            "[click|select] [anywhere in|a cell in] the data and [press|use] Ctrl+T [to make it a table|so it grows automatically].",
            "[go to|open] PivotTable Analyze → Change Data Source and [pick|select] the [table|full range].",
            "[hit|click] Data → Refresh All [whenever you add rows|after adding rows].",
            "[check|double-check] the value field [is set to|uses] Sum, not Count [in Value Field Settings|].",
            "[remove|delete] [blank rows|duplicates] [with Data → Remove Duplicates|] [before refreshing|].",
            "[tick|enable] 'Refresh data when opening the file' [under PivotTable Options → Data|in the pivot options] [so it's always current|].",
            "[compare|cross-check] [one total|a single department] [against|with] `=SUMIFS(...)` on {sheet} [to confirm|so you know] the numbers [line up|match].",
        ),),
        symptom=("the new rows [still don't appear|are still missing]", "[the totals|it] [still|now] [show|shows] Count of [Salary|Hours]"),
    ),
    Topic(
        name="calendar_share",
        match=((0, 2), (1, 2)),
        ask=(
            "[How do I|Can you help me] [share|give access to] [my calendar|the {mailbox} calendar] [with|to] [my manager|the new coordinator|{colleague2}] [so they can book for me|]?",
            "[My manager|{colleague2}] [can only see|only sees] 'busy' in my calendar[, not the details|]. [How do I change that?|Can I fix that myself?]",
        ),
        lead=(
            "[calendar sharing|sharing] is [quick|just a few clicks] in Outlook[, and you choose how much they see|].",
            "[they|your colleague] [have|has] the default [free/busy|availability-only] permission[ — you can raise it yourself|; easy to change].",
            "[you're in control of|you decide] [who sees what|how much detail others see] in your calendar, [and it's|which is] [easy to adjust|a two-minute change].",
        ),
        steps=((
            "[open|go to] Calendar, right-click [your calendar|{mailbox}] and [choose|select] Sharing Permissions.",
            "[click|press] Add, [type|pick] their name, and [set|choose] [Can edit|Delegate|Can view all details] [for booking|as needed].",
            "[untick|check] [Private items|the private box] [depending on|based on] [what they should see|how much detail you want to share].",
            "[ask them to|have them] [restart|close and reopen] Outlook [so the change shows|to refresh].",
            "[mark|set] [sensitive|personal] appointments as Private [with the padlock icon|from the Tags group] [so they stay hidden|even after sharing].",
            "[check|confirm] [it worked|the access] [by asking them to|— they can] open your calendar [from Add Calendar → From Address Book|via Add Calendar].",
        ),),
        symptom=("[they|my manager] still [can't|cannot] see the details", "[the Add button|Sharing Permissions] is greyed out"),
    ),
    Topic(
        name="room_booking",
        ask=(
            "[Room bookings|A recurring meeting] [keeps|keep] [declining|disappearing] in Outlook [for the {weekday} team meeting|since {weekday}]. [Any idea why?|]",
            "[I can't book|Outlook won't let me book] the {floor} floor meeting room [for|on] {weekday} [at {clock}|]. [It says declined straight away.|]",
        ),
        lead=(
            "[rooms|meeting rooms] [decline|reject] when [the series runs past the booking limit|one occurrence clashes][ — easy to fix|].",
            "[that room|the room] [only accepts|takes] bookings [up to {n} weeks ahead|from certain groups][, so it auto-declines|].",
            "[automatic declines|instant declines] [come from|are set by] the room's [booking rules|policy], [not from a person|rather than anyone on the team][ — so it's fixable|].",
        ),
        steps=((
            "[shorten|end] the series [after {n} occurrences|by {weekday} in {n} weeks] [so it fits the room policy|].",
            "[open|check] the [room's|] [decline message|reply] [to see which date clashes|for the conflicting date].",
            "[use|try] the Room Finder [in the new meeting window|] [to pick|and choose] a free room [for that slot|].",
            "[email|ask] facilities@ [to add you to the bookers group|for access to that room] [if you book it often|].",
            "[book|add] the room [as a Room, not as an attendee|from the Location field's room list] [— typed names aren't reserved|; typing its name doesn't reserve it].",
            "[split|break] the series [into two shorter ones|at the clash] [and keep the other dates|so the rest stay booked].",
        ),),
        symptom=("[the room|it] [still|again] declined {weekday}'s meeting", "Room Finder [shows|says] no rooms free"),
    ),
    Topic(
        name="shared_mailbox",
        match=((0, 2), (1,)),
        fixed={"mailbox": _ADMIN_RULES["mailbox"]},
        ask=(
            "[I can't see the|The] {mailbox}@ shared mailbox [isn't showing up in Outlook|is missing] [even though|and] [I was added|my manager added me] [on {weekday}|yesterday].",
            "[I need access to|Can I get into] the {mailbox}@ mailbox [while {colleague2} is on leave|for the next {n} weeks]? [Not sure who to ask.|]",
        ),
        lead=(
            "[new|fresh] [permissions|access] can take [a little while|up to {n} hours] to [appear|show up], and [sometimes|occasionally] Outlook needs a nudge.",
            "[access to|permission for] shared mailboxes [is|gets] approved by [its owner|the mailbox owner][, usually the team lead|] — [I can request it for you|it's a quick request].",
            "[shared mailboxes|team inboxes] [appear|show up] [on their own|automatically] [once access is granted|after approval], [but|though] [Outlook can be slow to notice|the desktop app sometimes lags].",
        ),
        steps=((
            "[fill in|submit] the [Shared mailbox access|mailbox access] form in {portal} [and name|naming] the owner [as approver|].",
            "[check|look at] [the owner's reply|the approval email] [to confirm|to see] [it's been approved|when it was granted].",
            "[give it|wait] [{n} hours|until tomorrow morning] [after approval|once it's approved] [before restarting Outlook|before checking again|and then check again].",
            "[close|quit] Outlook [completely|fully] [on your {device}|] and [open|start] it again[ — it often just appears|].",
            "[go to|open] File → Account Settings → [More Settings|Change] → Advanced and [add|enter] {mailbox}.",
            "[open|try] [Outlook on the web|the web version] and [choose|select] [Open another mailbox|your profile → Open another mailbox].",
        ),),
        symptom=("[it's still not there|it still isn't showing]", "[Outlook says|it says] 'you don't have permission'"),
    ),
    Topic(
        name="send_as",
        match=((0, 2), (1,)),
        fixed={"mailbox": _ADMIN_RULES["mailbox"]},
        ask=(
            "[When I reply from|Replies from] {mailbox}@ [go out|send] [from my own address|as me] instead of the shared one. [How do I fix that?|]",
            "[Emails|Messages] I send [as|from] {mailbox}@ [end up|land] in my own Sent Items[ instead of the shared one|]. [Colleagues can't see them.|]",
        ),
        lead=(
            "[you|your account] [needs|need] [Send As|the Send As permission] and [the From field|the From box] [switched on|visible][ — both quick|].",
            "[by default|out of the box], Outlook [saves|files] sent shared mail in [your|the sender's] Sent Items[ — one setting changes it|].",
            "[replying from|sending as] a shared address [works|only works] [once|when] [two things are in place|the permission and the From field are set][ — we'll check both|].",
        ),
        steps=((
            "[turn on|show] the From [field|box] [under Options|in a new email] and [pick|select] {mailbox}@.",
            "[ask|check with] the mailbox owner [that you have|to confirm] Send As [rather than|and not just] Send on Behalf.",
            "[ask us to|let us] [switch on|enable] 'copy sent items' [for {mailbox}@|on the shared mailbox] [— takes a minute|].",
            "[send|try] a test email [to yourself|to a colleague] [and check|to check] the From line.",
            "[clear|delete] the [old|cached] address [from the autocomplete list|that pops up in the From box] [so Outlook stops suggesting it|].",
            "[reply|answer] [from inside|directly in] the {mailbox}@ folder [rather than from your own inbox|so the right address is used].",
        ),),
        symptom=("[replies|emails] still [go out|send] as me", "[it says|I get] 'you don't have permission to send as'"),
    ),
    Topic(
        name="payroll_approvals",
        match=((0, 1), (0, 2)),
        fixed={"hrsys": _ADMIN_RULES["hrsys"]},
        ask=(
            "[I can't|Unable to] [approve|submit] timesheets in {hrsys} [before|ahead of] the payroll cut-off [at {clock}|on {weekday}]. [The button is greyed out.|It says 'not authorised'.]",
            "{hrsys} [logs me out|keeps timing out] [every few minutes|when I open the {n} pending approvals]. [Payroll is due {weekday}!|]",
        ),
        lead=(
            "[don't worry|no need to panic], [this is usually|it's almost always] [a browser cache issue|a role that lapsed after the update] in {hrsys}[ — fixable in minutes|].",
            "[greyed-out|disabled] buttons in {hrsys} [usually mean|normally mean] your approver role [expired|needs renewing] [after the {weekday} update|].",
            "[time-outs|being logged out] in {hrsys} [tend to come from|are usually caused by] [an old browser session|stale cookies][ — quick to clear|], [not your account|rather than anything you did].",
        ),
        steps=((
            "[open|try] {hrsys} in [a private window|Chrome or Edge] [on your {device}|] [to rule out the cache|].",
            "[clear|delete] [cookies|browsing data] for the last [day|week] and [sign in again|log back in].",
            "[check|look at] My Roles [in your profile|] [to see|and confirm] Approver is [listed|still active].",
            "[ask|email] [your manager|payroll@] to [set up|add] a [proxy|delegate] approver [as a backup|for cut-off day].",
            "[approve|work through] [the timesheets|the {n} approvals] [in smaller batches|a few at a time] [to avoid the time-out|so the session doesn't expire].",
            "[let payroll@ know|tell payroll@] [before {clock}|ahead of the cut-off] [if anything is still pending|that approvals are delayed][ — they can hold the run|].",
        ),),
        symptom=("the [button|Approve button] is still greyed out", "{hrsys} [still|now] [times out|logs me out] after {mins} minutes"),
    ),
    Topic(
        name="outlook_search",
        ordered=True,
        ask=(
            "Outlook search [can't find|isn't finding] emails [from {weekday}|I know are there] [in my inbox|in a shared folder]. [Very frustrating!|Is it broken?]",
            "[Searching for|When I search] [a candidate's name|an invoice number|a colleague] in Outlook [shows nothing|only finds old emails]. [Help!|]",
        ),
        lead=(
            "[search problems|missing search results] [usually come from|are normally caused by] [the search index|an index that needs rebuilding][, which we can rebuild|].",
            "[Outlook only searches|by default Outlook searches] [the current folder|recent mail] [— widening it usually helps|, so older emails hide].",
            "[Outlook's search|searching in Outlook] [relies on|uses] [an index on your PC|a local catalogue of your mail], [and|which] [it sometimes falls behind|can get out of date][ after updates|].",
        ),
        steps=((
            "[go to|open] File → Options → Search → Indexing Options [on your {device}|] and [click|choose] Rebuild.",
            "[leave|keep] Outlook [open|running] [for an hour|overnight|for a bit] [so it can reindex|while it rebuilds].",
            "[change|switch] the search scope [at the top|in the search bar] to All Mailboxes.",
            "[try|use] [Outlook on the web|the web version] [in the meantime|for now][ — its search doesn't use your PC's index|].",
            "[use|try] [quotation marks|quotes] [around the name|for exact phrases] [or|and] [from:|the From filter] [to narrow it down|for precision].",
            "[check|set] [Cached Exchange Mode|the offline setting] to [keep|download] [all mail|more than {n} months] [under Account Settings|].",
        ),),
        symptom=("search [still|only] [shows|returns] results up to {weekday}", "[Indexing Options|it] [says|shows] {n},000 items remaining"),
    ),
    Topic(
        name="mailbox_full",
        ask=(
            "[My mailbox is full|Outlook says my mailbox is almost full] [at {pct}%|] and [I can't send|emails bounce]. [What should I delete?|]",
            "[I keep getting|There's a] 'mailbox over quota' [warning|message] [every morning|since {weekday}]. [Can you just make it bigger?|]",
        ),
        lead=(
            "[the good news|good news]: [most of the space|the bulk] is [usually|often] [in a few big attachments|in Deleted Items and Sent Items][ — quick wins|].",
            "[we can't raise|raising] the quota [beyond {gb} GB|further] [isn't possible|for standard mailboxes], but the Online Archive [gives you lots more room|is unlimited].",
            "[a full mailbox|hitting the quota] [is really common|happens a lot] [in HR and payroll|with lots of attachments], [and|but] [we can free space|you can clear space] [in ten minutes|quickly].",
        ),
        steps=((
            "[empty|clear out] Deleted Items [and Junk|] [first|straight away].",
            "[sort|order] [by Size|your folders by size] and [save|move] [big attachments|large files] to OneDrive.",
            "[turn on|use] the Online Archive [for emails older than {n} months|for older mail].",
            "[check|look at] File → Tools → Mailbox Cleanup [to see|for] [what's using the space|folder sizes].",
            "[search|filter] [for|by] [messages larger than {n} MB|size: large] [and keep only what you need|to find the biggest ones].",
            "[empty|clear] [Sent Items|old calendar attachments] [older than a year|from last year] [— copies are usually elsewhere|].",
        ),),
        symptom=("[the mailbox|it] [is still|is] at {pct}%", "[the archive|Online Archive] [doesn't show up|isn't there]"),
    ),
    Topic(
        name="printing",
        ordered=True,
        match=((0, 2), (1,)),
        ask=(
            "[The|Our] {floor} floor printer [says|shows] {n} jobs [stuck|in the queue] and [nothing prints|my contracts won't print]. [Can you help?|]",
            "[My documents print|Everything prints] [blank|in black and white|on the wrong tray] [on the {floor} floor printer|since {weekday}]. [Very odd!|]",
        ),
        lead=(
            "[a stuck job|one stuck job] [at the front of the queue|] [blocks|holds up] everything behind it[ — easy to clear|].",
            "[that's|it's] [usually|normally] the printer [defaults|preferences] [on your PC|in the driver] [after the update|] — [quick to change|easy to fix].",
            "[printers|office printers] [get stuck|jam up] [on a single bad job|on one large file] [more often than you'd think|surprisingly often][, and|;] [clearing it|removing it] [usually|normally] [frees the rest|gets everything moving].",
        ),
        steps=((
            "[open|go to] Settings → Printers [on your {device}|], [pick|click] the {floor} floor printer and [choose|open] the queue.",
            "[cancel|delete] the [first|oldest] job [in the list|only] [and watch the rest print|].",
            "[switch|turn] the printer off and on [at the panel|with the power button] [if the queue won't clear|when the job won't cancel].",
            "[open|check] Printing Preferences [on the {device}|] and [set|choose] [Colour|the right tray|Auto-select] [as default|].",
            "[print|send] [to|via] the [Follow-Me|secure print] queue [and collect it with your badge|instead] [at any printer|on another floor].",
            "[print|send] a test page [from the printer's Properties|] [to check|to confirm].",
        ),),
        symptom=("the queue still shows {n} jobs", "[it|pages] still [prints|print] [blank|grey]"),
    ),
    Topic(
        name="scan_email",
        match=((0, 2), (1,)),
        ask=(
            "[Scan to email|Scanning] [stopped working|doesn't arrive] [on the {floor} floor copier|since {weekday}]. [I need to scan signed forms.|]",
            "[Scanned|The scanned] [contracts|forms] [arrive|come through] [as one huge file|unreadable] [in my inbox|]. [Can I change that?|]",
        ),
        lead=(
            "[scan to email|scanning] [usually fails when|often stops when] the copier's [address book|mail settings] [is|are] [out of date|reset after an update].",
            "[the copier|it] [defaults to|is set to] [high resolution|600 dpi colour][, which makes huge files|] — [you can change it on the panel|easy to adjust].",
            "[scans|scanned files] [sometimes|occasionally] [get caught|land] in [Junk|quarantine] [because|since] [they come from a device|the copier's address looks unusual][ — worth checking first|].",
        ),
        steps=((
            "[scan|send] to [your own address|yourself] [instead of|rather than] the shared one [as a test|].",
            "[check|look in] Junk [for|in case of] [the scan|scanned files] [from the copier|].",
            "[use|try] the [scan-to-OneDrive|Scan to Folder] button [meanwhile|as a workaround].",
            "[choose|set] [200 dpi|black and white] and [PDF|searchable PDF] on the [panel|copier screen] [before scanning|].",
            "[add|mark] the copier's address [as a safe sender|to Safe Senders] [in Outlook|] [so scans skip Junk|].",
            "[split|scan] [big batches|long contracts] [into|in] [a few smaller scans|parts of {n} pages] [to stay under the size limit|].",
        ),),
        symptom=("[scans|the scan] still [don't arrive|doesn't arrive]", "[the file|it] is still {n} MB"),
    ),
    Topic(
        name="mail_merge",
        ordered=True,
        match=((0, 2), (1,)),
        fixed={"xlfile": _ADMIN_RULES["xlfile"], "sheet": _ADMIN_RULES["sheet"]},
        ask=(
            "[I'm trying to|I need to] [send|create] {n} [offer letters|contract letters|welcome letters] with mail merge from {xlfile}.xlsx but [the dates come out wrong|the salary shows lots of decimals].",
            "[Mail merge|My merge] [won't find|can't see] the {sheet} tab in {xlfile}.xlsx[ — the list is empty|].",
        ),
        lead=(
            "[mail merge|the merge] [takes|uses] the raw values from Excel, so [dates and numbers|formatting] [need|needs] a little nudge in Word.",
            "[Word|mail merge] only [sees|lists] [tabs|sheets] [that start with a header row|with headers in row 1][ — usually that's the fix|].",
            "[Word|the merge] [ignores|doesn't carry over] [Excel's formatting|how the cells look in Excel], [so|which is why] [dates|amounts] [look odd|come out strange][ — a small code fixes it|].",
        ),
        steps=((
            "[make sure|check] row 1 of {sheet} has [headers|column names] and [no merged cells|nothing merged].",
            "[save|close] {xlfile}.xlsx [before|and then] [reconnecting|choosing Select Recipients again].",
            "[right-click|select] the merge field in Word and [choose|pick] Toggle Field Codes.",
            "[add|type] a format switch, [like|such as] `\\\\@ \"d MMMM yyyy\"` [for dates|on the date field] [or|and] `\\\\# \"#,##0.00\"` [for amounts|on salaries].",
            "[filter|untick] [rows|people] [you don't need|who already got a letter] [in Edit Recipient List|under Edit Recipients] [before merging|].",
            "[preview|check] [a few letters|three or four letters] with Preview Results [before you finish|first].",
        ),),
        symptom=("[the dates|amounts] still look wrong", "the {sheet} tab [still|] doesn't show up"),
    ),
)

# ------------------------------------------ new employee ------------------------------------------

_NEW_RULES: dict[str, Rule] = {
    "wel_a": ("Welcome aboard!", "Welcome to the team!", "Great question!", "No worries at all!", "Thanks for asking!",
              "Good to hear from you!", "Welcome to {location}!", "Happy to help!", "Nice to meet you!", "So glad you asked!"),
    "wel_b": (
        "[lots of|most|plenty of] new [starters|joiners|colleagues] [ask|wonder about] [this|exactly this] [in their first week|early on|in week one].",
        "[this|it] [trips up|confuses] [a lot of|many] [people|newcomers] [at first|in the first days|].",
        "[you're not the first|you're in good company] [to ask|with this one][ this {weekday}|].",
    ),
    "encourage": (
        "[don't worry if|it's completely normal if|no stress if] [this feels like a lot|it takes a couple of tries|the first week feels busy] [at first|right now|this week|]; [{buddy}|your buddy {buddy}|{buddy}, your onboarding buddy,] [can also help|is happy to show you|will gladly help] [in person|at your desk|over {channel}|after lunch|].",
        "[feel free to|please do|always] [ask|reach out|message us] [any time|whenever something's unclear|on {channel}] [— there are no silly questions|; we're here to help|; that's what we're here for]. [{buddy} can show you in person too.|{buddy} knows this well too.|]",
        "[if you get stuck|if anything's unclear|should you need a hand], [{buddy}|your buddy {buddy}] [or|and] the IT desk [on the {floor} floor|near reception|by the lifts] [can help|are happy to help|will sort you out][ until {clock}| any weekday|].",
        "[you're doing great|you're on the right track|that's a good start][ — honestly|]; [most people need|everyone needs|it takes most people] [a week or two|a little while] to [find their feet|settle in] [with our tools|here].",
        "[there's also|you'll also find] a [short|ten-minute] [video|guide] [on this|about it] [on {intranet}|in the New Starter pack][ if you prefer to watch|, if that's easier|].",
    ),
    "seq1": ("first,", "to start,", "to begin,", "step one:"),
    "seqn": ("then,", "next,", "after that,", "once that's done,"),
    "gloss": ("quick note:", "good to know:", "in plain words:", "a bit of jargon first:", "to explain:", "just so you know:", "for context:"),
    "portal": ("the IT self-service portal", "the service portal", "ServiceHub"),
    "intranet": ("the intranet", "the Hub", "OurSpace"),
    "wifi": ("Corp-Secure", "Staff-WiFi", "CorpNet"),
    "guestwifi": ("Corp-Guest", "Visitor", "Guest-WiFi"),
    "floor": ("2nd", "3rd", "ground", "4th"),
    "phone": ("phone", "iPhone", "Android phone", "personal phone"),
    "ack": ("[Thanks for letting me know|Oh, sorry about that|Thanks for trying], {name}!", "[No problem|Don't worry], {name} — [let's try something else|we'll get there|it happens]."),
    "escalate": (
        "[if it still doesn't work|if you're still stuck], [pop by|come to|drop in at] the IT desk [on the {floor} floor|near reception|by the lifts] [— we're there until {clock}|; no appointment needed|with your {device}].",
        "[let's|we can] [look at it together|do it together] [on a quick {channel} call|at the IT desk|over a screen share] [at {clock}|this afternoon|on {weekday}] [— bring your {device}|; it only takes a few minutes|].",
        "[I've opened|I opened] a ticket ({ticket}) [so someone can call you|and a colleague will call you] [today|by {clock}][ — a ticket is just our record of your request|].",
    ),
    "close_a": (
        "[Wonderful|Great|Yay], {name}! [You're all set|You did it] — [I've closed {ticket}|{ticket} is closed]. [Enjoy your first weeks!|Glad to have you here!|]",
        "[Glad that worked|Brilliant], {name}! [I'll close {ticket}|Closing {ticket}]; [don't hesitate to ask anything else|have a great {weekday}].",
    ),
    "still": ("[I tried that but|Sorry, I did that and] {symptom}.", "[Hmm,|Um,] {symptom}. [Did I do something wrong?|Sorry, I'm new to this!]"),
    "thanks": ("[It worked|That worked]! Thank you so much for explaining!", "[Yes, all done|Got it working]! [Thanks|Thank you] for your patience!"),
    "also": ("Sorry, one more question: ", "Also, I wasn't sure about this: ", "Another newbie question: "),
    "ask_pre": ("", "Hi! ", "Hello, I'm new here — ", "Hi, I started on {weekday}. "),
}

_NEW_TOPICS = (
    Topic(
        name="first_login",
        ordered=True,
        match=((0,), (1,), (2,)),
        ask=(
            "[I got|I received] a temporary password [from my manager|in my welcome email] but [it says it's expired|it doesn't work] when I sign in on my {device}. [What should I do?|]",
            "[What are|Where can I find] the password rules? [My new password keeps getting rejected.|It rejected {n} passwords already.]",
            "[I'm locked out|My account got locked] [after a few wrong passwords|on my second day] [on the {device}|]. [Sorry!|What now?]",
        ),
        lead=(
            "[temporary passwords|starter passwords|welcome passwords] [only last|expire after|are valid for] {n} days, so [it's normal that|no wonder|it makes sense that] it [stopped working|expired|no longer works].",
            "[our|the] password rules are [a bit strict|stricter than most|fairly demanding] because [one password|your account|a single login] [unlocks everything through SSO|opens every app|gets you into everything].",
            "[accounts|logins] [lock|get locked] [for {mins} minutes|for a short while|temporarily] after [five|a few] wrong [tries|attempts][ — a safety feature, not a punishment|; it protects you|].",
        ),
        steps=((
            "[go to|open|head to] {portal} [from your phone|on another device|on your {phone}] and [choose|click|tap] [Reset password|Forgot password] — [it'll text you a code|you'll get a code by SMS|a code arrives by text].",
            "[pick|choose|come up with] a password of at least 14 characters[ — a short sentence works well|; a passphrase is easiest to remember| — three random words are a good start|].",
            "[avoid|don't use|stay away from] your name, the company name or [old passwords|anything you used before|previous passwords][, as those get rejected|; the system checks for them|].",
            "[sign in|log in] [to your {device}|] with the new password [while connected to the office network|on {wifi}|while in the office] so it [syncs|updates everywhere|reaches every app].",
            "[wait|give it] [{mins} minutes|a quarter of an hour|a little while] [if you were locked out|after a lockout] [before trying again|and then try once more|].",
            "[store|keep] the new password in [the company password manager|your head, not on a sticky note|a password manager] [— {buddy} can show you ours|; never on paper|].",
        ),),
        extra=(
            "{gloss} SSO (single sign-on) [means|is] [one account and password|one login|a single set of credentials] [opens|gets you into|unlocks] [most of our apps|email, Teams and the HR system|{portal}, email and Teams].",
            "{gloss} [your account|the login|your username] [is the same for|works across|covers] [email, Teams and {portal}|every app|all our tools][ — that's what we call SSO, single sign-on|; we call that single sign-on|].",
            "{gloss} [we call it|it's called] single sign-on, or SSO: [one password|one login] [for|covering] [everything|all your work apps][, so choose it carefully|, which is why the rules are strict|].",
        ),
        symptom=("[the code never arrives|I didn't get the code]", "it still says [my password doesn't meet the requirements|'password not allowed']", "[I'm locked out again|it locked me out again]"),
    ),
    Topic(
        name="mfa_setup",
        ordered=True,
        match=((0, 1), (0, 1), (2,)),
        ask=(
            "[My welcome email|The setup guide] [says|mentions] I need to set up MFA. [What is that|What does that mean] and how do I do it on my {phone}?",
            "[I keep getting|It keeps asking for] a code [when I sign in|on my {device}] but I [never set up|don't have] [an authenticator|the app]. [Help?|]",
            "[Do I have to|Must I] use my {phone} for MFA? [I'd rather not install work apps on it.|Is there another way?]",
        ),
        lead=(
            "[setting up MFA|MFA setup|the MFA setup] [takes about five minutes|is quick|only takes a few minutes], and you only [do it|need to do it|set it up] once.",
            "[that's|those prompts are|what you're seeing is] the MFA setup [asking to be finished|waiting for you|not finished yet][ — let's do it now|; we can do it together now|].",
            "[you can use|there's also] a [small hardware key|security key] [instead of your phone|if you prefer not to use your {phone}][ — totally fine|; lots of people do|].",
        ),
        steps=((
            "[install|download|get] Microsoft Authenticator [from the App Store or Google Play|on your {phone}|from your phone's app store].",
            "[go to|open|visit] aka.ms/mfasetup on your {device} [and sign in|] — [this page|it|the page] [shows|will show|displays] a QR code.",
            "[open|in] the app, [tap|choose|select] Add account → Work account and [scan|point it at|point your camera at] the code[ — that links the app to you| to connect it|].",
            "[approve|confirm|accept] the test notification [to finish|so we know it works|to complete the setup].",
            "[add|register] [a backup method|your phone number as a backup] [in the same page|on aka.ms/mfasetup] [in case you change phones|for emergencies|].",
            "[ask for|request] a security key [from the IT desk|in {portal}] [if you'd rather not use your phone|as an alternative][ — it plugs into the USB port|].",
        ),),
        extra=(
            "{gloss} MFA (multi-factor authentication) means [you prove it's you twice|signing in with your password plus a second check|a second step after your password] — [usually a tap on your phone|a code or an approval on your phone|typically an approval in an app].",
            "{gloss} MFA [stands for|is short for] multi-factor authentication[ — in plain words,|:] [your password plus|a password and] [a quick approval on your phone|a second check on your phone|a tap in an app], [so a stolen password alone isn't enough|which keeps your account safe|to keep attackers out].",
            "{gloss} [with MFA|multi-factor authentication (MFA) means] [a password alone|knowing your password] [isn't enough|won't get anyone in] — [you also approve|there's also] [a prompt|a notification] on [a device you own|your phone].",
        ),
        symptom=("the QR code [won't scan|doesn't scan]", "[I don't get a|there's no] notification on my {phone}", "[the app|it] says 'account already added'"),
    ),
    Topic(
        name="badge",
        match=((0,), (1,)),
        ask=(
            "[My badge|The badge I got] [doesn't open|won't open] the [{floor} floor|side] door[ at the {location} office|]. [Reception said to ask IT?|Is it activated?]",
            "[Where do I|How do I] [get|pick up] my [access badge|ID badge]? [I've been using a visitor pass since {weekday}.|]",
        ),
        lead=(
            "[new|fresh] badges [often|usually] [only work on the main entrance|need a day to activate][ at first|] — [floor access is added separately|each floor is a separate permission].",
            "[badges|access badges] are [printed|made] by [Facilities|the security desk] [at {location}|on the ground floor], [usually|normally] within [a day|{n} working days].",
        ),
        steps=((
            "[look|search] [on|in] {intranet} [under Facilities|for the Badge request form] [to see|and check] [if your request went in|your request status].",
            "[ask your manager to|have your manager] [approve|confirm] [access for the {floor} floor|the extra areas] [in the form|by email].",
            "[bring|take] [your photo ID|a passport or ID card] [to the security desk|to reception] [for the photo|when you collect it].",
            "[tap|hold] the badge [flat|still] [on the reader|against the reader] for [a second|two seconds][ — waving it doesn't always work|].",
            "[show|give] your [name|employee number] at reception [and they'll print|to get] a [day pass|temporary pass] [valid until {clock}|for today].",
            "[return|hand back] the [day pass|temporary badge|visitor pass] [at reception|to security] [when you leave|at the end of the day].",
        ),),
        extra=(
            "{gloss} [an access badge|your badge] is [both your ID and your key|your photo ID and door key in one|your building pass] — [wear it visibly|keep it visible|keep it on you] [in the office|at all times|on site].",
            "{gloss} [the badge|your access badge] [opens|unlocks] [doors|the areas you need] [based on your team|according to your role], [so|which is why] [not every door|some floors] [will open for you|stay closed][ — that's expected|].",
        ),
        symptom=("[the light|the reader] still [turns red|blinks red]", "the form [says|shows] 'pending' [since {weekday}|still]"),
    ),
    Topic(
        name="wifi",
        match=((0,), (1,), (2,)),
        ask=(
            "[Which|What] Wi-Fi should I use [at the {location} office|in the office]? [I see|There's] {wifi} and {guestwifi}[ and I'm confused|].",
            "My {device} [won't connect to|keeps dropping] {wifi} [at my desk|on the {floor} floor]. [My phone works on guest.|]",
            "[Can I|Am I allowed to] [connect|put] my personal [phone|tablet] [on|to] {wifi}? [Not sure what's allowed.|]",
        ),
        lead=(
            "{wifi} is [the staff network|our secure staff network] [for company laptops|for your work {device}], and {guestwifi} is [just for visitors|for visitors and personal phones].",
            "[company laptops|your {device}] [connect|join] {wifi} [automatically|on their own] [using a certificate|with a certificate] [once they've been set up|after the first sync].",
            "[personal devices|private phones and tablets] [belong on|should use] {guestwifi}[ — {wifi} is only for company devices|; {wifi} won't accept them anyway|].",
        ),
        steps=((
            "[connect|plug in] [to a network cable|with the dock] [once|for ten minutes] so [your {device} picks up|the laptop gets] the [Wi-Fi certificate|settings].",
            "[restart|reboot] the {device} [after that|afterwards] — [{wifi} should then connect by itself|it should join by itself].",
            "[forget|remove] {guestwifi} [on the laptop|] [so it doesn't jump to it|to avoid switching].",
            "[use|keep] {guestwifi} [for your personal phone|for personal devices][ — that's fine|].",
            "[accept|agree to] the [short terms page|guest terms] [that pops up|when it appears] [on {guestwifi}|] [— it lasts {n} days|; you'll see it again every week|].",
            "[move|sit] [closer to|nearer] [an access point|the middle of the floor] [if the signal drops|when it disconnects] [— the corners of the {floor} floor are weak|].",
        ),),
        extra=(
            "{gloss} a certificate [is|works like] [a digital ID card|a hidden ID card] [that proves|so the network knows] [your laptop belongs to us|it's a company device].",
            "{gloss} [the staff network|{wifi}] [checks|recognises] [company devices|our laptops] [automatically|by a certificate], [so you never type a Wi-Fi password|so there's no password to type|].",
        ),
        symptom=("it still [says|shows] 'can't connect to this network'", "{wifi} [doesn't show up|isn't listed] at all"),
    ),
    Topic(
        name="where_things",
        ask=(
            "[Where can I find|Where do I find] the [holiday policy|expense policy|org chart|IT guidelines]? [My manager mentioned it on {weekday}.|I looked in Teams but couldn't find it.]",
            "[How do I|Where do I] [book holiday|submit expenses|see my payslip]? [Sorry if that's obvious!|Nobody showed me yet.]",
        ),
        lead=(
            "[most policies and forms live|almost all of that is|most of that is] on {intranet}[ — think of it as the company's internal website|].",
            "[that's|you'll do that] in [the HR system|Workday], which [you can open|opens] from {intranet} [with your normal login|].",
            "[good news|the good news is]: [everything like that|all of that] is [in one place|on one site], {intranet}[, and it's searchable|].",
        ),
        steps=((
            "[open|go to] {intranet} [from the Start menu|in your browser] [— it's also bookmarked in Edge|].",
            "[use|type in] the search box at the top[, for example 'holiday' or 'expenses'|].",
            "[click|hit] the star [to save|to bookmark] [pages you'll need again|the page][ for next time|].",
            "[check|look at] the New Starter page[ — it has a checklist for your first {n} days|; it collects the most useful links].",
            "[open|find] [Workday|the HR tile] [on the home page|at the top of {intranet}] [for holiday, expenses and payslips|for anything HR].",
            "[ask|check with] {buddy} [which pages your team uses most|for the team's favourite links][ — every team has a few|].",
        ),),
        extra=(
            "{gloss} [the intranet|{intranet}] is [our internal website|a website only staff can see][ — you'll only reach it from a company device or VPN|].",
            "{gloss} {intranet} [is|works like] [our own private website|an internal homepage] [for news, policies and forms|where policies and forms live][, visible only to staff|].",
        ),
        symptom=("[the page says|it shows] 'access denied'", "[search finds nothing|I can't find the New Starter page]"),
    ),
    Topic(
        name="software_request",
        ask=(
            "[My team uses|I need] [Figma|Tableau|Visio|Power BI|Adobe Acrobat Pro] [but it's not on|and it isn't installed on] my {device}. [Can I just download it?|How do I get it?]",
            "[How do I|Can I] install [software|an app] [on my laptop|] [myself|without admin rights]? [It asks for an admin password.|]",
        ),
        lead=(
            "[you can't install things directly|installing apps yourself is blocked] [for security|to keep laptops safe], but [most tools|approved apps] are [one click away|available] in Company Portal.",
            "[that admin prompt|the password prompt] is [expected|normal] — [laptops are locked down|we keep install rights with IT], [and|but] [there's an easy route|requests are quick].",
            "[apps|tools] [come from|are installed through] Company Portal, [our app store|a kind of company app store][ for work laptops|], [so|and] [no admin password is needed|you never need admin rights].",
        ),
        steps=((
            "[ask|check with] {buddy} [which version your team uses|whether the team has a shared licence] [before requesting|first].",
            "[open|launch] Company Portal [from the Start menu|on your {device}] and [search for the app|look for it by name].",
            "[click|press] Install [if it's listed|] [— it installs in the background|and wait a few minutes].",
            "[raise|submit] a request in {portal} [if it isn't listed|for licensed apps], [adding|with] [why you need it|your manager's name].",
            "[check|watch] the [request status|ticket] in {portal} [— licensed apps take {n} working days|; approvals go to your manager first|].",
            "[restart|reboot] [when prompted|afterwards] [so the app shows up|].",
        ),),
        extra=(
            "{gloss} a [service desk ticket|ticket] is [simply our record of your request|a tracked request], so [nothing gets lost|you can see its status].",
            "{gloss} Company Portal is [our app store|the company's app store] for [work laptops|your {device}][ — everything in it is already approved|; everything there is safe to install].",
        ),
        symptom=("[the app isn't in Company Portal|Company Portal shows nothing]", "the install [fails|failed] with error {hexcode}"),
    ),
    Topic(
        name="vpn_first",
        ordered=True,
        ask=(
            "I'm [working from home|at home] [on {weekday}|tomorrow] — [do I need the VPN|how does VPN work] and where do I [get|find] it?",
            "[I tried|I'm trying] to open [the shared drive|{intranet}] from home and [it won't load|nothing happens]. [Is that the VPN thing?|]",
        ),
        lead=(
            "[yes|good thinking] — [from home|outside the office], [internal sites|the shared drive and {intranet}] need the VPN.",
            "[that's exactly it|yes, that's the VPN]: [internal pages|company-only sites] [don't open|won't load] from home without it.",
            "[email and Teams|Outlook and Teams] work [anywhere|from home] [without it|as they are], but [internal sites|the shared drive and {intranet}] [need|require] the VPN.",
        ),
        steps=((
            "[click|open] the [GlobalProtect|VPN] icon [near the clock|in the system tray] [on your {device}|].",
            "[enter|type] [vpn.corp.local|the portal address] [if it asks|the first time] and [sign in|log in] with your normal account.",
            "[approve|accept] the MFA prompt on your phone[ — same as in the office| like you do in the office|].",
            "[wait|give it a moment] [until the icon shows Connected|for 'Connected'][, then reload the page|].",
            "[disconnect|turn it off] [when you're done|at the end of the day] [— it's only needed for internal sites|; it reconnects next time with one click|].",
            "[use|try] [your home Wi-Fi|a cable] rather than [a café hotspot|public Wi-Fi] [if it keeps dropping|for a steadier connection].",
        ),),
        extra=(
            "{gloss} a VPN (virtual private network) [is|creates] [a secure tunnel|an encrypted tunnel] [from your laptop to our network|between home and the office], [so it's as if you were in the office|so you can reach internal systems safely].",
            "{gloss} [VPN stands for virtual private network|the VPN, or virtual private network,] [— it|] [connects|links] your {device} [to the office network|to our internal network] [over the internet|from anywhere] [securely|in an encrypted way].",
        ),
        symptom=("[it says|VPN shows] 'portal not found'", "[it connects but|connected, but] the shared drive still won't open"),
    ),
    Topic(
        name="teams_channels",
        ask=(
            "[How do I|How can I] join [my team's channels|the {team} team] in Teams? [I only see General.|I can't find them.]",
            "[I was told to|My manager said to] [follow|join] the {team} [channel|team] [in Teams|] but [search shows nothing|I can't see it]. [Is it hidden?|]",
        ),
        lead=(
            "[Teams membership|team access] [is|gets] [added|managed] by [each team's owner|the team owner], so [you may not be added yet|it may just need an invite].",
            "[private teams|some teams] [don't show up|are hidden] in search[ — an owner has to add you|; you need an invite].",
            "[public teams|open teams] you can join [yourself|in one click], [while|but] [private ones|others] [need|require] an invite from [the owner|an owner].",
        ),
        steps=((
            "[click|go to] Teams → Join or create a team [and search for|then type] '{team}'.",
            "[ask|message] [your manager|{buddy}] [to add you|for an invite] [if the team is private|if it doesn't show up].",
            "[pin|favourite] [the channels you use most|your key channels] [so they stay at the top|].",
            "[turn on|set] notifications [for|on] [the channels that matter|your team channel] [via the … menu|in channel settings].",
            "[show|unhide] [hidden channels|the other channels] [under the team name|via Show channels] [— new members only see a few at first|].",
            "[check|look at] the team's Files tab [for onboarding documents|— most teams keep a welcome pack there|].",
        ),),
        extra=(
            "{gloss} a team in Teams is [a shared space|a group workspace] [with chat, files and meetings|for chat and files], and [channels|its channels] are [topics inside it|sub-rooms for topics].",
            "{gloss} [in Teams,|in Microsoft Teams,] [a team|each team] [is a group of people|groups people] [working together|around a department or project], [split into|organised in] channels [by topic|for different subjects].",
        ),
        symptom=("[the team doesn't show up|I can't find the team] in search", "the Join button is greyed out"),
        fixed={"team": ("Marketing", "Finance", "Data", "Design", "Sales", "Graduates")},
    ),
    Topic(
        name="distribution_list",
        match=((0, 2), (1,)),
        ask=(
            "[People mention|My manager mentioned] a [distribution list|mailing list] [for {team}|]. [What's that|How do I get on it]?",
            "[I'm not getting|I don't receive] the {team} [team emails|announcements] [my colleagues get|]. [Am I missing a list?|]",
        ),
        lead=(
            "[lists|mailing lists] [are|get] [managed|set up] [by|through] [their owners|the list owner][ — usually your manager|].",
            "[you're|it sounds like you're] [probably not on|likely missing from] the {team} list yet[ — new starters are added by the owner|].",
            "[being added to|joining] [team lists|the right lists] [is|counts as] [part of onboarding|a normal first-week task], [and it only takes a minute|and it's quick|].",
        ),
        steps=((
            "[open|find] the list [in Outlook's address book|under Groups in Outlook] and [click|press] Join [if it's open|].",
            "[check|look at] the list's owner [on its card|in the address book] and [ask them|send them a quick note] to add you.",
            "[search|look] [in your inbox|in Outlook] for '{team}' [to see|and check] [which list the emails come from|the address].",
            "[add|set up] a rule [for the list|] [so its emails go to a folder|to keep your inbox tidy] [if it gets busy|].",
            "[ask|check with] {buddy} [which other lists|what lists] [the team|your colleagues] [are on|use] [— there are usually two or three|].",
        ),),
        extra=(
            "{gloss} a distribution list is [one email address that reaches a whole group|a group email address][, so you don't type everyone's name|; one address, many people].",
            "{gloss} [a distribution list|a mailing list] [works like|is basically] [a shortcut|a nickname] [for a group of people|for many addresses at once]: [write to it once|send one email] and [everyone on it gets it|the whole group receives it].",
        ),
        symptom=("the Join button is greyed out", "[I still don't get|still no] {team} emails"),
        fixed={"team": ("Marketing", "Finance", "Data", "Design", "Sales", "Graduates")},
    ),
    Topic(
        name="onedrive_files",
        ask=(
            "Where should I save my work files? [My manager said 'not on the desktop'.|Someone mentioned OneDrive and SharePoint and I'm lost.]",
            "[I saved|I've saved] [a presentation|some documents] on my {device}'s desktop[ — is that OK|. Will I lose them]?",
        ),
        lead=(
            "[work files|your documents] [belong in|should live in] OneDrive [or|and] your team's SharePoint[ — that way they're backed up|, so nothing is lost if the laptop breaks].",
            "[files on the desktop|anything only on the laptop] [isn't backed up|could be lost][ if the {device} breaks|], [so|which is why] [we use|we save to] OneDrive.",
            "[your own drafts|personal work files] [go in|belong in] OneDrive, [while|and] [shared team documents|anything the team edits] [live in|go to] SharePoint[ or the team's Files tab|].",
        ),
        steps=((
            "[open|click] the [blue cloud|OneDrive] icon [near the clock|in the taskbar] [and sign in|] [if it's not set up yet|with your work account].",
            "[turn on|switch on] [folder backup|Back up folders] [in OneDrive settings|under Sync and backup] [so Desktop and Documents are synced|for Desktop and Documents].",
            "[move|drag] [your files|the presentation] [into|to] the OneDrive folder [in File Explorer|on the left of Explorer].",
            "[look for|check] the green tick [next to each file|on the files][ — that means it's saved in the cloud|, which means it's synced].",
            "[share|send] [files|a document] [with a link|using Share] [rather than as attachments|instead of emailing copies] [so everyone edits the same version|].",
            "[ask|check with] {buddy} [where the team keeps|which SharePoint site holds] [shared documents|team files].",
        ),),
        extra=(
            "{gloss} OneDrive is [your personal storage in the cloud|your own cloud folder][ — like a backed-up Documents folder|], [and|while] SharePoint [is where teams share files|holds the team's shared files].",
            "{gloss} [the cloud|'the cloud'] [just means|simply means] [our secure storage online|files kept on our servers instead of only on your laptop], [so|which means] [you can open them anywhere|they're safe if the laptop breaks].",
        ),
        symptom=("[there's a red cross|I see a red X] on some files", "[the OneDrive icon|it] [says|shows] 'sign in required'"),
    ),
    Topic(
        name="email_on_phone",
        ordered=True,
        match=((0, 1, 2), (1,)),
        ask=(
            "[Can I|How do I] [get|set up] my work email on my {phone}? [The normal mail app won't accept my password.|Is that allowed?]",
            "[I'd like|I want] Teams [and Outlook|] on my {phone} [for when I'm not at my desk|for my commute]. [Where do I start?|What do I install?]",
        ),
        lead=(
            "[yes|of course], [you can|that's allowed], [but|though] [it has to be|only with] the Outlook [app|app from Microsoft], [not the built-in mail app|rather than the phone's own mail app].",
            "[work apps|Outlook and Teams] on [phones|personal phones] [are set up|get set up] [through|via] Company Portal[, which keeps work data separate|, which keeps your private stuff private].",
            "[the phone's own mail app|built-in mail apps] [can't|won't] [meet our security rules|pass our security checks], [which is why|so] [your password is refused|it rejects your login][ — Outlook will work|].",
        ),
        steps=((
            "[install|download] Company Portal [from the App Store or Google Play|on your {phone}] [and sign in|, then sign in] with your work account.",
            "[follow|go through] the [prompts|setup steps] [to register the phone|to add a work profile][ — it takes about {mins} minutes|].",
            "[install|add] Outlook and Teams [from Company Portal|through Company Portal] [rather than the store|].",
            "[approve|accept] the MFA prompt [when you sign in|the first time][ — same as on your laptop|].",
            "[set|choose] a [PIN|screen lock] [if the app asks|when prompted][ — it's required for work data|].",
            "[turn off|silence] notifications [outside working hours|in the evening] [in Outlook settings|under Do Not Disturb] [if you like|].",
        ),),
        extra=(
            "{gloss} Company Portal [is|is basically] [our app for managing work apps on phones|the app that sets up work apps on your phone], [and|but] [it can't see|we never see] your [private photos or messages|personal data].",
            "{gloss} a [work profile|managed app] [keeps|separates] [work data|company email and files] [apart from|away from] [your personal stuff|your private apps][, so we can only manage the work side|].",
        ),
        symptom=("[Outlook says|it says] 'your organisation requires a PIN'", "Company Portal [is stuck|hangs] on 'checking device'"),
    ),
    Topic(
        name="printing_first",
        ask=(
            "How do I print [from my {device}|something]? [I can't see any printers.|There's no printer in the list.]",
            "[I printed|I sent] [a document|my contract] [to the printer|to print] but [nothing came out|it didn't appear] [at the printer on the {floor} floor|]. [Where did it go?|]",
        ),
        lead=(
            "[we use|our printers use] [secure printing|Follow-Me printing]: you send [to one queue|to a single printer called Follow-Me] and [collect it|release it] at any printer [with your badge|by tapping your badge].",
            "[your print|the document] [is waiting|is held] [safely|securely] [in the queue|in the Follow-Me queue] — it only comes out [when you tap your badge|once you badge in] at a printer.",
        ),
        steps=((
            "[add|install] the Follow-Me printer [from Company Portal|via Settings → Printers] [— it's called Follow-Me-{location}|; it's one click].",
            "[print|send] [as usual|normally] and [pick|choose] Follow-Me [as the printer|in the print dialog].",
            "[walk|go] to [any printer|the nearest printer] and [tap|hold] your badge [on the reader|on the card pad].",
            "[choose|select] [your document|the job] [on the printer screen|in the list] and [press|tap] Print[ — it appears within a few seconds|].",
            "[register|link] your badge [the first time|once] [by entering your username|with your login] [when the printer asks|on the screen].",
        ),),
        extra=(
            "{gloss} [secure printing|Follow-Me printing] means [documents wait in a queue|prints are held] until [you're standing at the printer|you badge in][, so nobody picks up your papers by mistake|, which keeps confidential pages private].",
        ),
        symptom=("[the printer|it] says 'card not registered'", "[my document|nothing] [isn't|is] in the list"),
        match=((0,), (1,)),
        ordered=True,
    ),
    Topic(
        name="headset_audio",
        ask=(
            "[People can't hear me|Nobody hears me] in Teams [calls|meetings] [on my {device}|] — [is it my headset?|I'm using the headset from my welcome pack.]",
            "[My headset|The new headset] [works|sounds fine] for music but not in Teams. [Is there a setting?|What am I missing?]",
        ),
        lead=(
            "[Teams|the Teams app] [picks|chooses] [its own|a default] microphone, [so|and] [it's probably using|it may be listening on] [the laptop's built-in mic|another device][ — easy to switch|].",
            "[headsets|USB headsets] [often|usually] need to be [selected|chosen] [in Teams itself|inside Teams][, separately from Windows|, even when Windows already uses them].",
        ),
        steps=((
            "[click|open] the three dots [next to your picture|at the top] → Settings → Devices [in Teams|].",
            "[pick|select] the headset [for both speaker and microphone|under Speaker and Microphone] [from the lists|].",
            "[make|place] a test call [from the same page|with Make a test call] [to hear yourself back|and listen to the recording].",
            "[check|look at] the mute switch [on the headset cable|on the earcup][ — it's easy to knock|].",
            "[plug|connect] the headset [straight into the laptop|directly] [rather than the dock|instead of the monitor] [if it keeps dropping|].",
        ),),
        extra=(
            "{gloss} [Teams|Microsoft Teams] [keeps|has] [its own audio settings|separate sound settings][ — that's why Windows can look fine while Teams isn't|], [which catches many new starters out|and that surprises most people].",
        ),
        symptom=("the test call [plays back nothing|records silence]", "[the headset|it] [doesn't appear|isn't listed] under Devices"),
    ),
)

PERSONA_SPECS: dict[str, PersonaSpec] = {
    "leadership": PersonaSpec(
        name="leadership",
        roles=("Chief Financial Officer", "VP of Sales", "Managing Director", "Chief Operating Officer", "Head of Strategy",
               "General Counsel", "Chief Marketing Officer", "Regional President", "SVP Operations"),
        departments=("Executive Office", "Finance", "Sales", "Operations", "Legal", "Strategy"),
        devices=("iPad Pro", "Surface Pro 9", "MacBook Air", "ThinkPad X1 Carbon", "Surface Laptop Studio"),
        topics=_LEADERSHIP_TOPICS,
        rules=_LEAD_RULES,
        expand_rate=0.05,
        user_style=("bl", "delegate_line", "ack", "escalate", "close_a"),
        fixed={"meeting": _LEAD_RULES["meeting"], "room": _LEAD_RULES["room"], "deck": _LEAD_RULES["deck"]},
    ),
    "knowledge_worker": PersonaSpec(
        name="knowledge_worker",
        roles=("Backend Developer", "Data Engineer", "DevOps Engineer", "Data Scientist", "QA Automation Engineer",
               "Site Reliability Engineer", "ML Engineer", "Platform Engineer"),
        departments=("Engineering", "Data Platform", "Analytics", "Infrastructure"),
        devices=("MacBook Pro 16", "ThinkPad P1", "Dell XPS 15", "Ubuntu workstation", "Framework Laptop 13"),
        topics=_KNOWLEDGE_TOPICS,
        rules=_KW_RULES,
        expand_rate=0.15,
        user_style=("ok", "closing", "ack2", "escalate", "close_a"),
        fixed={"proj": COMMON_RULES["proj"], "host": _host},
    ),
    "field_worker": PersonaSpec(
        name="field_worker",
        roles=("Field Service Technician", "Site Engineer", "Line Inspector", "Maintenance Lead", "Surveyor",
               "Meter Installer", "Mobile Engineer"),
        departments=("Field Operations", "Maintenance", "Network Services"),
        devices=("Toughbook 33", "Getac F110 tablet", "Galaxy Tab Active5", "Zebra TC58 handheld", "Latitude 7330 Rugged"),
        topics=_FIELD_TOPICS,
        rules=_FIELD_RULES,
        expand_rate=0.05,
        user_style=("fb_a", "fb_b", "ack", "escalate", "close_a"),
        fixed={"site": _FIELD_RULES["site"], "app": _FIELD_RULES["app"]},
    ),
    "admin_hr": PersonaSpec(
        name="admin_hr",
        roles=("HR Coordinator", "Payroll Specialist", "Office Manager", "Recruiting Coordinator", "Benefits Administrator",
               "Facilities Administrator", "Accounts Payable Clerk"),
        departments=("Human Resources", "Payroll", "Office Management", "Finance Operations"),
        devices=("HP EliteBook 840", "Dell OptiPlex desktop", "Lenovo ThinkCentre", "Surface Laptop 4"),
        topics=_ADMIN_TOPICS,
        rules=_ADMIN_RULES,
        expand_rate=0.3,
        user_style=("opener", "first", "next", "last", "reassure", "ack", "escalate", "close_a"),
    ),
    "new_employee": PersonaSpec(
        name="new_employee",
        roles=("Marketing Intern", "Junior Analyst", "Graduate Engineer", "Sales Development Rep", "Finance Trainee",
               "Junior Designer", "Data Science Intern", "HR Intern"),
        departments=("Marketing", "Finance", "Engineering", "Sales", "Design", "People"),
        devices=("Latitude 5440", "MacBook Air M2", "ProBook 450", "ThinkPad T14"),
        topics=_NEW_TOPICS,
        rules=_NEW_RULES,
        expand_rate=0.5,
        user_style=("wel_a", "wel_b", "gloss", "seq1", "seqn", "encourage", "ack", "escalate", "close_a"),
        fixed={"portal": _NEW_RULES["portal"], "intranet": _NEW_RULES["intranet"], "wifi": _NEW_RULES["wifi"],
               "guestwifi": _NEW_RULES["guestwifi"]},
    ),
}

# ------------------------------------------- users -------------------------------------------

FIRST_NAMES = (
    "Aleksander", "Amara", "Anneliese", "Arjun", "Beatriz", "Bogdan", "Camille", "Cormac", "Dagny", "Darius", "Eamon",
    "Elif", "Emeka", "Esperanza", "Fabian", "Farida", "Gunnar", "Hana", "Hamza", "Ines", "Ingrid", "Jovan", "Kalinda",
    "Kenji", "Leila", "Lorenzo", "Maelle", "Magnus", "Marisol", "Mateo", "Nadia", "Niamh", "Nikolai", "Oksana", "Olumide",
    "Paloma", "Priyanka", "Quentin", "Rafaela", "Rashid", "Saoirse", "Sebastian", "Sigrid", "Soren", "Tamsin", "Teodor",
    "Thandiwe", "Tobias", "Ulrike", "Valentina", "Vikram", "Wanjiru", "Xiomara", "Yannick", "Yusuf", "Zainab", "Zofia",
    "Anouk", "Bastian", "Chiara", "Dmitri", "Elodie", "Florian", "Giulia", "Henrik", "Ilse", "Jarrah", "Katarina",
    "Lucien", "Mireille", "Nikhil", "Odile", "Pavel", "Renata", "Stellan", "Tatiana", "Ugo", "Vesna", "Wiebke", "Yara",
    "Zeynep", "Aiko", "Benedikt", "Cosima", "Desmond", "Efua", "Fintan", "Gaspard", "Hiroshi", "Isolde", "Jonas",
    "Kwame", "Linnea", "Malik", "Noor", "Oskar", "Petra", "Rohan", "Sunniva", "Tariq", "Adaeze", "Bjorn", "Cillian",
    "Dervla", "Emil", "Fenna", "Goran", "Halima", "Idris", "Jelena", "Kasimir", "Ludovica", "Mirko", "Nanami", "Orla",
    "Pilar", "Radek", "Svetlana", "Tomasz", "Ulla", "Violeta", "Wojciech", "Ximena", "Yosef", "Zoltan", "Agnieszka",
    "Bartholomew", "Constantin", "Dunja", "Eskil", "Filippa", "Gwendolyn", "Hakon", "Itzel", "Joaquim", "Ksenia",
    "Leopold", "Margarida", "Naveen", "Ottilie", "Przemek", "Rasmus", "Solveig", "Thibault", "Urszula", "Vaclav",
    "Winifred", "Yevgenia", "Zephyrine", "Anselma", "Benedetta", "Casimir", "Dorottya", "Eero", "Fiorella", "Gudrun",
    "Hallvard", "Iolanthe", "Jurgis", "Kaveh", "Lisbeth", "Marguerite", "Nnamdi", "Oddny", "Perpetua", "Quirin",
    "Rosalind", "Siddharth", "Torvald", "Ugne", "Vivienne", "Waleed", "Xaver", "Yolanda", "Zdenek", "Aurelio",
    "Blessing", "Cressida", "Dalibor", "Evander", "Fatoumata", "Gustavo", "Hyacinth", "Ignatius", "Jadwiga",
)
SURNAMES = (
    "Okafor", "Lindqvist", "Moreau", "Castellano", "Nakamura", "Brennan", "Kowalski", "Haddad", "Fischer", "Oyelaran",
    "Novak", "Marchetti", "Sørensen", "Delacroix", "Mensah", "Varga", "Quispe", "Ibrahim", "Van Dijk", "Petrov",
    "Almeida", "Whitfield", "Takahashi", "Yilmaz", "Eriksen", "Dubois", "Rahman", "Gallagher", "Horvat", "Zielinski",
)
HELPER_NAMES = ("Priya", "Bruno", "Carla", "Diego", "Elena", "Felix", "Greta", "Hugo", "Julia", "Karim", "Lena",
                "Marco", "Nina", "Omar", "Pia", "Rosa", "Sami", "Theo", "Vera", "Aisha")
LOCATIONS = ("Amsterdam", "Berlin", "Boston", "Dublin", "Lisbon", "Lyon", "Madrid", "Milan", "Munich", "Oslo", "Prague",
             "Rotterdam", "Seattle", "Stockholm", "Toronto", "Vienna", "Warsaw", "Zurich", "Austin", "Denver")
GREETINGS = ("Hi", "Hello", "Hey", "Morning", "Good day", "Hiya", "Greetings")
CLOSINGS = ("Hope that helps!", "Have a good one.", "Speak soon.", "Shout if you need anything else.", "Good luck!",
            "Take care.", "Happy to help anytime.", "All the best.", "Cheers!", "Over to you.")
DETAIL_LEVELS = {"brief": -1, "standard": 0, "detailed": 1}
FORMALITY = {"casual": 0.0, "neutral": None, "formal": 0.9}
"""Per-user probability of writing contractions out in full; ``None`` keeps the persona's rate."""
CHANNELS = ("Teams", "Slack", "Webex", "Zoom", "Google Chat")
SIGN_OFFS = ("— {first}", "Thanks, {first}", "Cheers, {first}", "Best, {full}", "{first} ({location})", "Regards, {first}",
             "Ta, {first}", "Many thanks, {first}", "/{first}")
FIELD_SIGN_OFFS = ("{first} — sent from the van", "{first}, on site", "Sent from my phone — {first}")


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
    ctx = {"name": first, "hello": f"{profile['greeting']} {first}", "device": device, "location": location,
           "channel": profile["contact_channel"]}
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
    return SyntheticUser(user_id, spec.name, first, profile, tuple(order), ctx, style,
                         spec.expand_rate if rate is None else rate)


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
        self.rules: ChainMap[str, Rule] = ChainMap({}, dict(user.style), dict(spec.rules), COMMON_RULES)
        self.used: dict[str, set[str]] = {}
        self.ask_index = 0
        self.detail = DETAIL_LEVELS[user.profile["detail"]]
        self.ctx["ticket"] = _ticket(rng)
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
        picks = self.rng.sample(options, min(k, len(options))) + self.rng.choices(options, k=max(0, k - len(options)))
        return [self.x(p) for p in picks]

    def steps(self, topic: Topic, counts: tuple[int, ...]) -> list[str]:
        """Unused steps of ``topic``: ``counts[g]`` from group ``g`` (topped up from other groups), shuffled within groups."""
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
    """Spread ``total`` steps (shifted by the user's detail preference) over the groups, at least one from the largest."""
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
    return f"{c.ctx['hello']},\n\n{c.lead(topic)}\n\n{c.rule('intro')}\n{body}\n\n{c.rule('closing')}"


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
    words = [c.x("{first}")] if n == 1 else [c.x("{first}"), *c.distinct("next", n - 2), c.x("{last}")]
    seq = [cap(tidy(f"{w} {s}")) for w, s in zip(words, steps)]
    opener = [c.rule("opener")] if c.rng.random() < 0.6 else []
    return " ".join([f"{c.ctx['hello']}!", *opener, c.lead(topic), *seq, c.rule("reassure")])


def _answer_new(c: _Composer, topic: Topic) -> str:
    """Warm and explanatory: welcome, a definition of the key term, explained steps, encouragement."""
    steps = c.steps(topic, _counts(c, topic, c.rng.randint(2, 3)))
    seq = [cap(tidy(f"{w} {s}")) for w, s in zip([c.x("{seq1}"), *c.distinct("seqn", len(steps) - 1)], steps)]
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


def _exchanges(c: _Composer, topics: tuple[Topic, ...], first_topic: int, n_exchanges: int) -> list[tuple[str, str]]:
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
    comment = rng.choice((None, None, "quick and clear", "too long", "exactly what I needed", "worked first time", "a bit vague"))
    return Feedback(rating=rating, sentiment=sentiment, comment=comment)


def _closing_sep(text: str) -> str:
    return "\n\n" if "\n" in text else " "


def generate_conversation(config: SyntheticConfig, user: SyntheticUser, index: int) -> Conversation:
    """Conversation ``index`` of ``user``; depends only on the seed, the user and ``index``."""
    spec = PERSONA_SPECS[user.persona]
    rng = random.Random(derive_seed(config.seed, "conversation", user.user_id, index))
    c = _Composer(spec, user, rng)
    n_exchanges = rng.choices((1, 2, 3), weights=config.exchange_weights)[0]
    exchanges = _exchanges(c, spec.topics, user.topic_order[index % len(user.topic_order)], n_exchanges)
    stamps = _timestamps(rng, config, 2 * len(exchanges))
    turns: list[Turn] = []
    for i, (user_text, assistant_text) in enumerate(exchanges):
        turns.append(Turn(role="user", text=user_text, ts=stamps[2 * i]))
        answer = f"{vary(assistant_text, rng, user.expand_rate)}{_closing_sep(assistant_text)}{user.profile['assistant_closing']}"
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
