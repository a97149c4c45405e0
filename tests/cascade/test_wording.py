"""The cache's wording guard: another wording of the same question passes, a question whose answer
differs does not."""

from __future__ import annotations

import subprocess
import sys

import pytest

import cascade.cache.wording
from cascade.cache.wording import LEFT_OVER, WORD_MAX, close, english_stop_words, same_question


@pytest.mark.parametrize(("question", "other"), [
    ("What is the capital of France?", "what's the capital of france"),
    ("In what year did the Normans reach Italy?", "What year did the Normans reach Italy?"),
    ("Which river flows through Paris?", "What river flows through Paris?"),
    ("Who wrote the Declaration of Independence?", "Can you tell me who wrote the Declaration of Independence?"),
    ("What did Kanye give to Jay in 2010?", "I'd like to know what did Kanye give to Jay in 2010?"),
    ("What century did the Normans gain their identity?", "What cenutry did the Normans gain tehir identity?"),
    ("Why didn't the treaty hold?", "Why did the treaty not hold?"),
    ("How many people lived in the city in 1900?", "How many peple lived in the city in 1900?"),
    ("In England in 1066, who did William defeat?", "Who did William defeat, in England in 1066?"),
    ("In 2014, did Germany beat Brazil?", "Did Germany beat Brazil in 2014?"),
    ("What river flows through Paris?", "what river flows through paris"),
    ("How do I convert meters to feet?", "How do I convert metres to feet?"),
    ("Who governed the city in 1900?", "Who governs the city in 1900?"),
    ("What is 7-3?", "what is 7 - 3"),
    ("What is 10 - 3?", "What is 10 -3?"),
    ("What is −3 squared?", "What is -3 squared?"),
    ("Who ruled France in 1914–1918?", "Who ruled France in 1914-1918?"),
    ("What does ++i do in C?", "what does ++i do in c"),
    ("How much is $100 in yen?", "how much is $100 in yen"),
    ("How do I find a file in Linux?", "How do I find a fiel in Linux?"),
    ("Was the bridge built by the Romans?", "Was the bridge built by the romans"),
    ("What is the colour of the sky at noon?", "What is the color of the sky at noon?"),
    ("How tall is the centre of the dome in metres?", "How tall is the center of the dome in meters?"),
    ("Is the sky grey at dawn?", "Is the sky gray at dawn?"),
    ("How do I delete a file in Linux?", "How do I delete files in Linux?"),
    ("What are the rules of chess?", "What is the rule of chess?"),
    ("Show me how to reverse a list in Python", "How do I reverse a list in Python?"),
    ("Give me an example of a metaphor", "An example of a metaphor"),
    ("What is ３＋３?", "What is 3+3?"),
])
def test_another_wording_of_the_same_question_passes(question: str, other: str) -> None:
    assert same_question(question, other) and same_question(other, question)


@pytest.mark.parametrize(("question", "other"), [
    ("What is the largest city in France?", "What is the smallest city in France?"),
    ("Which treaty was signed first?", "Which treaty was signed last?"),
    ("Is the Rhine navigable?", "Is the Rhine not navigable?"),
    ("What can't be solved by a computer?", "What can be solved by a computer?"),
    ("Who founded the Ming dynasty?", "Who founded the Ding dynasty?"),
    ("What happened in 1066?", "What happened in 1067?"),
    ("What is the population of district 12?", "What is the population of district 13?"),
    ("What is -3 squared?", "What is 3 squared?"),
    ("Is the temperature above −5 degrees?", "Is the temperature above 5 degrees?"),
    ("What is –3 squared?", "What is 3 squared?"),
    ("Who builds the a320?", "Who builds the a321?"),
    ("What are the two primary resources?", "What are the three primary resources?"),
    ("Who founded the Office of Western Medicine?", "When was the Office of Western Medicine founded?"),
    ("Where did the Normans settle?", "Where did the Vikings settle?"),
    ("What remains the same size?", "What remains a different size?"),
    ("How do I convert meters to feet?", "How do I convert feet to meters?"),
    ("Did Germany beat Brazil in 2014?", "Did Brazil beat Germany in 2014?"),
    ("Is London bigger than Paris?", "Is Paris bigger than London?"),
    ("Is a cat bigger than a dog?", "Is a dog bigger than a cat?"),
    ("Germany beat Brazil in 2014?", "Brazil beat Germany in 2014?"),
    ("How do I port code from Python 2 to Python 3?", "How do I port code from Python 3 to Python 2?"),
    ("In Germany, did they beat Brazil?", "In Brazil, did they beat Germany?"),
    ("Did Germany beat Brazil?", "did brazil beat germany?"),
    ("Translate hello from English to French", "Translate hello to English from French"),
    ("Is the glass full?", "Is the glass empty?"),
    ("Should I sell my shares?", "Can I sell my shares?"),
    ("What happened in the eighteenth century?", "What happened in the nineteenth century?"),
    ("Who was born in the eighteen hundreds?", "Who was born in the eighty hundreds?"),
    ("what is the capital of austria", "what is the capital of australia"),
    ("中国的首都是哪里", "中国的首都有多少人"),
    ("东京的人口是多少", "南京的人口是多少"),
    ("What is 3+3?", "What is 3*3?"),
    ("What is 144/12?", "What is 144*12?"),
    ("How do I print hello world in C++?", "How do I print hello world in C#?"),
    ("What is the difference between == and === in JavaScript?",
     "What is the difference between != and !== in JavaScript?"),
    ("How much is $100 in yen?", "How much is €100 in yen?"),
    ("How do I find a file in Linux?", "How do I move a file in Linux?"),
    ("How do I take a screenshot on a Mac?", "How do I find a screenshot on a Mac?"),
    ("Who found the Dead Sea Scrolls?", "Who made the Dead Sea Scrolls?"),
    ("What part of the brain controls balance?", "What side of the brain controls balance?"),
    ("Did Marie Curie win the Nobel Prize alone?", "Did Marie Curie win the Nobel Prize?"),
    ("Who was defeated by Napoleon?", "Who defeated Napoleon?"),
    ("What books were written by Stephen King?", "What books were written about Stephen King?"),
    ("Did everyone vote for the law?", "Did someone vote for the law?"),
    ("what is the capital of iran", "what is the capital of iraq"),
    ("What is the largest plant?", "What is the largest planet?"),
    ("How much does a mouse weigh?", "How much does a moose weigh?"),
    ("What are the customs of mourning?", "What are the customs of morning?"),
    ("How many tires does a truck have?", "How many tiers does a truck have?"),
    ("How do I print hello world in C#?", "How do I print hello world in F#?"),
    ("What is vitamin C for?", "What is vitamin D for?"),
    ("What is 10 - 3?", "What is 10 x 3?"),
    ("What is 5.3 squared?", "What is 5-3 squared?"),
    ("What is ３＋３?", "What is ３＊３?"),
    ("What is 10!/8!?", "What is 10/8?"),
    ("Germany and Brazil met in the final after a long war that ravaged old northern provinces and many farming "
     "villages near the river delta; did Brazil beat Germany?",
     "Germany and Brazil met in the final after a long war that ravaged old northern provinces and many farming "
     "villages near the river delta; did Germany beat Brazil?"),
    ("After the long and bitter war that ravaged the old northern provinces and destroyed many ancient farming "
     "villages near the great river delta, did Germany beat Brazil in the final?",
     "After the long and bitter war that ravaged the old northern provinces and destroyed many ancient farming "
     "villages near the great river delta, did Brazil beat Germany in the final?"),
    ("After the long and bitter war that ravaged the old northern provinces and destroyed many ancient farming "
     "villages near the great river delta did Germany beat Brazil?",
     "After the long and bitter war that ravaged the old northern provinces and destroyed many ancient farming "
     "villages near the great river delta did Brazil beat Germany?"),
])
def test_a_question_whose_answer_differs_is_refused(question: str, other: str) -> None:
    assert not same_question(question, other) and not same_question(other, question)


def test_close_words_are_typos_and_inflections_but_not_numbers() -> None:
    assert close("their", "tehir") and close("century", "cenutry") and close("country", "countr")
    assert close("identity", "identities") and close("govern", "govern") and close("developed", "developing")
    assert close("election", "electing") and close("locating", "location"), "the stem before the ending's letter"
    assert not close("austria", "australia") and not close("normans", "normandy"), "a stem, then another word"
    assert not close("state", "statement") and not close("class", "classic"), "another word, not an inflection"
    assert not close("东京的人口是多少", "南京的人口是多少"), "a phrase written without spaces, not a typo"
    assert not close("largest", "smallest") and not close("1066", "1067") and not close("cat", "car")
    assert not close("plant", "planet") and not close("iran", "iraq") and not close("filled", "filed"), (
        "two English words one letter apart are two words, not a word and its typo")
    assert all(close(british, american) for british, american in [
        ("colour", "color"), ("centre", "center"), ("metres", "meters"), ("organisation", "organization"),
        ("analyse", "analyze"), ("defence", "defense"), ("travelled", "traveled")]), "one word, two spellings"
    assert not close("mourning", "morning") and not close("tires", "tiers"), "not two spellings of one word"


def test_the_guard_reads_a_bounded_number_of_word_pairs_whatever_the_length_of_the_question(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt of a thousand words against the same words each with a typo, reversed: each word of one
    side would be compared with each of the other's (a million comparisons, seconds on the event loop that
    routes every tenant's requests); more than ``LEFT_OVER`` words apart, they are not one question."""
    words = [f"{a}{b}{c}{d}word" for a in "bcdfg" for b in "hklmp" for c in "rstvw" for d in "aeiou"][:1000]
    calls = 0

    def counted(a: str, b: str) -> bool:
        nonlocal calls
        calls += 1
        return close(a, b)

    monkeypatch.setattr(cascade.cache.wording, "close", counted)
    typos = [w[:-1] + "x" for w in words]
    assert not same_question(" ".join(words), " ".join(reversed(typos))) and calls == 0
    few = [*typos[:LEFT_OVER], *words[LEFT_OVER:]]
    assert same_question(" ".join(words), " ".join(few)) and 0 < calls <= 2 * LEFT_OVER * LEFT_OVER


def test_a_word_too_long_to_be_a_word_is_never_a_typo() -> None:
    long = "x" * WORD_MAX
    assert close(long + "a", long + "b") is False and close(long[:-1] + "a", long[:-1] + "b")


def test_the_stop_words_are_scikit_learns() -> None:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    assert english_stop_words() == frozenset(ENGLISH_STOP_WORDS) and "the" in english_stop_words()


def test_the_stop_words_come_from_the_public_import_where_their_module_is_not_found(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert english_stop_words() == frozenset(ENGLISH_STOP_WORDS)


def test_the_routing_path_does_not_load_scikit_learn_or_scipy() -> None:
    """The ingress imports the guard with the cache: scikit-learn's package (and SciPy behind it) stays out
    of a routing process, where the stop words alone would cost it about a second and 70 MB."""
    imported = subprocess.run([sys.executable, "-c", "import sys, cascade.router, cascade.cache, services.ingress; "
                               "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy'}))"],
                              capture_output=True, text=True, timeout=120, check=True).stdout
    assert imported.strip() == "[]"
