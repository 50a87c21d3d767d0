"""PII detection and reversible redaction: real valid numbers of every kind are found,
near misses and everyday digit strings are not, and redaction always comes back exactly."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guarita.errors import ConfigError, InvalidRequest, PiiBlocked
from guarita.guard.pii import (
    ALL_KINDS,
    Finding,
    PiiConfig,
    PiiKind,
    PiiScanner,
    Redactor,
)
from guarita.guard.pii_cards import card_issuer


@pytest.fixture(scope="module")
def scanner() -> PiiScanner:
    return PiiScanner()


def found(scanner: PiiScanner, text: str) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start : f.end]) for f in scanner.scan(text)]


# --- cards --------------------------------------------------------------------------

# Published test numbers (Stripe, Adyen, PayPal/Braintree docs), plus a few built as an
# issuer prefix with its Luhn digit where no network publishes one (marked "built").
CARDS = [
    ("4111111111111111", "visa"),
    ("4012888888881881", "visa"),
    ("4222222222222", "visa"),  # 13 digits
    ("4111111111111111110", "visa"),  # 19 digits, built
    ("5555555555554444", "mastercard"),
    ("5105105105105100", "mastercard"),
    ("2223003122003222", "mastercard"),  # 2-series
    ("2221000000000009", "mastercard"),
    ("378282246310005", "amex"),
    ("371449635398431", "amex"),
    ("6011111111111117", "discover"),
    ("6011000990139424", "discover"),
    ("6445644564456445", "discover"),
    ("3530111333300000", "jcb"),
    ("3566002020360505", "jcb"),
    ("30569309025904", "diners"),
    ("38520000023237", "diners"),
    ("36227206271667", "diners"),
    ("3056930009020004", "diners"),
    ("6200000000000005", "unionpay"),
    ("6205500000000000004", "unionpay"),  # 19 digits
    ("6759649826438453", "maestro"),
    ("5018000000000009", "maestro"),  # built
    ("6362970000457013", "elo"),
    ("5066991111111118", "elo"),
    ("6062825624254001", "hipercard"),
    ("2200000000000004", "mir"),  # built
    ("5085000000000007", "rupay"),  # built
    ("9792000000000003", "troy"),  # built
    ("5061000000000000007", "verve"),  # 19 digits, built
]


# how each length is printed on cards (13: 4-3-3-3, 14: 4-6-4, 15: 4-6-5, else fours)
GROUPINGS = {13: (4, 3, 3, 3), 14: (4, 6, 4), 15: (4, 6, 5)}


def grouped(number: str) -> str:
    sizes = GROUPINGS.get(len(number), (4,) * 5)
    groups, position = [], 0
    for size in sizes:
        if position < len(number):
            groups.append(number[position : position + size])
            position += size
    return " ".join(groups)


@pytest.mark.parametrize(("number", "issuer"), CARDS)
def test_cards_are_found_bare_and_with_any_separator(
    scanner: PiiScanner, number: str, issuer: str
) -> None:
    spaced = grouped(number)
    for written in (number, spaced, spaced.replace(" ", "-"), spaced.replace(" ", ".")):
        text = f"my card is {written}, thanks"
        findings = scanner.scan(text)
        assert [(f.kind, text[f.start : f.end], f.subkind) for f in findings] == [
            ("card", written, issuer)
        ]


def test_amex_grouping_and_a_card_among_other_numbers(scanner: PiiScanner) -> None:
    assert found(scanner, "amex 3782 822463 10005 ok") == [("card", "3782 822463 10005")]
    assert found(scanner, "qty 2 4111 1111 1111 1111 2024") == [("card", "4111 1111 1111 1111")]
    two = "4111 1111 1111 1111 5555 5555 5555 4444"
    assert found(scanner, two) == [
        ("card", "4111 1111 1111 1111"),
        ("card", "5555 5555 5555 4444"),
    ]


@pytest.mark.parametrize(
    "number",
    [
        "4111111111111112",  # Luhn off by one
        "5555555555554443",
        "378282246310006",
        "6205500000000000005",
        "1234567812345670",  # Luhn-valid, no issuer starts with 1
        "9999999999999995",  # Luhn-valid, no issuer
        "378282246310005" + "0",  # Amex prefix, 16 digits: Amex issues 15
        "5555555555554444" + "0",  # Mastercard issues 16 only
        "411111111111",  # 12 digits
        "41111111111111111113",  # 20 digits
    ],
)
def test_near_miss_cards_are_rejected(scanner: PiiScanner, number: str) -> None:
    assert [f for f in scanner.scan(f"card {number} here") if f.kind == "card"] == []


def test_issuer_table_prefers_the_most_specific_prefix() -> None:
    assert card_issuer("4011780000000000") == "elo"  # 401178 is Elo inside Visa's 4
    assert card_issuer("4011770000000000") == "visa"
    assert card_issuer("1733050000000") is None  # epoch milliseconds: UATP left out


# --- IBAN ---------------------------------------------------------------------------

IBANS = [
    "DE89370400440532013000",
    "GB29NWBK60161331926819",
    "GB82WEST12345698765432",
    "FR1420041010050500013M02606",
    "BR9700360305000010009795493P1",
    "NL91ABNA0417164300",
    "ES9121000418450200051332",
    "IT60X0542811101000000123456",
    "BE71096123456769",
    "CH9300762011623852957",
    "AT611904300234573201",
    "PL61109010140000071219812874",
    "PT50000201231234567890154",
    "NO9386011117947",
    "SE4550000000058398257466",
    "IE29AIBK93115212345678",
    "GR1601101250000000012300695",
    "MT84MALT011000012345MTLCAST001S",
]


@pytest.mark.parametrize("number", IBANS)
def test_ibans_are_found_spaced_and_unspaced(scanner: PiiScanner, number: str) -> None:
    spaced = " ".join(number[i : i + 4] for i in range(0, len(number), 4))
    for written in (number, spaced):
        text = f"Pay to {written}. THANKS"
        findings = scanner.scan(text)
        assert [(f.kind, text[f.start : f.end], f.subkind) for f in findings] == [
            ("iban", written, number[:2])
        ]


@pytest.mark.parametrize(
    "number",
    [
        "DE89370400440532013001",  # mod-97 fails
        "GB29NWBK60161331926818",
        "DE8937040044053201300",  # one short for Germany
        "DE893704004405320130000",  # one too many
        "NL91ABNA041716430",
        "XX89370400440532013000",  # no such country
    ],
)
def test_invalid_ibans_are_rejected(scanner: PiiScanner, number: str) -> None:
    assert [f for f in scanner.scan(f"iban {number} ok") if f.kind == "iban"] == []


# --- CPF, CNPJ, SSN -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("CPF 123.456.789-09.", "cpf", "123.456.789-09"),
        ("cpf 12345678909", "cpf", "12345678909"),
        ("cpf 111.444.777-35", "cpf", "111.444.777-35"),
        ("cpf 111444777-35", "cpf", "111444777-35"),
        ("CNPJ 12.345.678/0001-95", "cnpj", "12.345.678/0001-95"),
        ("CNPJ 11.222.333/0001-81;", "cnpj", "11.222.333/0001-81"),
        ("cnpj 11222333000181", "cnpj", "11222333000181"),
        ("CNPJ 12.ABC.345/01DE-35", "cnpj", "12.ABC.345/01DE-35"),  # alphanumeric, 2026
        ("SSN 536-22-1234", "ssn", "536-22-1234"),
    ],
)
def test_national_ids_are_found(scanner: PiiScanner, text: str, kind: str, value: str) -> None:
    assert found(scanner, text) == [(kind, value)]


@pytest.mark.parametrize(
    "text",
    [
        "cpf 123.456.789-00",
        "cpf 12345678900",
        "cpf 111.111.111-11",  # check digits hold, but all-equal numbers are not issued
        "cnpj 12.345.678/0001-96",
        "cnpj 11222333000182",
        "ssn 000-12-3456",
        "ssn 666-12-3456",
        "ssn 900-12-3456",
        "ssn 536-00-1234",
        "ssn 536-22-0000",
        "ssn 078-05-1120",  # the Woolworth wallet card
    ],
)
def test_invalid_national_ids_are_rejected(scanner: PiiScanner, text: str) -> None:
    assert [f for f in scanner.scan(text) if f.kind in ("cpf", "cnpj", "ssn")] == []


def test_a_bare_cpf_is_a_cpf_not_a_phone(scanner: PiiScanner) -> None:
    # libphonenumber reads 12345678909 as a valid US number too; check digits win
    assert found(scanner, "CPF 12345678909") == [("cpf", "12345678909")]


# --- email, phone, IP ---------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["john.doe@example.com", "j+tag@mail.example.co.uk", "ana_99@exemplo.com.br", "x@ab.io"],
)
def test_emails_are_found(scanner: PiiScanner, address: str) -> None:
    assert found(scanner, f"write to <{address}>.") == [("email", address)]


@pytest.mark.parametrize(
    "text", ["user@localhost", "a@b.c", "@mention", "foo@bar", "a..b@example.com", "x @ y.com"]
)
def test_non_emails_are_not_found(scanner: PiiScanner, text: str) -> None:
    assert [f for f in scanner.scan(text) if f.kind == "email"] == []


PHONES = [
    "+1 650-253-0000",
    "(415) 555-2671",
    "+44 20 7031 3000",
    "+55 11 2395-8400",
    "+49 30 303986300",
    "+86 138 0013 8000",
    "+62 812 3456 7890",
]


@pytest.mark.parametrize("phone", PHONES)
def test_phones_are_found_and_never_taken_for_cards(scanner: PiiScanner, phone: str) -> None:
    assert found(scanner, f"call me on {phone} today") == [("phone", phone)]


def test_a_phone_next_to_other_numbers_is_still_found(scanner: PiiScanner) -> None:
    text = "call +1 650-253-0000 2026-12-01T10:20:30Z or 4155552671 1733050000000"
    assert found(scanner, text) == [("phone", "+1 650-253-0000"), ("phone", "4155552671")]


def test_phone_region_decides_national_numbers() -> None:
    text = "ligue (11) 2395-8400"
    assert found(PiiScanner(PiiConfig(phone_region="BR")), text) == [("phone", "(11) 2395-8400")]
    assert found(PiiScanner(PiiConfig(phone_region="US")), text) == []


FULL_IPV6 = "2001:0db8:85a3:0000:0000:8a2e:0370:7334"


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("from 8.8.8.8:53", "ipv4", "8.8.8.8"),
        ("host 192.168.1.20 down", "ipv4", "192.168.1.20"),
        ("http://203.0.113.9/x", "ipv4", "203.0.113.9"),
        ("v6 2001:db8::1 up", "ipv6", "2001:db8::1"),
        ("[2606:4700:4700::1111]:443", "ipv6", "2606:4700:4700::1111"),
        ("link fe80::1ff:fe23:4567:890a%eth0", "ipv6", "fe80::1ff:fe23:4567:890a"),
        ("full " + FULL_IPV6 + ".", "ipv6", FULL_IPV6),
    ],
)
def test_ip_addresses_are_found(scanner: PiiScanner, text: str, kind: str, value: str) -> None:
    assert found(scanner, text) == [(kind, value)]


def test_ip_public_only_skips_private_ranges() -> None:
    public_only = PiiScanner(PiiConfig(ip_public_only=True))
    assert found(public_only, "10.0.0.1 and 192.168.1.1 and 8.8.8.8") == [("ipv4", "8.8.8.8")]


# --- secrets ------------------------------------------------------------------------

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0"
    ".dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n"
    "KUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ==\n"
    "-----END RSA PRIVATE KEY-----"
)

SECRETS = [
    ("sk-ant-api03-" + "AbC1_-" * 15, "anthropic"),
    ("sk-proj-" + "a1B2c3D4e5" * 4, "openai"),
    ("sk-" + "a" * 20 + "T3BlbkFJ" + "b" * 20, "openai"),
    ("sk-" + "x9" * 16, "generic"),
    ("AKIAIOSFODNN7EXAMPLE", "aws"),
    ("ghp_" + "A1b2C3d4E5f6" * 3, "github"),
    ("github_pat_11ABCDEFG0123456789_" + "a" * 59, "github"),
    ("xoxb-123456789012-1234567890123-" + "a" * 24, "slack"),
    ("sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "stripe"),
    ("rk_test_" + "4eC39HqLyjWDarjtT1zdp7dc", "stripe"),
    ("AIza" + "SyA-1234567890abcdefghijklmnopqrstu", "google"),
    (JWT, "jwt"),
    (PEM, "private_key"),
]


@pytest.mark.parametrize(("secret", "subkind"), SECRETS)
def test_secrets_are_found(scanner: PiiScanner, secret: str, subkind: str) -> None:
    text = f"here: {secret}\nbye"
    findings = scanner.scan(text)
    assert [(f.kind, text[f.start : f.end], f.subkind) for f in findings] == [
        ("secret", secret, subkind)
    ]


def test_aws_secret_key_is_found_next_to_its_name(scanner: PiiScanner) -> None:
    key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    text = f"aws_secret_access_key = {key}"
    assert found(scanner, text) == [("secret", key)]
    assert found(scanner, f"random {key}") == []


def test_an_unterminated_private_key_is_taken_to_the_end_of_its_base64(
    scanner: PiiScanner,
) -> None:
    truncated = PEM.rsplit("\n", 1)[0]
    text = truncated + "\n\n...and then?"
    [finding] = scanner.scan(text)
    assert finding.subkind == "private_key"
    assert text[finding.start : finding.end].rstrip() == truncated


def test_eyj_runs_that_are_not_jwts_are_left_alone(scanner: PiiScanner) -> None:
    not_json = "eyJub3QganNvbiBhdCBhbGw.eyJzdWIiOiIxIn0.abc"  # header decodes to no JSON
    no_alg = "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.abc"  # {"typ":"JWT"}: no alg
    assert scanner.scan(f"a {not_json} b {no_alg}") == []


def test_extra_secret_patterns() -> None:
    custom = PiiScanner(PiiConfig(extra_secrets=(r"acme_[0-9a-f]{32}",)))
    key = "acme_" + "0123456789abcdef" * 2
    [finding] = custom.scan(f"token {key}")
    assert (finding.kind, finding.subkind) == ("secret", "custom")
    with pytest.raises(ConfigError, match="extra_secrets"):
        PiiScanner(PiiConfig(extra_secrets=("([unclosed",)))


# --- what must not be found ---------------------------------------------------------

BENIGN = [
    "2026-12-01T10:20:30Z",
    "2026-12-01T10:20:30.123+02:00",
    "at 2026-12-01 10:20:30",
    "1733050000000",
    "ts=1733050000",
    "Order #4111111111111112",
    "order 4111-1111-1111-1112",
    "UPS 1Z999AA10123456784",
    "USPS 9400 1118 9922 3100 0012 34",
    "version 3.11.4",
    "v1.2.3.4",
    "release 2024.10.1",
    "550e8400-e29b-41d4-a716-446655440000",
    "commit 4f1c2a3b9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "git 4111111111111111abcdef0123456789abcdef01",
    "price $1,299.99",
    "R$ 4.111,11",
    "EUR 12.345.678,90",
    "total 1234567.89",
    "pi = 3.1415926535897932384",
    "4111111111111111abc",
    "id_4111111111111111",
    "x4111111111111111",
    "ref 4111111111111111-2",
    "41111111111111111111",
    "1234 5678 9012 3456",
    "0000 0000 0000 0000",
    "ISBN 978-3-16-148410-0",
    "ISBN 9783161484100",
    "Invoice INV-2024-000123",
    "10:20:30",
    "12/31/2026",
    "31.12.2026",
    "999.999.999.999",
    "01.02.03.04",
    "MAC 00:1A:2B:3C:4D:5E",
    "C++ std::vector<int> and a::b",
    "dead::beef",
    "coordinates -23.5505, -46.6333",
    "lat 40.7128 lon -74.0060",
    "111.111.111-11",
    "000-00-0000",
    "DE00 3704 0044 0532 0130 00",
    "the year 2026 had 365 days and 8760 hours",
    "port 8080, pid 12345, uid 1000",
    "HTTP 404 after 1500 ms",
    "a big number 12345678901234567890123",
    "file_20261201_102030.log",
    "build #20261201.3",
    "scores 4 5 6 7 8 9 1 2 3 4 5 6 7 8 9 1",
    "sk-short and sk-",
    "loopback 127.0.0.1 and ::1 and 0.0.0.0",
    "akiaiosfodnn7example",
    "ABCD 1234 EFGH 5678",
]


def test_the_benign_list_is_long_enough() -> None:
    assert len(BENIGN) >= 40


@pytest.mark.parametrize("text", BENIGN)
def test_benign_strings_are_not_found(scanner: PiiScanner, text: str) -> None:
    assert found(scanner, f"note: {text} end") == []


# --- findings, exceptions and policy never show a value -------------------------------


def test_findings_are_in_order_without_overlap_and_hold_no_value(scanner: PiiScanner) -> None:
    text = (
        "john@example.com paid with 4111 1111 1111 1111 from 8.8.8.8, "
        "IBAN DE89 3704 0044 0532 0130 00, CPF 123.456.789-09, key " + SECRETS[1][0]
    )
    findings = scanner.scan(text)
    assert [f.kind for f in findings] == ["email", "card", "ipv4", "iban", "cpf", "secret"]
    for finding in findings:
        value = text[finding.start : finding.end]
        assert value not in repr(finding) and value not in str(finding)
    assert all(a.end <= b.start for a, b in itertools.pairwise(findings))


def test_pii_blocked_names_kinds_never_values(scanner: PiiScanner) -> None:
    text = "card 4111111111111111 mail john@example.com"
    error = PiiBlocked({f.kind for f in scanner.scan(text)}, param="message")
    assert isinstance(error, InvalidRequest) and error.status_code == 400
    assert error.kinds == {"card", "email"}
    assert error.code == "pii_detected"
    shown = f"{error!r} {error} {error.to_body()}"
    assert "card, email" in shown
    assert "4111111111111111" not in shown and "john@example.com" not in shown


def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        PiiConfig(kinds=frozenset({"dna"}))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="region"):
        PiiConfig(phone_region="XX")


def test_scan_can_be_narrowed_per_call(scanner: PiiScanner) -> None:
    text = "john@example.com 4111111111111111"
    assert [f.kind for f in scanner.scan(text, kinds={"card"})] == ["card"]
    assert scanner.scan(text, kinds=set()) == []


# --- redaction ----------------------------------------------------------------------


def test_redact_and_restore(scanner: PiiScanner) -> None:
    redactor = Redactor(scanner)
    first = "I am john@example.com, card 4111 1111 1111 1111."
    second = "Again john@example.com, and ana@example.org, from 8.8.8.8"
    assert redactor.redact(first) == "I am [EMAIL_1], card [CARD_1]."
    assert redactor.redact(second) == "Again [EMAIL_1], and [EMAIL_2], from [IPV4_1]"
    answer = "Dear [EMAIL_1], your card [CARD_1] and [EMAIL_2]; not [EMAIL_9] or [CARD_1"
    assert redactor.restore(answer) == (
        "Dear john@example.com, your card 4111 1111 1111 1111 and ana@example.org; "
        "not [EMAIL_9] or [CARD_1"
    )
    assert redactor.found_kinds == {"email", "card", "ipv4"}
    assert "john" not in repr(redactor)


def test_placeholder_text_in_the_input_is_never_confused(scanner: PiiScanner) -> None:
    redactor = Redactor(scanner)
    first = "the template says [EMAIL_1] and mine is john@example.com"
    redacted = redactor.redact(first)
    assert redacted == "the template says [EMAIL_1] and mine is [EMAIL_2]"  # 1 is reserved
    assert redactor.restore(redacted) == first
    # a later message writes a placeholder that was already issued: it is escaped
    second = "what does [EMAIL_2] mean? [CARD_1]"
    redacted_second = redactor.redact(second)
    assert "[EMAIL_2]" not in redacted_second
    assert redactor.restore(redacted_second) == second
    assert redactor.restore("[EMAIL_1]") == "[EMAIL_1]"


def test_mask_is_irreversible(scanner: PiiScanner) -> None:
    text = "john@example.com paid 4111111111111111 " + SECRETS[0][0]
    assert scanner.mask(text) == "[EMAIL] paid [CARD] [SECRET]"
    assert Redactor(scanner).mask(text) == "[EMAIL] paid [CARD] [SECRET]"


# --- streaming restore --------------------------------------------------------------


def redactor_with(scanner: PiiScanner, text: str) -> tuple[Redactor, str]:
    redactor = Redactor(scanner)
    return redactor, redactor.redact(text)


def stream(redactor: Redactor, chunks: list[str]) -> str:
    restorer = redactor.restore_stream()
    return "".join(restorer.feed(chunk) for chunk in chunks) + restorer.flush()


def test_streaming_restore_at_every_split_point(scanner: PiiScanner) -> None:
    original = (
        "Hi john@example.com [x] your card 4111 1111 1111 1111 and [EMAIL_7] and "
        "ana@example.org, server 8.8.8.8[IPV4"
    )
    redactor, redacted = redactor_with(scanner, original)
    assert redacted.count("[") == 7
    for cut in range(len(redacted) + 1):
        assert stream(redactor, [redacted[:cut], redacted[cut:]]) == original, cut
    for first in range(0, len(redacted), 3):
        for second in range(first, len(redacted), 5):
            chunks = [redacted[:first], redacted[first:second], redacted[second:]]
            assert stream(redactor, chunks) == original, (first, second)
    assert stream(redactor, list(redacted)) == original


def test_streaming_holds_back_only_a_possible_placeholder(scanner: PiiScanner) -> None:
    redactor, _ = redactor_with(scanner, "card 4111111111111111")
    restorer = redactor.restore_stream()
    assert restorer.feed("Your card is ") == "Your card is "
    assert restorer.feed("[CA") == ""
    assert restorer.feed("RD_1] and [x") == "4111111111111111 and [x"
    assert restorer.feed(" [C") == " "
    assert restorer.feed("AT]") == "[CAT]"
    assert restorer.feed("end [CARD_") == "end "
    assert restorer.flush() == "[CARD_"


# --- properties ---------------------------------------------------------------------

VALUES = [
    "john@example.com",
    "4111 1111 1111 1111",
    "6205500000000000004",
    "DE89 3704 0044 0532 0130 00",
    "123.456.789-09",
    "12.345.678/0001-95",
    "536-22-1234",
    "8.8.8.8",
    "2001:db8::1",
    "+1 650-253-0000",
    SECRETS[1][0],
    JWT,
    "[EMAIL_1]",
    "[CARD_2]",
    "[",
]
pieces = st.one_of(st.text(max_size=12), st.sampled_from(VALUES))


@settings(max_examples=150, deadline=None)
@given(st.lists(pieces, max_size=10), st.lists(pieces, max_size=6))
def test_restore_undoes_redact(scanner: PiiScanner, first: list[str], second: list[str]) -> None:
    redactor = Redactor(scanner)
    texts = [" ".join(first), "".join(second)]
    redacted = [redactor.redact(text) for text in texts]
    assert [redactor.restore(text) for text in redacted] == texts
    joined = "\n".join(redacted)
    chunked = [joined[i : i + 7] for i in range(0, len(joined), 7)]
    assert stream(redactor, chunked) == "\n".join(texts)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(VALUES[:12]), min_size=1, max_size=6))
def test_separated_values_never_reach_the_provider(scanner: PiiScanner, values: list[str]) -> None:
    redacted = Redactor(scanner).redact("start " + " , ".join(values) + " end")
    for value in values:
        assert value not in redacted
    assert re.fullmatch(r"start (\[[A-Z0-9]+_\d+\](?: , )?)+ end", redacted)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789 -.:/@+abcdefAZ[]_"), max_size=80))
def test_scan_of_any_text_is_ordered_and_within_bounds(scanner: PiiScanner, text: str) -> None:
    findings = scanner.scan(text)
    assert all(0 <= f.start < f.end <= len(text) for f in findings)
    assert all(a.end <= b.start for a, b in itertools.pairwise(findings))
    assert {f.kind for f in findings} <= ALL_KINDS


def test_kinds_are_the_documented_ones() -> None:
    kinds: set[PiiKind] = {"email", "phone", "card", "iban", "cpf", "cnpj", "ssn", "ipv4"}
    assert kinds | {"ipv6", "secret"} == ALL_KINDS
    assert Finding("card", 1, 2).subkind is None
