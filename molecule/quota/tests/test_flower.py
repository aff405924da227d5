"""Flower, the web view of the workers, on the beat host, as an operator's browser sees it: a real Chromium
(headless, on the monitoring host, driven by Selenium) logs in with the vault's password and sees every worker;
without the password, or with a wrong one, it gets no page of Flower's at all.

The password goes to the browser on its standard input and then as an Authorization header through the
browser's own protocol (what its login dialog would send): never as a process argument or in a URL.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import group, host_var, node, wait_for

testinfra_hosts = ["monitor"]
BROWSER_HOST = "monitor"
BEAT_HOST = group("celery_beat")[0]
# Where the page's screenshot goes (the README's picture is one of these).
SCREENSHOT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", ".")) / ".cache" / "test-logs" / "flower-workers.png"

# Where the browser's host keeps it: not in /tmp, a tmpfs on Debian 13 that `docker cp` does not see.
SCREENSHOT_THERE = "/root/flower-workers.png"

# Run by python3 on the browser's host: reads "user:password" (or nothing) from stdin, opens URL in Chromium,
# waits up to WAIT seconds for every expected text, saves a screenshot, prints what it saw as JSON.
BROWSE = r"""
import base64, json, sys
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

url, expected, screenshot, wait = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], float(sys.argv[4])
credentials = sys.stdin.readline().rstrip("\n")
options = Options()
options.binary_location = "/usr/bin/chromium"
for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,720"):
    options.add_argument(argument)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.execute_cdp_cmd("Network.enable", {})
    if credentials:
        token = base64.b64encode(credentials.encode()).decode()
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": "Basic " + token}})
    driver.get(url)
    try:
        WebDriverWait(driver, wait).until(lambda d: all(text in d.page_source for text in expected))
        seen = True
    except TimeoutException:
        seen = False
    driver.save_screenshot(screenshot)
    body = driver.find_element("tag name", "body").text
    print(json.dumps({"title": driver.title, "seen": seen, "body": body[:3000]}))
finally:
    driver.quit()
"""


def browse(url, expected, credentials="", wait=30):
    """What Chromium on the monitoring host shows at `url`: {"title", "seen" (every expected text), "body"}."""
    done = subprocess.run(
        [
            "docker",
            "exec",
            "-i",
            BROWSER_HOST,
            "python3",
            "-c",
            BROWSE,
            url,
            json.dumps(expected),
            SCREENSHOT_THERE,
            str(wait),
        ],
        input=credentials + "\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


BROWSER_PACKAGES = ("chromium", "chromium-driver", "python3-selenium")


@pytest.fixture(scope="module")
def browser():
    """The browser prepare.yml installs in the background, once installed (else apt's last lines say why not)."""
    monitor = node(BROWSER_HOST)

    def installed():
        status = monitor.run(f"dpkg-query -W -f '${{Status}}\\n' {' '.join(BROWSER_PACKAGES)}").stdout.split("\n")
        return status.count("install ok installed") == len(BROWSER_PACKAGES)

    try:
        wait_for(installed, 600, "the browser's installation on the monitoring host")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {monitor.run('tail -n 20 /var/log/apt/term.log').stdout}") from None


@pytest.fixture(scope="module")
def flower(browser):
    address = host_var(BEAT_HOST, "celery_flower_address", "127.0.0.1")
    port = host_var(BEAT_HOST, "celery_flower_port", 5555)
    assert address != "127.0.0.1", "the test bed's Flower must listen on the network for the browser to reach it"
    return f"http://{BEAT_HOST}:{port}/workers"


def workers():
    return [f"fetcher@{name}" for name in group("celery_workers")]


def test_with_the_password_the_browser_sees_every_worker(flower):
    user = host_var(BEAT_HOST, "celery_flower_user", "admin")
    password = host_var(BEAT_HOST, "vault_celery_flower_password")
    page = wait_for(
        lambda: (seen := browse(flower, workers(), f"{user}:{password}"))["seen"] and seen,
        120,
        f"Flower's workers page listing {workers()}",
    )
    print(f"{page['title']}: {page['body'][:500]}")
    assert password not in json.dumps(page)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["docker", "cp", f"{BROWSER_HOST}:{SCREENSHOT_THERE}", str(SCREENSHOT)], check=True, timeout=60)
    assert SCREENSHOT.stat().st_size > 10_000, "the screenshot is (nearly) empty"


@pytest.mark.parametrize("credentials", ["", "admin:wrong-password"], ids=["no password", "a wrong password"])
def test_without_the_password_the_browser_gets_no_page_of_flower(flower, credentials):
    # With the password the names show within 2 s (the test above): 8 s is ample to see that they do not.
    page = browse(flower, workers(), credentials, wait=8)
    print(page)
    assert not page["seen"], f"Flower showed its workers without the password: {page}"
    for name in workers():
        assert name not in page["body"]


def test_flower_holds_its_password_in_no_process_argument_or_unit():
    beat = node(BEAT_HOST)
    password = host_var(BEAT_HOST, "vault_celery_flower_password")
    arguments = beat.check_output("ps -eo args")
    assert " flower " in arguments, f"Flower does not run on the beat host {BEAT_HOST}"
    assert password not in arguments
    assert password not in beat.check_output("cat /etc/systemd/system/fetcher-flower.service")
