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
from collections.abc import Iterable
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache

from guarita.cache.lexicon import (
    ARTICLES,
    CAPITALISED,
    COMPARATIVE,
    DATE_NUM,
    DAYS,
    EMAIL,
    FILLERS,
    GLUED_UNIT,
    HANDLE,
    IDENTIFIER,
    MONTHS,
    MULTIPLIERS,
    NEGATORS,
    NUMBER_WORDS,
    ORDINAL_NUM,
    ORDINALS,
    PERIOD_MODS,
    PERIODS,
    PHRASES,
    POLES,
    QUOTED,
    RELATIVE,
    ROLE_WORDS,
    SCOPE_WORDS,
    SENTENCE_STARTERS,
    STOPWORDS,
    SYNONYMS,
    TIME,
    UNITS,
    URL,
    WORD,
    WORD_TIME,
)

__all__ = ["Differences", "Features", "Verdict", "differences", "features", "verify"]


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
    if word in SYNONYMS:
        return SYNONYMS[word]
    stemmed = stem(word)
    return SYNONYMS.get(stemmed, stemmed)


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _unit_after(words: list[str], index: int) -> str:
    if index < len(words):
        unit = UNITS.get(words[index])
        if unit is not None and words[index] not in {"m", "s", "h", "x", "c", "f", "l", "g"}:
            return unit
    return ""


def _word_numbers(words: list[str]) -> list[str]:  # noqa: C901 - a small parser
    """Numbers written as words ("twenty five", "two hundred", "a dozen"), with a unit."""
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in ORDINALS:
            # "second" is also a unit of time: an ordinal only before a noun, not after a number
            after_number = i > 0 and words[i - 1] in NUMBER_WORDS and words[i - 1] not in ARTICLES
            if not (word == "second" and after_number):
                out.append(f"ord{ORDINALS[word]}")
            i += 1
            continue
        if word not in NUMBER_WORDS and word not in MULTIPLIERS:
            i += 1
            continue
        if word in ARTICLES:
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if nxt not in MULTIPLIERS and nxt not in {"dozen", "couple", "pair", "half"}:
                i += 1
                continue
        total, current, j = 0.0, 0.0, i
        while j < len(words) and (
            words[j] in NUMBER_WORDS or words[j] in MULTIPLIERS or words[j] == "and"
        ):
            w = words[j]
            if w == "and":
                if j + 1 < len(words) and words[j + 1] in NUMBER_WORDS and current:
                    j += 1
                    continue
                break
            if w in MULTIPLIERS:
                current = (current or 1) * MULTIPLIERS[w]
                if MULTIPLIERS[w] >= 1000:
                    total, current = total + current, 0.0
            elif w in {"couple", "pair", "dozen", "half"} and current:
                current *= NUMBER_WORDS[w]
            else:
                current += NUMBER_WORDS[w]
            j += 1
        if j < len(words) and words[j] == "of":
            j += 1
        out.append(_format_number(total + current) + _unit_after(words, j))
        i = j
    return out


def _dates(text: str, words: list[str]) -> set[str]:
    out: set[str] = set()
    for i, word in enumerate(words):
        if word in DAYS or (word.endswith("s") and word[:-1] in DAYS and len(word) > 4):
            out.add(DAYS[word if word in DAYS else word[:-1]])
        elif word in MONTHS:
            near = words[max(0, i - 2) : i + 3]
            if (
                word != "may"
                or any(w.isdigit() for w in near)
                or (i > 0 and words[i - 1] in {"in", "of"})
            ):
                out.add(MONTHS[word])
        elif word in RELATIVE:
            out.add(RELATIVE[word])
        elif stem(word) in PERIODS and i > 0 and words[i - 1] in PERIOD_MODS:
            out.add(f"{PERIOD_MODS[words[i - 1]]}-{stem(word)}")
    return out


def _entities(original: str, stripped: str) -> list[str]:
    out: list[str] = []
    for match in CAPITALISED.finditer(stripped):
        phrase = match.group(0)
        start = match.start()
        before = stripped[:start].rstrip()
        words = phrase.split()
        at_start = not before or before[-1] in ".!?:;\n"
        if (
            at_start
            and not words[0].isupper()
            and (len(words) == 1 or words[0].lower() in SENTENCE_STARTERS)
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


_PHRASE_TRIGGERS = tuple((p, r, _trigger(p.pattern)) for p, r in PHRASES)


def _apply_phrases(lowered: str) -> str:
    """The phrase rewrites, in order; a pattern whose literal is absent is skipped."""
    for pattern, replacement, trigger in _PHRASE_TRIGGERS:
        if trigger in lowered:
            lowered = pattern.sub(replacement, lowered)
    return lowered


def _word_time(match: re.Match[str]) -> str:
    """``eight a.m.`` -> ``8am``, so that the time parser reads it as ``8am`` is read."""
    return f"{NUMBER_WORDS[match.group(1).lower()]:g}{match.group(2).lower()}m"


@lru_cache(maxsize=65536)
def features(text: str) -> Features:  # noqa: C901 - one pass over the kinds of fact
    """The facts :func:`verify` compares, read from ``text`` (cached per text)."""
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    text = WORD_TIME.sub(_word_time, text)
    entities: list[str] = []
    numbers: list[str] = []
    dates: set[str] = set()
    stripped = text
    for pattern in (EMAIL, URL, HANDLE):
        for m in pattern.finditer(stripped):
            entities.append(m.group(0).lower().rstrip(".,"))
        stripped = pattern.sub(" ", stripped)
    for m in QUOTED.finditer(stripped):
        entities.append((m.group(1) or m.group(2) or "").strip().lower())
    for m in TIME.finditer(stripped):
        if m.group(4) is not None:
            hour, minute = int(m.group(4)), int(m.group(5))
        else:
            hour, minute = int(m.group(1)) % 12, int(m.group(2) or 0)
            if m.group(3).lower() == "p":
                hour += 12
        dates.add(f"t{hour:02d}:{minute:02d}")
    stripped = TIME.sub(" ", stripped)
    for m in DATE_NUM.finditer(stripped):
        dates.add("d" + re.sub(r"\D+", "-", m.group(0)))
    stripped = DATE_NUM.sub(" ", stripped)
    for m in ORDINAL_NUM.finditer(stripped):
        numbers.append(f"ord{int(m.group(1))}")
    stripped = ORDINAL_NUM.sub(" ", stripped)

    lowered_for_units = stripped.lower()
    for m in GLUED_UNIT.finditer(stripped):
        currency, digits, unit = m.group(1), m.group(2), m.group(3)
        value = digits.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+", digits) else digits
        value = value.replace(",", ".")
        norm_unit = UNITS.get(currency or "", "") or UNITS.get((unit or "").lower(), "")
        if not norm_unit:
            tail = lowered_for_units[m.end() :].split(maxsplit=2)
            idx = 1 if tail and tail[0] in {"of"} else 0
            if len(tail) > idx:
                norm_unit = UNITS.get(re.sub(r"\W+$", "", tail[idx]), "")
                if norm_unit in {"m", "sec", "hour", "x", "c", "f", "l", "g", "k"} and tail[
                    idx
                ] in {"m", "s", "h", "x", "c", "f", "l", "g", "k"}:
                    norm_unit = ""
        with contextlib.suppress(ValueError):
            value = _format_number(float(value))
        numbers.append(value + norm_unit)
    stripped = GLUED_UNIT.sub(" ", stripped)
    for m in IDENTIFIER.finditer(stripped):
        entities.append(m.group(0).lower())
    stripped = IDENTIFIER.sub(" ", stripped)
    entities.extend(_entities(text, stripped))

    lowered = _apply_phrases(stripped.lower())
    words = WORD.findall(lowered)
    all_words = WORD.findall(_apply_phrases(text.lower()))
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
        if w in POLES:
            poles.add(POLES[w])
        elif stem(w) in POLES:
            poles.add(POLES[stem(w)])
        elif (w.startswith("un") and w[2:] in POLES) or (w.startswith("dis") and w[3:] in POLES):
            base = w[2:] if w.startswith("un") else w[3:]
            group, pole = POLES[base]
            poles.add((group, 1 - pole))
        elif len(w) > 5 and w.startswith(("un", "dis", "non")):
            base = w[3:] if w.startswith(("dis", "non")) else w[2:]
            prefixed.add(stem(base))
        if w in COMPARATIVE:
            scope.add(COMPARATIVE[w])
        if w in SCOPE_WORDS and not skip_scope_next:
            nxt = words[i + 1] if i + 1 < len(words) else ""
            if not (w in PERIOD_MODS and stem(nxt) in PERIODS):
                scope.add(SCOPE_WORDS[w])
        if w in ROLE_WORDS:
            for nxt in words[i + 1 : i + 4]:
                if nxt not in STOPWORDS and nxt not in ROLE_WORDS:
                    roles.append((w, _canonical(nxt)))
                    break
        if (
            w in STOPWORDS
            or w in NEGATORS
            or w in SCOPE_WORDS
            or w in ROLE_WORDS
            or w in NUMBER_WORDS
            or w in MULTIPLIERS
            or w in ORDINALS
            or w in MONTHS
            or w in DAYS
            or w in RELATIVE
            or w in UNITS
            or w in FILLERS
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


@lru_cache(maxsize=65536)
def _similar(a: str, b: str) -> bool:
    """Same word up to a typo (one edit in a word of five letters or more)."""
    if a == b:
        return True
    if min(len(a), len(b)) < 5 or abs(len(a) - len(b)) > 2:
        return False
    return SequenceMatcher(None, a, b).ratio() >= 0.8


def _entity_diff(a: Features, b: Features) -> bool:
    """An entity of either side that the other names neither as an entity nor word by word."""
    return _entity_unnamed(a.entities, set(b.entities), set(b.tokens)) or _entity_unnamed(
        b.entities, set(a.entities), set(a.tokens)
    )


def _entity_unnamed(
    entities: Iterable[str], other_entities: set[str], other_words: set[str]
) -> bool:
    for entity in entities:
        if entity in other_entities:
            continue
        parts = re.findall(r"[a-z0-9]+", entity)
        if not (parts and all(p in other_words for p in parts)):
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


_NUMBER = re.compile(r"((?:ord)?-?[0-9]+(?:\.[0-9]+)?)(.*)")


def _split_number(number: str) -> tuple[str, str]:
    """``"15year"`` -> ``("15", "year")``; ``"ord2"`` keeps its ``ord`` with the value."""
    match = _NUMBER.fullmatch(number)
    return (match.group(1), match.group(2)) if match else (number, "")


def _numbers_differ(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether the numbers differ as multisets of values, a unit counting only when both
    sides give one ("a 15-year loan" = "a fifteen year loan", but 5 GB != 5 MB)."""
    if sorted(a) == sorted(b):
        return False
    if len(a) != len(b):
        return True
    left = [_split_number(n) for n in b]
    for value, unit in (_split_number(n) for n in a):
        for i, (other_value, other_unit) in enumerate(left):
            if value == other_value and (unit == other_unit or not unit or not other_unit):
                del left[i]
                break
        else:
            return True
    return False


def _plural_diff(a: Features, b: Features) -> bool:
    singular_a = {stem(w) for w in a.tokens} - a.plurals
    singular_b = {stem(w) for w in b.tokens} - b.plurals
    return bool((a.plurals & singular_b) - b.plurals) or bool((b.plurals & singular_a) - a.plurals)


_NOT_WORD = re.compile(r"[^a-z0-9]+")


@lru_cache(maxsize=65536)
def _plain(text: str) -> str:
    """The text without case, punctuation or apostrophes: two texts alike here differ in
    nothing a reader would read as meaning ("I'm charged" = "im charged")."""
    return " ".join(_NOT_WORD.sub(" ", text.lower().replace("'", "").replace("\u2019", "")).split())


def verify(query: str, candidate: str) -> Verdict:
    """Whether ``candidate``'s cached answer may be served for ``query``: ``Verdict(ok=True)``
    or the first kind of difference found (``negation``, ``number``, ``date``, ``entity``,
    ``scope``, ``swap``, ``substitution``)."""
    if query == candidate or _plain(query) == _plain(candidate):
        return Verdict(True)
    a, b = features(query), features(candidate)
    if a.negations % 2 != b.negations % 2 or _pole_conflict(a, b):
        return Verdict(False, "negation")
    if _numbers_differ(a.numbers, b.numbers):
        return Verdict(False, "number")
    if [_split_number(n)[0] for n in a.numbers] != [_split_number(n)[0] for n in b.numbers]:
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


@dataclass(frozen=True, slots=True)
class Differences:
    """Every check of :func:`verify` on a pair, each on its own (``verify`` stops at the
    first): what the learned judge (:mod:`guarita.cache.judge`) reads as features."""

    negation: bool
    poles: bool
    numbers: bool
    number_order: bool
    dates: bool
    swap: bool
    entities: bool
    scope: bool
    plural: bool
    only_query: tuple[str, ...]
    only_candidate: tuple[str, ...]
    shared: int
    content_words: int
    substitution: bool
    plain_equal: bool
    verified: bool


def differences(query: str, candidate: str) -> Differences:
    """All the checks of :func:`verify` for ``query`` and ``candidate``."""
    a, b = features(query), features(candidate)
    only_a = _unmatched(list(dict.fromkeys(a.content)), list(dict.fromkeys(b.content)))
    only_b = _unmatched(list(dict.fromkeys(b.content)), list(dict.fromkeys(a.content)))
    numbers = _numbers_differ(a.numbers, b.numbers)
    return Differences(
        negation=a.negations % 2 != b.negations % 2,
        poles=_pole_conflict(a, b),
        numbers=numbers,
        number_order=not numbers
        and [_split_number(n)[0] for n in a.numbers] != [_split_number(n)[0] for n in b.numbers],
        dates=a.dates != b.dates,
        swap=_swapped(a, b),
        entities=_entity_diff(a, b),
        scope=a.scope != b.scope,
        plural=_plural_diff(a, b),
        only_query=tuple(only_a),
        only_candidate=tuple(only_b),
        shared=len(set(a.content) & set(b.content)),
        content_words=len(set(a.content) | set(b.content)),
        substitution=_content_diff(a, b) == "substitution",
        plain_equal=_plain(query) == _plain(candidate),
        verified=verify(query, candidate).ok,
    )
