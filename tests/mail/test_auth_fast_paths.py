"""Sender-check short cuts of issue 19 give the answers of the straightforward versions, kept
here as references: lookalike tables built once per list, Authentication-Results quoting."""

from __future__ import annotations

import random
import re

from lanalyze.mail.auth.lookalike import (
    _PAIRS,
    MIN_EDIT_LABEL,
    WELL_KNOWN_DOMAINS,
    _name_label,
    _one_edit,
    _org,
    display_name_claim,
    lookalike_of,
    skeleton,
)


def reference_lookalike_of(domain: str, protected: list[str]) -> str | None:
    """lookalike_of as it was before the tables: every skeleton computed per call."""
    org = _org(domain)
    orgs = list(dict.fromkeys(_org(p) for p in protected if p))
    if org in orgs:
        return None
    mine = skeleton(org)
    label = _name_label(org)
    for target in orgs:
        name = _name_label(target)
        if mine == skeleton(target) or (label != name and skeleton(label) == skeleton(name)):
            return target
        if len(name) >= MIN_EDIT_LABEL and _one_edit(label, name):
            return target
        if len(name) >= MIN_EDIT_LABEL - 1 and name in label.split("-") and label != name:
            return target
    return None


def reference_display_name_claim(name: str, from_domains: list[str]) -> str | None:
    text = name[:256]
    own = {_org(d) for d in from_domains if d}
    address = re.compile(
        r"(?:[\w.+-]+@)?((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24})(?![\w-])",
        re.IGNORECASE,
    )
    for match in address.finditer(text):
        if _org(match.group(1).lower()) not in own:
            return match.group(0)
    for known in WELL_KNOWN_DOMAINS:
        word = _name_label(known)
        if len(word) < MIN_EDIT_LABEL - 1 or known in own:
            continue
        if any(_name_label(org).startswith(word) for org in own):
            continue
        if re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", text, re.IGNORECASE):
            return word
    return None


def _mutations(rng: random.Random, word: str) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz0123456789-аеорсі"
    chars = list(word)
    i = rng.randrange(len(chars))
    kind = rng.randrange(6)
    if kind == 0:
        chars[i] = rng.choice(letters)
    elif kind == 1:
        chars.insert(i, rng.choice(letters))
    elif kind == 2 and len(chars) > 1:
        del chars[i]
    elif kind == 3 and i + 1 < len(chars):
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    elif kind == 4:
        pair, single = rng.choice(_PAIRS)
        return word.replace(single, pair, 1)
    else:
        return f"{word}-{rng.choice(['secure', 'login', 'mail', 'x'])}"
    return "".join(chars)


def test_same_answers_as_the_reference() -> None:
    rng = random.Random(19)
    lists = [
        [*WELL_KNOWN_DOMAINS],
        ["local.example", "mail.example.org", *WELL_KNOWN_DOMAINS],
        ["corp.test", ""],
    ]
    names = [_name_label(d) for lst in lists for d in lst if d]
    suffixes = ["com", "de", "co.uk", "test", "example.org", "xn--p1ai"]
    checked = 0
    for _ in range(3000):
        base = rng.choice(names)
        label = _mutations(rng, base) if rng.random() < 0.8 else base
        domain = f"{rng.choice(['', 'www.', 'a.b.'])}{label}.{rng.choice(suffixes)}"
        protected = rng.choice(lists)
        assert lookalike_of(domain, protected) == reference_lookalike_of(domain, protected), domain
        display = rng.choice(
            [f"{label.title()} Support", f"it@{domain}", f"{base} team", "Alice", f"x {label}"]
        )
        own = [rng.choice([domain, "evil.test", f"{base}.com", "amazonaws.com"])]
        if rng.random() < 0.2:  # more From: domains than the answer cache keeps
            own += ["a.test", f"{base}.de"]
        assert display_name_claim(display, own) == reference_display_name_claim(display, own)
        # Asked again: the kept answer is the same.
        assert lookalike_of(domain, protected) == reference_lookalike_of(domain, protected)
        checked += 1
    assert checked == 3000


def test_results_field_quoting_unchanged() -> None:
    """The Authentication-Results quoting without walking ASCII text character by character
    (issue 19) quotes as the per-character definitions did."""
    from lanalyze.mail.auth import results

    def old_is_token(text: str) -> bool:
        return bool(text) and all(33 <= ord(c) < 127 and c not in results._TSPECIALS for c in text)

    def old_clean(text: str, limit: int) -> str:
        local, at, domain = text.rpartition("@")
        if at and not domain.isascii():
            text = f"{local}@{results._ascii_domain(domain)}"
        elif not at and not text.isascii():
            text = results._ascii_domain(text)
        text = "".join(c if c.isascii() else "?" for c in text)
        return results._CONTROL.sub("", text)[:limit]

    rng = random.Random(8601)
    alphabet = 'aZ09 .-_@()<>,;:\\"/[]?=\t\x00\x7f\x1féü😀!#$%&*+^`{|}~'
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
        assert results._is_token(text) == old_is_token(text), repr(text)
        assert results._clean(text, 8) == old_clean(text, 8), repr(text)
