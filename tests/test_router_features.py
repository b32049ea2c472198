"""The router's public feature map: what it is learned from, that it costs no privacy, that it is stored with
the router, and that it makes the private centroids usable with few devices per persona."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedpers.personas.centroid import load_router, save_router
from fedpers.personas.encoder import unit_rows
from fedpers.personas.features import (
    IDENTITY,
    FeatureMap,
    lda_map,
    pca_map,
    public_feature_map,
)
from fedpers.personas.router_data import EncodedUser, learn_router, mapped
from fedpers.personas.router_stats import StatsLayout, device_contribution, noise_for_epsilon

PERSONAS = ("a", "b", "c", "d")


def _world(rng, d: int = 96, spread: float = 2.5):
    """Personas as directions plus a shared component (as sentence embeddings have): unit rows."""
    common = rng.normal(size=d)
    centres = rng.normal(size=(len(PERSONAS), d))

    def draw(persona: str, n: int) -> np.ndarray:
        k = PERSONAS.index(persona)
        return unit_rows(3 * common + centres[k] + spread * rng.normal(size=(n, d)))

    return draw


def _users(draw, per_persona: int, prompts: int, tag: str) -> list[EncodedUser]:
    return [
        EncodedUser(f"{tag}-{p}-{i}", p, draw(p, prompts), np.zeros((prompts, 0), np.float32))
        for p in PERSONAS
        for i in range(per_persona)
    ]


def _accuracy(model, users) -> float:
    right = total = 0
    for u in users:
        for row in u.text:
            right += model.personas[int(np.argmax(model.logits(row, None)))] == u.persona
            total += 1
    return right / total


def test_a_public_lda_map_makes_the_private_router_usable_with_three_devices_per_persona(tmp_path):
    rng = np.random.default_rng(0)
    draw = _world(rng)
    public = _users(draw, 2, 40, "public")
    train, heldout = _users(draw, 3, 30, "dev"), _users(draw, 2, 30, "held")
    rows = np.concatenate([u.text for u in public])
    labels = [u.persona for u in public for _ in u.text]
    features = public_feature_map(rows, labels, PERSONAS, source="test")
    assert features.kind == "lda" and features.components.shape == (len(PERSONAS) - 1, 96)
    clean = _accuracy(learn_router(train, PERSONAS, use_context=False), heldout)
    raw, mapped_acc = [], []
    for seed in range(4):
        for feats, out in ((IDENTITY, raw), (features, mapped_acc)):
            layout = StatsLayout(PERSONAS, feats.dimension(96), 0)
            noise = noise_for_epsilon(8.0, 1e-5, layout)
            model = learn_router(
                train,
                PERSONAS,
                noise=noise,
                ledger_dir=tmp_path / f"{feats.kind}-{seed}",
                use_context=False,
                rng=np.random.default_rng(seed),
                features=feats,
            )
            out.append(_accuracy(model, heldout))
    assert clean > 0.9
    # in 96 dimensions the noise of 3 devices' sums swamps the centroids; in K - 1 = 3 it does not
    assert np.mean(mapped_acc) >= 0.85, mapped_acc
    assert np.mean(mapped_acc) >= np.mean(raw) + 0.25, (raw, mapped_acc)


def test_a_mapped_contribution_keeps_the_devices_bound_whatever_the_map():
    rng = np.random.default_rng(1)
    for _ in range(20):
        d, r = 32, int(rng.integers(1, 8))
        hostile = FeatureMap("pca", rng.normal(size=d) * 50, rng.normal(size=(r, d)) * 1e6)
        user = EncodedUser("u", "a", unit_rows(rng.normal(size=(7, d))), np.zeros((7, 0)))
        layout = StatsLayout(PERSONAS, r, 0)
        x = device_contribution(layout, {"a": mapped(user, hostile).text})
        assert np.linalg.norm(x) <= layout.clip + 1e-6
        assert np.all(np.isfinite(x))


def test_the_map_is_chosen_from_what_the_public_data_declares():
    rng = np.random.default_rng(2)
    rows = unit_rows(rng.normal(size=(40, 16)))
    labels = ["a", "b", "c", "d"] * 10
    assert public_feature_map(rows, labels, PERSONAS).kind == "lda"
    # the public data lacks persona "d" of the run (or declares none): no labels to learn from, PCA
    assert public_feature_map(rows, ["a", "b", "c"] * 13 + ["a"], PERSONAS).kind == "pca"
    assert public_feature_map(rows, [None] * 40, PERSONAS).kind == "pca"
    assert public_feature_map(rows[:0], [], PERSONAS) is IDENTITY


def test_the_map_does_not_depend_on_the_order_of_the_public_rows():
    rng = np.random.default_rng(3)
    rows = unit_rows(rng.normal(size=(60, 24)) + rng.normal(size=24))
    labels = [PERSONAS[i % 4] for i in range(60)]
    order = rng.permutation(60)
    for build in (
        lambda x, y: pca_map(x, 5),
        lambda x, y: lda_map(x, y),
    ):
        first = build(rows, labels)
        second = build(rows[order], [labels[i] for i in order])
        np.testing.assert_allclose(first.components, second.components, atol=1e-8)
        np.testing.assert_allclose(first.mean, second.mean, atol=1e-12)


def test_the_map_is_saved_with_the_router_and_an_older_router_loads_as_identity(tmp_path):
    rng = np.random.default_rng(4)
    draw = _world(rng, d=20)
    public = _users(draw, 1, 20, "p")
    features = lda_map(
        np.concatenate([u.text for u in public]), [u.persona for u in public for _ in u.text]
    )
    model = learn_router(_users(draw, 2, 10, "u"), PERSONAS, use_context=False, features=features)
    save_router(tmp_path, model)
    back = load_router(tmp_path)
    assert back.features.kind == "lda"
    np.testing.assert_array_equal(back.features.components, features.components)
    probe = draw("b", 1)[0]
    np.testing.assert_allclose(back.logits(probe, None), model.logits(probe, None), rtol=1e-5)
    # a router file written before the map existed: no "features" field, no tensors -> identity
    meta = json.loads((tmp_path / "router" / "router.json").read_text())
    del meta["features"]
    older = learn_router(_users(draw, 2, 10, "u"), PERSONAS, use_context=False)
    save_router(tmp_path / "old", older)
    (tmp_path / "old" / "router" / "router.json").write_text(
        json.dumps({**meta, "context_dimension": 0})
    )
    assert load_router(tmp_path / "old").features is IDENTITY
    # a map whose tensors are gone is an error naming the file
    meta["features"] = {"kind": "lda"}
    (tmp_path / "old" / "router" / "router.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"centroids\.safetensors: components"):
        load_router(tmp_path / "old")


def test_a_map_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="mean"):
        FeatureMap("pca", np.zeros(3), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="finite"):
        FeatureMap("lda", np.zeros(4), np.full((2, 4), math.nan))
    with pytest.raises(ValueError, match="unknown feature map"):
        FeatureMap("tsne", np.zeros(4), np.zeros((2, 4)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="24-dimensional"):
        pca_map(unit_rows(np.random.default_rng(0).normal(size=(10, 24))), 3)(np.zeros(7))


def test_the_public_warm_start_gives_a_persona_without_devices_a_centroid_and_moves_with_the_devices(
    tmp_path,
):
    from fedpers.personas.router_data import public_statistics

    rng = np.random.default_rng(5)
    draw = _world(rng)
    public = _users(draw, 2, 40, "public")
    features = lda_map(
        np.concatenate([u.text for u in public]), [u.persona for u in public for _ in u.text]
    )
    train = [u for u in _users(draw, 3, 30, "dev") if u.persona != "d"]
    heldout = _users(draw, 2, 30, "held")
    prior = public_statistics(public, PERSONAS, features, use_context=False)
    assert prior is not None and prior.counts.tolist() == [2.0, 2.0, 2.0, 2.0]
    alone = learn_router(train, PERSONAS, use_context=False, features=features)
    warm = learn_router(train, PERSONAS, use_context=False, features=features, prior=prior)
    assert "d" not in alone.trained and "d" in warm.trained
    of_d = [u for u in heldout if u.persona == "d"]
    assert _accuracy(warm, of_d) >= 0.8 and _accuracy(warm, heldout) > _accuracy(alone, heldout)
    # the devices' sums count: the warm router's centroids differ from the public data's alone
    public_only = learn_router(public, PERSONAS, use_context=False, features=features)
    assert not np.allclose(warm.text, public_only.text, atol=1e-3)
    # public users of personas the run does not have are left out; none left: no warm start
    assert public_statistics(public, ("x", "y"), features, use_context=False) is None


def test_the_map_travels_as_safetensors_and_a_damaged_blob_is_refused():
    rng = np.random.default_rng(6)
    features = pca_map(unit_rows(rng.normal(size=(30, 12))), 3, source="public")
    back = FeatureMap.from_bytes(features.to_bytes())
    assert (back.kind, back.source) == ("pca", "public")
    np.testing.assert_array_equal(back.components, features.components)
    np.testing.assert_array_equal(back.mean, features.mean)
    assert FeatureMap.from_bytes(b"") is IDENTITY
    assert FeatureMap.from_bytes(IDENTITY.to_bytes()) is IDENTITY
    blob = features.to_bytes()
    for bad in (blob[:5], b"x" * 40, blob[:-8]):
        with pytest.raises(ValueError, match="router feature map"):
            FeatureMap.from_bytes(bad)
