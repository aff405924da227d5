"""roles/rabbitmq/library/rabbitmq_access.py: what it would change, decided from one read of the definitions.

The module runs against real brokers in every scenario; these tests pin its decisions on definitions as
`rabbitmqctl export_definitions` prints them, including the salted hashes RabbitMQ stores.
"""

import base64
import hashlib
import importlib.util
from pathlib import Path

import pytest

MODULE = Path(__file__).resolve().parents[1] / "roles" / "rabbitmq" / "library" / "rabbitmq_access.py"
spec = importlib.util.spec_from_file_location("rabbitmq_access", MODULE)
access = importlib.util.module_from_spec(spec)
spec.loader.exec_module(access)

ALL = {"configure_priv": ".*", "write_priv": ".*", "read_priv": ".*"}


def stored(password, salt=b"\x01\x02\x03\x04", digest=hashlib.sha256):
    """A password hash as RabbitMQ stores it: base64 of a 4-byte salt and digest(salt + password)."""
    return base64.b64encode(salt + digest(salt + password.encode()).digest()).decode()


def definitions(users=(), permissions=(), vhosts=("/", "myvhost")):
    return {"vhosts": [{"name": name} for name in vhosts], "users": list(users), "permissions": list(permissions)}


def broker_user(name, password, tags=(), algorithm="rabbit_password_hashing_sha256"):
    return {"name": name, "password_hash": stored(password), "hashing_algorithm": algorithm, "tags": list(tags)}


def want(name, password, tags=(), vhosts=("myvhost",)):
    return {"name": name, "password": password, "tags": list(tags), "permissions": [dict(ALL, vhost=v) for v in vhosts]}


def granted(name, vhost="myvhost"):
    return {"user": name, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}


@pytest.mark.parametrize(
    "digest, algorithm",
    [(hashlib.sha256, "rabbit_password_hashing_sha256"), (hashlib.sha512, "rabbit_password_hashing_sha512")],
)
def test_a_password_is_checked_against_the_salted_hash(digest, algorithm):
    salted = stored("s3cret pass", salt=b"abcd", digest=digest)
    assert access.password_matches("s3cret pass", salted, algorithm) is True
    assert access.password_matches("another", salted, algorithm) is False


def test_an_unknown_hashing_algorithm_is_left_to_the_broker():
    assert access.password_matches("x", stored("x"), "some_future_hashing") is None


def test_a_user_without_a_password_never_matches():
    assert access.password_matches("x", "", "rabbit_password_hashing_sha256") is False


def test_nothing_to_do_when_the_broker_matches():
    have = definitions(
        [broker_user("myuser", "pw-one"), broker_user("admin", "pw-two", ["administrator"])],
        [granted("myuser"), granted("admin")],
    )
    steps = access.plan(
        have, ["myvhost"], [want("myuser", "pw-one"), want("admin", "pw-two", ["administrator"])], ["guest"]
    )
    assert steps == []


def test_a_fresh_broker_gets_everything_in_order():
    have = definitions([broker_user("guest", "guest", ["administrator"])], [granted("guest", "/")], vhosts=["/"])
    steps = access.plan(have, ["myvhost"], [want("myuser", "pw", ["monitoring"])], ["guest"])
    assert steps == [
        ("add_vhost", "myvhost", None),
        ("add_user", "myuser", None),
        ("set_user_tags", "myuser", ["monitoring"]),
        ("set_permissions", "myuser", ("myvhost", ".*", ".*", ".*")),
        ("delete_user", "guest", None),
    ]


def test_a_rotated_password_changed_tags_and_stray_permissions_are_corrected():
    have = definitions(
        [broker_user("myuser", "old", ["administrator"])],
        [granted("myuser", "/"), {**granted("myuser"), "write": "^$"}],
    )
    steps = access.plan(have, ["myvhost"], [want("myuser", "new")], [])
    assert steps == [
        ("change_password", "myuser", None),
        ("set_user_tags", "myuser", []),
        ("set_permissions", "myuser", ("myvhost", ".*", ".*", ".*")),
        ("clear_permissions", "myuser", "/"),
    ]


def test_a_password_the_module_cannot_check_is_checked_by_the_broker():
    have = definitions([broker_user("myuser", "pw", algorithm="some_future_hashing")], [granted("myuser")])
    assert access.plan(have, [], [want("myuser", "pw")], []) == [("authenticate", "myuser", None)]


def test_the_report_names_users_and_vhosts_only():
    steps = [
        ("add_user", "myuser", None),
        ("set_permissions", "myuser", ("myvhost", ".*", ".*", ".*")),
        ("clear_permissions", "myuser", "/"),
    ]
    report = access.describe(steps)
    assert report == {
        "add_user": ["myuser"],
        "set_permissions": ["myuser on myvhost"],
        "clear_permissions": ["myuser on /"],
    }


def test_additions_and_changes_become_one_import_of_salted_hashes_never_a_password():
    have = definitions(
        users=[broker_user("myuser", "old-password-123"), broker_user("guest", "guest-password")],
        permissions=[granted("guest")],
    )
    users = [
        want("myuser", "new-password-123", tags=["monitoring"]),
        want("admin", "admin-password-1", vhosts=("other",)),
    ]
    steps = access.plan(have, ["myvhost", "other"], users, ["guest"])
    document = access.import_document(have, steps, users)
    assert [v["name"] for v in document["vhosts"]] == ["other"]
    by_name = {user["name"]: user for user in document["users"]}
    assert sorted(by_name) == ["admin", "myuser"] and by_name["myuser"]["tags"] == "monitoring"
    for name, password in (("myuser", "new-password-123"), ("admin", "admin-password-1")):
        assert access.password_matches(password, by_name[name]["password_hash"], by_name[name]["hashing_algorithm"])
    assert "new-password-123" not in str(document) and "admin-password-1" not in str(document)
    assert {(p["user"], p["vhost"]) for p in document["permissions"]} == {("myuser", "myvhost"), ("admin", "other")}
    # Removals are commands of their own, never part of the import.
    assert "guest" not in str(document)


def test_a_tag_change_alone_keeps_the_stored_password_hash():
    have = definitions(users=[broker_user("myuser", "same-password-1")], permissions=[granted("myuser")])
    users = [want("myuser", "same-password-1", tags=["management"])]
    document = access.import_document(have, access.plan(have, ["myvhost"], users, []), users)
    assert document["users"][0]["password_hash"] == have["users"][0]["password_hash"]


def test_the_import_reads_a_private_file_that_is_gone_afterwards():
    # RabbitMQ 4.0's CLI never finishes reading standard input: the document goes in a file instead.
    seen = {}

    def rabbitmqctl(*args, stdin=None):
        path = Path(args[1])
        seen.update(
            args=args,
            stdin=stdin,
            mode=path.stat().st_mode & 0o777,
            folder=path.parent.stat().st_mode & 0o777,
            document=path.read_text(),
        )
        return 0, "", ""

    document = {"users": [broker_user("myuser", "a-password-here")], "vhosts": [], "permissions": []}
    assert access.import_definitions(rabbitmqctl, document) == (0, "", "")
    assert seen["args"][0] == "import_definitions" and seen["args"][2:] == ("--format", "json")
    assert seen["stdin"] is None and (seen["mode"], seen["folder"]) == (0o600, 0o700)
    assert access.json.loads(seen["document"]) == document
    assert not Path(seen["args"][1]).parent.exists()
