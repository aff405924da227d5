"""What the controller holds of the cluster's certificate authority, read in the play's own process.

tls.yml keeps the CA in rabbitmq_tls_dir with three modules (its key, its description, its certificate), each a
process of its own that decrypts the key: two seconds of a run that changes nothing. `tls_ca_state` tells,
without a process, whether they would change anything, and validate.yml refuses a key the vault's passphrase
does not open before anything changes (the key module would otherwise make a new CA in its place, and every
client would stop trusting the cluster).

paths: {directory, key, cert}; passphrase: the one the key is encrypted with. Returns
  'whole'   the folder is 0700, the key 0600 and opened by the passphrase, the certificate 0644, a CA's, made
            from that key: the CA's tasks would change nothing;
  'none'    there is no key yet: the CA's tasks make it;
  'locked'  a key is there that the passphrase does not open (another passphrase, or a damaged file);
  'partial' anything else the CA's tasks put right (a mode, a missing or foreign certificate).
"""

import os
import stat

MODES = {"directory": 0o700, "key": 0o600, "cert": 0o644}


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def tls_ca_state(paths, passphrase):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if not os.path.isfile(paths["key"]):
        return "none"
    with open(paths["key"], "rb") as file:
        pem = file.read()
    try:
        key = serialization.load_pem_private_key(pem, (passphrase or "").encode() or None)
    except (ValueError, TypeError):
        return "locked"
    if not os.path.isfile(paths["cert"]):
        return "partial"
    if any(_mode(paths[name]) != mode for name, mode in MODES.items()):
        return "partial"
    try:
        with open(paths["cert"], "rb") as file:
            cert = x509.load_pem_x509_certificate(file.read())
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (ValueError, x509.ExtensionNotFound):
        return "partial"
    public = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    same_key = cert.public_key().public_bytes(*public) == key.public_key().public_bytes(*public)
    return "whole" if is_ca and same_key else "partial"


class FilterModule:
    def filters(self):
        return {"tls_ca_state": tls_ca_state}
