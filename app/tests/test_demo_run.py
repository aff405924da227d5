"""Whole demo runs against a real Celery worker running in this process, on the in-memory broker."""

import json

from fetcher.demo import main


def test_the_write_ups_demo(worker, capsys):
    assert main(["--show-hosts"]) == 0

    assert capsys.readouterr().out.splitlines() == [
        "[4, 8, 16, 32]",
        "(2, 2) -> 4 on server",
        "(4, 4) -> 8 on server",
        "(8, 8) -> 16 on server",
        "(16, 16) -> 32 on server",
    ]


def test_json_with_count_and_routing_key(worker, capsys):
    assert main(["--json", "--count", "3", "--routing-key", "laptop_task"]) == 0

    output = json.loads(capsys.readouterr().out)
    assert output["results"] == [2, 4, 6]
    assert output["hosts"] == ["server"] * 3
    assert output["routing_key"] == "laptop_task"
    assert output["seconds"] >= 0
