"""Per-user train / held-out split: coverage, determinism, order independence."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from fedpers.data import Conversation, Turn, train_heldout_split
from fedpers.data.split import heldout_count, stable_unit


def conv(user: str, cid: str) -> Conversation:
    return Conversation(
        user_id=user, conversation_id=cid, turns=(Turn("user", "q"), Turn("assistant", "a"))
    )


@pytest.fixture
def dataset() -> list[Conversation]:
    sizes = {"solo": 1, "pair": 2, "three": 3, "ten": 10, "many": 37}
    sizes.update({f"u{i:02d}": 5 + i % 7 for i in range(30)})
    return [conv(user, f"{user}-{k}") for user, n in sizes.items() for k in range(n)]


def ids(convs: list[Conversation]) -> set[tuple[str, str]]:
    return {(c.user_id, c.conversation_id) for c in convs}


def test_partition_and_order_preserved(dataset: list[Conversation]) -> None:
    train, held = train_heldout_split(dataset)
    assert ids(train) | ids(held) == ids(dataset) and not ids(train) & ids(held)
    assert train == [c for c in dataset if c in train] and held == [c for c in dataset if c in held]


def test_every_user_with_two_conversations_gets_both_sides(dataset: list[Conversation]) -> None:
    for fraction in (0.01, 0.2, 0.5, 0.99):
        train, held = train_heldout_split(dataset, heldout_fraction=fraction)
        n_train, n_held = Counter(c.user_id for c in train), Counter(c.user_id for c in held)
        for user, n in Counter(c.user_id for c in dataset).items():
            if n >= 2:
                assert n_train[user] >= 1 and n_held[user] >= 1, (fraction, user)
            else:
                assert n_train[user] == 1 and n_held[user] == 0


def test_held_out_count_follows_fraction(dataset: list[Conversation]) -> None:
    _, held = train_heldout_split(dataset, heldout_fraction=0.2)
    per_user = Counter(c.user_id for c in held)
    assert (
        per_user["ten"] == 2
        and per_user["many"] == 7
        and per_user["three"] == 1
        and per_user["pair"] == 1
    )
    assert [heldout_count(n, 0.2) for n in (0, 1, 2, 3, 5, 10, 37)] == [0, 0, 1, 1, 1, 2, 7]


def test_deterministic_and_order_independent(dataset: list[Conversation]) -> None:
    train, held = train_heldout_split(dataset, seed=3)
    shuffled = dataset[:]
    random.Random(1).shuffle(shuffled)
    train2, held2 = train_heldout_split(shuffled, seed=3)
    assert ids(train2) == ids(train) and ids(held2) == ids(held)
    assert train_heldout_split(dataset, seed=3) == (train, held)


def test_seed_changes_the_assignment(dataset: list[Conversation]) -> None:
    held_sets = {frozenset(ids(train_heldout_split(dataset, seed=s)[1])) for s in range(4)}
    assert len(held_sets) == 4


def test_hash_is_stable_across_processes() -> None:
    # Fixed values: the split must not depend on Python's per-process hash() randomization.
    assert stable_unit(0, "u1", "c1") == pytest.approx(0.026176618277309785, abs=1e-15)
    assert stable_unit(1, "u1", "c1") == pytest.approx(0.9941420602942028, abs=1e-15)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_invalid_fraction(dataset: list[Conversation], fraction: float) -> None:
    with pytest.raises(ValueError, match="heldout_fraction"):
        train_heldout_split(dataset, heldout_fraction=fraction)
