"""AMQP URLs for every cluster node, in failover order; and a delivered message published again as it came.

Kombu takes a list of URLs and, with its default round-robin strategy, connects to the first and moves to
the next when a node is unreachable, so the local node (listed first by the template) is preferred and
every other node is a fallback. The user, password and vhost are percent-quoted: a generated password may
contain `#`, `/`, `:` or `@`, which would otherwise be read as URL syntax.
"""

import ssl
from urllib.parse import quote

from fetcher.settings import BrokerSettings


def broker_urls(broker: BrokerSettings) -> list[str]:
    """One `amqp://user:password@host:port/vhost` URL per node, in the configured order."""
    credentials = f"{quote(broker.user, safe='')}:{quote(broker.password, safe='')}"
    vhost = quote(broker.vhost, safe="")
    return [f"amqp://{credentials}@{host}/{vhost}" for host in broker.hosts]


def broker_tls(broker: BrokerSettings) -> dict | bool:
    """Kombu's `ssl` option: with a CA file, TLS that accepts only a certificate that CA signed; else plain.

    The CA is the cluster's own (the rabbitmq role's), which signs nothing but its nodes' certificates, so its
    signature alone says the peer is a node. Host names are not compared: Kombu fixes the name it checks at the
    first node it connects to and keeps it when it fails over to the next, whose certificate has another name.
    """
    if broker.ca_file is None:
        return False
    return {"ca_certs": broker.ca_file, "cert_reqs": ssl.CERT_REQUIRED}


# The properties a message keeps when it is published again (user_id would have to match the publishing
# connection's user, so it is left out).
KEPT_PROPERTIES = (
    "correlation_id",
    "reply_to",
    "priority",
    "delivery_mode",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "app_id",
)


def publish_again(producer, message, exchange: str, routing_key: str, headers: dict | None = None) -> None:
    """Publish a delivered message again as it came (body, headers, content type and encoding, properties).

    The caller acknowledges the delivered one only after this returns: the app publishes with confirms, so
    the broker has the copy by then. `headers` replaces the message's own.
    """
    properties = {key: message.properties[key] for key in KEPT_PROPERTIES if message.properties.get(key) is not None}
    producer.publish(
        message.body,
        exchange=exchange,
        routing_key=routing_key,
        headers=dict(message.headers or {}) if headers is None else headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        retry=True,
        **properties,
    )
