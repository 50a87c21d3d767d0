"""Payment card issuers: which prefixes and lengths a real card number can have.

Luhn alone accepts one digit run in ten, so an order or tracking number passes it often;
requiring a known issuer prefix *and* a length that issuer uses as well is what keeps
timestamps, epoch milliseconds and reference numbers from being taken for cards. The
table follows the public IIN ranges (ISO/IEC 7812 as the networks publish them); UATP
(prefix 1) is left out on purpose, since every epoch-millisecond timestamp starts with 1.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Issuer:
    """One card network: its IIN ranges (inclusive, as equal-length digit strings) and the
    card lengths it issues."""

    name: str
    ranges: tuple[tuple[str, str], ...]
    lengths: frozenset[int]


def _span(low: int, high: int) -> frozenset[int]:
    return frozenset(range(low, high + 1))


def _one(*prefixes: str) -> tuple[tuple[str, str], ...]:
    return tuple((p, p) for p in prefixes)


ISSUERS: tuple[Issuer, ...] = (
    Issuer("visa", _one("4"), frozenset({13, 16, 19})),
    Issuer("mastercard", (("51", "55"), ("2221", "2720")), frozenset({16})),
    Issuer("amex", _one("34", "37"), frozenset({15})),
    Issuer(
        "discover",
        (("6011", "6011"), ("644", "649"), ("65", "65"), ("622126", "622925")),
        _span(16, 19),
    ),
    Issuer("jcb", (("3528", "3589"),), _span(16, 19)),
    Issuer(
        "diners",
        (("300", "305"), ("3095", "3095"), ("36", "36"), ("38", "39")),
        _span(14, 19),
    ),
    Issuer("unionpay", (("62", "62"), ("8100", "8171")), _span(16, 19)),
    Issuer(
        "maestro",
        (*_one("5018", "5020", "5038", "5893", "6304", "6759"), ("6761", "6763")),
        _span(13, 19),
    ),
    Issuer(
        "elo",
        (
            *_one("401178", "401179", "431274", "438935", "451416", "457393"),
            *_one("457631", "457632", "504175", "627780", "636297", "636368"),
            ("506699", "506778"),
            ("509000", "509999"),
            ("650031", "650033"),
            ("650035", "650051"),
            ("650405", "650439"),
            ("650485", "650538"),
            ("650541", "650598"),
            ("650700", "650718"),
            ("650720", "650727"),
            ("650901", "650978"),
            ("651652", "651679"),
            ("655000", "655019"),
            ("655021", "655058"),
        ),
        frozenset({16}),
    ),
    Issuer(
        "hipercard",
        _one("606282", "384100", "384140", "384160", "637095", "637568", "637599")
        + _one("637609", "637612"),
        frozenset({16, 19}),
    ),
    Issuer("mir", (("2200", "2204"),), _span(16, 19)),
    Issuer("rupay", (*_one("60", "65", "508", "353", "356"), ("81", "82")), frozenset({16})),
    Issuer("troy", _one("9792"), frozenset({16})),
    Issuer(
        "verve",
        (("506099", "506198"), ("507865", "507964"), ("650002", "650027")),
        frozenset({16, 18, 19}),
    ),
    Issuer("dankort", _one("5019"), frozenset({16})),
    Issuer("instapayment", (("637", "639"),), frozenset({16})),
)

MIN_CARD_DIGITS = 13
MAX_CARD_DIGITS = 19


def card_issuer(digits: str, issuers: tuple[Issuer, ...] = ISSUERS) -> str | None:
    """The network whose prefix and length fit ``digits`` (the most specific prefix when
    several do: Elo's 636297 over nothing, Elo's 401178 over Visa's 4), or None.

    Luhn is not checked here: the caller runs it after this cheaper test.
    """
    size = len(digits)
    best: str | None = None
    best_prefix = 0
    for issuer in issuers:
        if size not in issuer.lengths:
            continue
        for low, high in issuer.ranges:
            width = len(low)
            if width > best_prefix and low <= digits[:width] <= high:
                best, best_prefix = issuer.name, width
    return best
