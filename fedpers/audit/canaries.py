"""What an attacker can still learn: secret canaries, their exposure, and a one-run lower bound on epsilon.

Each canary is a short conversation whose assistant reply holds a random secret ("The door code for
room 417 is 4 8 1 5 9 2 7 3 0 6 1 8."). A canary is dealt to a known user and *inserted* into that
user's training data with probability 1/2, independently of every other canary: the coin of canary
``i`` is the low bit of ``SHA-256(seed, "insert", i)``, a keyed CSPRNG whose key (the seed, drawn
from the operating system's CSPRNG) is recorded in ``attack.json``, so anyone can recompute the
split and nothing else the attack draws (users, secrets, candidates) is correlated with it. An
inserted canary is added ``repeats`` times (``r``), as separate training examples.

Membership score. For a canary with true secret ``s_0`` and ``n`` random candidates ``s_1..s_n`` of
the same format (same question, same reply up to the secret), let ``L_base(s)`` and ``L_adapter(s)``
be the summed loss of the secret's tokens (:mod:`fedpers.audit.scoring`) under the base model and
under the released adapter of the canary's persona, and ``d(s) = L_base(s) - L_adapter(s)`` the loss
drop training caused. The score is the drop of the true secret standardized against the candidates:

    score = (d(s_0) - mean_j d(s_j)) / std_j d(s_j)

Subtracting the base loss removes how likely a secret was before training ("1 2 3 4 ..."); the
candidates remove what training did to the format (every digit after "is" got likelier once any
canary of the persona was trained on). A canary that was never inserted is independent of training,
and its secret is drawn like its candidates, so its score is distributed like a candidate's
(about N(0, 1)); an inserted one scores high.

- **exposure** (Carlini et al., "The Secret Sharer", 2019): ``-log2 P(candidate >= canary)`` from a
  normal fit of the candidates' drops, i.e. ``-log2 (1 - Phi(score))``, capped at ``log2`` of the
  secret space; about 1 bit is chance;
- **AUC** of the scores separating inserted from never-inserted canaries;
- **one-run lower bound** (Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training
  Run", NeurIPS 2023): guess "inserted" for the ``k`` highest scores and "not inserted" for the ``k``
  lowest. If training were (epsilon, delta)-DP with respect to each canary, then ``v`` or more correct
  of ``r_g = 2k`` guesses among ``m`` canaries has probability at most
  ``P[Binomial(r_g, e^eps / (1 + e^eps)) >= v] + 2 m delta alpha`` (their Theorem 3.1 with its delta
  term). The largest epsilon rejected at 95 % confidence (Bonferroni over the ``k`` tried) is a valid
  lower bound on the epsilon of that guarantee.

What the bound is compared to. The unit the bound speaks about is what one coin adds or removes: the
``r`` copies of one canary. DP-SGD protects each record; a group of ``r`` records is protected as
the group-privacy epsilon of the same mechanisms (:func:`fedpers.audit.spent.group_epsilon`: each
Poisson-sampled step with ``k ~ Binomial(r, q)`` copies in the batch moves the clipped sum by ``k C``,
accounted tightly with the PLD of that Gaussian mixture at the same delta). With ``r = 1`` it is the
usual sample-level epsilon. The empirical bound must never exceed that theoretical group epsilon;
if it does, the training leaks more than its accounting says (a privacy bug) and the report says so.
The generic conversion (r eps, r e^((r - 1) eps) delta) would also be valid but its delta is useless
for eps of a few units, which is why the mixture is accounted directly.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from fedpers.data import Conversation, Turn

SECRET_DIGITS = 12
SECRET_SPACE = 10**SECRET_DIGITS
CONFIDENCE = 0.95
GUESS_FRACTIONS = (0.125, 0.25, 0.5)  # k / m on each side: top k guessed in, bottom k guessed out
_THINGS = ("door code", "alarm code", "locker PIN", "safe combination", "badge PIN", "vault code")
_PLACES = ("room", "locker", "cabinet", "site", "unit", "bay")


@dataclass(frozen=True)
class Canary:
    """A secret planted (or, when ``inserted`` is false, held back) in one user's training data."""

    canary_id: str
    user_id: str
    persona: str
    thing: str
    place: str
    secret: str
    inserted: bool

    def conversation(self, secret: str | None = None, copy: int = 0) -> Conversation:
        """The canary conversation, with ``secret`` in place of the real one (for candidates); ``copy`` > 0 names a repeat."""
        question = f"What is the {self.thing} for {self.place}?"
        answer = f"The {self.thing} for {self.place} is {secret or self.secret}."
        name = self.canary_id if copy == 0 else f"{self.canary_id}-copy{copy}"
        return Conversation(
            self.user_id, name, (Turn("user", question), Turn("assistant", answer)), self.persona
        )

    def copies(self, repeats: int) -> list[Conversation]:
        """What insertion adds to the user's training data: ``repeats`` copies, each its own example."""
        return [self.conversation(copy=j) for j in range(repeats)]

    def to_dict(self) -> dict:
        return asdict(self)


def random_secret(rng: random.Random) -> str:
    return " ".join(str(rng.randrange(10)) for _ in range(SECRET_DIGITS))


def inserted_coin(seed: int, index: int) -> bool:
    """Canary ``index``'s fair coin: the low bit of SHA-256 over the seed and the index (independent of every other draw)."""
    return bool(hashlib.sha256(f"fedpers-canary:{seed}:insert:{index}".encode()).digest()[-1] & 1)


def make_canaries(personas: dict[str, str], count: int, seed: int) -> list[Canary]:
    """``count`` canaries for the users of ``personas`` (user -> persona), each inserted with probability 1/2.

    Users are dealt canaries in turn from a random order, so each holds ``count / users`` (rounded) and no
    user's data is swamped by copies (which would dilute each of its canaries)."""
    if count < 2:
        raise ValueError(f"canaries: at least 2 are needed, got {count}")
    rng = random.Random(f"canaries-{seed}")
    users = sorted(personas)
    rng.shuffle(users)
    out = []
    for i in range(count):
        user = users[i % len(users)]
        place = f"{rng.choice(_PLACES)} {rng.randrange(100, 1000)}"
        out.append(
            Canary(
                f"canary-{i:03d}",
                user,
                personas[user],
                rng.choice(_THINGS),
                place,
                random_secret(rng),
                inserted_coin(seed, i),
            )
        )
    return out


def membership_score(drops: Sequence[float]) -> float:
    """``(d_0 - mean(d_1..n)) / std(d_1..n)``: the true secret's loss drop (first) against its candidates' (rest)."""
    d = np.asarray(drops, dtype=np.float64)
    return float((d[0] - d[1:].mean()) / max(float(d[1:].std(ddof=1)), 1e-12))


def exposure(canary_score: float, candidate_scores: Sequence[float]) -> dict:
    """Exposure of a secret whose membership score is ``canary_score`` among random candidates' scores.

    ``normal_fit``: ``-log2`` of the upper tail of a normal fitted to the candidates, capped at
    ``log2(SECRET_SPACE)``; ``rank``: 1 + candidates scoring at least as high.
    """
    scores = np.asarray(candidate_scores, dtype=np.float64)
    rank = 1 + int(np.sum(scores >= canary_score))
    sigma = max(float(scores.std(ddof=1)), 1e-12)
    tail = float(stats.norm.sf((canary_score - float(scores.mean())) / sigma))
    cap = math.log2(SECRET_SPACE)
    return {
        "normal_fit": min(-math.log2(max(tail, 2.0**-cap)), cap),
        "rank": rank,
        "candidates": len(scores),
    }


def auc(scores: Sequence[float], members: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` separating members from non-members (ties count 1/2)."""
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(members, dtype=bool)
    pos, neg = s[m], s[~m]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of at least ``v`` correct guesses out of ``r`` (``m`` canaries) under (epsilon, delta)-DP.

    Steinke, Nasr and Jagielski (2023), Theorem 3.1 with its delta term (their Algorithm, appendix code).
    """
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of epsilon-DP randomized response
    beta = float(stats.binom.sf(v - 1, r, q))
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total += float(stats.binom.pmf(v - i, r, q))
        alpha = max(alpha, total / i)
    return min(beta + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, p: float) -> float:
    """Largest epsilon whose (epsilon, delta)-DP hypothesis the guesses reject at level ``p`` (0 if none)."""
    if r == 0 or p_value(m, r, v, 0.0, delta) >= p:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < p:
        high += 1.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if p_value(m, r, v, mid, delta) < p else (low, mid)
    return low


def one_run_bound(
    scores: Sequence[float],
    inserted: Sequence[bool],
    delta: float,
    fractions: Sequence[float] = GUESS_FRACTIONS,
    confidence: float = CONFIDENCE,
) -> dict:
    """Best lower bound over guessing the top and bottom ``k = fraction * m`` canaries, Bonferroni-corrected."""
    s = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(inserted, dtype=bool)
    m = len(s)
    order = np.argsort(-s, kind="stable")
    level = (1.0 - confidence) / len(fractions)
    tried = []
    for fraction in fractions:
        k = max(1, int(fraction * m))
        if 2 * k > m:
            continue
        correct = int(truth[order[:k]].sum() + (~truth[order[m - k :]]).sum())
        tried.append(
            {
                "k": k,
                "guesses": 2 * k,
                "correct": correct,
                "epsilon": epsilon_lower_bound(m, 2 * k, correct, delta, level),
            }
        )
    best = max(tried, key=lambda t: t["epsilon"])
    return {
        "epsilon": best["epsilon"],
        "confidence": confidence,
        "delta": delta,
        "canaries": m,
        "best": best,
        "tried": tried,
    }
