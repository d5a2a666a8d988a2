"""DKIM verified over a message parsed once (issue 19) gives dkimpy's own answer.

``dkim_verify._verify_parsed`` replays ``dkim.DKIM(message).verify(idx, dnsfunc)`` over the
header fields the checks parsed already. Differential test: a seeded corpus of signed
messages (rsa-sha256 and ed25519-sha256; simple and relaxed both ways; ``l=``; several
signatures; then broken: body or signed header changed, an extra From:, a wrong, missing,
malformed or other-algorithm key, expired, bad base64, unknown algorithm, no ``h=from``,
bad ``c=``, a TLS-report key) is verified both ways and every outcome, True, False or the
exception with its message, must be the same. Messages the two parsers could read
differently are not handed to the fast path at all (:func:`dkimpy_headers` says None).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable

import dkim

from lanalyze.mail.auth.dkim_verify import _quiet, _verify_parsed, dkimpy_headers
from lanalyze.mail.auth.keys import KeyPair, generate
from lanalyze.mail.auth.message import header_fields, split_message


@functools.cache
def _keys() -> dict[str, KeyPair]:
    return {"rsa": generate("rsa", 1024), "ed": generate("ed25519"), "rsa2": generate("rsa", 1024)}


def _records() -> dict[bytes, bytes | None]:
    k = _keys()
    return {
        b"rsa._domainkey.fast.test.": k["rsa"].txt_record.encode(),
        b"ed._domainkey.fast.test.": k["ed"].txt_record.encode(),
        # The selector names the other RSA key: the signature does not verify.
        b"other._domainkey.fast.test.": k["rsa2"].txt_record.encode(),
        b"edasrsa._domainkey.fast.test.": k["ed"].txt_record.replace("k=ed25519", "k=rsa").encode(),
        b"broken._domainkey.fast.test.": b"v=DKIM1; k=rsa; p=AAAA!!",
        b"tls._domainkey.fast.test.": (k["rsa"].txt_record + "; s=tlsrpt").encode(),
        b"gone._domainkey.fast.test.": None,
    }


def _dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
    records = _records()
    if name.startswith(b"timeout."):
        raise dkim.DnsTimeoutError("timed out")
    return records.get(name)


def _message(rng: random.Random, number: int) -> bytes:
    body_lines = [
        rng.choice([f"line {i} of {number}", f"tabs\there  {i}  ", "", f"  lead {i}", "x" * 80])
        for i in range(rng.randrange(0, 12))
    ]
    head = [
        "From: Alice <alice@fast.test>",
        "To: bob@example.org",
        f"Subject: {rng.choice(['hello', 'folded', 'spaced  out '])} {number}",
        "Date: Thu, 3 Dec 2026 17:00:00 +0000",
        f"Message-ID: <{number}@fast.test>",
    ]
    if rng.random() < 0.3:
        head.append("X-Folded: first part\r\n\tsecond  part\r\n  third")
    text = "\r\n".join(head) + "\r\n\r\n" + "\r\n".join(body_lines)
    if rng.random() < 0.7:
        text += "\r\n"
    if rng.random() < 0.2:
        text += "\r\n\r\n"
    return text.encode()


def _sign(rng: random.Random, message: bytes) -> bytes:
    kind = rng.choice(["rsa", "ed"])
    canon = (rng.choice([b"simple", b"relaxed"]), rng.choice([b"simple", b"relaxed"]))
    field = dkim.sign(
        message,
        kind.encode(),
        b"fast.test",
        _keys()[kind].private,
        canonicalize=canon,
        signature_algorithm=b"rsa-sha256" if kind == "rsa" else b"ed25519-sha256",
        include_headers=rng.choice(
            [[b"from", b"subject", b"date"], [b"from", b"to", b"subject", b"x-folded", b"from"]]
        ),
        length=rng.random() < 0.2,
    )
    return field + message


def _breakages() -> list[Callable[[bytes], bytes]]:
    def sub(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
        return lambda m: m.replace(old, new, 1)

    def tag(name: bytes, value: bytes) -> Callable[[bytes], bytes]:
        pattern = re.compile(rb"([;\s])" + name + rb"=[^;]*")
        return lambda m: pattern.sub(rb"\1" + name + b"=" + value, m, count=1)

    return [
        lambda m: m,
        lambda m: m + b"appended after signing\r\n",
        sub(b"Subject: ", b"Subject: changed "),
        lambda m: m.replace(b"\r\n\r\n", b"\r\nFrom: mallory@evil.test\r\n\r\n", 1),
        tag(b"s", b"other"),
        tag(b"s", b"gone"),
        tag(b"s", b"broken"),
        tag(b"s", b"edasrsa"),
        tag(b"s", b"tls"),
        tag(b"d", b"timeout.fast.test"),
        tag(b"x", b"1000000000"),
        tag(b"a", b"rsa-md5"),
        tag(b"h", b"subject:date"),
        tag(b"c", b"fancy/simple"),
        tag(b"bh", b"!!notbase64"),
        tag(b"v", b"2"),
        sub(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; v=1;"),
        sub(b"b=", b"b=AAAA"),
    ]


def _outcome(run: Callable[[], bool]) -> tuple[str, str]:
    try:
        return ("result", repr(run()))
    except Exception as exc:  # the outcome under test, compared with dkimpy's
        return (type(exc).__name__, str(exc))


def test_same_outcome_as_dkimpy() -> None:
    rng = random.Random(1919)
    breakages = _breakages()
    fast_paths = 0
    outcomes: set[str] = set()
    for number in range(160):
        message = _sign(rng, _message(rng, number))
        if rng.random() < 0.3:  # a second signature, over the first
            message = _sign(rng, message)
        message = breakages[number % len(breakages)](message)
        header, body = split_message(message)
        headers = dkimpy_headers(message, header, header_fields(header))
        assert headers is not None, message
        fast_paths += 1
        for index in range(3):  # a signature past the last one included
            verifier = dkim.DKIM(message, logger=_quiet, minkey=1024)
            expected = _outcome(functools.partial(verifier.verify, idx=index, dnsfunc=_dnsfunc))
            got = _outcome(functools.partial(_verify_parsed, headers, body, index, _dnsfunc))
            assert got == expected, (number, index, message)
            outcomes.add(expected[0] + ("" if expected[0] != "result" else expected[1]))
    assert fast_paths == 160
    # The corpus reaches passes, failures and dkimpy's errors alike.
    expected_kinds = {"resultTrue", "resultFalse", "ValidationError", "MessageFormatError"}
    assert expected_kinds <= outcomes, outcomes


def test_messages_the_parsers_could_read_differently_go_to_dkimpy() -> None:
    good = b"From: a@fast.test\r\nSubject: x\r\n\r\nbody\r\n"
    for message in [
        good.replace(b"\r\n", b"\n"),  # bare LF
        good.replace(b"Subject: x", b"Subject: x\ry"),  # bare CR in the header
        good.replace(b"Subject:", b"Subject :"),  # space before the colon
        b"From nobody Thu Dec  3 17:00:00 2026\r\n" + good,  # an mbox From line
        b" folded first\r\n" + good,  # a continuation with no field
        b"From: a@fast.test\r\nSubject: x\r\n",  # no end of header
    ]:
        header, _ = split_message(message)
        assert dkimpy_headers(message, header, header_fields(header)) is None, message
    header, _ = split_message(good)
    assert dkimpy_headers(good, header, header_fields(header)) == [
        (b"From", b" a@fast.test\r\n"),
        (b"Subject", b" x\r\n"),
    ]
