"""Folding text into one canonical form, and the decoded variants an attack may hide in.

Attackers dodge string rules by changing the surface, not the words: full-width or
Cyrillic look-alike letters, zero-width characters between letters, Unicode "tag"
characters that render as nothing, spaced-out letters (``i g n o r e``), leetspeak,
base64, hex, ROT13 or reversed text. :func:`normalise` folds the surface once (NFKC,
case, diacritics, look-alikes, invisibles) and returns, beside the folded text, the few
variants worth matching again; each variant is bounded in number and size so the cost of
a message stays linear in its length.

Look-alike folding is applied per word, and only to words that mix Latin with Cyrillic or
Greek letters or consist solely of look-alikes, so that genuine Russian or Greek text
keeps its meaning.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from dataclasses import dataclass

__all__ = ["NormalisedText", "fold", "normalise"]

# Cyrillic and Greek letters that render like a Latin one (lower case: folding runs after
# casefold). Kept small on purpose: the letters used in practice, not the whole confusables
# table.
_LOOKALIKE_SOURCE = (
    "\u0430\u0432\u0435\u0451\u043a\u043c\u043d\u043e\u0440\u0441\u0442\u0443\u0445\u0455"
    "\u0456\u0457\u0458\u0501\u04bb\u04cf\u051b\u051d\u0261\u0251\u03b1\u03b2\u03b5\u03b7"
    "\u03b9\u03ba\u03bd\u03bf\u03c1\u03c4\u03c5\u03c7\u03c9\u04ce"
)
_LOOKALIKE_TARGET = "abeekmhopctyxsiijdhlqwgaabenikvoptuxwm"
_LOOKALIKES = str.maketrans(_LOOKALIKE_SOURCE, _LOOKALIKE_TARGET)
_LOOKALIKE_CHARS = frozenset(_LOOKALIKE_SOURCE)
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t",
                       "@": "a", "$": "s", "|": "l", "!": "i", "+": "t"})  # fmt: skip

# Format characters that render as nothing (zero-width, joiners, bidi controls, soft
# hyphen, word joiner, BOM, Mongolian vowel separator, invisible operators).
_INVISIBLE = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u180e\u200b-\u200f\u202a-\u202e"
                        "\u2060-\u2064\u2066-\u206f\ufeff\ufe00-\ufe0f]")  # fmt: skip
_INVISIBLE_IN_WORD = re.compile(r"\w[\u00ad\u200b-\u200f\u2060-\u2064\ufeff]+\w")
_TAGS = re.compile("[\U000e0000-\U000e007f]+")
_NON_LATIN_WORD = re.compile(r"\w*[^\W\x00-\x7f]\w*")
_SPACES = re.compile(r"\s+")
# Three or more single letters each followed by one separator: "i g n o r e", "i.g.n.o.r.e".
_SPACED_LETTERS = re.compile(r"(?<!\w)(?:\w[ .\-_*·/|]){3,}\w(?!\w)")
_LEET_HINT = re.compile(r"[a-z][0-9@$|!+][a-z]|\b[0-9@$|!][a-z]{2}|[a-z]{2}[0-9@$|!]\b")
_BASE64_CHUNK = re.compile(r"[A-Za-z0-9+/_\-]{16,}={0,2}")
_HEX_CHUNK = re.compile(r"(?:[0-9a-fA-F]{2}[ :]?){12,}")

_MAX_DECODED_CHUNKS = 8
_MAX_CHUNK_CHARS = 8192
_MAX_VARIANT_CHARS = 32768
_MAX_TRANSFORMED_CHARS = 8192


@dataclass(frozen=True, slots=True)
class NormalisedText:
    """The folded text, the variants to match again, and surface signals seen on the way.

    ``variants`` pairs a name (``leet``, ``despaced``, ``base64``, ``hex``, ``rot13``,
    ``reversed``, ``tags``) with a folded text; ``signals`` names surface tricks found
    (``invisible_chars``, ``unicode_tags``, ``homoglyphs``).
    """

    folded: str
    variants: tuple[tuple[str, str], ...]
    signals: frozenset[str]


def _fold_lookalikes(text: str) -> tuple[str, bool]:
    changed = False

    def fold_word(match: re.Match[str]) -> str:
        nonlocal changed
        word = match.group(0)
        letters = [c for c in word if c.isalpha()]
        has_latin = any(c.isascii() for c in letters)
        lookalikes = sum(c in _LOOKALIKE_CHARS for c in letters)
        if lookalikes and (has_latin or lookalikes == len(letters)):
            changed = True
            return word.translate(_LOOKALIKES)
        return word

    return _NON_LATIN_WORD.sub(fold_word, text), changed


def _strip_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def fold(text: str) -> str:
    """The canonical form rules and classifier both read: no variants, no signals."""
    return _fold(text)[0]


def _fold(text: str) -> tuple[str, frozenset[str], str]:
    signals: set[str] = set()
    hidden = ""
    if not text.isascii():
        tags = _TAGS.findall(text)
        if tags:
            # Tag characters U+E0020..E007E mirror ASCII; decode what they spell.
            hidden = "".join(chr(ord(c) - 0xE0000) for c in "".join(tags) if ord(c) > 0xE001F)
            if len(hidden) >= 4:
                signals.add("unicode_tags")
            text = _TAGS.sub("", text)
        if _INVISIBLE_IN_WORD.search(text):
            signals.add("invisible_chars")
        text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text))
        text = _strip_marks(text.casefold())
        text, changed = _fold_lookalikes(text)
        if changed:
            signals.add("homoglyphs")
    else:
        text = text.lower()
    return _SPACES.sub(" ", text).strip(), frozenset(signals), hidden


def _printable_ratio(text: str) -> float:
    if not text:
        return 0.0
    good = sum(c.isprintable() or c in "\n\t" for c in text)
    return good / len(text)


def _decode_bytes(raw: bytes) -> str | None:
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    letters = sum(c.isalpha() for c in decoded)
    if len(decoded) < 8 or _printable_ratio(decoded) < 0.9 or letters < len(decoded) * 0.5:
        return None
    return decoded


def _decode_base64(chunk: str) -> str | None:
    padded = chunk + "=" * (-len(chunk) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return _decode_bytes(raw)


def _decode_hex(chunk: str) -> str | None:
    try:
        raw = bytes.fromhex(re.sub(r"[ :]", "", chunk))
    except ValueError:
        return None
    return _decode_bytes(raw)


def _decoded_chunks(raw_text: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for name, pattern, decode in (
        ("base64", _BASE64_CHUNK, _decode_base64),
        ("hex", _HEX_CHUNK, _decode_hex),
    ):
        for match in pattern.finditer(raw_text):
            if len(found) >= _MAX_DECODED_CHUNKS:
                return found
            decoded = decode(match.group(0)[:_MAX_CHUNK_CHARS])
            if decoded is not None:
                found.append((name, _fold(decoded)[0]))
    return found


def normalise(text: str) -> NormalisedText:
    """Fold ``text`` and derive the variants an attack could be hiding in."""
    folded, signals, hidden = _fold(text)
    head = folded[:_MAX_VARIANT_CHARS]
    variants: list[tuple[str, str]] = []
    if hidden:
        variants.append(("tags", _fold(hidden)[0]))
    despaced = _SPACED_LETTERS.sub(lambda m: re.sub(r"[ .\-_*·/|]", "", m.group(0)), head)
    if despaced != head:
        variants.append(("despaced", despaced))
    if _LEET_HINT.search(head):
        variants.append(("leet", head.translate(_LEET)))
    variants.extend(_decoded_chunks(text[:_MAX_VARIANT_CHARS]))
    # ROT13 and reversed text are whole-message tricks: the head is enough.
    short = head[:_MAX_TRANSFORMED_CHARS]
    variants.append(("rot13", codecs.encode(short, "rot13")))
    variants.append(("reversed", short[::-1]))
    return NormalisedText(folded=folded, variants=tuple(variants), signals=signals)
