"""The release manifest: every field a device sends, its privacy mechanism and its ledger event.

One table, in code, of what may leave a device. Each reply a device sends is a Flower ``RecordDict``;
a field is one ``(record, key)`` of it. A field is allowed only if a :class:`Release` row names it
for that kind of reply (message type and SecAgg+ stage). A row says how the field is protected:

- ``DP-SGD``: a function of the user's conversations only through DP-SGD (Opacus), record-level (and,
  with user-level DP on, clipped as a whole and noised on the device inside SecAgg+); the ledger entries listed
  in ``ledger`` are written on the device before the reply leaves.
- ``private choice``: the persona the client trains, chosen privately when inferred (Gaussian noise on
  clipped prompt scores against public persona centroids, :mod:`fedpers.personas.prompt_choice`, or on
  clipped loss sums; one ``persona-choice`` ledger entry naming the method); declared personas are the user's own setting.
- ``distributed DP (Skellam)``: the router's private statistics (:mod:`fedpers.personas.router_stats`),
  sent once per run after the last round (task ``router``): clipped as a whole, noised on the device with its
  share of Skellam noise inside SecAgg+, and charged to the user-level ledger before the reply leaves.
- ``SecAgg+ masking``: protocol data of Flower's SecAgg+ (keys, encrypted shares, shares of masks);
  a function of fresh randomness only, never of the user's data.
- ``public``: constants and status codes.

The ClientApp refuses to send a reply with a field outside this table (:func:`undeclared_fields`),
the audit report prints the table, and the tests hold every recorded reply against it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase

from fedpers.privacy.user_level import USER_LEVEL_PURPOSE

ROUTER_STATS_PURPOSE = "router-statistics-skellam"
"""The ledger purpose of the router's upload (:mod:`fedpers.personas.router_stats`), in the user-level ledger."""
ROUTER_TASK = "router"
"""The task of the session that collects the router's statistics (:mod:`fedpers.personas.router_round`)."""

# flwr.common.secure_aggregation.secaggplus_constants.RECORD_KEY_CONFIGS
SECAGG_RECORD = "secaggplus_configs"
TRAIN, QUERY = "train", "query"
PLAIN = None  # a training reply outside SecAgg+ (secure aggregation off)


# What secure aggregation leaves the server, until devices add noise to their uploads; README.md, docs/audit.md,
# the audit report and the adapters' model cards say the same sentences (tested).
SERVER_LEARNS = (
    "SecAgg+ hides each client's upload, not the sums it unmasks: every round the server learns, for each slot "
    "(persona), the sum of the updates of the clients in that slot and their count.",
    "A slot with one contributor is that client's update, in clear.",
    "Counts compared across rounds, as sampling and dropouts change who takes part, can reveal a client's persona.",
    "The minimum-clients gate protects only what is published (no adapter is updated, and no output shows a count, "
    "below it), not what the server sees.",
)


@dataclass(frozen=True)
class Release:
    """One kind of field a device sends."""

    message: str  # what the reply is, in words
    message_type: str  # Flower message type of the reply
    stage: str | None  # SecAgg+ stage of the reply; None: not a SecAgg+ stage message
    record: str
    key: str  # a key of the record (shell-style pattern)
    mechanism: str
    ledger: tuple[str, ...]  # ledger purposes recorded on the device before the reply leaves
    content: str
    task: str | None = None  # the task whose reply this is (``train``, ``router``); None: any task

    def matches(
        self, message_type: str, stage: str | None, record: str, key: str, task: str | None = None
    ) -> bool:
        """Whether this row covers the field; ``task`` None matches a row of any task."""
        return (
            self.message_type == message_type
            and self.stage == stage
            and self.record == record
            and fnmatchcase(key, self.key)
            and (task is None or self.task is None or self.task == task)
        )

    def to_dict(self) -> dict:
        return asdict(self) | {"ledger": list(self.ledger)}


# the update (and, under user-level DP, the whole upload), and (inferred personas) the slot it sits in
UPLOAD_LEDGER = ("dp-sgd", USER_LEVEL_PURPOSE, "persona-choice")
_Row = tuple[str, str, str, tuple[str, ...], str]  # record, key, mechanism, ledger, content
_STATUS: _Row = ("fitres.status", "*", "public", (), "the reply's status code and message")
_EXAMPLES: _Row = (
    "fitres.num_examples",
    "num_examples",
    "public",
    (),
    "the constant 1 (uploads are not weighted)",
)
_PERSONA: _Row = (
    "fitres.metrics",
    "persona-index",
    "private choice",
    ("persona-choice",),
    "the client's persona, only with persona hiding off: declared by the user, or chosen privately",
)

ROUTER_RELEASE = Release(
    "router statistics upload",
    TRAIN,
    "collect_masked_vectors",
    SECAGG_RECORD,
    "masked_params",
    "distributed DP (Skellam)",
    (ROUTER_STATS_PURPOSE,),
    "the device's per-persona mean prompt embedding, mean context vector and count share (L2 norm at most "
    "sqrt(3)), quantized, with a share of Skellam noise added on the device, and masked",
    ROUTER_TASK,
)
"""The router's upload: one SecAgg+ session after the last round (:mod:`fedpers.personas.router_round`)."""

RELEASES: tuple[Release, ...] = (
    Release(
        "SecAgg+ setup",
        TRAIN,
        "setup",
        SECAGG_RECORD,
        "pk[12]",
        "SecAgg+ masking",
        (),
        "two fresh public keys for key agreement",
    ),
    Release(
        "SecAgg+ key shares",
        TRAIN,
        "share_keys",
        SECAGG_RECORD,
        "dsts",
        "SecAgg+ masking",
        (),
        "node ids of the neighbours the shares are for",
    ),
    Release(
        "SecAgg+ key shares",
        TRAIN,
        "share_keys",
        SECAGG_RECORD,
        "ctxts",
        "SecAgg+ masking",
        (),
        "Shamir shares of the client's mask seed and secret key, each encrypted to one neighbour",
    ),
    Release(
        "training upload",
        TRAIN,
        "collect_masked_vectors",
        SECAGG_RECORD,
        "masked_params",
        "DP-SGD",
        UPLOAD_LEDGER,
        "the clipped LoRA delta in the slot of the client's persona and the count vector, quantized and masked",
        "train",
    ),
    *(
        Release("training upload", TRAIN, "collect_masked_vectors", *row, task="train")
        for row in (_STATUS, _EXAMPLES, _PERSONA)
    ),
    ROUTER_RELEASE,
    *(
        Release("router statistics upload", TRAIN, "collect_masked_vectors", *row, task=ROUTER_TASK)
        for row in (_STATUS, _EXAMPLES)
    ),
    Release(
        "SecAgg+ unmasking",
        TRAIN,
        "unmask",
        SECAGG_RECORD,
        "nids",
        "SecAgg+ masking",
        (),
        "node ids whose shares follow",
    ),
    Release(
        "SecAgg+ unmasking",
        TRAIN,
        "unmask",
        SECAGG_RECORD,
        "shares",
        "SecAgg+ masking",
        (),
        "shares of surviving neighbours' mask seeds and of dropped neighbours' secret keys",
    ),
    Release(
        "training upload in clear",
        TRAIN,
        PLAIN,
        "fitres.parameters",
        "*",
        "DP-SGD",
        UPLOAD_LEDGER,
        "secure aggregation off: the clipped LoRA delta and count vector in clear",
        "train",
    ),
    *(
        Release("training upload in clear", TRAIN, PLAIN, *row, task="train")
        for row in (_STATUS, _EXAMPLES, _PERSONA)
    ),
    Release(
        "persona reply",
        QUERY,
        None,
        "metrics",
        "persona-index",
        "private choice",
        ("persona-choice",),
        "persona hiding off: the client's persona, declared by the user or chosen privately",
    ),
)


def fields_of(content) -> set[tuple[str, str]]:
    """Every ``(record, key)`` of a Flower ``RecordDict``."""
    out: set[tuple[str, str]] = set()
    for records in (content.array_records, content.config_records, content.metric_records):
        for name, record in records.items():
            out |= {(name, key) for key in record.keys()}
    return out


def release_of(
    message_type: str, stage: str | None, record: str, key: str, task: str | None = None
) -> Release | None:
    """The row covering a field of a reply to ``task`` (None: the first row of any task)."""
    return next((r for r in RELEASES if r.matches(message_type, stage, record, key, task)), None)


def undeclared_fields(
    message_type: str,
    stage: str | None,
    fields: Iterable[tuple[str, str]],
    task: str | None = None,
) -> list[str]:
    """The fields of a reply (to ``task``; None: to any task) that no row of :data:`RELEASES` allows
    (``record/key``)."""
    return sorted(
        f"{record}/{key}"
        for record, key in fields
        if release_of(message_type, stage, record, key, task) is None
    )


def required_ledger(
    message_type: str,
    stage: str | None,
    fields: Iterable[tuple[str, str]],
    dp: bool,
    inferred: bool,
    user_dp: bool = False,
    task: str = "train",
) -> set[str]:
    """Ledger purposes that must be on the device before this reply leaves (``dp``: DP-SGD on;
    ``inferred``: personas chosen privately rather than declared; ``user_dp``: user-level DP on;
    ``task``: what the reply answers, ``train`` or ``router``, whose upload always needs its entry)."""
    wanted = {
        "dp-sgd": dp,
        "persona-choice": inferred,
        USER_LEVEL_PURPOSE: user_dp,
        ROUTER_STATS_PURPOSE: True,
    }
    needed: set[str] = set()
    for record, key in fields:
        release = release_of(message_type, stage, record, key, task)
        if release is None:
            continue
        needed |= {purpose for purpose in release.ledger if wanted[purpose]}
    return needed


def recorded_fields(entry: dict) -> set[tuple[str, str]]:
    """The ``(record, key)`` fields of a reply as a wire manifest line lists them (:func:`fedpers.wire.reply_contents`)."""
    fields = {
        (record, key)
        for kind in ("config_keys", "metric_keys")
        for record, keys in entry.get(kind, {}).items()
        for key in keys
    }
    return fields | {(t["record"], t["name"].split("[")[0]) for t in entry.get("arrays", [])}


def recorded_stage(entry: dict) -> str | None:
    """A manifest line's SecAgg+ stage in Flower's spelling (the server labels it with spaces)."""
    stage = entry.get("secagg_stage")
    return stage.replace(" ", "_") if stage else None


def recorded_task(entry: dict) -> str:
    """The task a manifest line's reply answers: the device records it; the server names the session
    (``router`` for the router's, else training)."""
    if entry.get("task"):
        return str(entry["task"])
    return ROUTER_TASK if entry.get("session") == ROUTER_TASK else "train"


def manifest_table() -> list[dict]:
    """The manifest as rows (the audit report prints it)."""
    return [r.to_dict() for r in RELEASES]
