"""Made-up facts whose truth the course controls, for notebook 06b: pronounceable names,
(country, capital) pairs for closed-book question answering, and short documents about made-up
countries whose one-sentence summary is known.

Every generator is seeded: the same seed gives the same names, facts and documents.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CONSONANTS = "bcdfghklmnprstvz"
VOWELS = "aeiou"


def random_name(rng: np.random.Generator, pattern: str) -> str:
    """A pronounceable made-up name: C = a consonant, V = a vowel, e.g. 'CVCVC' -> 'Velor'."""
    if not pattern or set(pattern) - {"C", "V"}:
        raise ValueError(f"random_name: pattern must be a non-empty string of C and V, got "
                         f"{pattern!r}.")
    letters = [rng.choice(list(CONSONANTS if p == "C" else VOWELS)) for p in pattern]
    return "".join(letters).capitalize()


def unique_names(n: int, rng: np.random.Generator, patterns: Sequence[str],
                 taken: set[str]) -> list[str]:
    """n distinct names not in ``taken`` (which is updated), each from a random pattern."""
    names: list[str] = []
    for _ in range(100 * n + 1000):
        if len(names) == n:
            return names
        name = random_name(rng, patterns[rng.integers(len(patterns))])
        if name not in taken:
            taken.add(name)
            names.append(name)
    raise ValueError(f"unique_names: could not find {n} new names with patterns {patterns}; "
                     "use longer patterns.")


def capital_facts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n made-up (country, capital) pairs; every name distinct.

    Country names all have five letters (pattern CVCVC), so every question built from a fixed
    template has the same length; capitals vary in length. The same seed gives the same facts.
    """
    if not 1 <= n <= 10_000:
        raise ValueError(f"capital_facts: n must be between 1 and 10,000, got {n}.")
    rng = np.random.default_rng(seed)
    taken: set[str] = set()
    countries = unique_names(n, rng, ["CVCVC"], taken)
    capitals = unique_names(n, rng, ["CVCV", "CVCCV", "CVCVCV", "CVCCVC"], taken)
    return list(zip(countries, capitals))


# Templates of the synthetic "documents" for extractive summarisation: each document is about one
# made-up country X, with its capital K and its ruler N. The topic sentence names all three; each
# supporting sentence names one; the distractors are about another country Y, or about nothing.
TOPIC_TEMPLATES = ("{N} rules {X} from {K}.", "{X} is ruled by {N} in {K}.",
                   "{N} of {X} lives in {K}.")
SUPPORT_TEMPLATES = ("{X} keeps many sheep.", "Snow falls early in {X}.",
                     "Markets open early in {K}.", "Bells ring over {K}.",
                     "{N} was crowned young.", "They say {N} never sleeps.")
OTHER_TEMPLATES = ("{Y} trades in silk.", "Nobody in {Y} saw the sea.", "It rained all year.",
                   "The harvest was good.")


def topic_documents(n: int, seed: int = 0, n_support: int = 3,
                    n_other: int = 2) -> list[tuple[list[str], int]]:
    """n synthetic documents with a known one-sentence summary.

    Each document has 1 + n_support + n_other sentences in random order: the topic sentence
    (it names the country, its capital and its ruler), n_support sentences that each name one
    of them, and n_other distractors. Returns a list of (sentences, index of the topic
    sentence). Every sentence is at most 33 characters long.
    """
    if not (0 <= n_support <= len(SUPPORT_TEMPLATES) and 0 <= n_other <= len(OTHER_TEMPLATES)):
        raise ValueError(f"topic_documents: n_support <= {len(SUPPORT_TEMPLATES)} and n_other <= "
                         f"{len(OTHER_TEMPLATES)} (the number of templates of each kind).")
    rng = np.random.default_rng(seed)
    taken: set[str] = set()
    docs = []
    for _ in range(n):
        X, Y = unique_names(2, rng, ["CVCVC"], taken)
        K, N = unique_names(2, rng, ["CVCV", "CVCCV", "CVCVC"], taken)
        names = {"X": X, "Y": Y, "K": K, "N": N}
        sents = [TOPIC_TEMPLATES[rng.integers(len(TOPIC_TEMPLATES))].format(**names)]
        for templates, m in ((SUPPORT_TEMPLATES, n_support), (OTHER_TEMPLATES, n_other)):
            sents += [templates[j].format(**names)
                      for j in rng.choice(len(templates), m, replace=False)]
        order = rng.permutation(len(sents))  # order[i]: which sentence goes to place i
        docs.append(([sents[j] for j in order], int(np.argmin(order))))
    return docs
