"""roles/rabbitmq/filter_plugins/tls_ca.py: the CA's block is skipped only where its modules would change nothing,
and a key the passphrase does not open is told apart, so validate.yml refuses it instead of a new CA replacing it.

The files are made as tls.yml makes them (an EC P-384 key in PKCS#8 encrypted with the passphrase, a self-signed
CA certificate) in a temporary folder with the modes the block sets.
"""

import datetime
import importlib.util
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

FILTERS = Path(__file__).resolve().parents[1] / "roles" / "rabbitmq" / "filter_plugins" / "tls_ca.py"
SPEC = importlib.util.spec_from_file_location("tls_ca_filters", FILTERS)
tls_ca = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(tls_ca)

PASSPHRASE = "a long test passphrase"


def certificate(key, ca=True):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RabbitMQ cluster CA")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def write(path, data, mode):
    path.write_bytes(data)
    os.chmod(path, mode)


@pytest.fixture
def ca(tmp_path):
    """The CA as tls.yml leaves it: {directory, key, cert} paths, whole."""
    folder = tmp_path / "pki"
    folder.mkdir(mode=0o700)
    os.chmod(folder, 0o700)
    key = ec.generate_private_key(ec.SECP384R1())
    encryption = serialization.BestAvailableEncryption(PASSPHRASE.encode())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    write(folder / "ca.key", pem, 0o600)
    write(folder / "ca.pem", certificate(key).public_bytes(serialization.Encoding.PEM), 0o644)
    return {"directory": str(folder), "key": str(folder / "ca.key"), "cert": str(folder / "ca.pem")}


def test_a_ca_as_the_block_leaves_it_is_whole(ca):
    assert tls_ca.tls_ca_state(ca, PASSPHRASE) == "whole"


def test_no_key_yet_is_none(tmp_path):
    paths = {name: str(tmp_path / name) for name in ("directory", "key", "cert")}
    assert tls_ca.tls_ca_state(paths, PASSPHRASE) == "none"


@pytest.mark.parametrize("passphrase", ["another passphrase", ""])
def test_a_key_the_passphrase_does_not_open_is_locked(ca, passphrase):
    assert tls_ca.tls_ca_state(ca, passphrase) == "locked"


def test_a_damaged_key_is_locked_never_replaced(ca):
    Path(ca["key"]).write_bytes(
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nnot a key\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    assert tls_ca.tls_ca_state(ca, PASSPHRASE) == "locked"


@pytest.mark.parametrize(("name", "mode"), [("directory", 0o755), ("key", 0o644), ("cert", 0o600)])
def test_a_drifted_mode_is_partial(ca, name, mode):
    os.chmod(ca[name], mode)
    assert tls_ca.tls_ca_state(ca, PASSPHRASE) == "partial"


def test_a_missing_certificate_is_partial(ca):
    os.unlink(ca["cert"])
    assert tls_ca.tls_ca_state(ca, PASSPHRASE) == "partial"


def test_a_certificate_of_another_key_is_partial(ca):
    other = ec.generate_private_key(ec.SECP384R1())
    write(Path(ca["cert"]), certificate(other).public_bytes(serialization.Encoding.PEM), 0o644)
    assert tls_ca.tls_ca_state(ca, PASSPHRASE) == "partial"


def test_a_certificate_of_the_key_that_is_no_ca_is_partial(ca):
    key = serialization.load_pem_private_key(Path(ca["key"]).read_bytes(), PASSPHRASE.encode())
    write(Path(ca["cert"]), certificate(key, ca=False).public_bytes(serialization.Encoding.PEM), 0o644)
    assert tls_ca.tls_ca_state(ca, PASSPHRASE) == "partial"
