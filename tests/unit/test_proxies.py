"""server.trusted_proxies: forwarding headers believed from trusted proxies only."""
from __future__ import annotations

import pytest

from gateway.config import SettingsError, load_settings
from gateway.proxies import TrustedProxies


def seen(networks, remote: str, **headers) -> dict:
    got = {}

    def app(environ, start_response):
        got.update(environ)
        return []

    environ = {"REMOTE_ADDR": remote, "wsgi.url_scheme": "http", "HTTP_HOST": "10.1.2.3:8042",
               "SERVER_NAME": "10.1.2.3", **{f"HTTP_{k.upper()}": v for k, v in headers.items()}}
    TrustedProxies(app, networks)(environ, None)
    return got


def test_headers_from_a_trusted_proxy_are_believed():
    env = seen(["10.0.0.0/8"], "10.0.0.5", x_forwarded_for="203.0.113.7", x_forwarded_proto="https",
               x_forwarded_host="pacs.example.org")
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"], env["HTTP_HOST"]) == ("203.0.113.7", "https",
                                                                              "pacs.example.org")
    assert env["gateway.proxy"] == "10.0.0.5"


def test_headers_from_anyone_else_are_ignored():
    env = seen(["10.0.0.0/8"], "198.51.100.20", x_forwarded_for="203.0.113.7", x_forwarded_proto="https",
               x_forwarded_host="evil.example")
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"], env["HTTP_HOST"]) == ("198.51.100.20", "http",
                                                                              "10.1.2.3:8042")


def test_no_trusted_proxies_by_default():
    env = seen([], "127.0.0.1", x_forwarded_for="203.0.113.7")
    assert env["REMOTE_ADDR"] == "127.0.0.1"


def test_the_client_is_the_right_most_address_that_is_not_a_trusted_proxy():
    # the client forged the first entry; the outer balancer (10.0.0.9) added what it saw
    env = seen(["10.0.0.0/8"], "10.0.0.5", x_forwarded_for="1.2.3.4, 203.0.113.7, 10.0.0.9")
    assert env["REMOTE_ADDR"] == "203.0.113.7"


def test_a_port_is_added_unless_it_is_the_schemes_default():
    env = seen(["10.0.0.5"], "10.0.0.5", x_forwarded_proto="https", x_forwarded_host="pacs.example.org",
               x_forwarded_port="8443")
    assert env["HTTP_HOST"] == "pacs.example.org:8443"
    env = seen(["10.0.0.5"], "10.0.0.5", x_forwarded_proto="https", x_forwarded_host="pacs.example.org",
               x_forwarded_port="443")
    assert env["HTTP_HOST"] == "pacs.example.org"


@pytest.mark.parametrize("host", ["evil.example/path", "a b", "x\r\nSet-Cookie: y", ""])
def test_a_malformed_forwarded_host_is_ignored(host):
    env = seen(["10.0.0.5"], "10.0.0.5", x_forwarded_host=host)
    assert env["HTTP_HOST"] == "10.1.2.3:8042"


def test_a_bad_network_in_the_setting_stops_start_up():
    with pytest.raises(SettingsError, match="trusted_proxies"):
        load_settings(overrides={"server.trusted_proxies": "10.0.0.0/8, not-an-address"}, environ={})
