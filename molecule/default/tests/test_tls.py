"""Clients reach the brokers over TLS (rabbitmq_tls, on by default): every worker connection is TLS; plain
AMQP answers on loopback only; a client checks the broker's certificate against the cluster's CA, and the broker
refuses a client certificate its CA did not sign or that has expired; a certificate near its end is renewed
without a restart, and the workers carry on."""

import datetime
import re
import socket
import ssl

import pytest
from conftest import TESTBED_CA, address, amqp, group, host_var, node, playbook, wait_for
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TLS_PORT = 5671
# AMQP 0-9-1's protocol header: a broker answers it with Connection.Start, a frame of type 1.
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


@pytest.fixture(scope="module")
def brokers():
    return {name: address(node(name)) for name in group("rabbitmq")}


def issue(subject, issuer_name, issuer_key, *, ca=False, days=(-1, 30)):
    """A new EC key and a certificate for `subject`, signed by `issuer_key` (itself when issuer_key is None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key or key, hashes.SHA256())
    )
    return key, cert


def write_pair(folder, stem, key, cert):
    keyfile, certfile = folder / f"{stem}.key", folder / f"{stem}.pem"
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(certfile), str(keyfile)


def cluster_ca():
    """The cluster CA's certificate and key (the key decrypted with the vault's passphrase)."""
    folder = TESTBED_CA.parent
    passphrase = host_var(group("rabbitmq")[0], "vault_rabbitmq_tls_ca_passphrase").encode()
    key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), passphrase)
    return x509.load_pem_x509_certificate(TESTBED_CA.read_bytes()), key


def answer(ip, cafile, client=None):
    """What the broker at ip:5671 says to the AMQP protocol header over TLS: 'start' (Connection.Start), or the
    error that ended the connection. `client` is a (certificate, key) pair to present."""
    context = ssl.create_default_context(cafile=cafile)
    if client:
        context.load_cert_chain(*client)
    try:
        with (
            socket.create_connection((ip, TLS_PORT), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=ip) as tls,
        ):
            tls.sendall(PROTOCOL_HEADER)
            frame = tls.recv(1)
            return "start" if frame == b"\x01" else f"closed ({frame!r})"
    except (ssl.SSLError, ConnectionError) as error:
        return f"{type(error).__name__}: {error}"


def test_every_worker_connects_over_tls(brokers):
    listed = node("server").check_output(
        "rabbitmqctl list_connections user peer_host ssl ssl_protocol -q --no-table-headers"
    )
    app = [line.split("\t") for line in listed.splitlines() if line.startswith("myuser\t")]
    assert app, f"no connection of the app's user: {listed}"
    assert all(row[2] == "true" for row in app), f"a plain connection: {listed}"
    peers = {row[1].removeprefix("::ffff:") for row in app}
    assert set(brokers.values()) <= peers, f"a worker has no connection: {listed}"
    print(f"{len(app)} app connections, protocols {sorted({row[3] for row in app})}")


def test_plain_amqp_answers_on_loopback_only(brokers):
    for name, ip in brokers.items():
        listening = node(name).check_output("ss -Hltn 'sport = :5672'")
        assert [line.split()[3] for line in listening.splitlines()] == ["127.0.0.1:5672"], listening
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((ip, 5672), timeout=5).close()


def test_a_client_that_trusts_the_cluster_ca_logs_in_over_tls_by_address(brokers, app_user):
    user, password, vhost = app_user
    for name in brokers:
        with amqp(node(name), user, password, vhost) as connection:
            assert connection.is_open


def test_a_client_checks_the_broker_s_certificate_and_refuses_a_foreign_one(brokers, tmp_path):
    foreign_key, foreign_ca = issue("Someone else's CA", None, None, ca=True)
    foreign = write_pair(tmp_path, "foreign-ca", foreign_key, foreign_ca)[0]
    for ip in brokers.values():
        assert answer(ip, str(TESTBED_CA)) == "start"
        assert "CERTIFICATE_VERIFY_FAILED" in answer(ip, foreign), "a client that trusts another CA got in"


def test_the_broker_refuses_a_client_certificate_its_ca_did_not_sign_or_that_has_expired(brokers, tmp_path):
    ca_cert, ca_key = cluster_ca()
    foreign_key, foreign_ca = issue("Someone else's CA", None, None, ca=True)
    signed = write_pair(tmp_path, "signed", *issue("client", ca_cert.subject, ca_key))
    stranger = write_pair(tmp_path, "stranger", *issue("client", foreign_ca.subject, foreign_key))
    expired = write_pair(tmp_path, "expired", *issue("client", ca_cert.subject, ca_key, days=(-60, -1)))
    for ip in brokers.values():
        assert answer(ip, str(TESTBED_CA), signed) == "start", "a certificate the cluster's CA signed was refused"
        for what, pair in (("unknown CA", stranger), ("expired", expired)):
            outcome = answer(ip, str(TESTBED_CA), pair)
            assert outcome != "start", f"{ip} let in a client certificate signed by an {what}"
            print(f"{ip}, {what}: {outcome}")


def test_a_certificate_near_its_end_is_renewed_without_a_restart_and_the_workers_carry_on(brokers):
    def serials():
        return {name: node(name).file("/etc/rabbitmq/tls/cert.pem").content_string for name in brokers}

    def broker_pid(name):
        return node(name).check_output("systemctl show -p MainPID --value rabbitmq-server")

    before, pids = serials(), {name: broker_pid(name) for name in brokers}
    # Every certificate (valid 365 days) is within 400 days of its end: each is issued again.
    code, output = playbook("site.yml", "-e", "rabbitmq_tls_renew_days=400")
    assert code == 0, output[-3000:]
    after = serials()
    assert all(after[name] != before[name] for name in brokers), "a certificate was not issued again"
    assert {name: broker_pid(name) for name in brokers} == pids, "a broker restarted to take its certificate"
    for ip in brokers.values():
        wait_for(lambda ip=ip: answer(ip, str(TESTBED_CA)) == "start", 60, f"{ip} answering over TLS")
    code, output = playbook("site.yml")
    assert code == 0, output[-3000:]
    changed = {host: int(count) for host, count in re.findall(r"^(\S+)\s*:\s*ok=\d+\s+changed=(\d+)", output, re.M)}
    assert set(changed.values()) == {0}, f"the run after the renewal changed {changed}"
    assert node("server").run("env FETCHER_CONFIG=/etc/fetcher/fetcher.toml /opt/fetcher/venv/bin/fetcher-demo").rc == 0


def test_the_ca_key_on_the_controller_is_encrypted_and_its_owner_s_alone():
    key = TESTBED_CA.parent / "ca.key"
    assert key.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----"), "the CA's key is stored in clear"
    assert key.stat().st_mode & 0o077 == 0, "others may read the CA's key"
    assert TESTBED_CA.parent.stat().st_mode & 0o077 == 0, "others may list the CA's folder"
    with pytest.raises((TypeError, ValueError)):
        serialization.load_pem_private_key(key.read_bytes(), None)
