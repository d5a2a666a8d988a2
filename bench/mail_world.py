"""The DNS world and message mix of the checked-mail benchmarks (issue 19).

One sending domain, ``sender.bench``, with real SPF (through an ``include:``), DKIM keys
(rsa-sha256 2048 bits and ed25519-sha256) and a DMARC record; one forger, ``forger.bench``,
whose own SPF passes for the loopback client. The mix: half the messages signed rsa-sha256, a
quarter ed25519-sha256, a quarter forged (From: sender.bench, sent by forger.bench, with a
signature whose body was changed after signing: DKIM fails, SPF passes unaligned, DMARC
fails and the domain asks for quarantine). Every client connects from 127.0.0.1.

Messages are about 4 KiB (like ``smtp-source -l 4096``) and written with LF line ends for
``smtp-source -F``, which sends each line with CRLF: the signatures cover the CRLF form.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

import dkim

from lanalyze.mail.auth.keys import KeyPair, generate

SENDER = "sender.bench"
FORGER = "forger.bench"
RECIPIENT = "sink@bench.test"
# The share of each kind in the mix, by smtp-source sessions out of 20 (-s).
MIX = {"rsa": 10, "ed25519": 5, "forged": 5}
ENVELOPE = {"rsa": f"alice@{SENDER}", "ed25519": f"alice@{SENDER}", "forged": f"x@{FORGER}"}


@functools.cache
def keys() -> dict[str, KeyPair]:
    return {"rsa": generate("rsa", 2048), "ed25519": generate("ed25519")}


def _txt(text: str) -> str:
    chunks = [text[i : i + 250] for i in range(0, len(text), 250)]
    return " ".join(f'"{chunk}"' for chunk in chunks)


def zones() -> dict[str, str | None]:
    k = keys()
    return {
        SENDER: "\n".join(
            [
                f"@ TXT {_txt(f'v=spf1 include:_spf.{SENDER} -all')}",
                f"_spf TXT {_txt('v=spf1 ip4:127.0.0.0/8 -all')}",
                f"_dmarc TXT {_txt(f'v=DMARC1; p=quarantine; rua=mailto:dmarc@{SENDER}')}",
                f"rsa._domainkey TXT {_txt(k['rsa'].txt_record)}",
                f"ed._domainkey TXT {_txt(k['ed25519'].txt_record)}",
            ]
        ),
        FORGER: f"@ TXT {_txt('v=spf1 ip4:127.0.0.0/8 -all')}",
        "bench.test": f"@ TXT {_txt('v=spf1 -all')}",
    }


def _plain(number: int) -> bytes:
    lines = [
        f"From: Alice <alice@{SENDER}>",
        f"To: <{RECIPIENT}>",
        f"Subject: Quarterly figures {number}",
        f"Date: {formatdate(1_700_000_000)}",
        f"Message-ID: <bench.{number}@{SENDER}>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
    ]
    body = [f"line {i:03d} of the figures, " + "x" * 50 for i in range(55)]
    return ("\r\n".join(lines + body) + "\r\n").encode()


def _sign(message: bytes, kind: str) -> bytes:
    selector, algorithm = (b"rsa", b"rsa-sha256") if kind == "rsa" else (b"ed", b"ed25519-sha256")
    field = dkim.sign(
        message,
        selector,
        SENDER.encode(),
        keys()[kind].private,
        canonicalize=(b"relaxed", b"relaxed"),
        signature_algorithm=algorithm,
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return field + message


@dataclass(frozen=True)
class Mix:
    messages: dict[str, bytes]  # kind -> the message with CRLF line ends

    def write(self, directory: Path) -> dict[str, Path]:
        """One file per kind, LF line ends (``smtp-source -F`` sends them as CRLF)."""
        paths = {}
        for kind, message in self.messages.items():
            path = directory / f"{kind}.eml"
            path.write_bytes(message.replace(b"\r\n", b"\n"))
            paths[kind] = path
        return paths


def mix() -> Mix:
    rsa = _sign(_plain(1), "rsa")
    ed = _sign(_plain(2), "ed25519")
    forged = _sign(_plain(3), "rsa").replace(b"line 010 of the", b"line 010 of THE")
    return Mix({"rsa": rsa, "ed25519": ed, "forged": forged})
