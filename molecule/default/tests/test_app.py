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
