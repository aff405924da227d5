"""The host's API allowance counter: fixed windows on a fake clock, shared by processes, kept on disk."""

import multiprocessing
import sqlite3

import pytest
from fetcher.quota import QuotaCounter, QuotaSpent

WINDOW = 60


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock(1_800_000_010.0)  # 10 s into a 60 s window (1_800_000_000 is a multiple of 60)


@pytest.fixture
def counter(tmp_path, clock):
    return QuotaCounter(tmp_path / "quota.sqlite3", allowance=3, window=WINDOW, clock=clock)


def test_takes_up_to_the_allowance_then_refuses_until_the_window_resets(counter, clock):
    for _ in range(3):
        counter.take()
    with pytest.raises(QuotaSpent) as caught:
        counter.take()
    assert caught.value.reset_at == 1_800_000_060
    assert "3 calls" in str(caught.value)

    status = counter.status()
    assert (status.allowance, status.used, status.remaining) == (3, 3, 0)
    assert (status.window_start, status.reset_at) == (1_800_000_000, 1_800_000_060)

    clock.now = 1_800_000_059.999
    with pytest.raises(QuotaSpent):
        counter.take()
    clock.now = 1_800_000_060.0
    counter.take()
    assert counter.status().used == 1


def test_a_refused_take_uses_nothing(counter):
    for _ in range(3):
        counter.take()
    for _ in range(5):
        with pytest.raises(QuotaSpent):
            counter.take()
    assert counter.status().used == 3


def test_a_new_counter_on_the_same_file_finds_the_windows_use(counter, tmp_path, clock):
    """A worker restarted mid-window does not regain its allowance."""
    counter.take()
    counter.take()
    counter.close()

    restarted = QuotaCounter(tmp_path / "quota.sqlite3", allowance=3, window=WINDOW, clock=clock)
    restarted.take()
    with pytest.raises(QuotaSpent):
        restarted.take()


def test_a_smaller_allowance_applies_to_what_was_already_used(counter, tmp_path, clock):
    counter.take()
    counter.take()
    lowered = QuotaCounter(tmp_path / "quota.sqlite3", allowance=2, window=WINDOW, clock=clock)
    assert lowered.status().remaining == 0
    with pytest.raises(QuotaSpent):
        lowered.take()


def test_spend_all_follows_the_apis_word(counter):
    counter.take()
    counter.spend_all()
    assert counter.status().remaining == 0
    with pytest.raises(QuotaSpent):
        counter.take()


def test_windows_are_aligned_to_the_epoch(tmp_path):
    hourly = QuotaCounter(tmp_path / "q.sqlite3", allowance=1, window=3600, clock=lambda: 1_800_003_599.0)
    assert hourly.window_start() == 1_800_000_000 and hourly.status().reset_at == 1_800_003_600


def test_old_windows_are_pruned(counter, clock):
    for step in range(60):
        clock.now = 1_800_000_000 + step * WINDOW
        counter.take()
    history = counter.history()
    assert len(history) == 49, "the current window and the 48 before it"
    assert history[-1] == (1_800_000_000 + 59 * WINDOW, 1)


def test_consuming_is_recorded_for_the_operator(counter):
    assert counter.status().consuming is None
    counter.set_consuming(False)
    status = counter.status()
    assert status.consuming is False and status.worker_pid > 0
    counter.set_consuming(True)
    assert counter.status().consuming is True


def test_a_read_only_counter_creates_nothing(tmp_path):
    path = tmp_path / "absent.sqlite3"
    with pytest.raises(sqlite3.OperationalError):
        QuotaCounter(path, allowance=1, window=WINDOW, read_only=True).status()
    assert not path.exists()


def test_a_read_only_counter_reads_and_cannot_write(counter, tmp_path, clock):
    counter.take()
    reader = QuotaCounter(tmp_path / "quota.sqlite3", allowance=3, window=WINDOW, clock=clock, read_only=True)
    assert reader.status().used == 1
    with pytest.raises(sqlite3.OperationalError):
        reader.take()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quota.sqlite3"]


def _take_many(path, attempts, results):
    counter = QuotaCounter(path, allowance=50, window=3600)
    granted = 0
    for _ in range(attempts):
        try:
            counter.take()
            granted += 1
        except QuotaSpent:
            pass
    results.put(granted)


def test_processes_sharing_the_file_never_exceed_the_allowance_together(tmp_path):
    """Four processes, 40 attempts each, one allowance of 50: exactly 50 granted, however they interleave.

    The window is an hour on the real clock; if the test started within a second of the hour, the windows
    differ and the count may legitimately be up to 100, so it then retries once.
    """
    for _ in range(2):
        path = tmp_path / f"shared-{_}.sqlite3"
        QuotaCounter(path, allowance=50, window=3600).status()  # create the tables before the race
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        workers = [context.Process(target=_take_many, args=(path, 40, results)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
        granted = sorted(results.get(timeout=5) for _ in workers)
        windows = QuotaCounter(path, allowance=50, window=3600).history()
        if len(windows) == 1:
            break
    assert sum(granted) == 50, granted
    assert windows[-1][1] == 50


def test_a_counter_created_before_a_fork_opens_its_own_connection_after(counter):
    counter.take()
    context = multiprocessing.get_context("fork")
    results = context.Queue()

    def child():
        try:
            counter.take()
            results.put("granted")
        except QuotaSpent:
            results.put("spent")

    process = context.Process(target=child)
    process.start()
    process.join(10)
    assert results.get(timeout=5) == "granted"
    assert counter.status().used == 2


def test_fetcher_quota_shows_the_window_to_an_operator(tmp_path, monkeypatch, capsys):
    import json

    from fetcher import quota_status
    from sample_config import EXAMPLE

    state = tmp_path / "quota.sqlite3"
    config = tmp_path / "fetcher.toml"
    config.write_text(
        EXAMPLE + f'\n[quota]\nallowance = 5\nwindow = 3600\nqueues = ["laptop"]\nstate_file = "{state}"\n'
    )
    monkeypatch.setenv("FETCHER_CONFIG", str(config))

    assert quota_status.main(["--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert (before["used"], before["remaining"], before["consuming"]) == (0, 5, None)
    assert not state.exists(), "reading creates nothing"

    counter = QuotaCounter(state, allowance=5, window=3600)
    for _ in range(5):
        counter.take()
    counter.set_consuming(False)
    assert quota_status.main([]) == 0
    text = capsys.readouterr().out
    assert text.startswith("server: 5 of 5 API calls used, 0 remaining in this 3600 s window; resets at ")
    assert "consuming laptop: no (since " in text


def test_a_call_in_the_windows_last_second_counts_in_the_next_window_too(counter, clock):
    """It may reach the API after the roll-over, where the API counts it."""
    clock.now = 1_800_000_059.2
    counter.take()
    clock.now = 1_800_000_060.0
    assert counter.status().used == 1
    counter.take()
    counter.take()
    with pytest.raises(QuotaSpent):
        counter.take()


def test_near_the_boundary_a_call_needs_room_in_both_windows(counter, clock):
    clock.now = 1_800_000_010.0
    for _ in range(2):
        counter.take()
    clock.now = 1_800_000_059.5
    counter.take()  # the third of this window, the first of the next
    clock.now = 1_800_000_060.5
    counter.take()
    counter.take()
    assert counter.status().used == 3
    with pytest.raises(QuotaSpent) as caught:
        counter.take()
    assert caught.value.reset_at == 1_800_000_120
