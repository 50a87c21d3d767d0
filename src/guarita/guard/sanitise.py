"""Message text made safe to pass on: control characters out, Unicode in one normal form,
hidden characters out.

Removed always: C0 and C1 control characters other than newline and tab (``\\r\\n`` and a
lone ``\\r`` become ``\\n``), and DEL. Removed with ``strip_invisible`` (the default):
characters that render as nothing yet carry text or reorder it, the usual carriers of
hidden instructions — bidirectional embeddings, overrides and isolates, zero-width space,
word joiner and invisible operators, the byte-order mark, soft hyphen, Unicode tag
characters (U+E0000 to U+E007F, "ASCII smuggling") and the variation selectors supplement.
Kept: zero-width joiner and non-joiner (emoji sequences, Indic and Persian scripts) and the
left-to-right / right-to-left marks, which right-to-left text needs.

An ASCII message costs one regex search; normalisation runs only on text that is not
already in the normal form (:func:`unicodedata.is_normalized`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

Normalization = Literal["NFC", "NFKC", "off"]

_CONTROLS = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x80-\x9f"
_INVISIBLE = (
    "\u00ad"  # soft hyphen
    "\u180e"  # Mongolian vowel separator
    "\u200b"  # zero-width space
    "\u202a-\u202e"  # bidi embeddings and overrides
    "\u2060-\u2064"  # word joiner, invisible operators
    "\u2066-\u2069"  # bidi isolates
    "\ufeff"  # byte-order mark / zero-width no-break space
    "\U000e0000-\U000e007f"  # tag characters
    "\U000e0100-\U000e01ef"  # variation selectors supplement
)
_STRIP_CONTROLS = re.compile(f"[{_CONTROLS}]+")
_STRIP_ALL = re.compile(f"[{_CONTROLS}{_INVISIBLE}]+")
_ASCII_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
"""An ASCII text needs work only when it has one of these (``\\r`` included)."""


@dataclass(frozen=True, slots=True)
class Sanitiser:
    normalization: Normalization = "NFC"
    strip_invisible: bool = True

    def clean(self, text: str) -> tuple[str, int]:
        """``text`` cleaned, and how many characters were removed (newline forms aside)."""
        if text.isascii():
            if _ASCII_CONTROLS.search(text) is None:
                return text, 0
        elif self.normalization != "off" and not unicodedata.is_normalized(
            self.normalization, text
        ):
            text = unicodedata.normalize(self.normalization, text)
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        pattern = _STRIP_ALL if self.strip_invisible else _STRIP_CONTROLS
        cleaned = pattern.sub("", text)
        return cleaned, len(text) - len(cleaned)
