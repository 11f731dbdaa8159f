"""Certificates for mutual TLS between guests and a host: a CA, the host, guests, an admin.

``pagehint certs --out DIR`` writes a private CA and certificates signed by it:
``host.crt`` (valid for localhost, 127.0.0.1, ::1 and any --host-name given),
one ``guest-<id>.crt`` per guest id (the certificate's common name *is* the
guest's identity: the host lets it negotiate only as that id), and
``admin.crt`` (organizational unit ``pagehint-admin``: may read every guest's
figures). Keys are ECDSA P-256, files 0600. For demos and tests; in production
use your own PKI with the same conventions.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from pagehint.errors import UsageError

ADMIN_UNIT = "pagehint-admin"


def _write(path: Path, data: bytes, private: bool) -> None:
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # a file that existed keeps its old mode otherwise
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_certs(out: Path, guests: list[str], host_names: list[str], days: int = 365) -> list[Path]:
    """Write ca, host, guest-<id> and admin certificates and keys into ``out``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create: {e.strerror}") from None
    now = datetime.datetime.now(datetime.UTC)
    until = now + datetime.timedelta(days=days)

    def name(cn: str, unit: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pagehint")]
        if unit:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        return x509.Name(attrs)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("pagehint demo CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    written = []

    def issue(stem: str, subject: x509.Name, server: bool, sans: list[x509.GeneralName]) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        _write(out / f"{stem}.key", key_pem(key), private=True)
        _write(out / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM), private=False)
        written.extend([out / f"{stem}.crt", out / f"{stem}.key"])

    _write(out / "ca.crt", ca.public_bytes(serialization.Encoding.PEM), private=False)
    _write(out / "ca.key", key_pem(ca_key), private=True)
    written.extend([out / "ca.crt", out / "ca.key"])
    sans: list[x509.GeneralName] = []
    for h in ["localhost", "127.0.0.1", "::1", *host_names]:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    issue("host", name(host_names[0] if host_names else "localhost"), True, sans)
    for g in guests:
        issue(f"guest-{g}", name(g), False, [])
    issue("admin", name("admin", ADMIN_UNIT), False, [])
    return written
