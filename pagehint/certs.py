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
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

from pagehint.errors import UsageError

ADMIN_UNIT = "pagehint-admin"
MAX_DNS_NAME = 253  # RFC 1035: 255 octets on the wire, 253 characters written out
MAX_COMMON_NAME = 64  # X.520's ub-common-name
# RFC 1123 host name label: letters, digits and hyphens, 1 to 63 of them, neither
# end a hyphen (a leading digit is allowed).
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def host_name(text: str) -> str:
    """A name the host is reached by, as a certificate holds it: an IP address,
    or a DNS name of RFC 1123 labels (a leading ``*.`` label for a wildcard;
    Unicode converted to its IDNA A-label, ``xn--…``). UsageError naming the
    flag and why, before any certificate is made."""
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    why = _dns_name_problem(text)
    if why is not None:
        raise UsageError(f"--host-name {text!r}: not a DNS name or IP address: {why}")
    return text.encode("idna").decode("ascii") if not text.isascii() else text


def _dns_name_problem(name: str) -> str | None:
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return "not a name IDNA can write in ASCII"
    if len(name) > MAX_DNS_NAME:
        return f"longer than {MAX_DNS_NAME} characters"
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]  # a wildcard, as the leftmost label only
    for label in labels:
        if not label:
            return "an empty label (two dots, or a dot at an end)"
        if len(label) > 63:
            return f"label {label[:20]!r}… is longer than 63 characters"
        if not _LABEL.fullmatch(label):
            return f"label {label!r}: only letters, digits and inner hyphens (RFC 1123)"
    return None


def _write(path: Path, data: bytes, private: bool) -> None:
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # a file that existed keeps its old mode otherwise
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_certs(out: Path, guests: list[str], host_names: list[str], days: int = 365) -> list[Path]:
    """Write ca, host, guest-<id> and admin certificates and keys into ``out``."""
    host_names = list(dict.fromkeys(host_name(h) for h in host_names))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create: {e.strerror}") from None
    ca = _Authority(out, days)
    ca.write_self()
    sans: list[x509.GeneralName] = []
    for h in dict.fromkeys(["localhost", "127.0.0.1", "::1", *host_names]):
        sans.append(_san(h))
    # The names that matter are the SANs; a long first name cannot be the common name.
    cn = host_names[0] if host_names and len(host_names[0]) <= MAX_COMMON_NAME else "localhost"
    ca.issue("host", _name(cn), True, sans)
    for g in guests:
        ca.issue(f"guest-{g}", _name(g), False, [])
    ca.issue("admin", _name("admin", ADMIN_UNIT), False, [])
    return ca.written


def _name(cn: str, unit: str | None = None) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pagehint")]
    if unit:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _san(host: str) -> x509.GeneralName:
    """A subject alternative name: an IP address if it parses as one, else a DNS name."""
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class _Authority:
    """A demo CA: its own key and certificate, and the certificates it issues."""

    def __init__(self, out: Path, days: int) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        self.out = out
        self.now = datetime.datetime.now(datetime.UTC)
        self.until = self.now + datetime.timedelta(days=days)
        self.written: list[Path] = []
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name("pagehint demo CA")
        self.cert = (
            self._builder(self.name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        from cryptography import x509

        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now)
            .not_valid_after(self.until)
        )

    def _save(self, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        from cryptography.hazmat.primitives import serialization

        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write(self.out / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM), False)
        _write(self.out / f"{stem}.key", pem, True)
        self.written.extend([self.out / f"{stem}.crt", self.out / f"{stem}.key"])

    def write_self(self) -> None:
        self._save("ca", self.key, self.cert)

    def issue(
        self, stem: str, subject: x509.Name, server: bool, sans: list[x509.GeneralName]
    ) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID

        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            self._builder(subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        self._save(stem, key, builder.sign(self.key, hashes.SHA256()))
