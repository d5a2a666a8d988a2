"""DKIM key pairs: generate, store (mode 0600) and render the DNS TXT record to publish.

RSA keys are written as PKCS#1 PEM and Ed25519 keys as the base64 32-byte seed, the two forms
dkimpy's signer reads (RFC 6376 §3.6.1, RFC 8463 §4). Generated with ``cryptography`` rather
than dkimpy's ``dknewkey``, which shells out to the ``openssl`` binary.

Trust: local operator input only.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

Algorithm = Literal["rsa", "ed25519"]


@dataclass(frozen=True)
class KeyPair:
    algorithm: Algorithm
    private: bytes  # the key file's content
    public_b64: str  # the p= value

    @property
    def txt_record(self) -> str:
        return f"v=DKIM1; k={self.algorithm}; p={self.public_b64}"


def generate(algorithm: Algorithm = "rsa", bits: int = 2048) -> KeyPair:
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return KeyPair("rsa", private, base64.b64encode(public).decode())
    seed_key = ed25519.Ed25519PrivateKey.generate()
    seed = seed_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    raw_public = seed_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return KeyPair("ed25519", base64.b64encode(seed) + b"\n", base64.b64encode(raw_public).decode())


def key_path(directory: Path, domain: str, selector: str, algorithm: Algorithm) -> Path:
    return directory / f"{domain}.{selector}.{algorithm}.key"


def write_private(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write ``data`` readable by the owner only; created 0600, never briefly wider."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def zone_record(domain: str, selector: str, pair: KeyPair) -> str:
    """The record as a zone-file line, the value split into strings of at most 255 octets."""
    value = pair.txt_record
    chunks = [value[i : i + 250] for i in range(0, len(value), 250)]
    strings = "\n    ".join(f'"{chunk}"' for chunk in chunks)
    return f"{selector}._domainkey.{domain}. IN TXT (\n    {strings} )"
