"""Audit report integrity: Ed25519 signatures over the files of a report."""

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedpers.audit.signing import (
    SIGNATURE_FILE,
    load_or_create_key,
    public_key_bytes,
    sign_files,
    verify,
)


def _report(tmp_path):
    (tmp_path / "audit.json").write_text('{"epsilon": 7.95}\n')
    (tmp_path / "audit.html").write_bytes(b"<html><body>epsilon 7.95</body></html>\n")
    return ["audit.json", "audit.html"]


def test_signature_verifies_and_fails_after_a_one_byte_change(tmp_path):
    key = load_or_create_key(tmp_path / "keys" / "signing.pem")
    assert oct((tmp_path / "keys" / "signing.pem").stat().st_mode & 0o777) == "0o600"
    assert public_key_bytes(
        load_or_create_key(tmp_path / "keys" / "signing.pem")
    ) == public_key_bytes(key)
    sign_files(tmp_path, _report(tmp_path), key)
    good = verify(tmp_path, public_key_bytes(key))
    assert good.ok and good.problems == [] and good.signer == public_key_bytes(key).hex()
    html = bytearray((tmp_path / "audit.html").read_bytes())
    html[20] ^= 0x01
    (tmp_path / "audit.html").write_bytes(bytes(html))
    bad = verify(tmp_path)
    assert not bad.ok and any("audit.html: changed since it was signed" in p for p in bad.problems)


def test_a_forged_or_foreign_signature_is_reported(tmp_path):
    key = Ed25519PrivateKey.generate()
    sign_files(tmp_path, _report(tmp_path), key)
    other = Ed25519PrivateKey.generate()
    foreign = verify(tmp_path, public_key_bytes(other))
    assert not foreign.ok and any("not by the trusted key" in p for p in foreign.problems)
    record = (tmp_path / SIGNATURE_FILE).read_text().replace('"audit.html"', '"audit.htm"')
    (tmp_path / SIGNATURE_FILE).write_text(record)
    forged = verify(tmp_path)
    assert not forged.ok and any("signature does not match" in p for p in forged.problems)
    assert not verify(tmp_path / "nowhere").ok
