"""The recall benchmark's dataset (bench.recall_data): deterministic, big enough, and honest
about its evidence and paraphrases."""

from __future__ import annotations

from collections import Counter

import pytest

from bench.recall import Outcome, TurnMap, session_id_of, utterance
from bench.recall_data import KINDS, Dataset, build, content_words, shared_content, stem


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return build()


def test_the_same_seed_gives_the_same_dataset(dataset: Dataset) -> None:
    assert build().to_json() == dataset.to_json()
    assert build(seed=dataset.seed + 1).to_json() != dataset.to_json()


def test_size_floors(dataset: Dataset) -> None:
    assert len(dataset.conversations) >= 10
    for conversation in dataset.conversations:
        assert sum(len(s.turns) for s in conversation.sessions) >= 300
        assert len(conversation.sessions) >= 15
        dates = [s.date for s in conversation.sessions]
        assert dates == sorted(dates)
        assert {t.speaker for s in conversation.sessions for t in s.turns} == set(conversation.speakers)
    counts = Counter(q.kind for q in dataset.questions)
    assert len(dataset.questions) >= 500
    assert set(counts) == set(KINDS)
    assert counts["single-hop"] >= 200
    assert counts["multi-hop"] >= 100
    assert counts["temporal"] >= 100
    assert counts["open-domain"] >= 50


def test_evidence_points_at_turns(dataset: Dataset) -> None:
    for q in dataset.questions:
        conversation = dataset.conversations[q.conversation]
        assert q.evidence
        for session, turn in q.evidence:
            assert 0 <= session < len(conversation.sessions)
            assert 0 <= turn < len(conversation.sessions[session].turns)
        if q.kind == "multi-hop":
            assert len(set(q.evidence)) >= 2


def test_single_hop_questions_paraphrase_their_evidence(dataset: Dataset) -> None:
    single = [q for q in dataset.questions if q.kind == "single-hop"]
    for q in single:
        conversation = dataset.conversations[q.conversation]
        for session, turn in q.evidence:
            text = conversation.turn(session, turn).text
            assert not shared_content(q.question, text, conversation.speakers), (q.question, text)


def test_content_words_ignore_stopwords_names_and_inflection() -> None:
    assert [stem(w) for w in ("practicing", "plays", "studies", "boxes")] == ["practic", "play", "study", "box"]
    assert content_words("Which instrument does Maya play?", ("Maya",)) == {"instrument", "play"}
    assert shared_content("What does Maya play?", "Maya: I was playing all night", ("Maya",)) == {"play"}


def test_found_memories_map_back_to_turns_by_seq_or_text(dataset: Dataset) -> None:
    conversation = dataset.conversations[0]
    turns = TurnMap("r", conversation)
    sid = session_id_of("r", conversation, 2)
    texts = [utterance(t.speaker, t.text) for t in conversation.sessions[2].turns]
    unique = next(j for j, text in enumerate(texts) if texts.count(text) == 1)
    assert turns.turn(sid, 5, "anything") == (2, 4)
    assert turns.turn(sid, 0, texts[unique]) == (2, unique)
    assert turns.turn(sid, 0, " tok tok") is None
    assert turns.turn("elsewhere", 5, "anything") is None
    assert turns.turn(sid, 5, " tok tok", role="assistant") is None
    q = next(q for q in dataset.questions if q.kind == "multi-hop")
    outcome = Outcome(q, [None, *q.evidence[:1], *[(0, 0)] * 5, *q.evidence[1:]], 0.01)
    assert outcome.hit(5)
    assert not outcome.all_found(5)
    assert outcome.all_found(len(q.evidence) + 10)
