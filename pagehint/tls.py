"""Mutual TLS settings shared by host, guest and the health probe.

All three files or none: a certificate, its key and the CA that signs the
other side. Every file is read and parsed when the command starts, so a bad
path, an unreadable file, a file that is not PEM, or a key that does not match
its certificate is one line before anything listens or connects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pagehint.errors import UsageError

if TYPE_CHECKING:  # both load only when TLS is used
    import grpc
    from cryptography import x509


class HasAuthContext(Protocol):
    """A gRPC servicer context, as far as identity goes."""

    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...


@dataclass(frozen=True)
class TlsConfig:
    cert: bytes
    key: bytes
    ca: bytes
    identity: str  # the certificate's common name

    def server_credentials(self) -> grpc.ServerCredentials:
        import grpc

        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        import grpc

        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def load_tls(
    cert: str | None, key: str | None, ca: str | None, role: str = "client"
) -> TlsConfig | None:
    """The TLS settings from the three flags; None when none is given.

    ``role`` is "server" (the host) or "client": the certificate must be valid
    now, not a CA, and allowed for that role by its extended key usage — checked
    here, so that a host never announces itself ready with a certificate no
    guest will accept.
    """
    given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
    if not any(given.values()):
        return None
    missing = [f for f, v in given.items() if not v]
    if missing:
        raise UsageError(
            f"TLS needs --tls-cert, --tls-key and --tls-ca; missing {', '.join(missing)}"
        )
    assert cert and key and ca
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    from pagehint.files import read_small

    cert_pem = read_small(cert, "--tls-cert")
    key_pem = read_small(key, "--tls-key")
    ca_pem = read_small(ca, "--tls-ca")
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise UsageError(f"--tls-cert {cert}: not a PEM certificate") from None
    try:
        x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise UsageError(f"--tls-ca {ca}: not a PEM certificate") from None
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise UsageError(f"--tls-key {key}: not an unencrypted PEM private key") from None
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ours = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if public != ours:
        raise UsageError(f"--tls-key {key}: does not match the certificate {cert}")
    _check_use(certificate, cert, role)
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    identity = str(names[0].value) if names else ""
    return TlsConfig(cert_pem, key_pem, ca_pem, identity)


def _check_use(certificate: x509.Certificate, path: str, role: str) -> None:
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.UTC)
    if now < certificate.not_valid_before_utc:
        raise UsageError(f"--tls-cert {path}: not valid before {certificate.not_valid_before_utc}")
    if now > certificate.not_valid_after_utc:
        raise UsageError(f"--tls-cert {path}: expired on {certificate.not_valid_after_utc}")
    try:
        if certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise UsageError(f"--tls-cert {path}: is a CA certificate, not a {role}'s")
    except x509.ExtensionNotFound:
        pass
    want = ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if want not in usages:
        raise UsageError(f"--tls-cert {path}: not made for a {role} (its extended key usage)")


def peer_identity(context: HasAuthContext) -> tuple[str, bool] | None:
    """The client certificate's (common name, is admin), or None without TLS.

    Read from the certificate itself (gRPC hands its PEM over), not by matching
    text in the subject string: a common name like "x,OU=pagehint-admin" must
    not pass for the admin unit.
    """
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    from pagehint.certs import ADMIN_UNIT

    auth = context.auth_context() or {}
    if list(auth.get("transport_security_type") or ()) != [b"ssl"]:
        return None
    pems = list(auth.get("x509_pem_cert") or [])
    if not pems:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pems[0])
    except ValueError:
        return None
    subject = cert.subject
    cns = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    units = subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    admin = any(u.value == ADMIN_UNIT for u in units)
    return (str(cns[0].value) if cns else ""), admin


# ---- what to tell a user whose connection failed ------------------------------------
# gRPC says only UNAVAILABLE (with "Socket closed", or a handshake error naming
# OpenSSL's WRONG_VERSION_NUMBER) when one side speaks TLS and the other does not.
# A probe tells which: send the host a TLS ClientHello and look at the first byte
# back. A TLS server answers with a TLS record (0x16 a handshake, 0x15 an alert); a
# plain-text gRPC server reads bytes that are not HTTP/2's preface and hangs up.

_TLS_RECORDS = (0x15, 0x16)  # alert, handshake


def _client_hello() -> bytes:
    import contextlib
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # a probe: nothing is sent after the hello
    ctx.set_alpn_protocols(["h2"])
    out = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


def speaks_tls(address: str, timeout: float = 1.0) -> bool | None:
    """Whether the server at ``address`` (HOST:PORT, IPv6 in brackets) answers a TLS
    ClientHello in TLS: True; False when it answers with anything else or hangs up;
    None when it cannot be reached or says nothing within ``timeout`` (each step)."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        sock = socket.create_connection(
            (host.removeprefix("[").removesuffix("]"), int(port)), timeout=timeout
        )
    except (OSError, ValueError):
        return None
    with sock:
        try:
            sock.sendall(_client_hello())
            first = sock.recv(1)
        except TimeoutError:
            return None
        except OSError:  # reset: it hung up on the hello
            return False
    return bool(first) and first[0] in _TLS_RECORDS


def unreachable_hint(address: str, tls: bool, timeout: float = 1.0) -> str:
    """What to add, in parentheses, to an UNAVAILABLE from the host at ``address``:
    ``tls`` is whether this side spoke TLS. Probes the host (``speaks_tls``)."""
    speaks = speaks_tls(address, timeout)
    if tls and speaks is False:
        return (
            "the host does not speak TLS: drop --tls-cert, --tls-key and "
            "--tls-ca, or start the host with TLS"
        )
    if not tls and speaks:
        return "the host speaks TLS: give --tls-cert, --tls-key and --tls-ca"
    if tls:
        return "with TLS: check --tls-ca and that the host trusts this certificate"
    return "is it running? does it require TLS?"
