"""DKIM verification (RFC 6376 §6) of every signature on a message, up to a limit.

dkimpy does the verification: tag parsing, rsa-sha256 and ed25519-sha256 (RFC 8463), simple
and relaxed canonicalisation, key records. What is ours:

* its DNS comes from :mod:`lanalyze.mail.auth.dns` (asynchronous, prefetched) through its
  ``dnsfunc`` parameter, and the hashing runs in a worker thread, off the event loop;
* results are the RFC 8601 §2.7.1 words, which dkimpy's True/False does not give: a missing
  key or malformed signature is ``permerror``, DNS trouble ``temperror``, a bad hash ``fail``;
* ``l=`` (§3.5, §8.2): dkimpy verifies only the first ``l`` octets of the body. A valid
  signature that leaves body content unsigned is reported as ``policy`` (configurable), so
  that content appended by anyone cannot ride on the signer's reputation (DMARC only counts
  ``pass``).

* key limits (RFC 8301 §3.2: verifiers handle RSA keys of 1024 to 4096 bits): a key record
  is judged by :func:`key_refusal` when our DNS function hands it to dkimpy, before any
  public-key operation. An RSA key larger than ``mail.auth.max_rsa_key_bits``, smaller than
  1024 bits, or with an exponent other than 65537 or 3 is refused (``permerror``): a hostile
  domain publishing an 8192-bit key with an 8192-bit exponent made each signature a
  second-long modular power holding the GIL, on the event loop the web console shares;
* RSA verification by OpenSSL (the ``cryptography`` package) instead of dkimpy's pure-Python
  RSA (:func:`_native_rsa_verify`): ~4 ms per 4096-bit signature there, well under 0.1 ms here;
* speed without changing a result (issue 19): a key record is parsed once and the parse kept
  (:func:`_cached_evaluate_pk`, bounded), dkimpy's relaxed canonicalisation skips its
  regular expressions when the text has nothing they would change (most bodies have no tab,
  no double space and no space before a line end), and its message parser no longer splits
  the body into lines to join them again (:func:`_rfc822_parse`).

Trust: message and DNS answers are the peer's; dkimpy's exceptions are caught per signature.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import functools
import logging
import re
from dataclasses import dataclass
from typing import Any

import dkim
import dkim.canonicalization
import nacl.exceptions
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.crypto import DigestTooLargeError
from dkim.util import InvalidTagValueList, parse_tag_value

from lanalyze.mail.auth.dns import INLINE_LIMIT, Prefetched, Resolver, run_with_lookups
from lanalyze.mail.auth.message import (
    MAX_FOLDING_COST,
    Parsed,
    field_value,
    folding_cost,
    parse_message,
)
from lanalyze.mail.errors import LookupBudgetExceeded, LookupNeeded

_quiet = logging.getLogger("lanalyze.mail.auth.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False
# dkimpy logs every bad signature at error level; they are results here, not our errors.
_quiet.setLevel(logging.CRITICAL)

MAX_ROUNDS = 4
# Parsed key records kept, by the record's bytes. A TXT answer is at most 64 KiB, records
# over KEY_CACHE_RECORD_MAX are parsed every time: at most 64 x 8 KiB of records (and their
# parsed keys, and as many OpenSSL key objects) held. Real keys (RSA 2048: ~400 bytes,
# Ed25519: ~60) are far smaller.
KEY_CACHE_ENTRIES = 64
KEY_CACHE_RECORD_MAX = 8192
MIN_RSA_KEY_BITS = 1024  # RFC 8301 §3.2
MAX_RSA_KEY_BITS = 4096  # the default of mail.auth.max_rsa_key_bits (RFC 8301 §3.2)
# Real signers use 65537 (3 on some old keys); a large exponent only makes verifying slow.
RSA_EXPONENTS = frozenset({3, 65537})
_NATIVE_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha256": hashes.SHA256(),
    "sha1": hashes.SHA1(),  # noqa: S303 - dkimpy's rsa-sha1 verification, not a new use
}


def key_refusal(record: bytes | None, max_bits: int = MAX_RSA_KEY_BITS) -> str | None:
    """Why a DKIM key record (``k=rsa``) must not be used, or None.

    Parsing the record is cheap and bounded (a TXT answer is at most 64 KiB); the checks run
    before dkimpy computes anything with the key. A record that does not parse is left to
    dkimpy, which reports it (``permerror``).
    """
    if not record:
        return None
    try:
        key, bits, ktag, _ = dkim.evaluate_pk(b"key", record)
    except Exception:  # dkimpy's verification reports the broken record itself
        return None
    if ktag != b"rsa" or not isinstance(key, dict):
        return None
    if bits > max_bits:
        return f"RSA key of {bits} bits refused (more than {max_bits})"
    if bits < MIN_RSA_KEY_BITS:
        return f"RSA key of {bits} bits refused (less than {MIN_RSA_KEY_BITS})"
    exponent = key.get("publicExponent")
    if exponent not in RSA_EXPONENTS:
        return "RSA key refused: public exponent is not 65537 or 3"
    return None


@functools.lru_cache(maxsize=KEY_CACHE_ENTRIES)
def _openssl_key(exponent: int, modulus: int) -> rsa.RSAPublicKey:
    """OpenSSL's key object for (e, n), built once per key (keys of our limits only)."""
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def _native_rsa_verify(digest: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    """dkimpy's ``RSASSA_PKCS1_v1_5_verify`` (RFC 8017 §8.2.2), done by OpenSSL.

    Same inputs and answer as dkimpy's (its hash object, the signature bytes, the key as
    parsed by dkimpy); only keys :func:`key_refusal` let through get here from our checks.
    """
    algorithm = _NATIVE_HASHES.get(getattr(digest, "name", ""))
    if algorithm is None:
        return bool(_dkimpy_rsa_verify(digest, signature, public_key))
    try:
        verifier = _openssl_key(public_key["publicExponent"], public_key["modulus"])
    except (ValueError, KeyError, TypeError):
        return False
    try:
        verifier.verify(signature, digest.digest(), padding.PKCS1v15(), Prehashed(algorithm))
    except InvalidSignature:
        return False
    return True


# dkimpy verifies RSA in pure Python (about 4 ms of GIL per 4096-bit signature); its DKIM and
# ARC classes call this module-level name, so one assignment gives both OpenSSL's.
_dkimpy_rsa_verify = dkim.RSASSA_PKCS1_v1_5_verify
dkim.RSASSA_PKCS1_v1_5_verify = _native_rsa_verify


_dkimpy_evaluate_pk = dkim.evaluate_pk


@functools.lru_cache(maxsize=KEY_CACHE_ENTRIES)
def _parsed_key(record: bytes) -> Any:
    return _dkimpy_evaluate_pk(b"key", record)


def _cached_evaluate_pk(name: Any, record: Any) -> Any:
    """dkimpy's ``evaluate_pk`` (key record -> key), once per distinct record.

    Its result depends on the record only (the name appears in an error message); a record
    that does not parse raises, is not kept, and is parsed again with its name for dkimpy's
    message. The key objects are only read by the verification.
    """
    if isinstance(record, bytes) and 0 < len(record) <= KEY_CACHE_RECORD_MAX:
        with contextlib.suppress(Exception):  # dkimpy says why below, naming the key
            return _parsed_key(record)
    return _dkimpy_evaluate_pk(name, record)


dkim.evaluate_pk = _cached_evaluate_pk

_dkimpy_compress_whitespace = dkim.canonicalization.compress_whitespace
_dkimpy_strip_trailing_whitespace = dkim.canonicalization.strip_trailing_whitespace


def _compress_whitespace(content: bytes) -> bytes:
    # dkimpy: re.sub(b"[\t ]+", b" ", content), a replacement at every single space.
    if b"\t" not in content and b"  " not in content:
        return content
    return bytes(_dkimpy_compress_whitespace(content))


def _strip_trailing_whitespace(content: bytes) -> bytes:
    # dkimpy: re.sub(b"[\t ]+\r\n", b"\r\n", content).
    if b" \r\n" not in content and b"\t\r\n" not in content:
        return content
    return bytes(_dkimpy_strip_trailing_whitespace(content))


_dkimpy_unfold_header_value = dkim.canonicalization.unfold_header_value


def _unfold_header_value(content: bytes) -> bytes:
    # dkimpy: re.sub(b"\r?\n", b"", content); most field values are one line and its end.
    lines = content.count(b"\n")
    if lines == 0:
        return content
    if lines == 1 and content.endswith(b"\n"):
        return content[:-2] if content.endswith(b"\r\n") else content[:-1]
    return bytes(_dkimpy_unfold_header_value(content))


# Module-level names dkimpy's Relaxed canonicalisation calls (DKIM and ARC alike).
dkim.canonicalization.compress_whitespace = _compress_whitespace
dkim.canonicalization.strip_trailing_whitespace = _strip_trailing_whitespace
dkim.canonicalization.unfold_header_value = _unfold_header_value

_dkimpy_rfc822_parse = dkim.rfc822_parse


def _rfc822_parse(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """dkimpy's ``rfc822_parse`` without splitting the body into lines and joining it again.

    dkimpy splits the whole message at every ``\r?\n`` and joins the body's lines with CRLF.
    For a message without a bare LF (all SMTP mail here: a bare LF ends the session) that
    body is exactly the bytes after the first empty line, and the header is parsed by
    dkimpy's own code; anything else goes to dkimpy whole.
    """
    if message.count(b"\n") != message.count(b"\r\n"):
        return _dkimpy_rfc822_parse(message)  # type: ignore[no-any-return]
    if message.startswith(b"\r\n"):
        return [], message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return _dkimpy_rfc822_parse(message)  # type: ignore[no-any-return]
    headers, _ = _dkimpy_rfc822_parse(message[: end + 2])
    return headers, message[end + 4 :]


dkim.rfc822_parse = _rfc822_parse

# dkimpy removes the b= value from a signature field with RE_BTAG, whose folding-white-space
# group ``(?:(?:\s*\r?\n)?\s+)?`` (which matches exactly what ``\s*`` matches) sits inside a
# repetition over every base64 character: ~150 µs of backtracking a 2048-bit signature. The
# same language written with ``\s*`` and possessive repeats (whitespace is never a base64
# character, and what follows the repetition is optional, so giving characters back never
# finds another match) replaces the same text in a sixth of the time; fuzzed against the
# original in the tests.
_DKIMPY_RE_BTAG = dkim.RE_BTAG
dkim.RE_BTAG = re.compile(rb"([;\s]b\s*+=)(?:\s*+[a-zA-Z0-9+/=])*+(?:\r?\n\Z)?")


ParsedHeaders = list[tuple[bytes, bytes]]


def dkimpy_headers(
    message: bytes, header: bytes, fields: list[tuple[bytes, bytes]]
) -> ParsedHeaders | None:
    """dkimpy's ``rfc822_parse`` header list ((name, value) as it has them), from the fields
    the checks parsed already; None when the two parsers could disagree.

    They agree when every line ends in CRLF (no bare LF anywhere, no bare CR in the header:
    ``bytes.splitlines`` splits there, dkimpy does not), the header ends with an empty line,
    and every field is ``name:`` with nothing between the name and the colon (dkimpy refuses
    the rest, and "From " lines, which it skips).
    """
    if message.count(b"\n") != message.count(b"\r\n"):
        return None
    if header.count(b"\r") != header.count(b"\r\n") or b"\r\n\r\n" not in message:
        return None
    parsed: ParsedHeaders = []
    for name, raw in fields:
        size = len(name)
        if not size or raw[size : size + 1] != b":":
            return None
        parsed.append((raw[:size], raw[size + 1 :]))
    return parsed


def _verify_parsed(headers: ParsedHeaders, body: bytes, index: int, dnsfunc: Any) -> bool:
    """``dkim.DKIM(message, minkey=1024).verify(index, dnsfunc)``, step for step, over a
    message parsed once for all its signatures (:func:`dkimpy_headers`).

    dkimpy's own helpers do the work (tag parsing and validation, key records,
    canonicalisation, header selection, the b= removal); what is left out is building a DKIM
    object per signature (a parse of the whole message each), its debug logging, which
    formats the whole signature eagerly, and canonicalising header fields it does not sign.
    The same exceptions for the same input: checked against dkimpy over a corpus of good and
    broken signatures in the tests.
    """
    sigheaders = [(x, y) for x, y in headers if x.lower() == b"dkim-signature"]
    if len(sigheaders) <= index:
        return False
    try:
        sig = parse_tag_value(sigheaders[index][1])
    except InvalidTagValueList as exc:
        raise dkim.MessageFormatError(exc) from exc
    dkim.validate_signature_fields(sig)
    include_headers = [x.lower() for x in re.split(rb"\s*:\s*", sig[b"h"])]
    # verify_sig
    name = sig[b"s"] + b"._domainkey." + sig[b"d"] + b"."
    try:
        pk, keysize, ktag, seqtlsrpt = dkim.load_pk_from_dns(name, dnsfunc, timeout=5)
    except (dkim.KeyFormatError, binascii.Error, dkim.DnsTimeoutError):
        return False
    # verify_sig_process, for a message that is not a TLS report (tlsrpt=False)
    if seqtlsrpt:
        raise dkim.ValidationError("Message is not tlsrpt and Service Type is tlsrpt")
    try:
        policy = CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError as exc:
        raise dkim.MessageFormatError(f"invalid c= value: {exc.args[0]}") from exc
    hasher = dkim.HASH_ALGORITHMS[sig[b"a"]]
    canonical = policy.canonicalize_body(body)
    if b"l" in sig:
        canonical = canonical[: int(sig[b"l"])]
    bodyhash = hasher(canonical).digest()
    try:
        expected = base64.b64decode(re.sub(rb"\s+", b"", sig[b"bh"]))
    except TypeError as exc:
        raise dkim.MessageFormatError(str(exc)) from exc
    if bodyhash != expected:
        raise dkim.ValidationError(
            f"body hash mismatch (got {base64.b64encode(bodyhash)!r}, expected {sig[b'bh']!r})"
        )
    if b"from" in include_headers:
        include_headers.append(b"from")  # dkimpy: extra From: fields break the signature
    digest = dkim.HashThrough(hasher(), False)
    # dkimpy's hash_headers canonicalises every field and then selects the signed ones;
    # selecting first picks the same fields (it compares lower-cased names either way, and
    # these names hold no white space) and canonicalises a handful instead of all.
    signed = policy.canonicalize_headers(dkim.select_headers(headers, include_headers))
    sigheader = sigheaders[index]
    own = policy.canonicalize_headers([(sigheader[0], dkim.RE_BTAG.sub(b"\\1", sigheader[1]))])
    # the signature field is hashed without its trailing CRLF
    for name, value in [*signed, *((x, y.rstrip()) for x, y in own)]:
        digest.update(name)
        digest.update(b":")
        digest.update(value)
    signature = base64.b64decode(re.sub(rb"\s+", b"", sig[b"b"]))
    if ktag == b"rsa":
        try:
            # The module's name, as dkimpy calls it (OpenSSL's: _native_rsa_verify).
            ok = bool(dkim.RSASSA_PKCS1_v1_5_verify(digest, signature, pk))
        except (TypeError, DigestTooLargeError) as exc:
            raise dkim.KeyFormatError(f"digest too large for modulus: {exc}") from exc
        if ok and keysize < MIN_RSA_KEY_BITS:
            raise dkim.KeyFormatError(f"public key too small: {keysize}")
        return ok
    if ktag == b"ed25519":
        try:
            pk.verify(digest.digest(), signature)
        except nacl.exceptions.BadSignatureError:
            return False
        return True
    raise dkim.UnknownKeyTypeError(ktag)


@dataclass(frozen=True)
class DkimResult:
    result: str  # pass fail policy neutral temperror permerror
    domain: str = ""  # d=
    selector: str = ""  # s=
    algorithm: str = ""  # a=
    identity: str = ""  # i=
    body_length: int | None = None  # l=, when present
    body_covered: bool = True  # False when l= leaves body content unsigned
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "domain": self.domain,
            "selector": self.selector,
            "algorithm": self.algorithm,
            "identity": self.identity,
            "body_length": self.body_length,
            "body_covered": self.body_covered,
            "reason": self.reason,
        }


def _text(value: bytes | None) -> str:
    return (value or b"").decode("ascii", "replace")


def _tags(raw_field: bytes) -> dict[bytes, bytes]:
    value = field_value(raw_field).encode("utf-8", "replace")
    try:
        return dict(parse_tag_value(re.sub(rb"\s+", b" ", value)))
    except InvalidTagValueList:
        return {}


def signing_key_name(raw_field: bytes, tags: dict[bytes, bytes] | None = None) -> str | None:
    """``<s>._domainkey.<d>`` named by a signature field (DKIM-Signature, ARC-*), if any
    (``tags``: the field's, when the caller has them parsed already)."""
    tags = _tags(raw_field) if tags is None else tags
    selector, domain = tags.get(b"s"), tags.get(b"d")
    if not selector or not domain:
        return None
    return f"{_text(selector)}._domainkey.{_text(domain)}"


def _verify_one(
    message: bytes,
    index: int,
    tags: dict[bytes, bytes],
    length_tag: str,
    max_key_bits: int,
    *,
    parsed: tuple[ParsedHeaders, bytes] | None = None,
) -> Any:
    """The verification of signature ``index``, as a function of the DNS answers so far."""

    def run(view: Prefetched) -> DkimResult:
        base = DkimResult(
            "none",
            domain=_text(tags.get(b"d")).lower(),
            selector=_text(tags.get(b"s")),
            algorithm=_text(tags.get(b"a")),
            identity=_text(tags.get(b"i")),
        )

        def outcome(word: str, **changes: Any) -> DkimResult:
            return dataclasses.replace(base, result=word, **changes)

        trouble: list[str] = []
        key_text: list[bytes | None] = []
        refused: list[str] = []

        def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
            answer = view.get(name, "TXT")
            if answer.status == "error":
                trouble.append(answer.error)
                raise dkim.DnsTimeoutError(answer.error)
            text = answer.records[0] if answer.records else None
            key_text.append(text if isinstance(text, bytes) else None)
            refusal = key_refusal(key_text[-1], max_key_bits)
            if refusal is not None:
                # dkimpy turns this into "does not verify" before touching the key.
                refused.append(refusal)
                raise dkim.KeyFormatError(refusal)
            return key_text[-1]

        body = b""
        try:
            if parsed is not None:
                ok = _verify_parsed(parsed[0], parsed[1], index, dnsfunc)
                body = parsed[1]
            else:
                verifier = dkim.DKIM(message, logger=_quiet, minkey=1024)
                ok = verifier.verify(idx=index, dnsfunc=dnsfunc)
                body = verifier.body
        except dkim.ValidationError as exc:
            text = str(exc)
            return outcome(
                "fail", reason="body hash mismatch" if "body hash" in text else text[:200]
            )
        except dkim.DKIMException as exc:
            return outcome("permerror", reason=str(exc)[:200])
        except LookupNeeded:
            raise
        except Exception as exc:
            # dkimpy lets errors of its crypto back ends escape on hostile input (an RSA
            # signature checked with an Ed25519 key raises nacl's ValueError): the signer's
            # data is at fault, not us.
            return outcome("permerror", reason=f"unusable signature or key: {type(exc).__name__}")
        if trouble:
            return outcome("temperror", reason=f"key lookup: {trouble[0]}")
        if refused:
            return outcome("permerror", reason=refused[0])
        if not ok:
            if not key_text or key_text[-1] is None:
                return outcome("permerror", reason="no key for signature")
            try:
                dkim.evaluate_pk(b"key", key_text[-1])
            except dkim.DKIMException as exc:
                return outcome("permerror", reason=f"bad key: {exc}"[:200])
            return outcome("fail", reason="signature did not verify")
        if b"l" not in tags:
            return outcome("pass")
        length = int(tags[b"l"])
        try:
            policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
        except InvalidCanonicalizationPolicyError:
            return outcome("permerror", reason="invalid c=")
        body_len = len(policy.canonicalize_body(body))
        if length >= body_len:
            return outcome("pass", body_length=length)
        reason = f"l={length} signs {length} of {body_len} body octets"
        return outcome(
            "policy" if length_tag == "policy" else "pass",
            body_length=length,
            body_covered=False,
            reason=reason,
        )

    return run


async def verify_dkim(
    resolver: Resolver,
    message: bytes,
    *,
    max_signatures: int = 5,
    length_tag: str = "policy",
    max_key_bits: int = MAX_RSA_KEY_BITS,
    parsed: Parsed | None = None,
) -> list[DkimResult]:
    """One result per DKIM-Signature field (top to bottom), at most ``max_signatures``
    (``parsed``: the message's :func:`parse_message`, when the caller has it)."""
    header, body, fields = parsed if parsed is not None else parse_message(message)
    signatures = [raw for name, raw in fields if name == b"dkim-signature"]
    if not signatures:
        return []
    cost = folding_cost(fields)
    if cost > MAX_FOLDING_COST:
        return [DkimResult("permerror", reason="header folded too often to verify safely")]
    in_thread = len(message) > INLINE_LIMIT or cost > INLINE_LIMIT * 16
    headers = dkimpy_headers(message, header, fields)
    for_dkimpy = (headers, body) if headers is not None else None
    results = []
    for index, raw in enumerate(signatures[:max_signatures]):
        tags = _tags(raw)
        if b"l" in tags and not tags[b"l"].isdigit():
            results.append(DkimResult("permerror", reason="invalid l= tag"))
            continue
        key = signing_key_name(raw, tags)
        try:
            result = await run_with_lookups(
                _verify_one(message, index, tags, length_tag, max_key_bits, parsed=for_dkimpy),
                resolver,
                max_rounds=MAX_ROUNDS,
                in_thread=in_thread,
                prefetch=[(key, "TXT")] if key else None,
            )
        except LookupBudgetExceeded as exc:
            result = DkimResult("permerror", reason=str(exc))
        results.append(result)
    return results
