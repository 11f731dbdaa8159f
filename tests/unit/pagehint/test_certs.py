"""`pagehint certs --host-name`: names a certificate can hold, checked before any is made."""

from __future__ import annotations

from pathlib import Path

import pytest

from pagehint.certs import host_name, make_certs
from pagehint.errors import UsageError


@pytest.mark.parametrize(
    ("given", "held"),
    [
        ("host.example", "host.example"),
        ("10.0.0.1", "10.0.0.1"),
        ("[::1]", "::1"),  # as in a URL or --listen
        ("*.example", "*.example"),  # a wildcard, leftmost only
        ("3com.example", "3com.example"),  # RFC 1123: a label may start with a digit
        ("\u00fcber.example", "xn--ber-goa.example"),  # IDNA's A-label
    ],
)
def test_names_a_certificate_can_hold(given: str, held: str) -> None:
    assert host_name(given) == held


@pytest.mark.parametrize(
    "given", ["", "a b", "a_b", "-a.example", "a-.example", "a.*.example", "*", "a.", "x" * 64]
)
def test_names_it_cannot_are_usage_errors(given: str) -> None:
    with pytest.raises(UsageError, match=r"^--host-name .*: not a DNS name or IP address: "):
        host_name(given)


def test_the_host_certificate_holds_every_name_once(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    long = ".".join(["a" * 60] * 3)  # a valid name too long to be a common name
    make_certs(tmp_path, ["g1"], [long, "\u00fcber.example", "::1", "[::1]"])
    cert = x509.load_pem_x509_certificate((tmp_path / "host.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [str(n.value) for n in sans]
    assert names == ["localhost", "127.0.0.1", "::1", long, "xn--ber-goa.example"]
    (cn,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert cn.value == "localhost"
