"""Certificates and keys to run Flower's deployment engine locally with TLS and SuperNode authentication.

In flwr 1.41 a SuperLink serves its Fleet, Control and Runtime APIs over one HTTPS port
(``--host``/``--port``, default 127.0.0.1:8000) with ``--ssl-ca-certfile ca.crt --ssl-certfile
server.crt --ssl-keyfile server.key``; SuperNodes (``--root-certificates``) and the ``flwr`` CLI
(``root-certificates`` of a connection in ``~/.flwr/config.toml``) trust ``ca.crt``. The server
certificate must name every address clients dial (IP addresses and DNS names in its
subjectAltName), or verification fails.

SuperNode authentication in flwr 1.41: the SuperLink runs with ``--enable-supernode-auth``, each
node's public key is registered through the Control API with ``flwr supernode register NODE.pub``,
and the SuperNode signs its requests with ``--auth-supernode-private-key NODE.key``. Flower reads
both keys in OpenSSH format (``load_ssh_private_key`` / ``load_ssh_public_key``) and accepts NIST
curves only, so node keys here are ECDSA P-384, as ``ssh-keygen -t ecdsa -b 384`` makes them.

For local testing: a real deployment's CA key belongs in a PKI, not beside the certificates.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedpers.atomic import write_bytes

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
DEFAULT_ADDRESSES = ("127.0.0.1", "localhost", "::1")
SUPERLINK_PORT = (
    8000  # flwr 1.41's default --port of flower-superlink (Fleet, Control and Runtime APIs)
)
_HOST_NAME = re.compile(
    r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*"
)
_NODE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def _write_key(
    path: Path, key: ec.EllipticCurvePrivateKey, fmt: serialization.PrivateFormat
) -> Path:
    return write_bytes(
        path,
        key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()),
        0o600,
    )


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    return write_bytes(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    if days < 1:
        raise ValueError(f"certificates must be valid for at least a day, got {days}")
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(
        now + dt.timedelta(days=days)
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedpers"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def subject_alternative_name(address: str) -> x509.GeneralName:
    """An IP address as ``IPAddress``, a host name as ``DNSName``; ValueError for anything else (e.g. a port)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(address))
    except ValueError:
        if not _HOST_NAME.fullmatch(address):
            raise ValueError(
                f"{address!r} is neither an IP address nor a host name (give no port or scheme)"
            ) from None
        return x509.DNSName(address)


def generate_ca(directory: Path | str, days: int = 365) -> tuple[Path, Path]:
    """A self-signed ECDSA P-384 CA: ``ca.crt`` and ``ca.key`` (0600) in ``directory``."""
    directory = Path(directory)
    key = ec.generate_private_key(ec.SECP384R1())
    name = _name("fedpers local test CA")
    cert = (
        _validity(x509.CertificateBuilder(), days)
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return (
        _write_cert(directory / CA_CERT, cert),
        _write_key(directory / CA_KEY, key, serialization.PrivateFormat.PKCS8),
    )


def load_ca(directory: Path | str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key that :func:`generate_ca` wrote in ``directory``."""
    directory = Path(directory)
    cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ValueError(f"{directory / CA_KEY}: not the private key of {directory / CA_CERT}")
    return cert, key


def generate_server_cert(
    directory: Path | str, addresses: Sequence[str] = DEFAULT_ADDRESSES, days: int = 365
) -> tuple[Path, Path]:
    """``server.crt`` for ``addresses`` (subjectAltName, server auth) signed by the CA in ``directory``; ``server.key`` (0600)."""
    directory = Path(directory)
    if not addresses:
        raise ValueError("the server certificate needs at least one address")
    names = [subject_alternative_name(a) for a in dict.fromkeys(addresses)]
    ca_cert, ca_key = load_ca(directory)
    key = ec.generate_private_key(ec.SECP384R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        _validity(x509.CertificateBuilder(), days)
        .subject_name(_name("fedpers SuperLink"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return (
        _write_cert(directory / SERVER_CERT, cert),
        _write_key(directory / SERVER_KEY, key, serialization.PrivateFormat.PKCS8),
    )


def generate_node_keys(directory: Path | str, name: str) -> tuple[Path, Path]:
    """A SuperNode's authentication key pair: ``NAME.key`` (OpenSSH private key, 0600) and ``NAME.pub`` (OpenSSH)."""
    if not _NODE_NAME.fullmatch(name):
        raise ValueError(f"invalid node name {name!r}: use [A-Za-z0-9._-], not starting with '.'")
    directory = Path(directory)
    key = ec.generate_private_key(ec.SECP384R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return (
        _write_key(directory / f"{name}.key", key, serialization.PrivateFormat.OpenSSH),
        write_bytes(directory / f"{name}.pub", public + b"\n", 0o644),
    )


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``certs`` subcommand."""
    p = subparsers.add_parser(
        "certs",
        help="create a test CA, SuperLink TLS certificate and SuperNode authentication keys",
        description="Write ca.crt/ca.key (reused if DIR has them), server.crt/server.key for the given addresses "
        "and node-1.key/node-1.pub ... (existing node keys are kept) to DIR, then print the Flower commands "
        "that use them. For local testing of Flower's deployment engine with TLS and SuperNode authentication.",
    )
    p.add_argument("directory", type=Path, metavar="DIR", help="output directory")
    p.add_argument(
        "--address",
        action="append",
        dest="addresses",
        metavar="HOST",
        help=f"IP address or host name the SuperLink is reached at; repeatable "
        f"(default: {', '.join(DEFAULT_ADDRESSES)})",
    )
    p.add_argument(
        "--nodes",
        type=int,
        default=2,
        help="SuperNode key pairs node-1 ... node-N (default: %(default)s)",
    )
    p.add_argument(
        "--days", type=int, default=365, help="validity of the certificates (default: %(default)s)"
    )
    p.set_defaults(func=run_certs)
    return p


def run_certs(args: argparse.Namespace) -> int:
    if args.nodes < 0:
        raise ValueError(f"--nodes must be >= 0, got {args.nodes}")
    out = args.directory.resolve()
    addresses = args.addresses or list(DEFAULT_ADDRESSES)
    reuse_ca = (out / CA_CERT).exists() and (out / CA_KEY).exists()
    if not reuse_ca:
        generate_ca(out, args.days)
    generate_server_cert(out, addresses, args.days)
    created = [
        f"node-{i}" for i in range(1, args.nodes + 1) if not (out / f"node-{i}.key").exists()
    ]
    for node in created:
        generate_node_keys(out, node)
    print(f"{'reused' if reuse_ca else 'created'} CA {out / CA_CERT}")
    print(f"server certificate {out / SERVER_CERT} for {', '.join(addresses)}")
    print(f"SuperNode keys: {', '.join(created) or 'none new'} (public keys in {out}/node-*.pub)")
    host = (
        f"[{addresses[0]}]:{SUPERLINK_PORT}"
        if ":" in addresses[0]
        else f"{addresses[0]}:{SUPERLINK_PORT}"
    )
    print("\nSuperLink (add --host 0.0.0.0 to accept SuperNodes from other machines):")
    print(
        f"  flower-superlink --ssl-ca-certfile {out / CA_CERT} --ssl-certfile {out / SERVER_CERT} "
        f"--ssl-keyfile {out / SERVER_KEY} --enable-supernode-auth"
    )
    print(
        f'flwr connection, in ~/.flwr/config.toml:\n  [superlink.fedpers-tls]\n  address = "{host}"\n'
        f'  root-certificates = "{out / CA_CERT}"'
    )
    print("register each node N with the SuperLink, then start it:")
    print(f"  flwr supernode register {out}/node-N.pub fedpers-tls")
    print(
        f"  flower-supernode --superlink {host} --root-certificates {out / CA_CERT} "
        f"--auth-supernode-private-key {out}/node-N.key"
    )
    return 0
