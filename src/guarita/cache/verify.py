"""The verifier: a deterministic check that a cached question really asks what the new one asks.

A cosine threshold alone cannot tell "cancel my subscription" from "don't cancel my
subscription" (they embed at ~0.9 with word-level models), so every candidate the vector
search returns goes through :func:`verify`, which compares the *facts* of the two texts and
rejects the pair on the first difference it finds:

* ``negation`` — a different parity of negators (not, n't, never, no, without, unable...),
  or opposite actions from a list of antonym groups (cancel/keep, enable/disable,
  add/remove, upload/download, buy/sell, un-/dis- prefixes...);
* ``number`` — different numbers, read from digits or words ("two hundred"), with their
  unit or currency ("5 GB", "$5" = "5 dollars", "10%" = "10 percent") and ordinals;
* ``date`` — different dates, times, weekdays, months, seasons or relative days
  ("tomorrow", "next week");
* ``entity`` — different capitalised names, quoted strings, product codes and identifiers
  (anything mixing letters and digits), emails, URLs, @handles;
* ``scope`` — different quantifiers (all/every/each vs some vs only), first/last, a noun
  singular on one side and plural on the other, comparatives (cheaper vs more expensive,
  before vs after, most vs least);
* ``swap`` — the same names or words in different roles ("from Paris to Rome" vs "from
  Rome to Paris", "convert USD to EUR" vs "EUR to USD", "Alice pays Bob" vs "Bob pays Alice");
* ``substitution`` — one content word replaced by another that is not a known synonym
  ("reset my password" vs "reset my router"), or a qualifier added on one side only
  ("reset my password" vs "reset my password on Android").

It errs on the side of rejecting: a rejected true paraphrase costs one upstream call, a
served trap gives a user someone else's answer. Typos ("pasword"), case, punctuation,
contractions ("don't" = "do not"), filler words ("please", "can you tell me") and a small
list of synonyms (delete = remove, buy = purchase...) do not count as differences.

Pure Python (regular expressions and small word lists); the features of a text are
computed once and cached (:func:`features`), so verifying a pair costs a few microseconds
when both texts were seen before (``bench/semantic_lookup.py`` measures it).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache

__all__ = ["Features", "Verdict", "features", "verify"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verifier's answer: ``ok`` or the kind of difference that rejected the pair."""

    ok: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Features:
    """What :func:`verify` compares, read once per text."""

    tokens: tuple[str, ...]
    negations: int
    poles: frozenset[tuple[int, int]]
    numbers: tuple[str, ...]
    dates: frozenset[str]
    entities: tuple[str, ...]
    scope: frozenset[str]
    roles: tuple[tuple[str, str], ...]
    content: tuple[str, ...]
    plurals: frozenset[str]
    prefixed: frozenset[str]  # stems seen with a negating prefix (un-, dis-, non-)


# --- word lists ------------------------------------------------------------------------

NEGATORS = frozenset(
    [
        "not",
        "no",
        "never",
        "none",
        "nobody",
        "nothing",
        "nowhere",
        "neither",
        "nor",
        "without",
        "cannot",
        "unable",
        "shouldnt",
        "wont",
        "dont",
        "cant",
        "isnt",
        "arent",
        "wasnt",
        "doesnt",
        "didnt",
    ]
)

# Each group: (words of one pole, words of the other). A text mentioning one pole and the
# other text the opposite pole of the same group is a negation difference.
_ANTONYMS: tuple[tuple[str, str], ...] = (
    ("cancel terminate discontinue unsubscribe quit", "keep continue renew subscribe resume"),
    ("enable activate allow unblock on permit", "disable deactivate block prevent off forbid"),
    ("start begin launch open", "stop end pause halt close finish shutdown"),
    ("add create insert include attach", "remove delete exclude detach drop erase"),
    ("increase raise grow upgrade maximize expand extend", "decrease lower reduce downgrade"),
    ("buy purchase", "sell"),
    ("accept approve confirm allowed", "reject decline refuse denied deny"),
    ("upload", "download"),
    ("import", "export"),
    ("send", "receive"),
    ("push", "pull"),
    ("deposit", "withdraw"),
    ("encrypt", "decrypt"),
    ("lock", "unlock"),
    ("login", "logout"),
    ("connect", "disconnect"),
    ("install", "uninstall"),
    ("show", "hide"),
    ("win won winner", "lose lost loser"),
    ("pass", "fail"),
    ("join", "leave"),
    ("hire", "fire"),
    ("borrow", "lend"),
    ("true", "false"),
    ("yes", "no"),
    ("follow", "unfollow"),
    ("mute", "unmute"),
    ("pin", "unpin"),
    ("archive", "unarchive"),
    ("save", "discard"),
    ("safe", "dangerous unsafe"),
    ("legal", "illegal"),
    ("possible", "impossible"),
    ("available", "unavailable"),
    ("valid", "invalid"),
    ("correct", "incorrect wrong"),
    ("public", "private"),
    ("online", "offline"),
    ("inbound", "outbound"),
    ("incoming", "outgoing"),
    ("arrival arrive", "departure depart"),
)

# Comparatives and order words: a difference here is a scope difference.
_COMPARATIVES: tuple[tuple[str, str], ...] = (
    ("cheap cheaper cheapest", "expensive pricier priciest costlier"),
    ("fast faster fastest quick quicker quickest", "slow slower slowest"),
    ("big bigger biggest large larger largest", "small smaller smallest little tiny"),
    ("high higher highest", "low lowest"),
    ("early earlier earliest", "late later latest"),
    ("before within prior", "after"),
    ("min minimum", "max maximum"),
    ("best better", "worst worse"),
    ("more most", "less least fewer fewest"),
    ("above over", "below under"),
    ("inside", "outside"),
    ("up", "down"),
    ("old older oldest", "new newer newest"),
    ("long longer longest", "short shorter shortest"),
    ("hot hotter", "cold colder"),
    ("strong stronger", "weak weaker"),
    ("heavy heavier", "light lighter"),
)

_SCOPE_WORDS = {
    "all": "ALL",
    "every": "EVERY",
    "each": "ALL",
    "entire": "ALL",
    "whole": "ALL",
    "always": "ALWAYS",
    "everyone": "ALL",
    "everything": "ALL",
    "everybody": "ALL",
    "some": "SOME",
    "several": "SOME",
    "few": "SOME",
    "partial": "SOME",
    "partially": "SOME",
    "sometimes": "SOMETIMES",
    "someone": "SOME",
    "something": "SOME",
    "only": "ONLY",
    "solely": "ONLY",
    "exclusively": "ONLY",
    "first": "FIRST",
    "last": "LAST",
    "previous": "PREV",
    "next": "NEXT",
    "both": "BOTH",
    "either": "EITHER",
    "also": "ALSO",
    "except": "EXCEPT",
    "per": "PER",
    "total": "TOTAL",
    "average": "AVERAGE",
    "single": "SINGLE",
    "multiple": "MULTIPLE",
    "many": "MANY",
}

STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "i",
        "me",
        "my",
        "mine",
        "myself",
        "we",
        "us",
        "our",
        "ours",
        "you",
        "your",
        "yours",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "do",
        "does",
        "did",
        "doing",
        "done",
        "have",
        "has",
        "had",
        "having",
        "can",
        "could",
        "would",
        "should",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "of",
        "in",
        "on",
        "at",
        "for",
        "with",
        "by",
        "about",
        "as",
        "via",
        "through",
        "and",
        "or",
        "but",
        "if",
        "so",
        "then",
        "there",
        "here",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "where",
        "when",
        "why",
        "how",
        "way",
        "ways",
        "possible",
        "possibly",
        "able",
        "please",
        "kindly",
        "help",
        "want",
        "wanted",
        "need",
        "needs",
        "like",
        "know",
        "tell",
        "show",
        "me",
        "explain",
        "get",
        "got",
        "getting",
        "go",
        "going",
        "find",
        "out",
        "learn",
        "wondering",
        "wonder",
        "let",
        "lets",
        "just",
        "really",
        "actually",
        "exactly",
        "also",
        "thing",
        "things",
        "hi",
        "hello",
        "hey",
        "thanks",
        "thank",
        "okay",
        "ok",
        "some",
        "any",
        "anyone",
        "anything",
        "someone",
        "steps",
        "step",
        "process",
        "procedure",
        "guide",
        "instructions",
        "right",
        "proper",
        "properly",
        "best",
        "correct",
        "correctly",
        "quickly",
        "easily",
        "is",
        "s",
        "re",
        "m",
        "ll",
        "ve",
        "d",
        "t",
        "one",
        "use",
        "using",
        "make",
        "sure",
        "does",
        "anybody",
        "him",
        "her",
        "his",
        "he",
        "she",
        "they",
        "them",
        "their",
        "theirs",
        "what's",
        "whats",
        "im",
        "ive",
        "id",
        "youre",
        "into",
        "onto",
        "upon",
        "from",
        "to",
        "than",
        "vs",
        "versus",
        "between",
        "city",
        "place",
        "method",
        "option",
        "kind",
        "type",
        "sort",
        "name",
        "country",
        "someplace",
        "somewhere",
        "info",
        "information",
        "details",
        "detail",
        "much",
        "connection",
        "command",
        "status",
        "so",
        "say",
        "i'd",
        "id",
        "would",
        "allowed",
    ]
) - {"some", "best", "one", "correct", "correctly", "from", "to", "than", "vs", "versus"}

_FILLERS = frozenset(["please", "kindly", "hi", "hello", "hey", "thanks", "thank", "okay", "ok"])

# Content words that are paraphrases of each other; both map to the first word.
_SYNONYM_GROUPS = (
    "remove delete erase",
    "change modify update edit alter adjust",
    "buy purchase",
    "fix repair resolve solve troubleshoot",
    "start begin",
    "cancel terminate discontinue end stop",
    "create make setup",
    "price cost fee charge pricing",
    "problem issue error bug trouble",
    "car vehicle automobile",
    "movie film",
    "phone mobile smartphone cellphone",
    "login signin",
    "signup register registration",
    "email mail",
    "doctor physician",
    "big large",
    "small little",
    "quick fast",
    "show display view see",
    "find locate search look",
    "choose select pick",
    "refund reimbursement",
    "password passcode",
    "account profile",
    "subscription plan membership",
    "contact reach",
    "recover restore retrieve",
    "reset reinitialize",
    "shop store",
    "purchase order",
    "cheap inexpensive affordable",
    "ship deliver send",
    "shipping delivery",
    "happen occur",
    "allowed permitted",
    "explain describe",
    "meaning definition mean define",
    "work function",
    "turn switch",
    "receive get obtain",
    "invoice bill",
    "rule policy",
    "ticket booking reservation",
    "book reserve",
    "payment pay",
    "job work",
    "employee staff worker",
    "boss manager",
    "kid child children",
    "house home",
    "money cash funds",
    "message text",
    "picture photo image",
    "app application",
    "computer pc laptop",
    "website site",
    "begin commence",
    "speed performance",
    "fast rapid",
    "cost expensive",
    "needed required",
    "require need",
    "customer client",
    "leave depart",
    "transfer move",
    "author wrote write writer",
    "difference differ different",
    "safe safely",
    "status where",
    "ask question",
    "order purchase",
)

_MONTHS = {
    "january": "m1", "jan": "m1", "february": "m2", "feb": "m2", "march": "m3", "mar": "m3",
    "april": "m4", "apr": "m4", "may": "m5", "june": "m6", "jun": "m6", "july": "m7",
    "jul": "m7", "august": "m8", "aug": "m8", "september": "m9", "sep": "m9", "sept": "m9",
    "october": "m10", "oct": "m10", "november": "m11", "nov": "m11", "december": "m12",
    "dec": "m12",
}  # fmt: skip
_DAYS = {
    "monday": "w1", "mon": "w1", "tuesday": "w2", "tue": "w2", "tues": "w2", "wednesday": "w3",
    "wed": "w3", "thursday": "w4", "thu": "w4", "thurs": "w4", "friday": "w5", "fri": "w5",
    "saturday": "w6", "sat": "w6", "sunday": "w7", "sun": "w7",
}  # fmt: skip
_RELATIVE = {
    "today": "today", "tonight": "tonight", "tomorrow": "tomorrow", "yesterday": "yesterday",
    "weekend": "weekend", "weekday": "weekday", "weekdays": "weekday", "morning": "morning",
    "afternoon": "afternoon", "evening": "evening", "night": "night", "noon": "noon",
    "midnight": "midnight", "spring": "spring", "summer": "summer", "autumn": "autumn",
    "fall": "autumn", "winter": "winter", "christmas": "christmas", "overnight": "overnight",
    "now": "now", "currently": "now", "daily": "daily", "weekly": "weekly", "monthly": "monthly",
    "yearly": "yearly", "annually": "yearly", "annual": "yearly", "hourly": "hourly",
    "quarterly": "quarterly",
}  # fmt: skip
_PERIODS = frozenset(
    ["day", "week", "month", "year", "quarter", "hour", "minute", "decade", "century"]
)
_PERIOD_MODS = {"next": "next", "last": "last", "this": "this", "past": "last", "previous": "last"}

_UNITS = {
    "%": "%", "percent": "%", "pct": "%", "percentage": "%",
    "usd": "usd", "dollar": "usd", "dollars": "usd", "$": "usd", "bucks": "usd",
    "eur": "eur", "euro": "eur", "euros": "eur", "€": "eur",
    "gbp": "gbp", "pound": "gbp", "pounds": "gbp", "£": "gbp", "yen": "jpy", "¥": "jpy",
    "kb": "kb", "mb": "mb", "gb": "gb", "tb": "tb", "k": "k", "m": "m",
    "kg": "kg", "kilo": "kg", "kilos": "kg", "kilogram": "kg", "kilograms": "kg",
    "g": "g", "gram": "g", "grams": "g", "lb": "lb", "lbs": "lb",
    "km": "km", "kilometer": "km", "kilometers": "km", "kilometre": "km", "kilometres": "km",
    "mile": "mi", "miles": "mi", "mi": "mi", "meter": "meter", "meters": "meter", "metre": "meter",
    "ms": "ms", "millisecond": "ms", "milliseconds": "ms",
    "s": "sec", "sec": "sec", "second": "sec", "seconds": "sec", "secs": "sec",
    "min": "minute", "mins": "minute", "minute": "minute", "minutes": "minute",
    "h": "hour", "hr": "hour", "hrs": "hour", "hour": "hour", "hours": "hour",
    "day": "day", "days": "day", "week": "week", "weeks": "week", "month": "month",
    "months": "month", "year": "year", "years": "year", "yr": "year", "yrs": "year",
    "x": "x", "times": "x", "gbps": "gbps", "mbps": "mbps", "ghz": "ghz", "mhz": "mhz",
    "c": "c", "f": "f", "degrees": "deg", "degree": "deg", "l": "l", "liter": "l", "liters": "l",
    "ml": "ml", "cm": "cm", "mm": "mm", "inch": "in", "inches": "in", "ft": "ft", "feet": "ft",
}  # fmt: skip

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "dozen": 12, "a": 1, "an": 1,
    "single": 1, "couple": 2, "pair": 2, "twice": 2, "once": 1, "thrice": 3, "half": 0.5,
}  # fmt: skip
_MULTIPLIERS = {"hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 10**9}
_ORDINALS = {
    "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "twentieth": 20,
    "hundredth": 100,
}  # fmt: skip
# "a"/"an" count as one only before a multiplier or a unit ("a hundred", "an hour").
_ARTICLES = frozenset({"a", "an"})

_ROLE_WORDS = frozenset(
    ["from", "to", "into", "than", "vs", "versus", "over", "between", "and", "by", "for"]
)

_SENTENCE_STARTERS = frozenset(
    [
        "how",
        "what",
        "why",
        "when",
        "where",
        "who",
        "which",
        "whose",
        "can",
        "could",
        "is",
        "are",
        "am",
        "do",
        "does",
        "did",
        "will",
        "would",
        "should",
        "shall",
        "may",
        "might",
        "must",
        "i",
        "please",
        "tell",
        "show",
        "give",
        "list",
        "explain",
        "help",
        "my",
        "the",
        "a",
        "an",
        "is",
        "there",
        "it",
        "its",
        "in",
        "on",
        "at",
        "for",
        "to",
        "from",
        "if",
        "hi",
        "hello",
        "hey",
        "hey",
        "so",
        "and",
        "but",
        "or",
        "what's",
        "whats",
        "i'm",
        "im",
        "let",
        "lets",
        "any",
        "does",
        "name",
        "describe",
        "find",
        "get",
        "make",
        "write",
        "create",
        "compare",
        "convert",
        "translate",
        "summarize",
        "check",
        "calculate",
        "set",
        "reset",
        "change",
        "cancel",
        "delete",
        "remove",
        "add",
        "book",
        "buy",
        "send",
        "need",
        "want",
        "recommend",
        "suggest",
    ]
)

_PHRASES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"\b(log|sign)(ging|ged)? ?in(to)?\b", " login "),
        (r"\b(log|sign)(ging|ged)? ?out\b", " logout "),
        (r"\bsign(ing|ed)? ?up\b", " signup "),
        (r"\bset(ting)? ?up\b", " setup "),
        (r"\bturn(ing|ed)? on\b", " enable "),
        (r"\bturn(ing|ed)? off\b", " disable "),
        (r"\bswitch(ing|ed)? on\b", " enable "),
        (r"\bswitch(ing|ed)? off\b", " disable "),
        (r"\bshut(ting)? ?down\b", " shutdown "),
        (r"\bmore expensive\b", " pricier "),
        (r"\bless expensive\b", " cheaper "),
        (r"\b(no longer)\b", " not "),
        (r"\bin front of\b", " before "),
        (r"\bprior to\b", " before "),
        (r"\bget rid of\b", " remove "),
        (r"\bpay for\b", " buy "),
        (r"\bwhat is the way\b", " how "),
        (r"\bat least\b", " min "),
        (r"\bat most\b", " max "),
        (r"\bup to\b", " max "),
        (r"\bmore than\b", " over "),
        (r"\bless than\b", " under "),
        (r"\bfewer than\b", " under "),
        (r"\bon time\b", " ontime "),
        (r"\ba lot of\b", " many "),
        (r"\blots of\b", " many "),
        (r"\bper cent\b", " percent "),
        (r"\bcan ?not\b", " can not "),
        (r"\bwon't\b", " will not "),
        (r"\bshan't\b", " shall not "),
        (r"\bcan't\b", " can not "),
        (r"n't\b", " not "),
        (r"'(s|re|m|ll|ve|d)\b", " "),
    )
)

_URL = re.compile(r"\bhttps?://\S+|\bwww\.\S+|\b[\w-]+(?:\.[\w-]+)*\.(?:com|org|net|io|dev|ai)\b")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_HANDLE = re.compile(r"(?<!\w)[@#][\w-]+")
_QUOTED = re.compile(r"[\"“”«»]([^\"“”«»]{1,60})[\"“”«»]|(?<!\w)'([^']{1,60})'(?!\w)")
_TIME = re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s*([ap])\.?m\b\.?|\b(\d{1,2}):(\d{2})\b", re.I)
_DATE_NUM = re.compile(r"\b\d{4}-\d{1,2}-\d{1,2}\b|\b\d{1,2}[/.]\d{1,2}(?:[/.]\d{2,4})?\b")
_ORDINAL_NUM = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b", re.I)
_GLUED_UNIT = re.compile(
    r"(?<![\w.])([$€£¥])?\s?(\d+(?:[.,]\d+)*)\s?"
    r"(%|k|m|kb|mb|gb|tb|kg|km|ms|s|h|x|gbps|mbps|ghz|mhz|ml|cm|mm|lbs?|yrs?|hrs?|mins?)?(?!\w)"
    r"(?!\s*\w*\d)",
    re.I,
)
_IDENTIFIER = re.compile(r"\b(?=[\w-]*\d)(?=[\w-]*[a-zA-Z])[\w][\w-]*\b")
_CAPITALISED = re.compile(r"\b[A-Z][\w&'-]*(?:\s+(?:of\s+|de\s+|the\s+)?[A-Z][\w&'-]*)*")
_WORD = re.compile(r"[a-z0-9$€£¥%]+(?:[.,][0-9]+)*")


def _build_poles() -> dict[str, tuple[int, int]]:
    poles: dict[str, tuple[int, int]] = {}
    for group, (left, right) in enumerate(_ANTONYMS):
        for word in left.split():
            poles.setdefault(word, (group, 0))
        for word in right.split():
            poles.setdefault(word, (group, 1))
    return poles


def _build_comparatives() -> dict[str, str]:
    out: dict[str, str] = {}
    for group, (left, right) in enumerate(_COMPARATIVES):
        for word in left.split():
            out.setdefault(word, f"c{group}+")
        for word in right.split():
            out.setdefault(word, f"c{group}-")
    return out


def _build_synonyms() -> dict[str, str]:
    out: dict[str, str] = {}
    for group in _SYNONYM_GROUPS:
        words = group.split()
        for word in words:
            out.setdefault(word, words[0])
    return out


_POLES = _build_poles()
_COMPARATIVE = _build_comparatives()
_SYNONYMS = _build_synonyms()


def stem(word: str) -> str:
    """A crude suffix stripper, applied the same way to both texts."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 4 and word.endswith("ied"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("ed") and not word.endswith("eed"):
        return word[:-2] if not word.endswith("ced") else word[:-1]
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _canonical(word: str) -> str:
    if word in _SYNONYMS:
        return _SYNONYMS[word]
    stemmed = stem(word)
    return _SYNONYMS.get(stemmed, stemmed)


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _unit_after(words: list[str], index: int) -> str:
    if index < len(words):
        unit = _UNITS.get(words[index])
        if unit is not None and words[index] not in {"m", "s", "h", "x", "c", "f", "l", "g"}:
            return unit
    return ""


def _word_numbers(words: list[str]) -> list[str]:  # noqa: C901 - a small parser
    """Numbers written as words ("twenty five", "two hundred", "a dozen"), with a unit."""
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in _ORDINALS:
            # "second" is also a unit of time: an ordinal only before a noun, not after a number
            if not (word == "second" and i > 0 and words[i - 1] in _NUMBER_WORDS):
                out.append(f"ord{_ORDINALS[word]}")
            i += 1
            continue
        if word not in _NUMBER_WORDS and word not in _MULTIPLIERS:
            i += 1
            continue
        if word in _ARTICLES:
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if nxt not in _MULTIPLIERS and nxt not in {"dozen", "couple", "pair", "half"}:
                i += 1
                continue
        total, current, j = 0.0, 0.0, i
        while j < len(words) and (
            words[j] in _NUMBER_WORDS or words[j] in _MULTIPLIERS or words[j] == "and"
        ):
            w = words[j]
            if w == "and":
                if j + 1 < len(words) and words[j + 1] in _NUMBER_WORDS and current:
                    j += 1
                    continue
                break
            if w in _MULTIPLIERS:
                current = (current or 1) * _MULTIPLIERS[w]
                if _MULTIPLIERS[w] >= 1000:
                    total, current = total + current, 0.0
            elif w in {"couple", "pair", "dozen", "half"} and current:
                current *= _NUMBER_WORDS[w]
            else:
                current += _NUMBER_WORDS[w]
            j += 1
        if j < len(words) and words[j] == "of":
            j += 1
        out.append(_format_number(total + current) + _unit_after(words, j))
        i = j
    return out


def _dates(text: str, words: list[str]) -> set[str]:
    out: set[str] = set()
    for i, word in enumerate(words):
        if word in _DAYS or (word.endswith("s") and word[:-1] in _DAYS and len(word) > 4):
            out.add(_DAYS[word if word in _DAYS else word[:-1]])
        elif word in _MONTHS:
            near = words[max(0, i - 2) : i + 3]
            if (
                word != "may"
                or any(w.isdigit() for w in near)
                or (i > 0 and words[i - 1] in {"in", "of"})
            ):
                out.add(_MONTHS[word])
        elif word in _RELATIVE:
            out.add(_RELATIVE[word])
        elif stem(word) in _PERIODS and i > 0 and words[i - 1] in _PERIOD_MODS:
            out.add(f"{_PERIOD_MODS[words[i - 1]]}-{stem(word)}")
    return out


def _entities(original: str, stripped: str) -> list[str]:
    out: list[str] = []
    for match in _CAPITALISED.finditer(stripped):
        phrase = match.group(0)
        start = match.start()
        before = stripped[:start].rstrip()
        words = phrase.split()
        at_start = not before or before[-1] in ".!?:;\n"
        if (
            at_start
            and not words[0].isupper()
            and (len(words) == 1 or words[0].lower() in _SENTENCE_STARTERS)
        ):
            # a capitalised word opening a sentence is not taken for a name ("Book a table")
            words = words[1:]
        words = [w for w in words if w.lower() not in {"i", "of", "de", "the"}]
        if words:
            out.append(" ".join(w.lower().strip("'") for w in words))
    return out


def _trigger(pattern: str) -> str:
    """A literal every match of ``pattern`` contains, to skip the pattern cheaply."""
    if pattern.startswith(r"\b(log|sign)"):
        return "out" if "out" in pattern else "in"
    for word in ("log", "sign", "set", "turn", "switch", "shut", "expensive", "longer",
                 "front", "prior", "rid", "pay", "way", "least", "most", "up", "than",
                 "time", "lot", "cent", "not", "won't", "shan't", "can't", "n't", "'"):  # fmt: skip
        if word in pattern:
            return word
    return ""


_PHRASE_TRIGGERS = tuple((p, r, _trigger(p.pattern)) for p, r in _PHRASES)


def _apply_phrases(lowered: str) -> str:
    """The phrase rewrites, in order; a pattern whose literal is absent is skipped."""
    for pattern, replacement, trigger in _PHRASE_TRIGGERS:
        if trigger in lowered:
            lowered = pattern.sub(replacement, lowered)
    return lowered


@lru_cache(maxsize=65536)
def features(text: str) -> Features:  # noqa: C901 - one pass over the kinds of fact
    """The facts :func:`verify` compares, read from ``text`` (cached per text)."""
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    entities: list[str] = []
    numbers: list[str] = []
    dates: set[str] = set()
    stripped = text
    for pattern in (_EMAIL, _URL, _HANDLE):
        for m in pattern.finditer(stripped):
            entities.append(m.group(0).lower().rstrip(".,"))
        stripped = pattern.sub(" ", stripped)
    for m in _QUOTED.finditer(stripped):
        entities.append((m.group(1) or m.group(2) or "").strip().lower())
    for m in _TIME.finditer(stripped):
        if m.group(4) is not None:
            hour, minute = int(m.group(4)), int(m.group(5))
        else:
            hour, minute = int(m.group(1)) % 12, int(m.group(2) or 0)
            if m.group(3).lower() == "p":
                hour += 12
        dates.add(f"t{hour:02d}:{minute:02d}")
    stripped = _TIME.sub(" ", stripped)
    for m in _DATE_NUM.finditer(stripped):
        dates.add("d" + re.sub(r"\D+", "-", m.group(0)))
    stripped = _DATE_NUM.sub(" ", stripped)
    for m in _ORDINAL_NUM.finditer(stripped):
        numbers.append(f"ord{int(m.group(1))}")
    stripped = _ORDINAL_NUM.sub(" ", stripped)

    lowered_for_units = stripped.lower()
    for m in _GLUED_UNIT.finditer(stripped):
        currency, digits, unit = m.group(1), m.group(2), m.group(3)
        value = digits.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+", digits) else digits
        value = value.replace(",", ".")
        norm_unit = _UNITS.get(currency or "", "") or _UNITS.get((unit or "").lower(), "")
        if not norm_unit:
            tail = lowered_for_units[m.end() :].split(maxsplit=2)
            idx = 1 if tail and tail[0] in {"of"} else 0
            if len(tail) > idx:
                norm_unit = _UNITS.get(re.sub(r"\W+$", "", tail[idx]), "")
                if norm_unit in {"m", "sec", "hour", "x", "c", "f", "l", "g", "k"} and tail[
                    idx
                ] in {"m", "s", "h", "x", "c", "f", "l", "g", "k"}:
                    norm_unit = ""
        with contextlib.suppress(ValueError):
            value = _format_number(float(value))
        numbers.append(value + norm_unit)
    stripped = _GLUED_UNIT.sub(" ", stripped)
    for m in _IDENTIFIER.finditer(stripped):
        entities.append(m.group(0).lower())
    stripped = _IDENTIFIER.sub(" ", stripped)
    entities.extend(_entities(text, stripped))

    lowered = _apply_phrases(stripped.lower())
    words = _WORD.findall(lowered)
    all_words = _WORD.findall(_apply_phrases(text.lower()))
    numbers.extend(_word_numbers(words))
    dates |= _dates(text, all_words)

    negations = sum(1 for w in words if w in NEGATORS)
    poles: set[tuple[int, int]] = set()
    scope: set[str] = set()
    content: list[str] = []
    plurals: set[str] = set()
    roles: list[tuple[str, str]] = []
    prefixed: set[str] = set()
    skip_scope_next = False
    for i, w in enumerate(words):
        if w in _POLES:
            poles.add(_POLES[w])
        elif stem(w) in _POLES:
            poles.add(_POLES[stem(w)])
        elif (w.startswith("un") and w[2:] in _POLES) or (w.startswith("dis") and w[3:] in _POLES):
            base = w[2:] if w.startswith("un") else w[3:]
            group, pole = _POLES[base]
            poles.add((group, 1 - pole))
        elif len(w) > 5 and w.startswith(("un", "dis", "non")):
            base = w[3:] if w.startswith(("dis", "non")) else w[2:]
            prefixed.add(stem(base))
        if w in _COMPARATIVE:
            scope.add(_COMPARATIVE[w])
        if w in _SCOPE_WORDS and not skip_scope_next:
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if not (w in _PERIOD_MODS and stem(nxt) in _PERIODS):
                scope.add(_SCOPE_WORDS[w])
        if w in _ROLE_WORDS:
            for nxt in words[i + 1 : i + 4]:
                if nxt not in STOPWORDS and nxt not in _ROLE_WORDS:
                    roles.append((w, _canonical(nxt)))
                    break
        if (
            w in STOPWORDS
            or w in NEGATORS
            or w in _SCOPE_WORDS
            or w in _ROLE_WORDS
            or w in _NUMBER_WORDS
            or w in _MULTIPLIERS
            or w in _ORDINALS
            or w in _MONTHS
            or w in _DAYS
            or w in _RELATIVE
            or w in _UNITS
            or w in _FILLERS
            or w.isdigit()
        ):
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
            plurals.add(stem(w))
        content.append(_canonical(w))
    return Features(
        tokens=tuple(all_words),
        negations=negations,
        poles=frozenset(poles),
        numbers=tuple(numbers),
        dates=frozenset(dates),
        entities=tuple(e for e in entities if e),
        scope=frozenset(scope),
        roles=tuple(roles),
        content=tuple(content),
        plurals=frozenset(plurals),
        prefixed=frozenset(prefixed),
    )


def _similar(a: str, b: str) -> bool:
    """Same word up to a typo (one edit in a word of five letters or more)."""
    if a == b:
        return True
    if min(len(a), len(b)) < 5 or abs(len(a) - len(b)) > 2:
        return False
    return SequenceMatcher(None, a, b).ratio() >= 0.8


def _entity_diff(a: Features, b: Features) -> bool:
    words_a = set(a.tokens)
    words_b = set(b.tokens)
    ents_b = set(b.entities)
    for entity in a.entities:
        if entity in ents_b:
            continue
        parts = re.findall(r"[a-z0-9]+", entity)
        if parts and all(p in words_b for p in parts):
            continue
        return True
    ents_a = set(a.entities)
    for entity in b.entities:
        if entity in ents_a:
            continue
        parts = re.findall(r"[a-z0-9]+", entity)
        if parts and all(p in words_a for p in parts):
            continue
        return True
    return False


def _pole_conflict(a: Features, b: Features) -> bool:
    groups: dict[int, tuple[set[int], set[int]]] = {}
    for group, pole in a.poles:
        groups.setdefault(group, (set(), set()))[0].add(pole)
    for group, pole in b.poles:
        groups.setdefault(group, (set(), set()))[1].add(pole)
    if any(pa and pb and pa != pb for pa, pb in groups.values()):
        return True
    stems_a = {stem(w) for w in a.tokens}
    stems_b = {stem(w) for w in b.tokens}
    return bool((a.prefixed & stems_b) - b.prefixed) or bool((b.prefixed & stems_a) - a.prefixed)


def _swapped(a: Features, b: Features) -> bool:
    # the same names in another order
    if (
        len(a.entities) >= 2
        and sorted(a.entities) == sorted(b.entities)
        and list(a.entities) != list(b.entities)
    ):
        return True
    # one word after "from" on one side and after "to"/"into" on the other
    direction = {"from": "from", "to": "to", "into": "to"}
    dir_a = {(direction[r], w) for r, w in a.roles if r in direction}
    dir_b = {(direction[r], w) for r, w in b.roles if r in direction}
    words_dir_a = {w for _r, w in dir_a}
    for role, word in dir_b:
        if word in words_dir_a and (role, word) not in dir_a:
            return True
    # a role word followed by another word that the other text also has
    roles_b: dict[str, set[str]] = {}
    for role, word in b.roles:
        roles_b.setdefault(role, set()).add(word)
    content_a, content_b = set(a.content), set(b.content)
    for role, word in a.roles:
        others = roles_b.get(role)
        if others and word not in others and word in content_b:
            swapped = [o for o in others if o in content_a]
            if swapped:
                return True
    return False


def _unmatched(words: list[str], others: list[str]) -> list[str]:
    left = list(others)
    out = []
    for w in words:
        for i, o in enumerate(left):
            if _similar(w, o):
                del left[i]
                break
        else:
            out.append(w)
    return out


def _content_diff(a: Features, b: Features) -> str:
    only_a = _unmatched(list(dict.fromkeys(a.content)), list(dict.fromkeys(b.content)))
    only_b = _unmatched(list(dict.fromkeys(b.content)), list(dict.fromkeys(a.content)))
    shared = len(set(a.content) & set(b.content))
    if only_a and only_b and len(only_a) + len(only_b) <= 3:
        return "substitution"
    if shared and (bool(only_a) != bool(only_b)) and len(only_a) + len(only_b) <= 2:
        return "substitution"
    if not shared and (only_a or only_b):
        return "unrelated"
    return ""


def _plural_diff(a: Features, b: Features) -> bool:
    singular_a = {stem(w) for w in a.tokens} - a.plurals
    singular_b = {stem(w) for w in b.tokens} - b.plurals
    return bool((a.plurals & singular_b) - b.plurals) or bool((b.plurals & singular_a) - a.plurals)


def verify(query: str, candidate: str) -> Verdict:
    """Whether ``candidate``'s cached answer may be served for ``query``: ``Verdict(ok=True)``
    or the first kind of difference found (``negation``, ``number``, ``date``, ``entity``,
    ``scope``, ``swap``, ``substitution``)."""
    if query == candidate:
        return Verdict(True)
    a, b = features(query), features(candidate)
    if a.negations % 2 != b.negations % 2 or _pole_conflict(a, b):
        return Verdict(False, "negation")
    if sorted(a.numbers) != sorted(b.numbers):
        return Verdict(False, "number")
    if a.numbers != b.numbers:
        return Verdict(False, "swap")
    if a.dates != b.dates:
        return Verdict(False, "date")
    if _swapped(a, b):
        return Verdict(False, "swap")
    if _entity_diff(a, b):
        return Verdict(False, "entity")
    if a.scope != b.scope or _plural_diff(a, b):
        return Verdict(False, "scope")
    reason = _content_diff(a, b)
    if reason:
        return Verdict(False, reason)
    return Verdict(True)
