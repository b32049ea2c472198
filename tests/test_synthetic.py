"""Synthetic service desk: determinism, persona separability, non-memorizability and user quirks, measured on data."""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from fedpers.data import (
    PERSONAS,
    Conversation,
    SyntheticConfig,
    generate,
    read_jsonl,
    train_heldout_split,
    validate_record,
)
from fedpers.data.cli import register
from fedpers.data.phrasebank import PhraseBankError, build_common, build_persona, read_phrase_file
from fedpers.data.synthetic import (
    FIRST_NAMES,
    HELPER_NAMES,
    PERSONA_SPECS,
    expand,
    generate_conversation,
    make_users,
    parse_template,
)

WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int = 8) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def assistant_text(conv: Conversation) -> str:
    return "\n".join(conv.texts("assistant"))


@pytest.fixture(scope="module")
def dataset() -> list[Conversation]:
    return generate(SyntheticConfig())


@pytest.fixture(scope="module")
def split(dataset: list[Conversation]) -> tuple[list[Conversation], list[Conversation]]:
    return train_heldout_split(dataset, heldout_fraction=0.2, seed=0)


# ------------------------------------------------------------------------ shape and determinism


def test_default_size_and_validity(dataset: list[Conversation]) -> None:
    assert len(dataset) == 5 * 8 * 24
    assert Counter(c.persona for c in dataset) == {p: 8 * 24 for p in PERSONAS}
    assert len({(c.user_id, c.conversation_id) for c in dataset}) == len(dataset)
    for conv in dataset:
        assert validate_record(conv.to_dict()) == []
        roles = [t.role for t in conv.turns]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and 1 <= len(roles) // 2 <= 3
        assert {"name", "role", "location", "device", "sign_off", "greeting"} <= set(conv.profile)
    exchanges = Counter(len(c.turns) // 2 for c in dataset)
    assert set(exchanges) == {1, 2, 3}


PINNED_DIGESTS = {
    # SHA-256 of the JSONL serialization (as ``write_jsonl`` writes it) recorded from the generator before its
    # phrase banks moved into data files; any change to the banks, the grammar or the draw order changes them.
    "default": (
        SyntheticConfig(),
        "f33588adc2826c649cb6f25954da485775ebc1b1a542b51fea6e511e1ef5ab80",
    ),
    "scenario": (  # the project's default scenario
        SyntheticConfig(users_per_persona=3, conversations_per_user=40, seed=0),
        "2e91f98e60d1aa36b57f9b2a2d263b4ebb56d5f529eea8419242ade526389fae",
    ),
    "small_seed3": (
        SyntheticConfig(users_per_persona=2, conversations_per_user=6, seed=3),
        "c4d56aea2a935c7080d0613668fea1081f439fca6d147578cdbed1ad196e47f0",
    ),
    "subset_feedback": (
        SyntheticConfig(
            users_per_persona=3,
            conversations_per_user=8,
            seed=5,
            personas=("field_worker", "admin_hr"),
            feedback_rate=1.0,
        ),
        "4c2c5b760bc81834ffe2cb1729c22460685b4fda650afea3d029376e4f3bbd5b",
    ),
    "long_threads": (
        SyntheticConfig(
            users_per_persona=2,
            conversations_per_user=10,
            seed=11,
            exchange_weights=(0.0, 0.0, 1.0),
            feedback_rate=0.0,
        ),
        "3c6614b4c755ee5a1f33cbab2cfbe350bb37ddbdd2c104bce9f5d6c3653a2562",
    ),
}


def jsonl_digest(conversations: list[Conversation]) -> str:
    """SHA-256 of the conversations serialized line by line exactly as ``write_jsonl`` writes them."""
    digest = hashlib.sha256()
    for conv in conversations:
        digest.update(
            (json.dumps(conv.to_dict(), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        )
    return digest.hexdigest()


@pytest.mark.parametrize("name", sorted(PINNED_DIGESTS))
def test_output_is_pinned(name: str, dataset: list[Conversation]) -> None:
    config, expected = PINNED_DIGESTS[name]
    assert jsonl_digest(dataset if config == SyntheticConfig() else generate(config)) == expected


def test_same_seed_same_data_different_seed_different_data() -> None:
    config = SyntheticConfig(users_per_persona=2, conversations_per_user=6, seed=7)
    first = [c.to_dict() for c in generate(config)]
    assert first == [c.to_dict() for c in generate(config)]
    other = [
        c.to_dict()
        for c in generate(SyntheticConfig(users_per_persona=2, conversations_per_user=6, seed=8))
    ]
    assert other != first
    assert sum(a["turns"] == b["turns"] for a, b in zip(first, other)) == 0


def test_conversations_do_not_depend_on_dataset_size(dataset: list[Conversation]) -> None:
    config = SyntheticConfig()
    users = make_users(config)
    assert generate_conversation(config, users[9], 5) == dataset[9 * 24 + 5]
    small = generate(SyntheticConfig(conversations_per_user=3))
    assert small[:3] == dataset[:3]


def test_global_random_state_is_untouched() -> None:
    random.seed(123)
    expected = random.random()
    random.seed(123)
    generate(SyntheticConfig(users_per_persona=1, conversations_per_user=2))
    assert random.random() == expected


def test_config_validation() -> None:
    for bad in (
        {"users_per_persona": 0},
        {"conversations_per_user": 0},
        {"personas": ("pirates",)},
        {"personas": ()},
        {"users_per_persona": len(FIRST_NAMES)},
        {"feedback_rate": 1.5},
    ):
        with pytest.raises(ValueError):
            SyntheticConfig(**bad)


def test_persona_subset() -> None:
    convs = generate(
        SyntheticConfig(users_per_persona=2, conversations_per_user=2, personas=("admin_hr",))
    )
    assert {c.persona for c in convs} == {"admin_hr"} and len(convs) == 4


def test_no_template_artifacts(dataset: list[Conversation]) -> None:
    for conv in dataset:
        for turn in conv.turns:
            prose = "CODE".join(turn.text.split("`")[0::2])
            assert not re.search(r"[{}\[\]]|  | [,.;:!?]|\.\.|,,", prose), turn.text


# ------------------------------------------------------------------------ persona separability


def tfidf_centroid_accuracy(train: list[Conversation], test: list[Conversation]) -> float:
    """Nearest-centroid bag-of-words classifier (log TF x IDF, cosine) on assistant text."""
    vocab: dict[str, int] = {}
    docs_train = [words(assistant_text(c)) for c in train]
    for doc in docs_train:
        for w in doc:
            vocab.setdefault(w, len(vocab))

    def counts(doc: list[str]) -> np.ndarray:
        v = np.zeros(len(vocab))
        for w in doc:
            if w in vocab:
                v[vocab[w]] += 1
        return v

    x_train = np.stack([counts(d) for d in docs_train])
    x_test = np.stack([counts(words(assistant_text(c))) for c in test])
    idf = np.log((1 + len(x_train)) / (1 + (x_train > 0).sum(0))) + 1

    def weight(x: np.ndarray) -> np.ndarray:
        w = np.log1p(x) * idf
        return w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)

    w_train, w_test = weight(x_train), weight(x_test)
    labels = np.array([c.persona for c in train])
    centroids = np.stack([w_train[labels == p].mean(0) for p in PERSONAS])
    predicted = np.array(PERSONAS)[(w_test @ centroids.T).argmax(1)]
    return float(np.mean(predicted == np.array([c.persona for c in test])))


def test_personas_separable_on_heldout_conversations(split) -> None:
    train, heldout = split
    accuracy = tfidf_centroid_accuracy(train, heldout)
    assert accuracy >= 0.9, accuracy  # measured: 1.000


def test_personas_separable_on_unseen_users(dataset: list[Conversation]) -> None:
    # Stronger: the classifier never saw the test users, so names and devices cannot give the persona away.
    seen = {c.user_id for c in dataset if int(c.user_id[4:]) % 8 < 4}
    accuracy = tfidf_centroid_accuracy(
        [c for c in dataset if c.user_id in seen], [c for c in dataset if c.user_id not in seen]
    )
    assert accuracy >= 0.9, accuracy  # measured: 0.979


def first_answer_lengths(dataset: list[Conversation]) -> dict[str, float]:
    lengths = defaultdict(list)
    for conv in dataset:
        lengths[conv.persona].append(len(conv.texts("assistant")[0].split()))
    return {p: float(np.mean(v)) for p, v in lengths.items()}


def test_answer_lengths_match_persona_styles(dataset: list[Conversation]) -> None:
    # measured words: lead 34, kw 104, field 61, admin 77, new 83
    mean = first_answer_lengths(dataset)
    assert 20 <= mean["leadership"] <= 50
    assert 80 <= mean["knowledge_worker"] <= 160
    assert mean["knowledge_worker"] >= 2 * mean["leadership"]
    for persona in ("field_worker", "admin_hr", "new_employee"):
        assert mean["leadership"] < mean[persona] < mean["knowledge_worker"], persona


def test_style_markers(dataset: list[Conversation]) -> None:
    firsts = defaultdict(list)
    for conv in dataset:
        firsts[conv.persona].append(conv.texts("assistant")[0])
    numbered = {
        p: np.mean([bool(re.search(r"^1\. .*\n2\. ", t, re.M)) for t in ts])
        for p, ts in firsts.items()
    }
    commands = {p: np.mean([t.count("`") >= 4 for t in ts]) for p, ts in firsts.items()}
    assert numbered["knowledge_worker"] == 1.0 and commands["knowledge_worker"] > 0.9
    assert max(numbered[p] for p in PERSONAS if p != "knowledge_worker") == 0.0
    # "Bottom line: ..." first
    assert np.mean([":" in t.split("—", 1)[1][:30] for t in firsts["leadership"]]) == 1.0


def bigram_cross_entropy(
    train: list[Conversation], test: list[Conversation], vocab_size: int
) -> float:
    """Per-token cross-entropy (nats) of an interpolated bigram model of assistant text."""
    unigrams, bigrams, contexts = Counter(), Counter(), Counter()
    for conv in train:
        for text in conv.texts("assistant"):
            toks = ["<s>", *words(text), "</s>"]
            unigrams.update(toks)
            bigrams.update(zip(toks, toks[1:]))
            contexts.update(toks[:-1])
    total, n, size = 0.0, 0, sum(unigrams.values())
    for conv in test:
        for text in conv.texts("assistant"):
            toks = ["<s>", *words(text), "</s>"]
            for a, b in zip(toks, toks[1:]):
                p_bigram = bigrams[(a, b)] / contexts[a] if contexts[a] else 0.0
                total -= np.log(0.8 * p_bigram + 0.2 * (unigrams[b] + 1) / (size + vocab_size))
                n += 1
    return total / n


def test_persona_model_beats_global_model(dataset: list[Conversation], split) -> None:
    """Proxy for 'a persona adapter lowers held-out loss more than a global one' with a bigram LM of assistant text."""
    train, heldout = split
    vocab_size = len({w for c in dataset for t in c.texts("assistant") for w in words(t)}) + 2
    for persona in PERSONAS:
        test = [c for c in heldout if c.persona == persona]
        global_loss = bigram_cross_entropy(train, test, vocab_size)
        persona_loss = bigram_cross_entropy(
            [c for c in train if c.persona == persona], test, vocab_size
        )
        # measured: 15-23% lower
        assert persona_loss < 0.9 * global_loss, (
            persona,
            global_loss,
            persona_loss,
        )


# ------------------------------------------------------------------------ not memorizable


def test_heldout_answers_never_appear_verbatim_in_train(split) -> None:
    train, heldout = split
    seen = {t for c in train for t in c.texts("assistant")}
    assert not [t for c in heldout for t in c.texts("assistant") if t in seen]


def test_heldout_8gram_overlap_is_low(split) -> None:
    """Fraction of held-out assistant word 8-grams (occurrences) that also occur anywhere in training assistant text.

    Threshold 0.3: at most 30% of 8-word windows in held-out answers can be copied from training, so a model that
    memorized the training answers cannot predict most held-out text. Windows inside one template sentence recur by
    design (the grammar is finite); windows across randomized slots, choices and sentence boundaries do not. A
    template generator without this randomization measured 0.44 during development; measured now: 0.278 overall.
    """
    train, heldout = split
    seen = {g for c in train for t in c.texts("assistant") for g in ngrams(words(t))}
    overall, per_persona = [], defaultdict(list)
    for conv in heldout:
        for text in conv.texts("assistant"):
            hits = [g in seen for g in ngrams(words(text))]
            overall += hits
            per_persona[conv.persona] += hits
    assert np.mean(overall) < 0.3, np.mean(overall)
    for persona, hits in per_persona.items():
        assert np.mean(hits) < 0.35, (persona, np.mean(hits))  # measured: 0.17 (leadership) .. 0.30


def test_heldout_sentences_mostly_new(split) -> None:
    def sentences(text: str) -> list[str]:
        return [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if len(s.split()) >= 5]

    train, heldout = split
    seen = {s for c in train for t in c.texts("assistant") for s in sentences(t)}
    held = [s for c in heldout for t in c.texts("assistant") for s in sentences(t)]
    assert np.mean([s in seen for s in held]) < 0.3  # measured: 0.215


# ------------------------------------------------------------------------ user quirks


def test_user_quirks_are_consistent_and_individual(dataset: list[Conversation]) -> None:
    by_user: dict[str, list[Conversation]] = defaultdict(list)
    for conv in dataset:
        by_user[conv.user_id].append(conv)
    texts = {u: "\n".join(t.text for c in cs for t in c.turns) for u, cs in by_user.items()}
    vocab = {u: set(re.findall(r"\w+", text)) for u, text in texts.items()}
    first_names = {u: cs[0].profile["name"].split()[0] for u, cs in by_user.items()}
    assert len(set(first_names.values())) == len(by_user)
    for user, convs in by_user.items():
        profile = convs[0].profile
        assert all(c.profile == profile for c in convs)
        name, sign_off = first_names[user], str(profile["sign_off"])
        for conv in convs:
            assert conv.texts("assistant")[0].startswith(f"{profile['greeting']} {name}")
            assert all(t.endswith("\n" + sign_off) for t in conv.texts("user"))
            assert all(
                t.endswith(str(profile["assistant_closing"])) for t in conv.texts("assistant")
            )
        assert any(str(profile["device"]) in assistant_text(c) for c in convs), user
        for other, text in texts.items():
            if other != user:
                assert name not in vocab[other], (name, other)
                assert sign_off not in text, (sign_off, other)


def test_detail_preference_changes_answer_length(dataset: list[Conversation]) -> None:
    lengths = defaultdict(list)
    for conv in dataset:
        lengths[(conv.persona, conv.profile["detail"])].append(
            len(conv.texts("assistant")[0].split())
        )
    compared = [p for p in PERSONAS if (p, "brief") in lengths and (p, "detailed") in lengths]
    assert len(compared) >= 3
    for persona in compared:
        assert np.mean(lengths[(persona, "detailed")]) > np.mean(lengths[(persona, "brief")]), (
            persona
        )


def test_helper_names_never_clash_with_user_names() -> None:
    assert not set(HELPER_NAMES) & set(FIRST_NAMES)


def test_delegate_and_buddy_are_used(dataset: list[Conversation]) -> None:
    for persona, key in (("leadership", "delegate"), ("new_employee", "buddy")):
        convs = [c for c in dataset if c.persona == persona]
        rate = np.mean([str(c.profile[key]) in assistant_text(c) for c in convs])
        assert rate > 0.3, (persona, rate)


# ------------------------------------------------------------------------ grammar and CLI


def test_template_grammar() -> None:
    rng = random.Random(0)
    rules = {"x": ("a{y}", "b{y}"), "y": lambda r: "1"}
    outs = {expand("[p|q|]{x} \\[lit\\|{z}\\]", rng, rules, {"z": "Z"}) for _ in range(200)}
    assert outs == {f"{p}{x}1 [lit|Z]" for p in ("p", "q", "") for x in "ab"}
    assert {expand("[a[b|c]|d]", rng, {}, {}) for _ in range(200)} == {"ab", "ac", "d"}
    with pytest.raises(KeyError, match="nope"):
        expand("{nope}", rng, {}, {})
    with pytest.raises(ValueError):
        parse_template("[unclosed")


def test_every_template_parses() -> None:
    for spec in PERSONA_SPECS.values():
        templates = [t for rule in spec.rules.values() if isinstance(rule, tuple) for t in rule]
        for topic in spec.topics:
            templates += [*topic.ask, *topic.lead, *topic.symptom, *topic.extra, *topic.diag]
            templates += [s for group in topic.steps for s in group]
            if topic.match:
                assert len(topic.match) == len(topic.ask)
                assert all(0 <= i < len(topic.lead) for m in topic.match for i in m)
        for template in templates:
            parse_template(template)


def test_phrase_bank_errors_name_the_file_and_the_key() -> None:
    common_data = read_phrase_file("common.json")
    common = build_common(common_data)
    common_data["rules"]["clock"] = {"fn": "clok"}
    with pytest.raises(
        PhraseBankError,
        match=r"^phrases/common\.json: rules\.clock\.fn: unknown fn 'clok' \(known: ",
    ):
        build_common(common_data)

    persona = read_phrase_file("leadership.json")
    del persona["topics"][0]["lead"]
    missing = r"^phrases/leadership\.json: topics\[0\] \(board_av\): missing field 'lead'$"
    with pytest.raises(PhraseBankError, match=missing):
        build_persona("leadership", persona, common)

    persona = read_phrase_file("knowledge_worker.json")
    persona["topics"][1]["steps"][0][2] = "[unclosed {proj}"
    bad_template = r"knowledge_worker\.json: topics\[1\] \(\w+\)\.steps\[0\]\[2\]: bad template"
    with pytest.raises(PhraseBankError, match=bad_template):
        build_persona("knowledge_worker", persona, common)

    persona = read_phrase_file("admin_hr.json")
    persona["topics"][0]["fixed"] = {"sheet": {"rule": "no_such_rule"}}
    with pytest.raises(
        PhraseBankError,
        match=r"admin_hr\.json: topics\[0\] \(\w+\)\.fixed\.sheet\.rule: unknown rule",
    ):
        build_persona("admin_hr", persona, common)


def test_cli_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="fedpers")
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "syn.jsonl"
    argv = [
        "generate",
        "--users-per-persona",
        "2",
        "--conversations-per-user",
        "3",
        "--seed",
        "4",
        "--out",
        str(out),
    ]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert "wrote 30 conversations (10 users, 5 personas)" in capsys.readouterr().out
    expected = generate(SyntheticConfig(users_per_persona=2, conversations_per_user=3, seed=4))
    assert read_jsonl(out).conversations == expected
    bad = parser.parse_args(["generate", "--users-per-persona", "0", "--out", str(out)])
    assert bad.func(bad) == 2
