"""The listener serves HTTPS from the configured certificate; `web hash-password` works."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import urllib.request
from pathlib import Path

from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lanalyze.cli import main
from lanalyze.errors import StartError
from lanalyze.web.app import WebServer
from lanalyze.web.auth import Users
from lanalyze.web.config import WebConfig, WebUser


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_listener(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    config = WebConfig(listen="127.0.0.1:0", tls_cert=cert, tls_key=key)

    async def run() -> tuple[int, str, str]:
        server = WebServer(config, tmp_path / "data")
        await server.start()
        try:
            port = server.address[1]
            context = ssl.create_default_context(cafile=str(cert))
            context.check_hostname = False

            def fetch() -> tuple[int, str, str]:
                with urllib.request.urlopen(
                    f"https://127.0.0.1:{port}/login", context=context, timeout=5
                ) as response:
                    return (
                        response.status,
                        response.headers["set-cookie"],
                        response.headers["strict-transport-security"],
                    )

            return await asyncio.to_thread(fetch)
        finally:
            await server.stop()

    status, cookie, hsts = asyncio.run(run())
    assert status == 200
    assert cookie.startswith("__Host-lanalyze_login=") and "Secure" in cookie
    assert hsts.startswith("max-age=")


def test_unreadable_certificate_is_a_start_error(tmp_path: Path) -> None:
    config = WebConfig(
        listen="127.0.0.1:0", tls_cert=tmp_path / "missing.pem", tls_key=tmp_path / "k.pem"
    )

    async def run() -> None:
        await WebServer(config, tmp_path / "data").start()

    try:
        asyncio.run(run())
    except StartError as exc:
        assert "web.tls_cert" in str(exc)
    else:
        raise AssertionError("expected a StartError")


def test_hash_password_command() -> None:
    result = CliRunner().invoke(main, ["web", "hash-password", "--stdin"], input="s3cret-pass\n")
    assert result.exit_code == 0, result.output
    hashed = result.output.strip()
    user = WebUser(name="u", password_hash=hashed)
    assert Users([user]).verify("u", "s3cret-pass") is user
    assert Users([user]).verify("u", "wrong") is None
    short = CliRunner().invoke(main, ["web", "hash-password", "--stdin"], input="short\n")
    assert short.exit_code != 0
