"""The demo: its command line, its two output formats, and its errors (whole runs: test_demo_run.py)."""

import json

import pytest
from fetcher.demo import (
    Outcome,
    Unfinished,
    format_json,
    format_text,
    host_of,
    main,
    pairs_for,
    parse_args,
    wait_for,
)

OUTCOME = Outcome(
    pairs=[(2, 2), (4, 4), (8, 8), (16, 16)],
    results=[4, 8, 16, 32],
    hosts=["server", "laptop", "server", "server"],
    routing_key="server_task",
    seconds=0.1234,
)


def test_defaults():
    args = parse_args([])
    assert (args.routing_key, args.count, args.show_hosts, args.json, args.timeout) == (
        None,
        None,
        False,
        False,
        60.0,
    )


def test_options():
    args = parse_args(["--routing-key", "laptop_task", "--count", "3", "--show-hosts", "--json", "--timeout", "5"])
    assert (args.routing_key, args.count, args.show_hosts, args.json, args.timeout) == (
        "laptop_task",
        3,
        True,
        True,
        5.0,
    )


@pytest.mark.parametrize("argv", [["--count", "0"], ["--count", "x"], ["--timeout", "0"], ["--bogus"]])
def test_bad_options_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        parse_args(argv)
    assert caught.value.code == 2
    assert "usage: fetcher-demo" in capsys.readouterr().err


def test_pairs():
    assert pairs_for(None) == [(2, 2), (4, 4), (8, 8), (16, 16)]
    assert pairs_for(3) == [(1, 1), (2, 2), (3, 3)]


def test_host_of():
    assert host_of("fetcher@server") == "server"
    assert host_of(None) == "unknown"


def test_text_output():
    assert format_text(OUTCOME, show_hosts=False) == "[4, 8, 16, 32]"
    assert format_text(OUTCOME, show_hosts=True).splitlines() == [
        "[4, 8, 16, 32]",
        "(2, 2) -> 4 on server",
        "(4, 4) -> 8 on laptop",
        "(8, 8) -> 16 on server",
        "(16, 16) -> 32 on server",
    ]


def test_json_output():
    assert json.loads(format_json(OUTCOME)) == {
        "results": [4, 8, 16, 32],
        "hosts": ["server", "laptop", "server", "server"],
        "routing_key": "server_task",
        "seconds": 0.123,
    }


def test_without_a_worker_it_times_out_naming_the_tasks(tasks, broker, capsys):
    assert main(["--timeout", "0.2"]) == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert "4 of 4 tasks are not done" in captured.err
    for pair in ("(2, 2)", "(4, 4)", "(8, 8)", "(16, 16)"):
        assert f"MyTest{pair} (task " in captured.err


def test_an_unknown_routing_key_is_a_clear_error(tasks, capsys):
    assert main(["--routing-key", "nas_task"]) == 2
    assert "no queue is bound with routing key 'nas_task'" in capsys.readouterr().err


def test_once_the_deadline_has_passed_the_rest_are_only_checked(tasks, broker):
    """A fake clock that jumps past the deadline after the first reading: nothing waits, all are listed."""
    readings = iter([0.0] + [100.0] * 10)
    pairs = [(1, 1), (2, 2)]
    results = [tasks.my_test.apply_async(pair) for pair in pairs]

    with pytest.raises(Unfinished) as caught:
        wait_for(pairs, results, timeout=60, clock=lambda: next(readings))

    assert str(caught.value).splitlines()[0] == "after 60 s, 2 of 2 tasks are not done:"


def test_a_failed_task_is_listed_with_its_error(tasks):
    pairs = [(2, 2), ("x", 3)]
    results = [tasks.my_test.apply(pair) for pair in pairs]

    with pytest.raises(Unfinished) as caught:
        wait_for(pairs, results, timeout=1)

    [summary, problem] = str(caught.value).splitlines()
    assert summary == "after 1 s, 1 of 2 tasks are not done:"
    assert problem.startswith("  MyTest('x', 3) (task ") and "failed: ValueError(" in problem
