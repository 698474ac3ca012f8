"""A seeded synthetic language pair whose translation needs reordering and long-range agreement.

The source is English-like: subject-verb-object, adjectives before the noun, number marked on the
noun, optional relative clause on the subject. The target is verb-final with adjectives after the
noun, and every noun has a lexical gender that the source never shows. Determiners agree with the
noun in definiteness, case, gender and number, adjectives in gender and number, and each verb with
its subject's gender and number. So the main verb, the last word of the clause, agrees with a noun
that stands at the start of the sentence, past the relative clause and the whole object:

    source:  the big dog that sees a cat chases the small birds quickly
    target:  DET(def,nom,g,sg) DOG BIG-g REL(g,sg) DET(indef,acc,g',sg) CAT SEE-(g,sg)
             DET(def,acc,g'',pl) BIRD-pl SMALL-g''pl CHASE-(g,sg) QUICKLY

The lexicons are invented words drawn from the seed, so a language pair is fixed by its seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

GENDERS, NUMBERS, CASES = 3, ("sg", "pl"), ("nom", "acc")


def _word(rng: random.Random, onsets: str, vowels: str, syllables: tuple[int, int], taken: set[str]) -> str:
    while True:
        n = rng.randint(*syllables)
        w = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(n))
        if w not in taken:
            taken.add(w)
            return w


@dataclass
class Lexicon:
    nouns: list[tuple[str, str, int]]  # (source, target stem, gender)
    adjectives: list[tuple[str, str]]
    verbs: list[tuple[str, str]]
    adverbs: list[tuple[str, str]]
    determiners: dict[tuple[bool, str, int, str], str]  # (definite, case, gender, number) -> word
    relatives: dict[tuple[int, str], str]  # (gender, number) -> word
    noun_plural: dict[int, str]  # gender -> suffix
    adjective_suffix: dict[tuple[int, str], str]
    verb_suffix: dict[tuple[int, str], str]


def make_lexicon(rng: random.Random, nouns: int = 60, adjectives: int = 30, verbs: int = 40, adverbs: int = 15) -> Lexicon:
    src_taken, tgt_taken = {"the", "a", "that", "s"}, set()
    src = lambda: _word(rng, "bdgklmnprst", "aeiou", (1, 3), src_taken)  # noqa: E731
    tgt = lambda: _word(rng, "fhjvwzcx", "aeiouy", (1, 3), tgt_taken)  # noqa: E731
    suffix = lambda: _word(rng, "lmnrst", "aeo", (1, 1), tgt_taken)  # noqa: E731
    return Lexicon(
        nouns=[(src(), tgt(), rng.randrange(GENDERS)) for _ in range(nouns)],
        adjectives=[(src(), tgt()) for _ in range(adjectives)],
        verbs=[(src(), tgt()) for _ in range(verbs)],
        adverbs=[(src(), tgt()) for _ in range(adverbs)],
        determiners={(d, c, g, n): tgt() for d in (True, False) for c in CASES for g in range(GENDERS) for n in NUMBERS},
        relatives={(g, n): tgt() for g in range(GENDERS) for n in NUMBERS},
        noun_plural={g: suffix() for g in range(GENDERS)},
        adjective_suffix={(g, n): suffix() for g in range(GENDERS) for n in NUMBERS},
        verb_suffix={(g, n): suffix() for g in range(GENDERS) for n in NUMBERS},
    )


class Generator:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.lex = make_lexicon(self.rng)

    def noun_phrase(self, case: str, max_adjectives: int = 2):
        """Returns (source words, target words, gender, number)."""
        rng, lex = self.rng, self.lex
        noun_src, noun_tgt, gender = rng.choice(lex.nouns)
        number = rng.choice(NUMBERS)
        definite = number == "pl" or rng.random() < 0.6  # "a" has no plural
        adjectives = [rng.choice(lex.adjectives) for _ in range(rng.randint(0, max_adjectives))]
        src = ["the" if definite else "a"] + [a for a, _ in adjectives] + [noun_src + (" s" if number == "pl" else "")]
        tgt = [lex.determiners[(definite, case, gender, number)],
               noun_tgt + (lex.noun_plural[gender] if number == "pl" else "")]
        tgt += [a + lex.adjective_suffix[(gender, number)] for _, a in reversed(adjectives)]  # mirrored order
        return src, tgt, gender, number

    def verb(self, gender: int, number: str):
        src, tgt = self.rng.choice(self.lex.verbs)
        return src, tgt + self.lex.verb_suffix[(gender, number)]

    def sentence(self) -> tuple[str, str]:
        rng, lex = self.rng, self.lex
        subj_src, subj_tgt, gender, number = self.noun_phrase("nom")
        if rng.random() < 0.4:  # relative clause on the subject: "that VERB NP"
            rel_obj_src, rel_obj_tgt, _, _ = self.noun_phrase("acc", max_adjectives=1)
            rel_src, rel_tgt = self.verb(gender, number)
            subj_src = subj_src + ["that", rel_src] + rel_obj_src
            subj_tgt = subj_tgt + [lex.relatives[(gender, number)]] + rel_obj_tgt + [rel_tgt]
        obj_src, obj_tgt, _, _ = self.noun_phrase("acc")
        verb_src, verb_tgt = self.verb(gender, number)
        src, tgt = subj_src + [verb_src] + obj_src, subj_tgt + obj_tgt + [verb_tgt]
        if rng.random() < 0.3:
            adv_src, adv_tgt = rng.choice(lex.adverbs)
            src, tgt = src + [adv_src], tgt + [adv_tgt]
        return " ".join(src), " ".join(tgt)


def generate_splits(seed: int, sizes: dict[str, int]) -> dict[str, list[tuple[str, str]]]:
    """Distinct sentence pairs, split so that no source sentence occurs in two splits."""
    gen, pairs, seen = Generator(seed), [], set()
    total = sum(sizes.values())
    attempts = 0
    while len(pairs) < total:
        attempts += 1
        if attempts > 50 * total:
            raise ValueError(f"cannot draw {total} distinct sentences from this grammar; ask for fewer")
        src, tgt = gen.sentence()
        if src not in seen:
            seen.add(src)
            pairs.append((src, tgt))
    splits, start = {}, 0
    for name, n in sizes.items():
        splits[name] = pairs[start:start + n]
        start += n
    return splits
