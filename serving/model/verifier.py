"""The verifier: does a summary say only what its article says? One module, used by the engine
(every summary before it is served), training (teacher targets) and evaluation.

    evidence = Evidence.of(article)                 # the article's words, once per article
    summary, report = check(summary, evidence)      # repair the phrasing, then verify
    report.verdict                                  # "pass" | "fail", with failures and reasons

The rules, each cheap (a few hundred microseconds per summary, pure Python):

- **support**: the share of the summary's content words (not stop words, at least three
  letters, numbers apart) found in the article. Inflections and British/American spellings are
  tolerated: both sides are compared as Snowball stems of a spelling-folded form ("killing" ~
  "killed", "kilometer" ~ "kilometre"). Fails under ``min_support``.
- **unsupported names and numbers**: every capitalised word (honorifics and stop words
  aside; a sentence's first word too: a summary may open with an invented place) and every
  number (digits, or a number word from two to ninety, thousand separators ignored) must
  occur in the article: its title, source, date or text. "Eight" in a summary is found by
  "8" in the article and the other way round.
- **repetition**: a word three times in a row, a phrase of two to eight words twice in a row,
  a three-word phrase three times, a six-word phrase twice, or fewer than 40% distinct words
  in a summary of 15 words or more: the loops of a small model ("SCOTUS SCOTUS ...", "X were
  the new X, and the new X ...").
- **meta or empty phrasing**: a sentence about the article rather than the news ("The article
  is about ...", "This is a summary of ...", "... highlights the importance of ...").
  :func:`repair` first removes a label or the source before the news ("ABC News: X." ->
  "X."), a meta lead ("The article is about X." -> "X.") and meta sentences beside real
  ones; what is still meta after that fails.
- **too short**: fewer than three content words after repair.

What it does not do: judge whether a sentence made of the article's words says something the
article does not ("A killed B" from "B killed A"). The rules catch the failures measured on
the default 135M model (loops, meta sentences, invented names and numbers, words from nowhere);
a summary that passes is made of the article's own names, numbers and vocabulary.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Literal

import snowballstemmer
from pydantic import BaseModel, ConfigDict, Field

from core.article import Article
from serving.model.output_parser import split_sentences
from serving.model.prompt import clean_text

VERIFIER_VERSION = "verify-v1"
DEFAULT_MIN_SUPPORT = 0.85
MIN_CONTENT_WORDS = 3

FailureCode = Literal[
    "low_support", "unsupported_name", "unsupported_number", "repetition", "meta", "too_short"
]


class VerifierReport(BaseModel):
    """What the verifier found in one summary. ``verdict`` is ``pass`` iff ``failures`` is
    empty; ``reasons`` says each failure in words."""

    model_config = ConfigDict(extra="forbid")

    version: str = VERIFIER_VERSION
    verdict: Literal["pass", "fail"]
    failures: list[FailureCode] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)
    support: float = Field(ge=0, le=1, description="Share of content words found in the article.")
    content_words: int = Field(ge=0)
    unsupported_names: list[str] = Field(default_factory=list)
    unsupported_numbers: list[str] = Field(default_factory=list)
    repeated: list[str] = Field(default_factory=list, description="Phrases that loop.")
    repairs: list[str] = Field(default_factory=list, description="Phrasing repaired first.")
    rejected: list[str] = Field(
        default_factory=list,
        description="Why the model's summaries were not used (an extractive Result only).",
    )
    rejected_failures: list[FailureCode | Literal["unparsable"]] = Field(
        default_factory=list,
        description="The failure codes behind ``rejected``, each once (for counting).",
    )

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


# --- words ------------------------------------------------------------------------------------

# A number (thousand separators, decimals, times) or a run of letters with inner apostrophes.
_TOKEN = re.compile(r"\d+(?:[.,:]\d+)*|[^\W\d_]+(?:['’][^\W\d_]+)*", re.UNICODE)

STOP_WORDS = frozenset(
    """
    a about above after again against all also although am among an and another any are
    around as at be because been before being below between both but by can could did do
    does doing down during each either else even ever every few for from further had has
    have having he her here hers herself him himself his how however i if in into is it its
    itself just least less many may me might more most much must my myself neither no nor
    not now of off on once one only or other others our ours ourselves out over own per
    rather same she should since so some such than that the their theirs them themselves
    then there these they this those though through thus to too under until up upon us very
    was we were what when where whether which while who whom whose why will with within
    without would yet you your yours yourself
    said says say saying told tell tells according also still already just new
    mr mrs ms dr prof sir
    """.split()
)
HONORIFICS = frozenset({"mr", "mrs", "ms", "dr", "prof", "sir", "st", "gen", "lt", "sgt", "col"})
NUMBER_WORDS = {
    "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
    "ninety": 90, "dozen": 12,
}  # fmt: skip
# "one" is left out: as a pronoun ("one of them") it is rarely a number worth checking.

_STEMMER = snowballstemmer.stemmer("english")


def _fold(word: str) -> str:
    """Lower case without accents or possessive: "Sánchez's" -> "sanchez"."""
    word = word.casefold().replace("’", "'")
    if word.endswith("'s"):
        word = word[:-2]
    word = word.rstrip("'")
    if not word.isascii():
        word = "".join(
            c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c)
        )
    return word


_SPELLINGS = (
    (re.compile(r"(?<=[^aeiou])re$"), "er"),  # centre, kilometre
    (re.compile(r"(?<=.{3})our(?=s?$|ed$|ing$|able$)"), "or"),  # labour, favourable
    (re.compile(r"(?<=.{2})is(?=e$|es$|ed$|ing$|ation)"), "iz"),  # organise, organisation
    (re.compile(r"(?<=[aeiou])ll(?=ed$|ing$|er$)"), "l"),  # travelled, cancelling
)


@functools.lru_cache(maxsize=65_536)
def stem(word: str) -> str:
    """The comparison form of a folded word: spelling-folded, then its Snowball stem."""
    for pattern, replacement in _SPELLINGS:
        word = pattern.sub(replacement, word)
    return _STEMMER.stemWord(word)


def _number(token: str) -> str | None:
    """A number token's canonical form ("3,000" -> "3000"), or None for a word."""
    if not token[0].isdigit():
        value = NUMBER_WORDS.get(_fold(token))
        return None if value is None else str(value)
    token = token.replace(",", "")
    return str(int(token)) if token.isdigit() else token  # "05" (a date) ~ "5"


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def folded_words(text: str) -> list[str]:
    """The text's words and numbers, folded: what the repetition rule compares."""
    return [_fold(token) for token in tokens(text)]


# --- the article's side -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Evidence:
    """The words of one article that a summary may use: title, source, date and text."""

    words: frozenset[str]  # folded
    stems: frozenset[str]
    numbers: frozenset[str]  # canonical
    source: str = ""  # the prompt header's "Source:" (a summary opening with it echoes it)

    @classmethod
    def of(cls, article: Article) -> Evidence:
        parts = [article.title or "", article.source or "", clean_text(article.text or "")]
        if article.published is not None:
            parts.append(article.published.strftime("%Y %m %d %B %A"))
        return cls.of_text("\n".join(parts), source=article.source or "")

    @classmethod
    def of_text(cls, text: str, source: str = "") -> Evidence:
        words: set[str] = set()
        numbers: set[str] = set()
        for token in tokens(text):
            number = _number(token)
            if number is not None:
                numbers.add(number)
                # "4.1" also vouches for "4" only when written so; a decimal's integer part
                # is not a number the article states.
            if not token[0].isdigit():
                words.add(_fold(token))
        stems = frozenset(stem(w) for w in words)
        return cls(frozenset(words), stems, frozenset(numbers), source)

    def has_word(self, folded: str) -> bool:
        return folded in self.words or stem(folded) in self.stems

    def has_name(self, folded: str) -> bool:
        """A name, with its demonyms and derived forms: "Australian" is found by "Australia",
        "Afghan" by "Afghanistan" (the shorter at least five letters, at most five apart)."""
        if self.has_word(folded):
            return True
        for word in self.words:
            short, long = (word, folded) if len(word) <= len(folded) else (folded, word)
            if len(short) >= 5 and len(long) - len(short) <= 5 and long.startswith(short):
                return True
        return False


# --- repair -----------------------------------------------------------------------------------

# Not "the report": news summaries cite real reports ("The report found ...").
_META_SUBJECT = r"(?:the|this)\s+(?:news\s+)?(?:article|story|piece|text|summary|passage)"
_META_NOUN = r"(?:the|this)\s+(?:news\s+)?(?:article|text|summary|passage)"
_META_VERB = (
    r"(?:is\s+about|is\s+a\s+summary\s+of|is\s+summari[sz]ing|summari[sz]es|discusses|"
    r"describes|highlights|reports(?:\s+on)?|covers|focuses\s+on|talks\s+about|concludes\s+"
    r"with|mentions|explains|says|states|notes|reveals|details|examines|explores|provides|"
    r"presents|outlines|tells|informs\s+(?:us|readers)\s+(?:about|that)|is\s+(?:also\s+)?about)"
)
_META_LEAD = re.compile(
    rf"^(?:{_META_SUBJECT}\s*:\s*|in\s+{_META_SUBJECT}\s*,\s*|{_META_SUBJECT}\s+(?:also\s+)?{_META_VERB}"
    r"(?:\s+(?:that|how|the\s+fact\s+that))?\s+)",
    re.IGNORECASE,
)
_META_ANYWHERE = re.compile(
    rf"\b{_META_NOUN}\b|\bsummary\s+of\b|\bpiece\s+of\s+news\b|\bnews\s+(?:article|story)\b"
    r"|\b(?:highlights|underscores|emphasi[sz]es|emphasi[sz]ing|highlighting|underscoring)\s+"
    r"the\s+(?:importance|need|significance|role)\b|\bstark\s+reminder\b",
    re.IGNORECASE,
)


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


# A label before the news: "ABC News: ...", "The 2001-12-22 update: ...", "The American
# friends: ..." (the title): up to six words and a colon, not a speaker ("He said: ...").
_LEAD_LABEL = re.compile(r"^(?P<label>[^.!?:\"“]{1,80}?)\s*:\s+(?=\S)")
_SPEECH = re.compile(r"\b(?:said|says|say|told|tells|warned|added|stated|asked|wrote)\b", re.I)


def _strip_label(sentence: str, source: str) -> str | None:
    """The sentence without a leading label or copy of the article's source, or None."""
    if source and sentence.casefold().startswith(source.casefold()):
        rest = sentence[len(source) :].lstrip(" :-–—")
        if len(rest.split()) >= 5:
            return rest
    match = _LEAD_LABEL.match(sentence)
    if match and len(match["label"].split()) <= 6 and not _SPEECH.search(match["label"]):
        rest = sentence[match.end() :]
        if len(rest.split()) >= 5:
            return rest
    return None


def repair(summary: str, source: str = "") -> tuple[str, list[str]]:
    """Remove phrasing that has real content behind it: a label before the first sentence
    ("ABC News: X." -> "X.", ``source`` being the article's), the first sentence's meta lead
    ("The article is about X." -> "X.") and meta sentences beside real ones ("The article
    also discusses ..."). Returns the summary and the repairs made."""
    repairs: list[str] = []
    kept: list[str] = []
    later_meta = 0
    sentences = split_sentences(summary)
    if sentences:
        unlabelled = _strip_label(sentences[0], source)
        if unlabelled is not None:
            repairs.append("label removed")
            sentences[0] = _capitalise(unlabelled)
    for sentence in sentences:
        stripped = _META_LEAD.sub("", sentence, count=1)
        if stripped == sentence:
            kept.append(sentence)
        elif not kept:  # the first sentence: its subject is the news
            repairs.append("meta lead removed")
            kept.append(_capitalise(stripped))
        else:  # "The article also discusses ...": a fragment, at best a repeat
            later_meta += 1
    real = [s for s in kept if not _META_ANYWHERE.search(s)]
    if real and (len(real) < len(kept) or later_meta):
        repairs.append("meta sentence dropped")
        kept = real
    elif later_meta:  # nothing real to keep: leave it for the verifier to fail
        return " ".join(sentences), repairs
    return " ".join(kept), repairs


# --- verify -----------------------------------------------------------------------------------


def repetitions(sentences: list[list[str]]) -> list[str]:
    """The phrases that loop, given each sentence's folded words (the repetition rule). Runs
    are looked for within a sentence ("... from the Commonwealth. The Commonwealth group ..."
    is no loop); counts and variety over the whole text."""
    found: list[str] = []
    for words in sentences:
        run = 1
        for i in range(1, len(words)):
            run = run + 1 if words[i] == words[i - 1] else 1
            if run == 3:
                found.append(" ".join(words[i - 2 : i + 1]))
        for n in range(2, 9):  # a phrase said twice in a row: "round the world round the world"
            for i in range(len(words) - 2 * n + 1):
                if words[i : i + n] == words[i + n : i + 2 * n]:
                    found.append(" ".join(words[i : i + n]))
    words = [w for sentence in sentences for w in sentence]
    for n, limit in ((3, 3), (6, 2)):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        found += [" ".join(g) for g, count in grams.items() if count >= limit]
    if len(words) >= 15 and len(set(words)) / len(words) < 0.4:
        found.append(f"{len(set(words))} distinct of {len(words)} words")
    return list(dict.fromkeys(found))


def verify(
    summary: str, evidence: Evidence, *, min_support: float = DEFAULT_MIN_SUPPORT
) -> VerifierReport:
    """Check ``summary`` against its article (see the module docstring). No repair here."""
    failures: list[FailureCode] = []
    reasons: list[str] = []
    names: list[str] = []
    numbers: list[str] = []
    content = supported = 0
    sentence_words: list[list[str]] = []
    for sentence in split_sentences(summary):
        sentence_words.append([])
        for token in tokens(sentence):
            folded = _fold(token)
            sentence_words[-1].append(folded)
            number = _number(token)
            if number is not None:
                if number not in evidence.numbers and token not in numbers:
                    numbers.append(token)
                continue
            # A capitalised word is a name, except a stop word or honorific; at a sentence's
            # start it counts too (a summary may open with an invented place), so a content
            # word the article lacks fails there even when its support stays high.
            is_name = token[0].isupper() and folded not in STOP_WORDS
            if is_name and folded not in HONORIFICS and not evidence.has_name(folded):
                if token not in names:
                    names.append(token)
            if len(folded) >= 3 and folded not in STOP_WORDS:
                content += 1
                supported += evidence.has_word(folded)
    support = supported / content if content else 0.0
    if content < MIN_CONTENT_WORDS:
        failures.append("too_short")
        reasons.append(f"{content} content words (at least {MIN_CONTENT_WORDS})")
    if support < min_support and content:
        failures.append("low_support")
        reasons.append(f"{support:.2f} of its content words are in the article ({min_support})")
    if names:
        failures.append("unsupported_name")
        reasons.append("names not in the article: " + ", ".join(names))
    if numbers:
        failures.append("unsupported_number")
        reasons.append("numbers not in the article: " + ", ".join(numbers))
    repeated = repetitions(sentence_words)
    if repeated:
        failures.append("repetition")
        reasons.append("repeats: " + "; ".join(repr(r) for r in repeated[:3]))
    meta = _META_ANYWHERE.search(summary)
    if meta:
        failures.append("meta")
        reasons.append(f"speaks about the article, not the news: {meta.group(0)!r}")
    return VerifierReport(
        verdict="fail" if failures else "pass",
        failures=failures,
        reasons=reasons,
        support=round(support, 4),
        content_words=content,
        unsupported_names=names,
        unsupported_numbers=numbers,
        repeated=repeated,
    )


def check(
    summary: str, evidence: Evidence, *, min_support: float = DEFAULT_MIN_SUPPORT
) -> tuple[str, VerifierReport]:
    """:func:`repair`, then :func:`verify` the repaired summary; the report lists the repairs."""
    repaired, repairs = repair(summary, evidence.source)
    report = verify(repaired or summary, evidence, min_support=min_support)
    report.repairs = repairs
    return repaired or summary, report
