"""The whole site.yml on the write-up's two servers (grows as roles are added to site.yml)."""

from conftest import inventory

testinfra_hosts = inventory().get_hosts("all")


def test_every_member_resolves_every_other_by_short_name(host):
    for other in inventory().get_hosts("rabbitmq"):
        assert host.run(f"getent hosts {other}").rc == 0
