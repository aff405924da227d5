"""A host configuration file in the exact format the Ansible template writes, for the tests to load.

The secrets are unusual on purpose: the password needs URL quoting, and both are searched for in every
error message and repr to prove they never leak.
"""

PASSWORD = "s3cr#t/with:odd@chars"
TOKEN = "tok-9f2c1e-never-log-me"

EXAMPLE = f"""\
node = "server"

[broker]
hosts = ["server:5672", "laptop:5672", "desktop:5672"]
vhost = "myvhost"
user = "myuser"
password = "{PASSWORD}"
heartbeat = 30
connect_timeout = 10

[result]
backend = "rpc://"
expires = 3600

[routing]
exchange = "tasks"
exchange_type = "topic"
own_queue = "server"
consume = ["server", "laptop"]
dead_letter_exchange = "tasks.dead"
dead_letter_queue = "tasks.dead"
delivery_limit = 5

[[routing.queues]]
name = "server"
routing_key = "server_task"
[[routing.queues]]
name = "laptop"
routing_key = "laptop_task"
[[routing.queues]]
name = "desktop"
routing_key = "desktop_task"

[worker]
concurrency = 4
prefetch_multiplier = 1
time_limit = 300
soft_time_limit = 270
max_retries = 2
retry_backoff_max = 60
max_tasks_per_child = 1000
max_memory_per_child = 524288

[logging]
level = "INFO"
format = "[%(levelname)-5s] %(asctime)-8s %(name)-10s %(message)s"
datefmt = "%Y-%m-%d %H:%M:%S"

[api]
base_url = "http://api.example:8080"
token = "{TOKEN}"
timeout = 10
max_reset_wait = 3600

[[beat.schedule]]
name = "fan-out-to-laptop"
task = "fetcher.tasks.fan_out"
every = 30.0
args = []
kwargs = {{ routing_key = "laptop_task" }}
"""


def without_line(text: str, start: str) -> str:
    """The file without the line that starts with `start` (exactly one must)."""
    lines = text.splitlines(keepends=True)
    matching = [line for line in lines if line.startswith(start)]
    assert len(matching) == 1, f"{start!r} matches {len(matching)} lines"
    return "".join(line for line in lines if not line.startswith(start))


def without_section(text: str, header: str) -> str:
    """The file without a section (from its header line to the next header or the end)."""
    kept, skipping = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            skipping = line.strip() == header
        if not skipping:
            kept.append(line)
    return "".join(kept)
