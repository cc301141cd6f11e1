"""Spoken questions and instructions with known answers, split into training and held-out pools.

The held-out pool uses phrasings training never uses, and its factual items include entities that
training never hears, so evaluation measures listening rather than memorised clips.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# (country, capital); the last quarter is held out.
CAPITALS = (
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
    ("Russia", "Moscow"), ("China", "Beijing"), ("Egypt", "Cairo"), ("England", "London"), ("Greece", "Athens"),
    ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Poland", "Warsaw"), ("Thailand", "Bangkok"), ("South Korea", "Seoul"),
    ("Kenya", "Nairobi"), ("Argentina", "Buenos Aires"), ("Cuba", "Havana"), ("Peru", "Lima"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Hungary", "Budapest"), ("Belgium", "Brussels"),
    ("Netherlands", "Amsterdam"), ("Mexico", "Mexico City"), ("Turkey", "Ankara"), ("India", "New Delhi"),
    ("Canada", "Ottawa"), ("Australia", "Canberra"),
)
# (question, accepted answers); the last quarter is held out.
FACTS = (
    ("How many legs does a spider have?", ("8", "eight")),
    ("How many days are there in a week?", ("7", "seven")),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What is the opposite of hot?", ("cold",)),
    ("What do bees make?", ("honey",)),
    ("What is the largest planet in our solar system?", ("jupiter",)),
    ("What is frozen water called?", ("ice",)),
    ("How many hours are in a day?", ("24", "twenty-four", "twenty four")),
    ("What color are ripe bananas?", ("yellow",)),
    ("Which animal is known as the king of the jungle?", ("lion",)),
    ("How many months are in a year?", ("12", "twelve")),
    ("What is the opposite of up?", ("down",)),
    ("What gas do people need to breathe?", ("oxygen",)),
    ("What is the color of grass?", ("green",)),
    ("How many wheels does a bicycle have?", ("2", "two")),
    ("Which planet do we live on?", ("earth",)),
    ("What animal says moo?", ("cow",)),
    ("How many sides does a triangle have?", ("3", "three")),
    ("What is the opposite of day?", ("night",)),
    ("What color is snow?", ("white",)),
    ("How many minutes are in an hour?", ("60", "sixty")),
    ("What is the first letter of the alphabet?", ("a",)),
    ("Which season comes after winter?", ("spring",)),
    ("What do cows drink?", ("water",)),
    ("How many legs does a dog have?", ("4", "four")),
    ("What is the opposite of big?", ("small", "little")),
    ("What color is a ripe tomato?", ("red",)),
    ("How many sides does a square have?", ("4", "four")),
    ("Which star gives us daylight?", ("sun",)),
    ("What is the opposite of wet?", ("dry",)),
    ("Which animal barks?", ("dog",)),
    ("What do you call a baby cat?", ("kitten",)),
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty")
# Sentences to repeat back; pytest-audioeval's English clips are the held-out repeat set.
REPEAT_SENTENCES = (
    "The cat is sleeping on the warm chair.", "Please close the window before you leave.",
    "I would like a cup of tea with milk.", "The train to the city leaves at nine.",
    "My brother plays the guitar every evening.", "It is raining again this afternoon.",
    "We are going to the park on Sunday.", "She bought three apples and a loaf of bread.",
    "Turn left at the next corner.", "The meeting starts in ten minutes.",
    "Can you help me carry these boxes?", "The children are singing in the garden.",
    "He forgot his keys at the office.", "Dinner will be ready at seven.",
    "The little dog ran across the road.", "Our flight was delayed by two hours.",
    "Water the plants before the weekend.", "This book is about the history of music.",
    "The shop on the corner sells fresh fish.", "I left my umbrella on the bus.",
    "The sun rises in the east.", "They painted the kitchen bright yellow.",
    "Send me the report by Friday.", "The river is very cold in spring.",
)
HELDOUT_REPEAT_SENTENCES = (
    "The old man walked slowly to the market.", "Please bring two chairs into the hall.",
    "The coffee in this cafe is excellent.", "My sister lives near the sea.",
    "We watched a film about penguins last night.", "The bus stop is next to the bakery.",
)

_TRAIN_CAPITAL = ("What is the capital of {x}?", "Which city is the capital of {x}?")
_HELDOUT_CAPITAL = ("Tell me the capital city of {x}.", "Can you name the capital of {x}?")
_TRAIN_SUM = ("What is {a} plus {b}?", "What do you get when you add {a} and {b}?")
_HELDOUT_SUM = ("If I add {a} to {b}, what is the total?",)
_TRAIN_DIFF = ("What is {a} minus {b}?",)
_HELDOUT_DIFF = ("Take {b} away from {a}. What is left?",)
_TRAIN_REPEAT = ("Repeat after me: {s}", "Please say this back to me: {s}")
_HELDOUT_REPEAT = ("Say exactly what I say: {s}",)
_FACT_PREFIX_HELDOUT = ("Quick question. ", "I have a question. ")


@dataclass(frozen=True)
class Question:
    kind: str                  # "capital", "fact", "arithmetic", "repeat", "open" (no fixed answer)
    text: str                  # what is spoken (or typed, for text items)
    accept: tuple[str, ...]    # any of these in the answer counts as correct (lower-cased match); () for "open"
    reference: str = ""        # for "repeat": the sentence to say back


def _split(items: tuple, heldout: bool) -> tuple:
    cut = len(items) * 3 // 4
    return items[cut:] if heldout else items[:cut]


def question_pool(heldout: bool = False) -> list[Question]:
    """Every factual and repeat question of one pool (arithmetic is drawn by `random_question`)."""
    capital_forms = _HELDOUT_CAPITAL if heldout else _TRAIN_CAPITAL
    pool = [Question("capital", form.format(x=country), (capital.lower(),))
            for country, capital in _split(CAPITALS, heldout) for form in capital_forms]
    prefixes = _FACT_PREFIX_HELDOUT if heldout else ("",)
    pool += [Question("fact", prefix + q, accept) for q, accept in _split(FACTS, heldout) for prefix in prefixes]
    sentences = HELDOUT_REPEAT_SENTENCES if heldout else REPEAT_SENTENCES
    forms = _HELDOUT_REPEAT if heldout else _TRAIN_REPEAT
    pool += [Question("repeat", form.format(s=s), (), reference=s) for s in sentences for form in forms]
    return pool


def arithmetic_question(rng: np.random.Generator, heldout: bool = False) -> Question:
    a, b = int(rng.integers(2, 21)), int(rng.integers(1, 11))
    if rng.random() < 0.5:
        form = str(rng.choice(_HELDOUT_SUM if heldout else _TRAIN_SUM))
        total = a + b
    else:
        a, b = max(a, b), min(a, b)
        form = str(rng.choice(_HELDOUT_DIFF if heldout else _TRAIN_DIFF))
        total = a - b
    return Question("arithmetic", form.format(a=a, b=b), number_answers(total))


def number_answers(n: int) -> tuple[str, ...]:
    """The accepted spellings of a whole number: digits, and the word up to twenty."""
    return (str(n),) + ((NUMBER_WORDS[n],) if n < len(NUMBER_WORDS) else ())


def random_question(rng: np.random.Generator, heldout: bool = False, arithmetic_share: float = 0.2) -> Question:
    if rng.random() < arithmetic_share:
        return arithmetic_question(rng, heldout)
    pool = question_pool(heldout)
    return pool[int(rng.integers(len(pool)))]


_STOPWORDS = frozenset("a an the is are was do does did what which who how many much of to in on at for and or "
                       "you your i my me we it this that there have has be can".split())


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if w not in _STOPWORDS}


def heldout_overlap(text: str) -> bool:
    """Whether `text` names a held-out country or capital, or shares half its content words with a
    held-out fact or repeat sentence: such texts must not be trained on."""
    words = " " + " ".join(re.findall(r"[a-z]+", text.lower())) + " "
    if any(f" {name.lower()} " in words for pair in _split(CAPITALS, True) for name in pair):
        return True
    mine = _content_words(text)
    for other in [q for q, _ in _split(FACTS, True)] + list(HELDOUT_REPEAT_SENTENCES):
        theirs = _content_words(other)
        if mine and theirs and len(mine & theirs) / len(mine | theirs) >= 0.5:
            return True
    return False


def answer_is_correct(answer: str, question: Question) -> bool:
    """Whole-word, case-insensitive match of any accepted answer in the reply."""
    text = " " + re.sub(r"[^a-z0-9 ]+", " ", answer.lower()) + " "
    return any(f" {a} " in text for a in question.accept)


# Words for random transcription drills: no sentence can be guessed, so only listening lowers the loss.
DRILL_WORDS = (
    "apple river seven green house table window yellow garden music orange winter doctor pencil mountain "
    "bottle summer purple camera rabbit kitchen silver engine forest candle basket ocean tiger butter violin "
    "market pocket ladder island rocket blanket dinner spider lemon castle button carpet jacket planet "
    "marble pillow bridge tomato honey dragon wallet hammer desert feather guitar helmet jungle kettle "
    "lizard mirror needle parrot puzzle ribbon saddle tunnel walnut zebra anchor bucket cherry falcon "
    "goblet harbor igloo jigsaw lantern meadow napkin oyster pepper quilt shovel turnip velvet whistle"
).split() + list(NUMBER_WORDS[1:13])


def word_drill(rng: np.random.Generator, vocabulary: Sequence[str] = DRILL_WORDS, n_min: int = 3,
               n_max: int = 8) -> str:
    """A random word list such as "Lemon, seven, castle, ribbon." (first letter capitalised)."""
    words = [str(w) for w in rng.choice(vocabulary, size=int(rng.integers(n_min, n_max + 1)))]
    return ", ".join(words).capitalize() + "."


# Random sentences for transcription: combinatorial, so the decoder cannot fall back on remembered
# training sentences and has to read the audio (measured before these: held-out sentences came back
# as training sentences).
_ADJECTIVES = ("red", "blue", "green", "small", "big", "old", "new", "quiet", "heavy", "bright", "warm", "cold")
_NAMES = ("Anna", "Peter", "Maria", "John", "Lucy", "David", "Sarah", "Tom", "Emma", "Mark", "Laura", "Sam")
_PLACES = ("station", "library", "school", "office", "garden", "market", "kitchen", "beach", "park", "hotel")
_EXTRA_COUNTRIES = ("Chile", "Nigeria", "Vietnam", "Morocco", "Iceland", "Brazil", "Colombia", "Ukraine",
                    "Malaysia", "Ghana", "Croatia", "Nepal", "Jamaica", "Scotland", "Wales", "Iran")
_SENTENCES = (
    "The {adj} {noun} is next to the {noun2}.", "Please put the {noun} on the {adj} {noun2}.",
    "{name} bought {num} {noun}s at the {place}.", "Where is the {adj} {noun}?",
    "What is the capital of {country}?", "How many {noun}s are in the {place}?",
    "I saw {num} {adj} {noun}s near the {place} today.", "{name} left the {noun} at the {place}.",
    "Can you bring the {noun} to the {place}?", "My {noun} is {adj} and very {adj2}.",
    "What is {a} plus {b}?", "{name} and {name2} are going to the {place}.",
)


def random_sentence(rng: np.random.Generator) -> str:
    def pick(options) -> str:
        return str(rng.choice(options))

    nouns = [w for w in DRILL_WORDS if w not in NUMBER_WORDS]
    return pick(_SENTENCES).format(
        adj=pick(_ADJECTIVES), adj2=pick(_ADJECTIVES), noun=pick(nouns), noun2=pick(nouns), name=pick(_NAMES),
        name2=pick(_NAMES), place=pick(_PLACES), num=pick(NUMBER_WORDS[2:10]), a=int(rng.integers(1, 30)),
        b=int(rng.integers(1, 30)), country=pick(_EXTRA_COUNTRIES))
