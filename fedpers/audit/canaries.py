"""What an attacker can still learn: secret canaries, their exposure, and a one-run lower bound on epsilon.

Each canary is a short conversation whose assistant reply holds a random secret ("The door code
for locker 417 is 4 8 1 5 9 2."). A canary is given to a known user and *inserted* into that user's
training data with probability 1/2, independently of the others. After training, the attacker
scores each canary on the released adapter of its user's persona against the base model:

- **membership score**: base-model loss minus adapter loss of the canary (summed over its reply
  tokens); training on a canary lowers its loss under the adapter, so members score high;
- **exposure** (Carlini et al., "The Secret Sharer", 2019): how far the true secret ranks above
  random secrets of the same format, ``-log2 P(candidate scores >= canary)``, estimated from sampled
  candidates with a normal fit of their scores (capped at ``log2`` of the secret space);
- **one-run lower bound** (Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run",
  NeurIPS 2023): guess "inserted" for the ``k`` highest scores and "not inserted" for the ``k``
  lowest; if the training were (epsilon, delta)-DP, that many correct guesses would be unlikely. The
  largest epsilon rejected at 95 % confidence (Bonferroni over the ``k`` tried) is a valid lower
  bound: it must never exceed the theoretical epsilon.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from fedpers.data import Conversation, Turn

SECRET_DIGITS = 6
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

    def conversation(self, secret: str | None = None) -> Conversation:
        """The canary conversation, with ``secret`` in place of the real one (for candidates)."""
        question = f"What is the {self.thing} for {self.place}?"
        answer = f"The {self.thing} for {self.place} is {secret or self.secret}."
        return Conversation(self.user_id, self.canary_id, (Turn("user", question), Turn("assistant", answer)), self.persona)

    def to_dict(self) -> dict:
        return asdict(self)


def random_secret(rng: random.Random) -> str:
    return " ".join(str(rng.randrange(10)) for _ in range(SECRET_DIGITS))


def make_canaries(personas: dict[str, str], count: int, seed: int) -> list[Canary]:
    """``count`` canaries, each for a random user of ``personas`` (user -> persona), inserted with probability 1/2."""
    if count < 2:
        raise ValueError(f"canaries: at least 2 are needed, got {count}")
    rng = random.Random(seed)
    users = sorted(personas)
    out = []
    for i in range(count):
        user = rng.choice(users)
        place = f"{rng.choice(_PLACES)} {rng.randrange(100, 1000)}"
        out.append(Canary(f"canary-{i:03d}", user, personas[user], rng.choice(_THINGS), place, random_secret(rng),
                          rng.random() < 0.5))
    return out


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
    return {"normal_fit": min(-math.log2(max(tail, 2.0**-cap)), cap), "rank": rank, "candidates": len(scores)}


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


def one_run_bound(scores: Sequence[float], inserted: Sequence[bool], delta: float,
                  fractions: Sequence[float] = GUESS_FRACTIONS, confidence: float = CONFIDENCE) -> dict:
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
        correct = int(truth[order[:k]].sum() + (~truth[order[m - k:]]).sum())
        tried.append({"k": k, "guesses": 2 * k, "correct": correct,
                      "epsilon": epsilon_lower_bound(m, 2 * k, correct, delta, level)})
    best = max(tried, key=lambda t: t["epsilon"])
    return {"epsilon": best["epsilon"], "confidence": confidence, "delta": delta, "canaries": m, "best": best, "tried": tried}
