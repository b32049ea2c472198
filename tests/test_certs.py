"""Test certificates for Flower's deployment engine: a CA, a SuperLink TLS certificate, SuperNode keys."""

import argparse
import datetime as dt
import ipaddress
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from flwr.cli.supernode.register import try_load_public_key
from flwr.supercore.primitives.asymmetric import public_key_to_bytes, sign_message, verify_signature
from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

from fedpers.certs import generate_ca, generate_node_keys, generate_server_cert, register


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path):
    return oct(path.stat().st_mode & 0o777)


def _verify(ca, leaf, name):
    verifier = (
        PolicyBuilder().store(Store([ca])).time(dt.datetime.now(dt.UTC)).build_server_verifier(name)
    )
    return verifier.verify(leaf, [])


def test_server_certificate_is_signed_by_the_ca_for_the_given_addresses(tmp_path):
    ca_crt, ca_key = generate_ca(tmp_path, days=30)
    server_crt, server_key = generate_server_cert(
        tmp_path, ["127.0.0.1", "myhost.example", "::1"], days=30
    )
    ca, server = _cert(ca_crt), _cert(server_crt)

    ca.public_key().verify(
        server.signature, server.tbs_certificate_bytes, ec.ECDSA(server.signature_hash_algorithm)
    )
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert san.get_values_for_type(x509.DNSName) == ["myhost.example"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    key = serialization.load_pem_private_key(server_key.read_bytes(), password=None)
    assert key.public_key() == server.public_key()
    assert (_mode(ca_key), _mode(server_key), _mode(ca_crt)) == ("0o600", "0o600", "0o644")

    for name in (x509.DNSName("myhost.example"), x509.IPAddress(ipaddress.ip_address("::1"))):
        assert _verify(ca, server, name)[0] == server  # RFC 5280 path validation with name matching
    with pytest.raises(VerificationError):
        _verify(ca, server, x509.DNSName("other.example"))
    generate_ca(tmp_path / "other")
    with pytest.raises(VerificationError):
        _verify(_cert(tmp_path / "other" / "ca.crt"), server, x509.DNSName("myhost.example"))


def test_default_addresses_and_bad_addresses(tmp_path):
    generate_ca(tmp_path)
    san = (
        _cert(generate_server_cert(tmp_path)[0])
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert [str(v) for v in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    for bad in ("127.0.0.1:9092", "https://myhost.example", "my host"):
        with pytest.raises(ValueError, match="neither an IP address nor a host name"):
            generate_server_cert(tmp_path, [bad])


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, host: str) -> None:
    """A TLS handshake in memory: ``client`` dials ``host`` and verifies the server's certificate."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    ends = [
        client.wrap_bio(to_client, to_server, server_hostname=host),
        server.wrap_bio(to_server, to_client, server_side=True),
    ]
    while ends:
        for end in list(ends):
            try:
                end.do_handshake()
                ends.remove(end)
            except ssl.SSLWantReadError:
                pass


def test_tls_handshake_as_superlink_and_supernode_make_it(tmp_path):
    ca_crt, _ = generate_ca(tmp_path)
    server_crt, server_key = generate_server_cert(tmp_path, ["127.0.0.1", "localhost"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # uvicorn's ssl_certfile / ssl_keyfile
    server.load_cert_chain(server_crt, server_key)
    # flwr's FleetHttpClient with root certificates
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cadata=ca_crt.read_text())
    for host in ("127.0.0.1", "localhost"):
        _handshake(server, client, host)
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        _handshake(server, client, "10.0.0.5")


def test_node_keys_load_as_flower_loads_them(tmp_path):
    private, public = generate_node_keys(tmp_path, "node-1")
    assert (_mode(private), _mode(public)) == ("0o600", "0o644")
    args = argparse.Namespace(
        auth_supernode_private_key=str(private), auth_supernode_public_key=None
    )
    key, derived = _try_setup_client_authentication(args)  # what flower-supernode does
    assert isinstance(key.curve, ec.SECP384R1)
    # what `flwr supernode register` sends
    assert try_load_public_key(public) == public_key_to_bytes(derived)
    assert verify_signature(derived, b"request", sign_message(key, b"request"))
    with pytest.raises(ValueError, match="invalid node name"):
        generate_node_keys(tmp_path, "../node")


def test_certs_command_writes_everything_and_keeps_ca_and_node_keys(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    argv = [
        "certs",
        str(tmp_path),
        "--address",
        "127.0.0.1",
        "--address",
        "myhost.example",
        "--nodes",
        "3",
    ]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "ca.crt",
        "ca.key",
        "node-1.key",
        "node-1.pub",
        "node-2.key",
        "node-2.pub",
        "node-3.key",
        "node-3.pub",
        "server.crt",
        "server.key",
    ]
    out = capsys.readouterr().out
    assert (
        "--enable-supernode-auth" in out
        and f"--auth-supernode-private-key {tmp_path}/node-N.key" in out
    )

    ca, node = (tmp_path / "ca.crt").read_bytes(), (tmp_path / "node-1.key").read_bytes()
    args = parser.parse_args(["certs", str(tmp_path), "--address", "10.0.0.5", "--nodes", "4"])
    assert args.func(args) == 0
    assert (tmp_path / "ca.crt").read_bytes() == ca and (
        tmp_path / "node-1.key"
    ).read_bytes() == node
    assert (tmp_path / "node-4.pub").exists() and "reused CA" in capsys.readouterr().out
    server = _cert(tmp_path / "server.crt")
    assert _verify(
        _cert(tmp_path / "ca.crt"), server, x509.IPAddress(ipaddress.ip_address("10.0.0.5"))
    )
