"""Sender names that imitate someone: lookalike domains and display-name spoofing.

Pure functions over the From: domains and display names of a message (the peer's text),
used by the authenticator to raise the ``lookalike_domain``, ``display_name_spoof`` and
``well_known_domain_claimed`` flags next to the RFC 7489 checks. None of this is in an RFC:
DMARC (RFC 7489 §3.2, organisational domains) only says whether a domain vouches for a
message, not whether the domain is the one a reader thinks it is. These checks answer the
second question with simple, explainable rules, so a mark in the list can be read as a
sentence on the message page:

- a *lookalike* is a domain that is not a protected domain (a local domain, or one of
  :data:`WELL_KNOWN_DOMAINS`) but reads like one: the same letters after mapping confusable
  characters (``paypa1.com``, Cyrillic ``раураl.com``, ``rn`` for ``m``), one edit away from
  a name of 6 letters or more (``paypall.com``), or the name joined to a word with a hyphen
  (``paypal-secure.com``);
- a *display-name spoof* is a display name that names an address or domain other than the
  From: address's own (``"service@paypal.com" <x@evil.test>``), or the name of a well-known
  domain (``PayPal <x@evil.test>``);
- a *well-known domain claimed* is a From: in a well-known domain that DMARC did not confirm.

Trust: every input is the peer's; names are cut to :data:`MAX_NAME` characters before any
pattern runs, domains are at most 253 characters by the time they get here (``domain_of``).
"""

from __future__ import annotations

import contextlib
import functools
import re
import unicodedata
from collections.abc import Iterable
from typing import NamedTuple

from lanalyze.mail.auth.dmarc import organisational_domain
from lanalyze.mail.auth.flags import DISPLAY_NAME_FLAG, LOOKALIKE_FLAG, WELL_KNOWN_FLAG

WELL_KNOWN_DOMAINS = (
    "amazon.com",
    "apple.com",
    "dhl.com",
    "docusign.com",
    "dropbox.com",
    "ebay.com",
    "facebook.com",
    "fedex.com",
    "github.com",
    "gmail.com",
    "google.com",
    "icloud.com",
    "instagram.com",
    "linkedin.com",
    "live.com",
    "microsoft.com",
    "netflix.com",
    "office.com",
    "outlook.com",
    "paypal.com",
    "ups.com",
    "yahoo.com",
)
"""Domains phishing imitates most, protected like the local domains."""

MAX_NAME = 256
MIN_EDIT_LABEL = 6
"""Names shorter than this are too close to ordinary words for "one letter off" to mean
imitation (``apply.com`` is not ``apple.com``); confusable characters still count."""

# Characters that read as another in common fonts, after NFKC and lower-casing: digits and
# the Cyrillic and Greek letters shaped like Latin ones.
_CONFUSABLE = str.maketrans(
    {
        "0": "o",
        "1": "l",
        "i": "l",
        "|": "l",
        "3": "e",
        "5": "s",
        "а": "a",
        "е": "e",
        "о": "o",
        "р": "p",
        "с": "c",
        "у": "y",
        "х": "x",
        "і": "l",
        "ј": "j",
        "ԁ": "d",
        "ѕ": "s",
        "һ": "h",
        "ӏ": "l",
        "ο": "o",
        "α": "a",
        "ν": "v",
        "ρ": "p",
        "ι": "l",
    }
)
_PAIRS = (("rn", "m"), ("vv", "w"), ("cl", "d"))
_ADDRESS_OR_DOMAIN = re.compile(
    r"(?:[\w.+-]+@)?((?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24})(?![\w-])",
    re.IGNORECASE,
)


def _unicode(domain: str) -> str:
    labels = []
    for label in domain.lower().rstrip(".").split("."):
        shown = label
        if label.startswith("xn--"):
            with contextlib.suppress(UnicodeError):
                shown = label.encode("ascii").decode("idna")
        labels.append(shown)
    return ".".join(labels)


def skeleton(domain: str) -> str:
    """What a domain looks like: Unicode labels, NFKC, confusables mapped to one letter."""
    text = unicodedata.normalize("NFKC", _unicode(domain)).lower().translate(_CONFUSABLE)
    for pair, single in _PAIRS:
        text = text.replace(pair, single)
    return text


def _org(domain: str) -> str:
    return organisational_domain(domain.lower().rstrip("."))


def _name_label(org: str) -> str:
    """``paypal`` of ``paypal.com``: the label the organisational domain adds to its suffix."""
    return org.split(".", 1)[0]


class _Target(NamedTuple):
    org: str  # the protected organisational domain
    name: str  # its name label
    skeleton: str  # skeleton(org)
    name_skeleton: str  # skeleton(name)


def _one_edit(a: str, b: str) -> bool:
    """One insertion, deletion, substitution or swap of neighbours turns ``a`` into ``b``."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        if len(diff) == 1:
            return True
        i, j = diff[0], diff[-1]
        return len(diff) == 2 and j == i + 1 and a[i] == b[j] and a[j] == b[i]
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


# Protected lists seen (the local domains plus the well-known ones: one or two per process).
TARGET_TABLES = 8


@functools.lru_cache(maxsize=TARGET_TABLES)
def _targets(protected: tuple[str, ...]) -> tuple[frozenset[str], tuple[_Target, ...]]:
    """The organisational domains of ``protected`` with their names and skeletons, computed
    once per list instead of once per message (22 well-known domains: ~70 skeletons each)."""
    orgs = list(dict.fromkeys(_org(p) for p in protected if p))
    table = tuple(
        _Target(org, _name_label(org), skeleton(org), skeleton(_name_label(org))) for org in orgs
    )
    return frozenset(orgs), table


# Answers kept per (name, protected list): From: domains and display names repeat from
# message to message (a sender's every mail); a pure function of its arguments. Entries are
# at most MAX_NAME characters plus a From: domain or two (longer inputs are not kept):
# ~1 KiB each, ~1 MiB in all.
ANSWERS_KEPT = 1024


def lookalike_of(domain: str, protected: Iterable[str]) -> str | None:
    """The protected domain ``domain`` imitates, or None (it is one, or like none)."""
    return _lookalike_of(domain, tuple(protected))


@functools.lru_cache(maxsize=ANSWERS_KEPT)
def _lookalike_of(domain: str, protected: tuple[str, ...]) -> str | None:
    org = _org(domain)
    orgs, targets = _targets(protected)
    if org in orgs:
        return None
    mine = skeleton(org)
    label = _name_label(org)
    label_skeleton = skeleton(label)
    for target in targets:
        name = target.name
        # The same name on another suffix (paypal.de) is the brand's own, or at least
        # not imitation by spelling; a name spelt differently but looking the same is.
        if mine == target.skeleton or (label != name and label_skeleton == target.name_skeleton):
            return target.org
        if len(name) >= MIN_EDIT_LABEL and _one_edit(label, name):
            return target.org
        if len(name) >= MIN_EDIT_LABEL - 1 and name in label.split("-") and label != name:
            return target.org
    return None


def display_name_claim(name: str, from_domains: Iterable[str]) -> str | None:
    """The address, domain or well-known name a display name claims that the From:
    address does not belong to, or None."""
    domains = tuple(from_domains)
    if len(domains) <= 2 and sum(map(len, domains)) <= 512:
        return _display_name_claim(name[:MAX_NAME], domains)
    return _display_name_claim.__wrapped__(name[:MAX_NAME], domains)


@functools.lru_cache(maxsize=ANSWERS_KEPT)
def _display_name_claim(text: str, from_domains: tuple[str, ...]) -> str | None:
    own = {_org(d) for d in from_domains if d}
    for match in _ADDRESS_OR_DOMAIN.finditer(text):
        claimed = match.group(1).lower()
        if _org(claimed) not in own:
            return match.group(0)
    for known in WELL_KNOWN_DOMAINS:
        word = _name_label(known)
        if len(word) < MIN_EDIT_LABEL - 1 or known in own:
            continue
        # A brand's other domains (amazonaws.com, google.de) carry its name.
        if any(_name_label(org).startswith(word) for org in own):
            continue
        if _WORD_PATTERNS[word].search(text):
            return word
    return None


_WORD_PATTERNS = {
    word: re.compile(rf"(?<![\w]){re.escape(word)}(?![\w])", re.IGNORECASE)
    for word in (_name_label(known) for known in WELL_KNOWN_DOMAINS)
}


def well_known(domain: str) -> bool:
    return _org(domain) in WELL_KNOWN_DOMAINS


def imitation_flags(
    from_domains: list[str], display_names: list[str], dmarc: str, local_domains: Iterable[str]
) -> list[str]:
    """The imitation flags of one message's From: (domains, decoded display names) given
    its DMARC result word and our local domains."""
    protected = [*local_domains, *WELL_KNOWN_DOMAINS]
    flags = []
    if any(lookalike_of(d, protected) for d in from_domains):
        flags.append(LOOKALIKE_FLAG)
    if any(display_name_claim(name, from_domains) for name in display_names):
        flags.append(DISPLAY_NAME_FLAG)
    if dmarc != "pass" and any(well_known(d) for d in from_domains):
        flags.append(WELL_KNOWN_FLAG)
    return flags


def header_imitation_flags(header_from: str, dmarc: str, local_domains: Iterable[str]) -> list[str]:
    """:func:`imitation_flags` of a stored From: line (the index's decoded ``header_from``),
    for verdicts stored before these flags existed."""
    from email.utils import getaddresses

    from lanalyze.mail.auth.message import decoded_display_name, domain_of

    pairs = getaddresses([header_from[: MAX_NAME * 4]])
    domains = list(dict.fromkeys(d for _, a in pairs if (d := domain_of(a))))
    names = [decoded_display_name(name) for name, _ in pairs if name]
    return imitation_flags(domains, names, dmarc, local_domains)
