"""The fetcher app on the write-up's two servers: the demo runs end to end."""
from conftest import FETCHER, node


def test_demo_prints_the_write_ups_sums():
    out = node("server").check_output(f"{FETCHER}/fetcher-demo")
    assert out.splitlines()[0] == "[4, 8, 16, 32]"


def test_laptop_task_runs_on_laptop_or_server():
    out = node("laptop").check_output(
        f"{FETCHER}/fetcher-demo --routing-key laptop_task --show-hosts"
    )
    assert out.splitlines()[0] == "[4, 8, 16, 32]"
    assert all(line.rsplit(" on ", 1)[1] in ("laptop", "server") for line in out.splitlines()[1:])


def test_with_the_occasional_laptop_off_the_queues_keep_working():
    """The write-up's laptop switched off: its broker and worker stop; server takes and runs every task."""
    laptop = node("laptop")
    laptop.check_output("systemctl stop fetcher-worker rabbitmq-server")
    try:
        out = node("server").check_output(f"{FETCHER}/fetcher-demo --routing-key laptop_task --show-hosts --timeout 120")
        assert out.splitlines()[0] == "[4, 8, 16, 32]"
        assert all(line.rsplit(" on ", 1)[1] == "server" for line in out.splitlines()[1:])
        out = node("server").check_output(f"{FETCHER}/fetcher-demo --timeout 120")
        assert out.splitlines()[0] == "[4, 8, 16, 32]"
    finally:
        laptop.check_output("systemctl start rabbitmq-server && rabbitmqctl await_startup --timeout 120 "
                            "&& systemctl start fetcher-worker")
