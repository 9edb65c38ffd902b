"""A long-term memory recall dataset, built from `bench.recall_lexicon` with a seeded RNG: long
conversations between two people over many dated sessions (small talk, personal facts among
it, similar facts about other people, facts that change) and questions with the turns that
answer them. Four kinds of question:

- single-hop: one fact, asked in other words (no content word in common with its turns);
- multi-hop: needs two turns or more, often sessions apart (a relative's news says only a
  name, another turn says who that is);
- temporal: when something happened, or which came first (the answer derives from the
  session dates);
- open-domain: an inference beyond what was said ("would she enjoy a concert?").

    python -m bench.recall_data [--out FILE] [--seed N]    # writes JSON, prints the counts
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import recall_lexicon as lex

KINDS = ("single-hop", "multi-hop", "temporal", "open-domain")
CONVERSATIONS = 12
SEED = 20

# --- the dataset ---------------------------------------------------------------------------


@dataclass
class Turn:
    speaker: str
    text: str


@dataclass
class Session:
    date: str  # ISO date and time the session took place
    turns: list[Turn] = field(default_factory=list)


@dataclass
class Conversation:
    id: str
    speakers: tuple[str, str]
    sessions: list[Session]

    def turn(self, session: int, turn: int) -> Turn:
        return self.sessions[session].turns[turn]


@dataclass
class Question:
    conversation: int  # index in Dataset.conversations
    kind: str
    question: str
    evidence: list[tuple[int, int]]  # (session index, turn index), both 0-based
    answer: str
    topic: str = ""


@dataclass
class Dataset:
    seed: int
    conversations: list[Conversation]
    questions: list[Question]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- the paraphrase check ------------------------------------------------------------------

_STOPWORDS = """a about after again all also am an and any are as at be been before being but by can could did do does
    doing done for from had has have having he her hers him his how i if in into is it its just me my no not now
    of on or our out over own she so some such than that the their them then there these they this those to too
    up us very was we were what when where which while who whom whose why will with would you your yours ll re ve
    s t d m"""
STOPWORDS = frozenset(_STOPWORDS.split())


def stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:-1] + "y" if word.endswith("i") else word


def content_words(text: str, names: tuple[str, ...] = ()) -> set[str]:
    """Stemmed words that carry meaning: stopwords and the given names aside."""
    skip = {n.lower() for n in names}
    return {stem(w) for w in re.findall(r"[a-z]+", text.lower()) if w not in STOPWORDS and w not in skip}


def shared_content(question: str, evidence: str, names: tuple[str, ...]) -> set[str]:
    return content_words(question, names) & content_words(evidence, names)


# --- building one conversation -------------------------------------------------------------

_WHEN = (("yesterday", -1), ("this morning", 0), ("two days ago", -2), ("last weekend", None), ("last week", None))


def _article(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def _day(date: dt.date) -> str:
    return f"{date.day} {date:%B %Y}"


def _when_answer(phrase: str, offset: int | None, date: dt.datetime) -> str:
    if offset is not None:
        return _day((date + dt.timedelta(days=offset)).date())
    return f"the {phrase.split()[1]} before {_day(date.date())}"


@dataclass
class _Said:
    """A turn to place: who says it, its text, and the key questions refer to it by."""

    speaker: int
    text: str
    key: str = ""
    prompt: bool = False  # hands the word to the other speaker


@dataclass
class _Plan:
    """What each session will hold, as blocks of turns, before it is laid out."""

    sessions: int
    blocks: list[list[list[_Said]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.blocks = [[] for _ in range(self.sessions)]

    def add(self, session: int, block: list[_Said]) -> None:
        self.blocks[session].append(block)


@dataclass
class _Pending:
    """A question whose evidence is still keys (their turns are placed later)."""

    kind: str
    question: str
    keys: list[str]
    answer: str
    topic: str


class _Builder:
    def __init__(self, rng: random.Random, index: int) -> None:
        self.rng = rng
        self.index = index
        self.speakers: tuple[str, str] = tuple(rng.sample(lex.SPEAKER_NAMES, 2))  # type: ignore[assignment]
        sessions = rng.randint(18, 24)
        self.plan = _Plan(sessions)
        day = dt.date(2022, 1, 1) + dt.timedelta(days=rng.randrange(540))
        self.dates = []
        for _ in range(sessions):
            day += dt.timedelta(days=rng.randint(3, 21))
            self.dates.append(dt.datetime(day.year, day.month, day.day, rng.randint(8, 22), rng.randrange(60)))
        self.questions: list[_Pending] = []
        self.used_names = set(self.speakers)
        self.keys = 0

    # -- helpers --
    def key(self) -> str:
        self.keys += 1
        return f"k{self.keys}"

    def reaction(self, speaker: int) -> _Said:
        text = self.rng.choice(lex.REACTIONS)
        if self.rng.random() < 0.5:
            text += ("" if text[-1] in "!?." else ".") + self.rng.choice(lex.REACTION_TAILS)
        return _Said(speaker, text)

    def fact(self, session: int, owner: int, text: str, prompt: bool = True) -> str:
        """Places a fact turn with the listener's reaction (and sometimes a prompt before it)."""
        key = self.key()
        block = (
            [_Said(1 - owner, self.rng.choice(lex.PROMPTS), prompt=True)] if prompt and self.rng.random() < 0.35 else []
        )
        block += [_Said(owner, text, key), self.reaction(1 - owner)]
        self.plan.add(session, block)
        return key

    def when(self) -> tuple[str, int | None]:
        return self.rng.choice(_WHEN)

    def sessions_after(self, first: int, count: int) -> list[int]:
        later = list(range(first + 1, self.plan.sessions))
        return sorted(self.rng.sample(later, min(count, len(later))))

    def fresh_name(self, pool: tuple[str, ...]) -> str:
        name = self.rng.choice([n for n in pool if n not in self.used_names])
        self.used_names.add(name)
        return name

    # -- personal traits --
    def traits(self) -> None:
        chosen: dict[str, list[str]] = {}
        events: list[list[tuple[str, str, str]]] = [[], []]  # per speaker: (doing, key, date answer)
        hobbies: list[list[tuple[str, str]]] = [[], []]  # per speaker: (key, value)
        for owner in (0, 1):
            name = self.speakers[owner]
            traits = self.rng.sample(lex.TRAITS, self.rng.randint(9, 11))
            opens = 0
            for trait in traits:
                value = self.rng.choice([v for v in trait.values if v not in chosen.get(trait.category, [])])
                chosen.setdefault(trait.category, []).append(value)
                fill = {"v": value, "a_v": _article(value), "name": name}
                if trait.category == "pet":
                    fill["p"] = self.fresh_name(lex.PET_NAMES)
                if trait.category == "partner":
                    fill["p"] = self.fresh_name(lex.PARTNER_NAMES["f" if value in lex.FEMININE else "m"])
                first = self.rng.randrange(0, self.plan.sessions - 4)
                keys: list[str] = []
                when_key, when_answer = "", ""
                if trait.debut:
                    phrase, offset = self.when()
                    text = self.rng.choice(trait.debut).format(**fill, when=phrase)
                    when_key = self.fact(first, owner, text)
                    when_answer = _when_answer(phrase, offset, self.dates[first])
                    keys.append(when_key)
                mentions = self.rng.sample(trait.mentions, min(len(trait.mentions), self.rng.randint(1, 3)))
                if not trait.debut:
                    keys.append(self.fact(first, owner, mentions.pop().format(**fill)))
                for session, template in zip(self.sessions_after(first, len(mentions)), mentions, strict=False):
                    keys.append(self.fact(session, owner, template.format(**fill)))
                    if trait.follow_ups and self.rng.random() < 0.5:
                        self.follow_up(trait, owner, session)
                self.aside(trait, chosen[trait.category], owner)
                career = trait.category == "profession" and self.rng.random() < 0.6
                if not (career and self.career_change(trait, owner, fill, keys, first)):
                    question = trait.question.format(**fill)
                    self.ask("single-hop", question, keys, trait.answer.format(**fill), trait.category)
                if when_key and trait.event:
                    vague = trait.vague_event and self.rng.random() < 0.5
                    event = (trait.vague_event if vague else trait.event).format(**fill)
                    self.ask("temporal", f"When did {name} {event}?", [when_key], when_answer, trait.category)
                    events[owner].append((trait.doing.format(**fill), when_key, when_answer))
                if trait.category in ("instrument", "pastime", "exercise"):
                    hobbies[owner].append((keys[0], value))
                opened = trait.open.get(value) or trait.open.get("*")
                if opened and opens < 3 and self.rng.random() < 0.6 and not career:
                    opens += 1
                    self.ask("open-domain", opened[0].format(**fill), keys, opened[1].format(**fill), trait.category)
        for owner in (0, 1):
            self.order_questions(owner, events[owner])
            if len(hobbies[owner]) >= 2:
                question = f"What activities keep {self.speakers[owner]} busy outside of work?"
                keys, values = [k for k, _ in hobbies[owner]], ", ".join(v for _, v in hobbies[owner])
                self.ask("multi-hop", question, keys, values, "activities")

    def follow_up(self, trait: lex.Trait, owner: int, after: int) -> None:
        later = self.sessions_after(after, 1)
        if later:
            ask = _Said(1 - owner, self.rng.choice(trait.follow_ups))
            self.plan.add(later[0], [ask, _Said(owner, self.rng.choice(lex.ANSWERS_TO_FOLLOW_UPS))])

    def aside(self, trait: lex.Trait, taken: list[str], owner: int) -> None:
        others = [v for v in trait.values if v not in taken]
        if not trait.asides or not others or self.rng.random() < 0.4:
            return
        value = self.rng.choice(others)
        speaker = self.rng.choice((0, 1))
        text = self.rng.choice(trait.asides).format(v=value, a_v=_article(value))
        self.plan.add(self.rng.randrange(self.plan.sessions), [_Said(speaker, text), self.reaction(1 - speaker)])

    def career_change(self, trait: lex.Trait, owner: int, fill: dict[str, str], keys: list[str], first: int) -> bool:
        """The job changes in a later session: the earlier turns become distractors of the
        current job, and evidence of the former one."""
        name = self.speakers[owner]
        last = max(first, *(self.session_of.get(k, first) for k in keys))
        later = self.sessions_after(last, 3)
        if not later:
            return False
        new = self.rng.choice([v for v in trait.values if v != fill["v"]])
        phrase, offset = self.when()
        change = self.fact(later[0], owner, self.rng.choice(lex.CAREER_CHANGES).format(a_v=_article(new), when=phrase))
        new_keys = [change]
        for session, template in zip(later[1:], self.rng.sample(trait.mentions, 2), strict=False):
            new_keys.append(self.fact(session, owner, template.format(v=new, a_v=_article(new))))
        self.ask("single-hop", f"What is {name}'s profession now?", new_keys, _article(new), "profession")
        self.ask("multi-hop", f"What did {name} do before switching careers?", [keys[0], change], fill["a_v"],
                 "profession")  # fmt: skip
        answer = _when_answer(phrase, offset, self.dates[later[0]])
        self.ask("temporal", f"When did {name} leave the {fill['v']} job?", [change], answer, "profession")
        return True

    @property
    def session_of(self) -> dict[str, int]:
        return {said.key: s for s, blocks in enumerate(self.plan.blocks) for b in blocks for said in b if said.key}

    def order_questions(self, owner: int, events: list[tuple[str, str, str]]) -> None:
        name = self.speakers[owner]
        where = self.session_of
        pairs = [(a, b) for i, a in enumerate(events) for b in events[i + 1 :] if where[a[1]] != where[b[1]]]
        for a, b in self.rng.sample(pairs, min(2, len(pairs))):
            earlier = a if where[a[1]] < where[b[1]] else b
            question = f"Which came first for {name}: {a[0]}, or {b[0]}?"
            self.ask("temporal", question, [a[1], b[1]], f"{earlier[0]} ({earlier[2]})", "order")

    # -- relatives --
    def relatives(self) -> None:
        news_left = list(lex.RELATIVE_NEWS)
        for owner in (0, 1):
            name = self.speakers[owner]
            for relation, gender in self.rng.sample(lex.RELATIONS, 3):
                x = self.fresh_name(lex.RELATIVE_NAMES[gender])
                pron, obj, pos = lex.PRONOUNS[gender]
                fill = {"x": x, "rel": relation, "pron": pron, "obj": obj, "pos": pos, "name": name}
                first = self.rng.randrange(0, self.plan.sessions - 6)
                intro = self.fact(first, owner, self.rng.choice(lex.RELATIVE_INTROS).format(**fill))
                if not news_left:
                    news_left = list(lex.RELATIVE_NEWS)
                picked = self.rng.sample(news_left, min(len(news_left), self.rng.randint(1, 2)))
                for session, news in zip(self.sessions_after(first + 1, len(picked)), picked, strict=False):
                    news_left.remove(news)
                    extra = {k: self.rng.choice(v) for k, v in news.choices.items()}
                    phrase, offset = self.when()
                    filled = {**fill, **extra, "when": phrase}
                    told = self.fact(session, owner, news.text.format(**filled))
                    answer = news.answer.format(**filled)
                    self.ask("multi-hop", news.question.format(**filled), [intro, told], answer, "relative")
                    if "{when}" in news.text and news.event:
                        question = f"When did {name}'s {relation} {news.event.format(**filled)}?"
                        date_answer = _when_answer(phrase, offset, self.dates[session])
                        self.ask("temporal", question, [intro, told], date_answer, "relative")

    # -- questions and layout --
    def ask(self, kind: str, question: str, keys: list[str], answer: str, topic: str) -> None:
        self.questions.append(_Pending(kind, question, list(keys), answer, topic))

    def small_talk(self, used: set[str], session: int, speaker: int) -> list[_Said]:
        """An exchange of small talk opened by `speaker`; `used` keeps a conversation from
        repeating itself."""
        rng = self.rng
        choice = rng.random()
        fresh = [pair for pair in lex.SMALL_TALK if pair[0] not in used]
        if choice < 0.45 and fresh:
            opener, reply = rng.choice(fresh)
            used.add(opener)
            return [_Said(speaker, opener), _Said(1 - speaker, reply)]
        back = [pair for pair in lex.BACK_REFERENCES if f"{session}:{pair[0]}" not in used]
        if choice >= 0.85 and session > 0 and back:
            line, reply = rng.choice(back)
            used.add(f"{session}:{line}")
            return [_Said(speaker, line), _Said(1 - speaker, reply)]
        line = rng.choice(lex.OUTING_LINES).format(place=rng.choice(lex.OUTINGS), adj=rng.choice(lex.OUTING_ADJECTIVES))
        return [_Said(speaker, line), _Said(1 - speaker, rng.choice(lex.OUTING_REPLIES))]

    def layout(self) -> tuple[list[Session], dict[str, tuple[int, int]]]:
        sessions: list[Session] = []
        where: dict[str, tuple[int, int]] = {}
        used: set[str] = set()
        for index, blocks in enumerate(self.plan.blocks):
            rng = self.rng
            rng.shuffle(blocks)
            target = rng.randint(14, 22)
            filler = max(1, (target - 4 - sum(len(b) for b in blocks)) // 2)
            slots: list[list[_Said] | None] = list(blocks)
            for _ in range(filler):
                slots.insert(rng.randint(0, len(slots)), None)  # small talk, made once its speaker is known
            opener = rng.choice((0, 1))
            other = self.speakers[1 - opener]
            said = [_Said(opener, rng.choice(lex.GREETINGS).format(other=other)),
                    _Said(1 - opener, rng.choice(lex.GREETING_REPLIES))]  # fmt: skip
            for slot in slots:
                last = said[-1].speaker
                if slot is None:
                    said += self.small_talk(used, index, 1 - last)
                    continue
                if slot[0].speaker == last and slot[0].prompt:
                    slot = slot[1:]  # the word is already with the other speaker
                elif slot[0].speaker == last:  # the listener hands the word over
                    said.append(_Said(1 - last, rng.choice(lex.PROMPTS)))
                said += slot
            closer = 1 - said[-1].speaker
            said += [_Said(closer, rng.choice(lex.CLOSINGS)), _Said(1 - closer, rng.choice(lex.CLOSING_REPLIES))]
            turns: list[Turn] = []
            last = -1
            for s in said:
                if s.speaker == last:  # people take turns: the listener nods in between
                    turns.append(Turn(self.speakers[1 - s.speaker], rng.choice(lex.BACKCHANNELS)))
                if s.key:
                    where[s.key] = (index, len(turns))
                turns.append(Turn(self.speakers[s.speaker], s.text))
                last = s.speaker
            sessions.append(Session(self.dates[index].isoformat(timespec="minutes"), turns))
        return sessions, where


def _conversation(seed: int, index: int) -> tuple[Conversation, list[Question]]:
    builder = _Builder(random.Random(f"recall-{seed}-{index}"), index)
    builder.traits()
    builder.relatives()
    sessions, where = builder.layout()
    conversation = Conversation(f"conv-{index:02d}", builder.speakers, sessions)
    questions = []
    for pending in builder.questions:
        evidence = sorted({where[k] for k in pending.keys})
        questions.append(Question(index, pending.kind, pending.question, evidence, pending.answer, pending.topic))
    return conversation, questions


def build(seed: int = SEED, conversations: int = CONVERSATIONS) -> Dataset:
    """The dataset for `seed`: the same seed gives the same dataset, turn for turn."""
    convs, questions = [], []
    for index in range(conversations):
        conversation, asked = _conversation(seed, index)
        convs.append(conversation)
        questions += asked
    dataset = Dataset(seed, convs, questions)
    check(dataset)
    return dataset


def check(dataset: Dataset) -> None:
    """What the dataset promises: evidence points at turns, multi-hop needs two of them, and
    a single-hop question shares no content word with its evidence."""
    for q in dataset.questions:
        conversation = dataset.conversations[q.conversation]
        assert q.kind in KINDS, q.kind
        assert q.evidence, q.question
        for session, turn in q.evidence:
            assert 0 <= session < len(conversation.sessions), q.question
            assert 0 <= turn < len(conversation.sessions[session].turns), q.question
        if q.kind == "multi-hop":
            assert len(q.evidence) >= 2, q.question
        if q.kind == "single-hop":
            for session, turn in q.evidence:
                text = conversation.turn(session, turn).text
                shared = shared_content(q.question, text, conversation.speakers)
                assert not shared, f"{q.question!r} shares {shared} with {text!r}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--conversations", type=int, default=CONVERSATIONS)
    parser.add_argument("--out", type=Path, default=Path("bench-results/recall-dataset.json"))
    args = parser.parse_args()
    dataset = build(args.seed, args.conversations)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dataset.to_json(), indent=1))
    turns = [sum(len(s.turns) for s in c.sessions) for c in dataset.conversations]
    sessions = [len(c.sessions) for c in dataset.conversations]
    print(f"{len(dataset.conversations)} conversations, {sum(turns)} turns ({min(turns)}-{max(turns)} each), "
          f"{min(sessions)}-{max(sessions)} sessions each")  # fmt: skip
    counts = Counter(q.kind for q in dataset.questions)
    for kind in KINDS:
        print(f"  {kind:12} {counts[kind]:4d}")
    print(f"  {'all':12} {len(dataset.questions):4d}  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
