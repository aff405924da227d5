"""AMQP URLs for every cluster node, in failover order.

Kombu takes a list of URLs and, with its default round-robin strategy, connects to the first and moves to
the next when a node is unreachable, so the local node (listed first by the template) is preferred and
every other node is a fallback. The user, password and vhost are percent-quoted: a generated password may
contain `#`, `/`, `:` or `@`, which would otherwise be read as URL syntax.
"""

from urllib.parse import quote

from fetcher.settings import BrokerSettings


def broker_urls(broker: BrokerSettings) -> list[str]:
    """One `amqp://user:password@host:port/vhost` URL per node, in the configured order."""
    credentials = f"{quote(broker.user, safe='')}:{quote(broker.password, safe='')}"
    vhost = quote(broker.vhost, safe="")
    return [f"amqp://{credentials}@{host}/{vhost}" for host in broker.hosts]
