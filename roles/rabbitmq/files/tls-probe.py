# This node's TLS files, as status.yml reads them: one line, `tls DAYS_LEFT match|mismatch CA_DIGEST NAMES`
# (NAMES: the certificate's subject alternative names, comma-separated), or `tls none` where a file is missing
# or unreadable. Run with python3 -c, given the certificate's, the key's and the CA's paths (rabbitmq_tls_files);
# needs Python's cryptography (the tls packages).
import datetime
import hashlib
import sys

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path, ca_path = sys.argv[1:4]
    with open(cert_path, "rb") as file:
        cert = x509.load_pem_x509_certificate(file.read())
    with open(key_path, "rb") as file:
        key = serialization.load_pem_private_key(file.read(), None)
    with open(ca_path, "rb") as file:
        ca_digest = hashlib.sha256(file.read().rstrip()).hexdigest()
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.PEM
    same = cert.public_key().public_bytes(encoding, public) == key.public_key().public_bytes(encoding, public)
    ends = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=datetime.UTC)
    days = (ends - datetime.datetime.now(datetime.UTC)).days
    alternatives = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [f"DNS:{name}" for name in alternatives.get_values_for_type(x509.DNSName)]
    names += [f"IP:{address}" for address in alternatives.get_values_for_type(x509.IPAddress)]
    print("tls", days, "match" if same else "mismatch", ca_digest, ",".join(sorted(names)))
except Exception:  # noqa: BLE001 - any missing or unreadable file means a new key and certificate
    print("tls none")
