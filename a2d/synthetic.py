"""A seeded synthetic language pair whose translation needs reordering and long-range agreement.

The source is English-like: subject-verb-object, adjectives before the noun, number marked on the
noun, relative clauses on subjects and objects. The target is verb-final, adjectives follow the noun
in mirrored order, and every noun has a lexical gender that the source never shows. Determiners
agree with their noun in definiteness, case, gender and number, adjectives in gender and number,
and each verb with its own subject. Which noun that is depends on structure the source shows only
by word order: in "the dog that sees a cat" the relative verb agrees with the dog, in "the dog that
a cat sees" with the cat. The main verb, last in the target, agrees with a subject at the start of
the sentence, past relative clauses and the whole object:

    source:  the big dog that a cat sees chases the small birds quickly
    target:  DET(def,nom,g,sg) DOG BIG-g REL(acc,g,sg) DET(indef,nom,g',sg) CAT SEE-(g',sg)
             DET(def,acc,g'',pl) BIRD-pl SMALL-g''pl CHASE-(g,sg) QUICKLY

The lexicons are invented words drawn from the seed, so a language pair is fixed by its seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

GENDERS, NUMBERS, CASES = 3, ("sg", "pl"), ("nom", "acc")
ADJECTIVE_COUNT_WEIGHTS = (4, 3, 2, 1)  # 0, 1, 2, 3 adjectives before a noun


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
    relatives: dict[tuple[str, int, str], str]  # (case, gender, number) -> word
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
        relatives={(c, g, n): tgt() for c in CASES for g in range(GENDERS) for n in NUMBERS},
        noun_plural={g: suffix() for g in range(GENDERS)},
        adjective_suffix={(g, n): suffix() for g in range(GENDERS) for n in NUMBERS},
        verb_suffix={(g, n): suffix() for g in range(GENDERS) for n in NUMBERS},
    )


class Generator:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.lex = make_lexicon(self.rng)

    def noun_phrase(self, case: str, max_adjectives: int = 3):
        """A determiner, adjectives and a noun: (source words, target words, gender, number)."""
        rng, lex = self.rng, self.lex
        noun_src, noun_tgt, gender = rng.choice(lex.nouns)
        number = rng.choice(NUMBERS)
        definite = number == "pl" or rng.random() < 0.6  # "a" has no plural
        count = rng.choices(range(max_adjectives + 1), weights=ADJECTIVE_COUNT_WEIGHTS[:max_adjectives + 1])[0]
        adjectives = [rng.choice(lex.adjectives) for _ in range(count)]
        src = ["the" if definite else "a"] + [a for a, _ in adjectives] + [noun_src + (" s" if number == "pl" else "")]
        tgt = [lex.determiners[(definite, case, gender, number)],
               noun_tgt + (lex.noun_plural[gender] if number == "pl" else "")]
        tgt += [a + lex.adjective_suffix[(gender, number)] for _, a in reversed(adjectives)]  # mirrored order
        return src, tgt, gender, number

    def verb(self, gender: int, number: str):
        src, tgt = self.rng.choice(self.lex.verbs)
        return src, tgt + self.lex.verb_suffix[(gender, number)]

    def relative_clause(self, gender: int, number: str):
        """A clause on a head noun of (gender, number). Subject relative: "that VERB NP", the verb
        agreeing with the head; object relative: "that NP VERB", the verb agreeing with the NP."""
        if self.rng.random() < 0.5:
            obj_src, obj_tgt, _, _ = self.noun_phrase("acc", max_adjectives=1)
            verb_src, verb_tgt = self.verb(gender, number)
            return ["that", verb_src] + obj_src, [self.lex.relatives[("nom", gender, number)]] + obj_tgt + [verb_tgt]
        subj_src, subj_tgt, subj_gender, subj_number = self.noun_phrase("nom", max_adjectives=1)
        verb_src, verb_tgt = self.verb(subj_gender, subj_number)
        return ["that"] + subj_src + [verb_src], [self.lex.relatives[("acc", gender, number)]] + subj_tgt + [verb_tgt]

    def sentence(self) -> tuple[str, str]:
        rng, lex = self.rng, self.lex
        subj_src, subj_tgt, gender, number = self.noun_phrase("nom")
        if rng.random() < 0.4:
            rel_src, rel_tgt = self.relative_clause(gender, number)
            subj_src, subj_tgt = subj_src + rel_src, subj_tgt + rel_tgt
        obj_src, obj_tgt, obj_gender, obj_number = self.noun_phrase("acc")
        if rng.random() < 0.25:
            rel_src, rel_tgt = self.relative_clause(obj_gender, obj_number)
            obj_src, obj_tgt = obj_src + rel_src, obj_tgt + rel_tgt
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
