"""The monitoring group's Prometheus (on `monitor`), as an operator reads it: every broker's and every worker's
metrics scraped, the allowance figure what the API stand-in counted, the alert rules' own tests passing on the
host, and one alert really firing for a real cause (beat stopped: BeatSilent) and clearing once the cause is gone.

Prometheus listens on the monitoring host's loopback only: its API is read there, as through an SSH tunnel.
"""

import json
import time
import urllib.parse

from conftest import group, host_var, node, send_api_calls, stand_in, wait_for

testinfra_hosts = ["monitor"]
MONITOR = "monitor"
WINDOW = host_var("server", "celery_worker_quota_window")
BEAT_HOST = group("celery_beat")[0]
# Reads one path of Prometheus' HTTP API on the monitoring host and prints its JSON.
READ = "python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())'"


def prometheus(path, **params):
    """One answer of Prometheus' HTTP API (its `data`), read on the monitoring host."""
    url = f"http://127.0.0.1:9090{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    answer = json.loads(node(MONITOR).check_output(f"{READ} {url!r}"))
    assert answer["status"] == "success", answer
    return answer["data"]


def query(expression, **params):
    return prometheus("/api/v1/query", query=expression, **params)["result"]


def firing(alert):
    return [
        entry
        for entry in prometheus("/api/v1/alerts")["alerts"]
        if entry["labels"]["alertname"] == alert and entry["state"] == "firing"
    ]


def test_every_broker_and_every_worker_is_scraped_and_up():
    hosts = {"rabbitmq": group("rabbitmq"), "celery_workers": group("celery_workers")}

    def all_up():
        targets = prometheus("/api/v1/targets", state="active")["activeTargets"]
        up = {
            (target["labels"].get("host") or target["labels"]["instance"].split(":")[0], target["scrapePool"])
            for target in targets
            if target["health"] == "up"
        }
        print(sorted(up))
        return up if all(any(name == found for found, _ in up) for names in hosts.values() for name in names) else None

    up = wait_for(all_up, 120, f"Prometheus scraping every broker and worker ({hosts})")
    for name in hosts["rabbitmq"]:
        assert query(f'rabbitmq_identity_info{{host="{name}"}}'), f"no broker metrics from {name}: {up}"
    for name in hosts["celery_workers"]:
        assert query(f'fetcher_api_allowance_calls{{host="{name}"}}'), f"no app metrics from {name}: {up}"


def test_the_alert_rules_pass_their_tests_on_the_monitoring_host(host):
    done = host.run("promtool test rules /etc/prometheus/tests/*.yml")
    assert done.rc == 0, done.stdout + done.stderr


def used_calls_scraped_after(moment):
    """Each worker host's `fetcher_api_calls_used` as Prometheus has it, once every sample is newer than `moment`."""
    # An instant query's own time is now: the scrape's time is the sample's timestamp().
    fresh = query(f"fetcher_api_calls_used and timestamp(fetcher_api_calls_used) > {moment:.3f}")
    if len(fresh) < len(group("celery_workers")):
        return None
    return {sample["metric"]["host"]: int(float(sample["value"][1])) for sample in fresh}


def test_each_hosts_allowance_in_prometheus_is_what_the_api_counted():
    """Calls sent at the start of a window, run, then read in Prometheus within the same window: each host's
    `fetcher_api_calls_used` is the number of calls the stand-in counted for its token in that window."""
    for _ in range(5):
        # Start just after a window begins, so the calls, their run and a scrape all fit within it.
        time.sleep(WINDOW - time.time() % WINDOW + 0.5)
        window = int(time.time() // WINDOW * WINDOW)
        run = f"metrics-{window}"
        send_api_calls(run, 8)
        wait_for(
            lambda run=run: len([call for call in stand_in("/calls") if call["item"].startswith(run)]) >= 8,
            WINDOW / 2,
            "the 8 calls reaching the stand-in",
        )
        settled = time.time()
        used = wait_for(
            lambda settled=settled: used_calls_scraped_after(settled), WINDOW / 2, "a scrape after the calls"
        )
        if time.time() >= window + WINDOW - 1:
            continue  # the window (nearly) rolled over before the read: try the next one
        counted = {}
        for call in stand_in("/calls"):
            if call["window"] == window:
                counted[call["caller"]] = counted.get(call["caller"], 0) + 1
        print(f"window {window}: Prometheus {used}, the stand-in {counted}")
        assert used == {name: counted.get(name, 0) for name in used}, f"Prometheus {used}, the stand-in {counted}"
        assert sum(used.values()) >= 8, f"fewer calls in Prometheus than sent: {used}"
        return
    raise AssertionError("in 5 windows, none held the calls, their run and a scrape")


def test_beat_silent_fires_when_beat_stops_and_clears_when_it_is_back():
    period = max(entry["every"] for entry in host_var(BEAT_HOST, "celery_beat_schedule"))
    beat = node(BEAT_HOST)
    assert not firing("BeatSilent"), "BeatSilent fires while beat runs"
    beat.check_output("systemctl stop fetcher-beat")
    try:
        stopped = time.monotonic()
        wait_for(lambda: firing("BeatSilent"), 2 * period + 90, "BeatSilent firing with beat stopped")
        last_send = max(float(sample["value"][1]) for sample in query("fetcher_beat_last_send_timestamp_seconds"))
        silent = time.time() - last_send
        print(
            f"BeatSilent fired {time.monotonic() - stopped:.0f} s after beat stopped, {silent:.0f} s after its last send"
        )
        assert silent >= 2 * period, f"BeatSilent fired {silent:.0f} s after beat's last send: before twice its period"
    finally:
        beat.check_output("systemctl start fetcher-beat")
    started = time.monotonic()
    wait_for(lambda: not firing("BeatSilent"), 90, "BeatSilent clearing once beat runs again")
    print(f"BeatSilent cleared {time.monotonic() - started:.0f} s after beat started")
    # And beat sends again: its last send in Prometheus is newer than its start.
    wait_for(
        lambda: any(
            float(s["value"][1]) > time.time() - period - 10
            for s in query("max(fetcher_beat_last_send_timestamp_seconds)")
        ),
        period + 30,
        "beat's last send in Prometheus after its start",
    )
