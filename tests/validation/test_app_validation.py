"""Each mistake in the Celery app's part of the inventory stops site.yml before any host changes.

site.yml validates the app's inventory in its first play, so these fail before the RabbitMQ play would
install anything: the container stays untouched and every host's recap shows changed=0.
"""

import re
from pathlib import Path

import pytest
from rejections import assert_rejected

SITE = Path(__file__).resolve().parents[2] / "site.yml"


@pytest.mark.parametrize(("beat", "found"), [((), r"has 0\."), (("server", "laptop"), r"has 2: server, laptop")])
def test_beat_needs_exactly_one_host(target, inventory, playbook, beat, found):
    inventory.celery_groups(beat=beat)
    run = playbook(inventory, path=SITE)
    assert_rejected(run, "celery_beat : Check that exactly one host runs beat", r"exactly one host", found)


def test_beat_host_must_run_a_worker(target, inventory, playbook):
    inventory.celery_groups(workers=("server",), beat=("laptop",))
    run = playbook(inventory, path=SITE)
    # Only server is a worker, so only server is in the play and its recap.
    assert_rejected(
        run,
        "celery_beat : Check that the beat host runs a worker",
        r"beat host laptop must also be in the worker group 'celery_workers'",
        hosts=("server",),
    )


def test_consuming_an_unknown_queue(target, inventory, playbook):
    inventory.celery_groups()
    inventory.update_host_vars("server", celery_worker_consume_also=["desktop"])
    run = playbook(inventory, path=SITE)
    assert_rejected(
        run,
        "celery_worker : Check the other queues this host consumes",
        r"names queues no worker has: desktop",
        r"Known queues: laptop, server",
    )


def test_two_workers_on_one_queue(target, inventory, playbook):
    inventory.celery_groups()
    inventory.update_host_vars("laptop", celery_worker_queue="server")
    run = playbook(inventory, path=SITE)
    assert_rejected(
        run,
        "celery_worker : Check that queues and routing keys are unique",
        r"Two queues share a name or a routing key",
    )


def test_a_shared_queue_named_like_a_hosts_queue(target, inventory, playbook):
    inventory.celery_groups()
    for host in ("server", "laptop"):
        inventory.update_host_vars(host, celery_worker_shared_queues=[{"queue": "laptop", "routing_key": "x_task"}])
    run = playbook(inventory, path=SITE)
    assert_rejected(run, "celery_worker : Check that queues and routing keys are unique", r"laptop/x_task")


def test_an_allowance_needs_quota_queues_it_consumes_and_a_token(target, inventory, playbook):
    inventory.celery_groups()
    inventory.update_host_vars("laptop", celery_worker_quota_allowance=20, celery_worker_quota_queues=["api"])
    inventory.vault(drop=("vault_fetcher_api_tokens",))
    run = playbook(inventory, path=SITE)
    assert_rejected(
        run,
        "celery_worker : Check this host's API allowance",
        r"laptop has an API allowance of 20 calls per 20 s",
        r"each also in its celery_worker_consume_also \(now none\)",
        r"vault_fetcher_api_tokens.laptop",
    )


def test_quota_queues_without_an_allowance(target, inventory, playbook):
    inventory.celery_groups()
    inventory.update_host_vars("server", celery_worker_consume_also=["api"], celery_worker_quota_queues=["api"])
    run = playbook(inventory, path=SITE)
    assert_rejected(
        run,
        "celery_worker : Check that quota queues come with an allowance",
        r"celery_worker_quota_queues is set but celery_worker_quota_allowance is 0",
    )


@pytest.mark.parametrize(
    ("variable", "value"), [("celery_worker_max_tasks_per_child", -1), ("celery_worker_max_memory_per_child", -512)]
)
def test_a_negative_recycling_limit(target, inventory, playbook, variable, value):
    inventory.celery_groups()
    inventory.update_host_vars("laptop", **{variable: value})
    run = playbook(inventory, path=SITE)
    assert_rejected(
        run,
        "celery_worker : Check the time limits, the pool size and process recycling",
        rf"{variable} \({value}\)",
        r"must each be 0",
    )


def test_a_log_size_logrotate_cannot_read(target, inventory, playbook):
    inventory.celery_groups()
    inventory.update_host_vars("server", celery_worker_log_max_size="100MB")
    run = playbook(inventory, path=SITE)
    assert_rejected(run, "celery_worker : Check the log size bound", r"server: celery_worker_log_max_size \(100MB\)")


def test_missing_app_password(target, inventory, playbook):
    inventory.celery_groups()
    inventory.vault(drop=("vault_rabbitmq_app_password",))
    run = playbook(inventory, path=SITE)
    assert_rejected(run, "celery_worker : Check the broker account", r"vault_rabbitmq_app_password")


def test_check_mode_on_fresh_hosts_reports_without_failing(target, inventory, playbook):
    """--check of the whole site on hosts that have nothing yet runs through and leaves them untouched."""
    inventory.celery_groups()
    run = playbook(inventory, "--check", path=SITE)
    assert run.rc == 0 and not run.failed_tasks(), run.output
    assert "celery_worker : Write the app's folders, configuration, the worker's unit and log rotation" in [
        name for name, _ in run.tasks()
    ], run.output
    assert not run.container_findings, run.container_findings


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("celery_worker_concurency", "celery_worker_concurrency"),
        ("celery_worker_api_tokn", "celery_worker_api_token"),
        ("celery_worker_made_up_setting", None),
    ],
)
def test_a_variable_the_worker_role_does_not_know_is_refused_without_its_value(
    target, inventory, playbook, variable, suggestion
):
    inventory.celery_groups()
    value = "value-that-must-not-show-4f1c"  # a misspelt name may hold a secret: it is never printed
    inventory.update_host_vars("server", **{variable: value})
    run = playbook(inventory, path=SITE)
    hint = rf" \(did you mean {suggestion}\?\)" if suggestion else ":"
    assert_rejected(
        run,
        "celery_worker : Check that every celery_worker_ variable of this host is one the role knows",
        rf"server: {variable}{hint}",
        r"not a variable of the celery_worker\s+role",
    )
    assert value not in run.output


@pytest.mark.parametrize(
    ("group_vars", "says"),
    [
        (
            {"celery_worker_broker_vhost": "othervhost"},
            r"get the vhosts myvhost \(rabbitmq_vhosts\) and that user has no\s+permissions there",
        ),
        ({"celery_worker_broker_user": "admin2"}, r"as\s+'admin2'.*has no\s+permissions there"),
    ],
)
def test_an_app_vhost_or_user_the_broker_does_not_get_is_refused(target, inventory, playbook, group_vars, says):
    """A vhost the rabbitmq role does not create left the workers restarting against a broker that refused them."""
    inventory.celery_groups()
    inventory.update_host_vars("server", **group_vars)
    run = playbook(inventory, path=SITE)
    assert_rejected(
        run,
        "celery_worker : Check that the rabbitmq role creates the app's vhost",
        says,
        r"Add the vhost to rabbitmq_vhosts",
    )


def test_an_api_reached_without_tls_gets_a_warning(target, inventory, playbook):
    inventory.celery_groups()
    inventory.update_host_vars("server", celery_worker_quota_allowance=-1)  # stops the run after the warning
    run = playbook(inventory, path=SITE)
    assert re.search(r"Warning: server sends its API token to http://api:8080 without TLS", run.output), run.output


@pytest.mark.parametrize(
    ("variables", "found"),
    [
        ({"celery_worker_app_module": "my project.app"}, r"celery_worker_app_module \(my project\.app\) must be"),
        ({"celery_worker_app_environment": {"DJANGO-SETTINGS": "x"}}, r"these are not: DJANGO-SETTINGS"),
        ({"celery_worker_releases_kept": 1}, r"celery_worker_releases_kept \(1\) must be 2 or more"),
    ],
)
def test_the_apps_module_environment_and_kept_releases(target, inventory, playbook, variables, found):
    inventory.celery_groups()
    inventory.update_host_vars("laptop", **variables)
    run = playbook(inventory, path=SITE)
    assert_rejected(run, "celery_worker : Check the app's module, environment and kept releases", found)


def test_an_environment_value_is_never_shown(target, inventory, playbook):
    inventory.celery_groups()
    inventory.update_host_vars("laptop", celery_worker_app_environment={"API_SECRET": "first-line\nsecond-line-8f3a"})
    run = playbook(inventory, path=SITE)
    assert_rejected(run, "celery_worker : Check the app's module, environment and kept releases", r"single lines")
    assert "second-line-8f3a" not in run.output
