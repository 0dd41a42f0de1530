"""Synthetic, code-generated training corpus for the offline demo model.

The families are chosen because they give small, legible circuits (successor heads for counting,
fact lookup for cities, operand mixing for additions, word-pair recall for opposites and plurals).
Every family keeps held-out prompts with a known next token so that the model's quality is a
measured, asserted fact rather than a hope. Everything is a pure function of the code: no
randomness, so the corpus, the vocabulary and therefore the token ids are stable across rebuilds.
"""

from __future__ import annotations

from dataclasses import dataclass

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"


@dataclass(frozen=True)
class Probe:
    """A prompt and the single next token the model must predict (with its leading space)."""

    family: str
    prompt: str
    answer: str


@dataclass(frozen=True)
class Corpus:
    """Training texts (grouped by family, for balanced sampling) and held-out probes."""

    train: dict[str, tuple[str, ...]]
    heldout: tuple[Probe, ...]

    def all_texts(self) -> list[str]:
        """Every string the tokenizer must cover: training texts and completed probes."""
        texts = [t for group in self.train.values() for t in group]
        texts += [p.prompt + p.answer for p in self.heldout]
        return texts


COUNTRY_CITIES: tuple[tuple[str, str], ...] = (
    ("Paris", "France"),
    ("Lyon", "France"),
    ("Berlin", "Germany"),
    ("Munich", "Germany"),
    ("Rome", "Italy"),
    ("Milan", "Italy"),
    ("Madrid", "Spain"),
    ("Barcelona", "Spain"),
    ("London", "England"),
    ("Manchester", "England"),
    ("Tokyo", "Japan"),
    ("Osaka", "Japan"),
    ("Toronto", "Canada"),
    ("Vancouver", "Canada"),
    ("Sydney", "Australia"),
    ("Melbourne", "Australia"),
    ("Cairo", "Egypt"),
    ("Lisbon", "Portugal"),
    ("Moscow", "Russia"),
    ("Beijing", "China"),
)

US_CITIES: tuple[tuple[str, str], ...] = (
    ("Chicago", "Illinois"),
    ("Houston", "Texas"),
    ("Dallas", "Texas"),
    ("Austin", "Texas"),
    ("Boston", "Massachusetts"),
    ("Seattle", "Washington"),
    ("Denver", "Colorado"),
    ("Miami", "Florida"),
    ("Orlando", "Florida"),
    ("Atlanta", "Georgia"),
    ("Phoenix", "Arizona"),
    ("Detroit", "Michigan"),
    ("Sacramento", "California"),
    ("Oakland", "California"),
    ("Portland", "Oregon"),
    ("Nashville", "Tennessee"),
)

# "{x}" is never the first word: a sentence-initial word tokenizes without its leading space,
# which would make it a different token from the one the facts were learned on.
CITY_TEMPLATES: tuple[str, ...] = (
    "The city of {x} is in",
    "The city of {x} is located in",
    "We visited {x} , a city in",
    "I live in {x} , which is in",
)

OPPOSITES: tuple[tuple[str, str], ...] = (
    ("hot", "cold"),
    ("big", "small"),
    ("fast", "slow"),
    ("up", "down"),
    ("good", "bad"),
    ("happy", "sad"),
    ("light", "dark"),
    ("old", "young"),
    ("high", "low"),
    ("early", "late"),
    ("rich", "poor"),
    ("open", "closed"),
    ("wet", "dry"),
    ("full", "empty"),
    ("hard", "soft"),
    ("loud", "quiet"),
    ("strong", "weak"),
    ("thick", "thin"),
    ("clean", "dirty"),
    ("first", "last"),
)

# All end the same way: a template ending in "opposite of" would ask for an input word.
OPPOSITE_TEMPLATES: tuple[str, ...] = (
    "The opposite of {x} is",
    "The antonym of {x} is",
    "We know that the opposite of {x} is",
    "The word that means the opposite of {x} is",
)

PLURALS: tuple[tuple[str, str], ...] = (
    ("cat", "cats"),
    ("dog", "dogs"),
    ("mouse", "mice"),
    ("child", "children"),
    ("box", "boxes"),
    ("foot", "feet"),
    ("tooth", "teeth"),
    ("city", "cities"),
    ("man", "men"),
    ("leaf", "leaves"),
    ("bird", "birds"),
    ("baby", "babies"),
    ("woman", "women"),
    ("goose", "geese"),
    ("knife", "knives"),
    ("bus", "buses"),
    ("car", "cars"),
    ("story", "stories"),
    ("fish", "fish"),
    ("sheep", "sheep"),
)

PLURAL_TEMPLATES: tuple[str, ...] = (
    "I saw one {x} and two",
    "There is one {x} here and three",
    "She has a {x} and he has four",
    "We found a {x} , then we found five",
    "Look at that {x} ! I see six",
)

COUNT_MAX = 30
COUNT_HELDOUT_STARTS = (4, 11, 17)
COUNT_HELDOUT_LENGTHS = (4, 5, 6)
ADD_MAX = 9
# Operand pairs whose *reverse* order is trained but which are never seen themselves.
ADD_HELDOUT = ((4, 3), (6, 2), (7, 1), (8, 5), (5, 3), (9, 4), (6, 5), (8, 2), (7, 3), (9, 6))

CHAT_FAMILIES = ("counting", "cities", "addition", "opposites", "plurals")


def chat_text(user: str, answer: str) -> str:
    """One chat exchange in the tokenizer's chat-template format, answer included.

    The answer keeps its leading space: the model continues the user's text, so chat and plain
    prompts share the same output tokens (and the same output features).
    """
    return (
        f"{START_OF_TURN}user\n{user}{END_OF_TURN}\n{START_OF_TURN}model\n{answer}{END_OF_TURN}\n"
    )


def _counting() -> tuple[list[str], list[Probe]]:
    """Runs of consecutive numbers. A held-out start is trained only as its shortest run, so
    its probes (longer runs from that start) are unseen while its first token is still known."""
    train, heldout = [], []
    for start in range(0, 21):
        for length in range(2, 11):
            nums = [str(n) for n in range(start, min(start + length, COUNT_MAX) + 1)]
            if start not in COUNT_HELDOUT_STARTS or length == 2:
                train.append(" ".join(nums))
            elif length - 1 in COUNT_HELDOUT_LENGTHS:
                heldout.append(Probe("counting", " ".join(nums[:-1]), " " + nums[-1]))
    return train, heldout


def _lookup(
    family: str, pairs: tuple[tuple[str, str], ...], templates: tuple[str, ...], suffix: str
) -> tuple[list[str], list[Probe]]:
    """Facts under several templates; pair i holds out template i mod len(templates).

    Every fact is still learned (from its other templates), so the held-out probe measures
    whether the lookup generalises across phrasings rather than asking for a memorised string.
    The first pair never holds out template 0, which keeps the canonical demo prompt (e.g.
    "The city of Paris is in") in training.
    """
    train, heldout = [], []
    for i, (word, target) in enumerate(pairs):
        held = (i + 1) % len(templates) if i == 0 else i % len(templates)
        for t, template in enumerate(templates):
            prompt = template.format(x=word)
            if t == held:
                heldout.append(Probe(family, prompt, " " + target))
            else:
                train.append(f"{prompt} {target}{suffix}")
    return train, heldout


def _addition() -> tuple[list[str], list[Probe]]:
    """Sums under three phrasings; a held-out pair is absent from all, only its reverse is seen.

    The other phrasings put the first operand mid-sentence (a different token from the
    sentence-initial one), which pushes the model towards one shared notion of each number
    and of their sum.
    """
    train, heldout = [], []
    for a in range(ADD_MAX + 1):
        for b in range(ADD_MAX + 1):
            prompt = f"{a} plus {b} equals"
            if (a, b) in ADD_HELDOUT:
                heldout.append(Probe("addition", prompt, f" {a + b}"))
            else:
                train.append(f"{prompt} {a + b} .")
                train.append(f"The sum of {a} and {b} is {a + b} .")
                train.append(f"If you add {a} and {b} you get {a + b} .")
    return train, heldout


def _chat(train: dict[str, list[str]]) -> list[str]:
    """Chat-formatted copies of some plain examples: the user writes a prompt, the model
    answers with its continuation (only the first answer token is kept)."""
    out = []
    for family in CHAT_FAMILIES:
        for text in train[family][::2]:
            prompt, _, answer = text.rpartition(" ")
            if answer == ".":
                prompt, _, answer = prompt.rpartition(" ")
            out.append(chat_text(prompt, " " + answer))
    return out


def build_corpus() -> Corpus:
    """Build the whole corpus deterministically (no randomness involved)."""
    counting, counting_held = _counting()
    cities, cities_held = _lookup("cities", COUNTRY_CITIES + US_CITIES, CITY_TEMPLATES, suffix=" .")
    addition, addition_held = _addition()
    opposites, opposites_held = _lookup("opposites", OPPOSITES, OPPOSITE_TEMPLATES, suffix=" .")
    plurals, plurals_held = _lookup("plurals", PLURALS, PLURAL_TEMPLATES, suffix=" .")
    train = {
        "counting": counting,
        "cities": cities,
        "addition": addition,
        "opposites": opposites,
        "plurals": plurals,
    }
    train["chat"] = _chat(train)
    heldout = counting_held + cities_held + addition_held + opposites_held + plurals_held
    return Corpus(
        train={k: tuple(v) for k, v in train.items()},
        heldout=tuple(heldout),
    )
