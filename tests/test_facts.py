"""course_lib.facts: made-up names, capital facts and topic documents, seeded."""

import numpy as np
import pytest

from course_lib import facts as F


def test_random_name_pattern():
    rng = np.random.default_rng(0)
    name = F.random_name(rng, "CVCVC")
    assert len(name) == 5 and name[0].isupper()
    assert name[1] in F.VOWELS and name[2] in F.CONSONANTS
    with pytest.raises(ValueError, match="pattern"):
        F.random_name(rng, "CXV")


def test_capital_facts_distinct_and_seeded():
    facts = F.capital_facts(300, seed=5)
    names = [n for pair in facts for n in pair]
    assert len(set(names)) == 600  # every country and capital distinct
    assert all(len(c) == 5 for c, _ in facts)  # questions of one length
    assert F.capital_facts(300, seed=5) == facts
    assert F.capital_facts(300, seed=6) != facts
    with pytest.raises(ValueError, match="between 1"):
        F.capital_facts(0)


def test_topic_documents():
    docs = F.topic_documents(50, seed=1)
    for sents, topic in docs:
        assert len(sents) == 6 and max(len(s) for s in sents) <= 33
        # The topic sentence names the country, its capital and its ruler: 3 capitalised
        # names; no other sentence names more than one of them.
        words = [set(w.strip(".,") for w in s.split()) for s in sents]
        counts = [len(w & words[topic]) for w in words]
        assert counts[topic] == max(counts)
    positions = [topic for _, topic in docs]
    assert len(set(positions)) > 3  # the topic sentence is not always in one place
    assert F.topic_documents(50, seed=1) == docs
    with pytest.raises(ValueError, match="templates"):
        F.topic_documents(1, n_support=99)
