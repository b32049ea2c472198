"""Inferred personas chosen from the prompts against public centroids: the mechanism's sensitivity, what it
recovers, its wire format, the device's ledger entry, and a federated run that discovers the desk's personas."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.persona import (
    PROMPT_METHOD,
    choose_persona,
    private_prompt_choice,
)
from fedpers.personas.discovery import adjusted_rand_index
from fedpers.personas.encoder import unit_rows
from fedpers.personas.prompt_choice import PromptCentroids, discover_public
from fedpers.privacy import PrivacyLedger


def _centroids(rng, k=4, d=16, bound=0.3) -> PromptCentroids:
    return PromptCentroids(
        tuple(f"p{j}" for j in range(k)), unit_rows(rng.normal(size=(k, d))), bound
    )


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 20),
    k=st.integers(2, 7),
    bound=st.floats(0.01, 2.0),
)
def test_one_prompt_more_or_less_moves_the_scores_by_at_most_one(seed, n, k, bound):
    """The L2 sensitivity the ledger's Gaussian event assumes: adding or removing one conversation's prompt."""
    rng = np.random.default_rng(seed)
    centroids = _centroids(rng, k, 12, bound)
    rows = unit_rows(rng.normal(size=(n + 1, 12)))
    with_it, without = centroids.scores(rows), centroids.scores(rows[:n])
    assert np.linalg.norm(with_it - without) <= 1.0 + 1e-9


def _clustered(rng, centres, per, spread, prompts):
    """``per`` users around each centre; each user's prompts scattered around the user's own direction."""
    d = centres.shape[1]
    users, labels = [], []
    for j, c in enumerate(centres):
        for _ in range(per):
            me = unit_rows(c + spread * rng.normal(size=d) / d**0.5)
            users.append(unit_rows(me + 1.5 * rng.normal(size=(prompts, d)) / d**0.5))
            labels.append(j)
    return users, np.array(labels)


def test_public_centroids_and_one_noisy_choice_per_device_recover_the_personas():
    """Two public users per persona place the centroids (K justified by the public silhouette) and name them
    (the personas they declare); 60 devices of 20 prompts each choose at the default noise and land in their
    own persona's slot."""
    rng = np.random.default_rng(4)
    centres = unit_rows(rng.normal(size=(5, 64)))
    public, declared = _clustered(rng, centres, 2, 0.3, 20)
    names = [f"p{j}" for j in range(5)]
    ids = [f"public-{i}" for i in range(len(public))]

    def discover(personas, **named):
        return discover_public(
            np.stack([u.mean(0) for u in public]),
            np.concatenate(public),
            personas,
            np.random.default_rng(0),
            **named,
        )

    found = discover(names, public_personas=[names[j] for j in declared], public_ids=ids)
    assert found.favoured_k == 5 and "the public data favours the same K" in found.explain()
    assert set(found.silhouettes) == set(range(2, 9))
    devices, truth = _clustered(rng, centres, 12, 0.3, 20)
    picks = [max(s := found.centroids.noisy_scores(u, 1.0, rng), key=s.get) for u in devices]
    assert adjusted_rand_index(truth, picks) > 0.9
    # named after the personas the public users declare: each device lands in its own persona's slot
    assert np.mean([p == names[t] for p, t in zip(picks, truth)]) > 0.9
    # each public user's centroid (what its persona's layered weight is scored on), under the same names
    assert found.public_groups == {i: names[j] for i, j in zip(ids, declared)}
    assert found.summary()["public_users_per_persona"] == {n: 2 for n in names}
    other = discover(["a", "b", "c"])
    assert other.public_groups == {} and other.summary()["public_users_per_persona"] == {}
    assert len(other.centroids.personas) == 3 and "favours K = 5" in other.explain()


def test_the_centroids_travel_as_safetensors_and_bad_ones_are_refused():
    rng = np.random.default_rng(1)
    sent = _centroids(rng)
    got = PromptCentroids.from_bytes(sent.to_bytes())
    assert got.personas == sent.personas and got.bound == pytest.approx(sent.bound)
    assert np.allclose(got.centroids, sent.centroids)
    with pytest.raises(ValueError, match="unreadable"):
        PromptCentroids.from_bytes(b"\x80\x04not safetensors")
    with pytest.raises(ValueError, match=r"expected \(2, d\)"):
        PromptCentroids(("a", "b"), np.ones((3, 4)), 0.3)
    with pytest.raises(ValueError, match="bound"):
        PromptCentroids(("a", "b"), np.ones((2, 4)), 0.0)
    with pytest.raises(ValueError, match=r"expected \(n, 16\)"):
        sent.scores(np.ones((2, 5)))


def test_the_device_records_its_choice_in_its_ledger_and_falls_back_without_an_encoder(
    tmp_path, monkeypatch
):
    from fedpers.personas.encoder import default_encoder

    encoder = default_encoder()
    prompts = ["The VPN drops every time I dock my laptop", "Outlook will not sync my calendar"]
    other = ["Quarterly board pack needs the revenue slide", "Approve the budget for next year"]
    centroids = PromptCentroids(
        ("it", "exec"),
        unit_rows(np.stack([encoder.encode(prompts).mean(0), encoder.encode(other).mean(0)])),
        0.5,
    )
    ledger = PrivacyLedger(tmp_path / "ledger.json", "u")
    scores = private_prompt_choice(
        prompts * 10, centroids, ["it", "exec"], ledger, details={"run_id": "r"}
    )
    assert (
        scores is not None
        and choose_persona(None, ["it", "exec"], ["it", "exec"], scores).persona == "it"
    )
    (entry,) = ledger.entries
    assert entry.purpose == "persona-choice" and entry.status == "completed"
    assert entry.details["method"] == PROMPT_METHOD and entry.details["prompts"] == 20
    assert entry.events[0].noise_multiplier == 1.0 and entry.events[0].sample_rate == 1.0

    def missing():
        raise ImportError("no sentence-transformers")

    monkeypatch.setattr("fedpers.personas.encoder.default_encoder", missing)
    empty = PrivacyLedger(tmp_path / "other.json", "u")
    assert private_prompt_choice(prompts, centroids, ["it", "exec"], empty) is None
    assert empty.entries == []


def test_prompt_choice_needs_public_data():
    from fedpers.federated import FederatedConfig

    with pytest.raises(ValueError, match="'prompts' needs public_data"):
        FederatedConfig.from_flat(
            {"persona_mode": "inferred", "persona_choice": "prompts"}
        ).validated()
    auto = FederatedConfig.from_flat(
        {"persona_mode": "inferred", "public_data": "synthetic", "public_steps": 2}
    ).validated()
    assert auto.prompt_choice
    assert not FederatedConfig.from_flat({"persona_mode": "inferred"}).validated().prompt_choice
    assert (
        not FederatedConfig.from_flat({"public_data": "synthetic", "public_steps": 2})
        .validated()
        .prompt_choice
    )  # declared personas


@pytest.mark.slow  # Ray
def test_an_inferred_run_discovers_the_desks_personas_from_the_prompts(tmp_path):
    """The tiny scenario with personas inferred: the server places the centroids from the public split and says
    why K; every device records one prompt-centroid choice before its upload; the choices match the desk's
    true personas, names included."""
    from test_simulation import tiny_config

    from fedpers.userdata import conversations, user_ids
    from simulations.simulate import simulate

    # 40 conversations per user (the default scenario's): about 30 prompts to choose from; with the tiny
    # scenario's 12, a noisy choice among 5 from 9 prompts is right on about 60 % of the pairs
    config = tiny_config(
        tmp_path,
        persona_mode="inferred",
        public_data="synthetic",
        public_steps=2,
        rounds=1,
        conversations_per_user=40,
    )
    metrics = simulate(config, tmp_path)
    discovery = json.loads((tmp_path / "persona-discovery.json").read_text())
    assert discovery["k"] == 5 and discovery["personas"] == config.persona_names
    assert discovery["public_users"] >= 5 and set(discovery["silhouette_by_k"]) >= {"2", "5", "8"}
    # every public user placed at a centroid; each persona's layered weight scored on its own public users
    assert sum(discovery["public_users_per_persona"].values()) == discovery["public_users"]
    mix = metrics["persona_mix"]
    assert set(mix) == set(config.persona_names)
    assert all(
        m["source"] == f"public held-out conversations of persona {p}" for p, m in mix.items()
    )
    truth = {c.user_id: c.persona for c in conversations(config)}
    users = user_ids(config)
    chosen = []
    manifest = [
        json.loads(line) for line in (tmp_path / "wire" / "manifest.jsonl").read_text().splitlines()
    ]
    for pid, user in enumerate(users):
        ledger = PrivacyLedger(tmp_path / "client-state" / user / "ledger.json", user)
        (entry,) = [e for e in ledger.entries if e.purpose == "persona-choice"]
        assert entry.details["method"] == PROMPT_METHOD
        assert entry.details["run_id"] == metrics["run_id"] and entry.status == "completed"
        (upload,) = [
            e
            for e in manifest
            if e["partition_id"] == pid and e["secagg_stage"] == "collect_masked_vectors"
        ]
        assert entry.started_at < upload["sent_at"]
        chosen.append(
            (tmp_path / "client-state" / user / f"persona-{metrics['run_id']}.txt")
            .read_text()
            .strip()
        )
    assert adjusted_rand_index([truth[u] for u in users], chosen) > 0.9, chosen
    # the centroids carry the names of the personas their public users declare
    assert np.mean([c == truth[u] for c, u in zip(chosen, users)]) >= 0.9, chosen


def test_the_audit_says_how_personas_were_inferred_and_what_justifies_k(tmp_path):
    from fedpers.audit.report import persona_findings
    from fedpers.federated import FederatedConfig
    from fedpers.rundir import PERSONA_DISCOVERY, write_json

    def config(**changes):
        return FederatedConfig.from_flat({"persona_mode": "inferred"} | changes).validated()

    prompts = config(public_data="synthetic", public_steps=2)
    (missing,) = persona_findings(prompts, tmp_path)
    assert missing["level"] == "problem" and PERSONA_DISCOVERY in missing["text"]
    record = {
        "k": 5,
        "personas": prompts.persona_names,
        "favoured_k": 5,
        "silhouette_by_k": {"2": 0.7, "5": 0.9},
        "public_users": 10,
        "bound": 0.4,
    }
    write_json(tmp_path / PERSONA_DISCOVERY, record)
    (same,) = persona_findings(prompts, tmp_path)
    assert same["level"] == "ok" and "K=5: 0.900" in same["text"] and "as set" in same["text"]
    write_json(tmp_path / PERSONA_DISCOVERY, record | {"favoured_k": 2})
    (other,) = persona_findings(prompts, tmp_path)
    assert other["level"] == "warning" and "favours K = 2, not the 5 set" in other["text"]
    (loss,) = persona_findings(config(), tmp_path)
    assert "IFCA" in loss["text"] and "not justified" in loss["text"]
    # a run recorded before the setting existed chose by the losses, whatever its public data
    recorded = {k: v for k, v in prompts.to_record().items() if k != "persona_choice"}
    (old,) = persona_findings(prompts, tmp_path, recorded)
    assert "IFCA" in old["text"]
    assert persona_findings(FederatedConfig(), tmp_path) == []
