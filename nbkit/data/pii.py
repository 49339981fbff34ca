"""Personal data and secrets in text: emails, phone numbers, card numbers, IP addresses and API keys.

A fine-tuned model can repeat what it was trained on word for word, so the quality report
counts these (nbkit.data.quality) and formatting can replace them with placeholders (`redact_pii`).
The patterns favour precision: order and invoice numbers, version strings and plain words
after `key=` are not reported.
"""

from __future__ import annotations

import re

PLACEHOLDERS = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]", "ip": "[IP]", "api_key": "[API_KEY]"}
PII_KINDS = tuple(PLACEHOLDERS)

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
_API_KEYS = [
    re.compile(r"(?<![\w-])sk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{20,}"),  # OpenAI / Anthropic style
    re.compile(r"(?<!\w)[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"),  # Stripe
    re.compile(r"(?<!\w)gh[pousr]_[A-Za-z0-9]{30,}"),  # GitHub tokens
    re.compile(r"(?<!\w)github_pat_[A-Za-z0-9_]{40,}"),
    re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])"),  # AWS access key id
    re.compile(r"(?<!\w)xox[abprs]-[A-Za-z0-9-]{10,}"),  # Slack
    re.compile(r"(?<![\w-])AIza[0-9A-Za-z_-]{35}"),  # Google API key
]
# A long random-looking value after key=, token=, secret: ... or "Bearer": only the value is matched.
_ASSIGNED_SECRET = re.compile(
    r"(?i)(?:\b(?:api[_-]?key|apikey|access[_-]?key|secret(?:[_-]?key)?|client[_-]?secret|(?:access[_-]?|auth[_-]?)?token"
    r"|password|passwd|pwd|key)\s*[:=]\s*[\"']?|\bbearer\s+)([A-Za-z0-9_\-+/=.]{16,})"
)
_CARD = re.compile(r"(?<![\w+.,-])\d(?:[ -]?\d){12,18}(?![\w-]|[.,]\d)")
_IP = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?![\w-]|\.\d)"
)
# Digits right after "order", "invoice #", "tracking no." ... are reference numbers, not cards or phones.
_REFERENCE_BEFORE = re.compile(
    r"(?i)(?:\border|\binvoice|\btracking|\breference|\bref|\bticket|\bcase|\bisbn|#)"
    r"\s*(?:no\.?|number|id)?\s*[:#]?\s*$"
)
_VERSION_BEFORE = re.compile(r"(?i)(?:\bversion|\bver\.?|\bv|\bbuild|\brelease|\bfirmware|\bkernel)\s*[:#]?\s*$")
_PHONES = [
    # international: +CC then 2-5 groups, 8-15 digits in all
    re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\w-]|[.,]\d)"),
    # North American: (415) 555-2671, 415-555-2671, 415.555.2671, 415 555 2671
    re.compile(r"(?<![\w#$€£.,/-])(?:\(\d{3}\)\s?|\d{3}[-. ])\d{3}[-. ]\d{4}(?![\w-]|[.,]\d)"),
    # national numbers with a trunk 0: 030 1234 5678, 07700 900123, 020-7946-0958
    re.compile(r"(?<![\w#$€£.,/-])0\d{2,4}[ /-]\d{3,4}[ -]?\d{3,4}(?![\w-]|[.,]\d)"),
    # digits right after a phone word: "phone: 5551234567", "tel 0301234567"
    re.compile(
        r"(?i)\b(?:phone|tel|telephone|mobile|cell|whatsapp)(?:\s*(?:number|no\.?|#))?\s*(?:is\s*)?[:.]?\s*"
        r"(\+?\d[\d ().-]{6,18}\d)(?![\w-]|[.,]\d)"
    ),
]


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_shape_ok(text: str) -> bool:
    """Cards are written as one run of digits or in the usual groups (4-4-4-4, Amex 4-6-5, ...)."""
    digits = re.sub(r"\D", "", text)
    if not 13 <= len(digits) <= 19 or len(set(digits)) == 1 or not _luhn_ok(digits):
        return False
    groups = re.split(r"[ -]", text)
    if len(groups) == 1:
        return True
    if len(set(re.findall(r"[ -]", text))) > 1:
        return False
    sizes = [len(g) for g in groups]
    return sizes == [4, 6, 5] or sizes == [4, 6, 4] or (all(s == 4 for s in sizes[:-1]) and 1 <= sizes[-1] <= 4)


def _mixed_enough(value: str) -> bool:
    """Secrets are random-looking: letters and digits mixed (a plain word after `key=` is no secret)."""
    return bool(re.search(r"\d", value)) and bool(re.search(r"[A-Za-z]", value)) and len(set(value)) >= 6


def _before(text: str, start: int, context: re.Pattern) -> bool:
    return bool(context.search(text[max(0, start - 24) : start]))


# Cheap screens: most messages hold none of these, and skipping the full patterns keeps a
# 100,000-row report fast.
_KEY_HINT = re.compile(r"(?i)sk-|[sr]k_|gh[pousr]_|github_pat_|AKIA|ASIA|xox|AIza|key|token|secret|bearer|passw|pwd")
_MANY_DIGITS = re.compile(r"(?:\d[^\d\n]{0,4}){8}")  # 8+ digits close together: a card or phone is possible
_DOTTED_QUAD = re.compile(r"\d\.\d{1,3}\.\d")


def pii_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of each personal-data match, in text order, never overlapping.

    Where two patterns claim the same characters the more specific one wins
    (API key, then email, card, IP, phone).
    """
    found: list[tuple[int, int, str]] = []
    if _KEY_HINT.search(text):
        for pattern in _API_KEYS:
            found += [(m.start(), m.end(), "api_key") for m in pattern.finditer(text)]
        found += [
            (m.start(1), m.end(1), "api_key") for m in _ASSIGNED_SECRET.finditer(text) if _mixed_enough(m.group(1))
        ]
    if "@" in text:
        found += [(m.start(), m.end(), "email") for m in _EMAIL.finditer(text)]
    if _DOTTED_QUAD.search(text):
        found += [
            (m.start(), m.end(), "ip") for m in _IP.finditer(text) if not _before(text, m.start(), _VERSION_BEFORE)
        ]
    if _MANY_DIGITS.search(text):
        found += [
            (m.start(), m.end(), "card")
            for m in _CARD.finditer(text)
            if _card_shape_ok(m.group()) and not _before(text, m.start(), _REFERENCE_BEFORE)
        ]
        for pattern in _PHONES:
            for m in pattern.finditer(text):
                start, end = (m.start(1), m.end(1)) if pattern.groups else (m.start(), m.end())
                if 8 <= sum(ch.isdigit() for ch in text[start:end]) <= 15 and not _before(
                    text, start, _REFERENCE_BEFORE
                ):
                    found.append((start, end, "phone"))
    if len(found) < 2:
        return found
    priority = {kind: i for i, kind in enumerate(("api_key", "email", "card", "ip", "phone"))}
    taken: list[tuple[int, int, str]] = []
    for span in sorted(found, key=lambda s: (priority[s[2]], s[0], -(s[1] - s[0]))):
        if all(span[1] <= t[0] or span[0] >= t[1] for t in taken):
            taken.append(span)
    return sorted(taken)


def find_pii(text: str) -> list[tuple[str, str]]:
    """(kind, matched text) for emails, phone numbers, card numbers (Luhn-checked), IPv4 addresses and API keys."""
    return [(kind, text[start:end]) for start, end, kind in pii_spans(text)]


def redact_pii(text: str) -> str:
    """The text with each match replaced by [EMAIL], [PHONE], [CARD], [IP] or [API_KEY]."""
    for start, end, kind in reversed(pii_spans(text)):
        text = text[:start] + PLACEHOLDERS[kind] + text[end:]
    return text


def mask_secret(value: str, keep: int = 4) -> str:
    """All but the last `keep` characters replaced by '*': enough to find it, not enough to use it."""
    keep = min(keep, len(value) // 3)
    return "*" * (len(value) - keep) + value[len(value) - keep :]
