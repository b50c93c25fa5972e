"""Outbound requests to user-supplied URLs refuse internal addresses (SSRF)."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore
import httpx
import pytest

from zhongtai.web.outbound import UnsafeURL, check_url, post_safely, safe_client

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"
LOCAL = ["127.0.0.1/32"]

_real_getaddrinfo = socket.getaddrinfo


def _info(address: str, port: Any) -> tuple[Any, ...]:
    port = int(port or 0)
    if ":" in address:
        return (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names added to the returned dict resolve to the listed addresses; others as usual.

    A value may also be a callable returning the list, to change answers between calls.
    """
    table: dict[str, Any] = {}

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if isinstance(host, str) and host in table:
            answer = table[host]
            addresses = answer() if callable(answer) else answer
            return [_info(a, port) for a in addresses]
        return _real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


class _Server(ThreadingHTTPServer):
    received: list[tuple[str, dict[str, str], bytes]]


class _Recorder(BaseHTTPRequestHandler):
    """Records POSTs; the path picks the answer (``/ok``, ``/307?to=...``, ``/302?to=...``)."""

    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        self.server.received.append((self.path, dict(self.headers), body))
        path, _, query = self.path.partition("?")
        if path in ("/307", "/302"):
            self.send_response(int(path[1:]))
            self.send_header("Location", query.removeprefix("to="))
        else:
            self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Recorder)
    httpd.received = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def _base(httpd: _Server) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}"


# --- check_url ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://0x7f000001/", "loopback"),
        ("http://2130706433/", "loopback"),
        # httpx rejects the octal form outright, so it could not be sent anyway.
        ("http://0177.0.0.1/", "not a valid URL"),
        ("http://127.1/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:7f00:1]/", "loopback"),
        ("http://127.0.0.1:6379/", "127.0.0.1 is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[::1]/", "loopback"),
        ("http://10.1.2.3/", "private"),
        ("http://192.168.0.1/", "private"),
        ("http://100.100.100.200/", "cloud metadata"),
        ("http://100.64.0.1/", "shared address space"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://[fd12:3456::1]/", "private"),
        ("http://[fe80::1]/", "link-local"),
        ("http://169.254.1.1/", "link-local"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://localhost/", "loopback"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata host name"),
        ("http://metadata/", "metadata host name"),
        ("http://[2002:7f00:1::]/", "embeds 127.0.0.1"),  # 6to4
        ("http://[64:ff9b::a9fe:a9fe]/", "embeds 169.254.169.254"),  # NAT64
        ("http://[::127.0.0.1]/", "embeds 127.0.0.1"),  # IPv4-compatible
        ("http://[2001:0:4136:e378:8000:63bf:f5ff:fffe]/", "embeds 10.0.0.1"),  # Teredo
        ("ftp://example.com/", "scheme"),
        ("http://user:pw@example.com/", "user name or password"),
        ("http:///nohost", "host is required"),
        ("http://example.com:0/", "port 0"),
        ("http://example.com:70000/", "port 70000"),
        ("not a url", "scheme"),
    ],
)
def test_check_url_refuses(url: str, reason: str) -> None:
    with pytest.raises(UnsafeURL, match=re.escape(reason)) as caught:
        check_url(url)
    assert isinstance(caught.value, ValueError)


def test_message_names_url_and_reason() -> None:
    with pytest.raises(UnsafeURL) as caught:
        check_url("http://127.0.0.1:6379/")
    assert str(caught.value) == "http://127.0.0.1:6379/: 127.0.0.1 is a loopback address"


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/",
        "https://example.com:8443/hook?x=1",
        f"http://{PUBLIC_V4}/",
        f"http://[{PUBLIC_V6}]/",
        f"http://[::ffff:{PUBLIC_V4}]/",  # judged by the embedded public address
    ],
)
def test_check_url_accepts_public(fake_dns: dict[str, list[str]], url: str) -> None:
    fake_dns["example.com"] = [PUBLIC_V4, PUBLIC_V6]
    check_url(url)


def test_any_private_address_refuses_the_name(fake_dns: dict[str, list[str]]) -> None:
    fake_dns["mixed.test"] = [PUBLIC_V4, "10.0.0.7"]
    with pytest.raises(UnsafeURL, match=re.escape("10.0.0.7 is a private address")):
        check_url("https://mixed.test/")


def test_unresolvable_name_is_refused(fake_dns: dict[str, list[str]]) -> None:
    fake_dns["nowhere.test"] = []
    with pytest.raises(UnsafeURL, match=re.escape("nowhere.test does not resolve")):
        check_url("http://nowhere.test/")


def test_allow_accepts_listed_networks_only(fake_dns: dict[str, list[str]]) -> None:
    check_url("http://127.0.0.1:8080/", allow=LOCAL)
    check_url("http://10.1.2.3/", allow=["10.0.0.0/8"])
    check_url("http://[::ffff:10.1.2.3]/", allow=["10.0.0.0/8"])
    fake_dns["svc.internal"] = ["10.1.2.3"]
    check_url("http://svc.internal/", allow=["10.0.0.0/8"])
    with pytest.raises(UnsafeURL, match="private"):
        check_url("http://192.168.0.1/", allow=["10.0.0.0/8"])
    with pytest.raises(UnsafeURL, match="metadata host name"):
        check_url("http://metadata/", allow=["0.0.0.0/0"])


def test_malformed_allow_entry_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="not valid CIDR") as caught:
        check_url("http://127.0.0.1/", allow=["localhost"])
    assert not isinstance(caught.value, UnsafeURL)


# --- connect-time check -------------------------------------------------------


def test_post_safely_delivers_when_allowed(server: _Server) -> None:
    with safe_client(allow=LOCAL) as client:
        response = post_safely(
            client,
            f"{_base(server)}/ok",
            content=b'{"event": "ping"}',
            headers={"Content-Type": "application/json", "X-Signature": "abc"},
            allow=LOCAL,
        )
    assert response.status_code == 200
    [(path, headers, body)] = server.received
    assert (path, body) == ("/ok", b'{"event": "ping"}')
    assert headers["X-Signature"] == "abc"
    assert headers["Content-Type"] == "application/json"


def test_post_safely_refuses_when_not_allowed(server: _Server) -> None:
    with safe_client() as client, pytest.raises(UnsafeURL, match="loopback"):
        post_safely(client, f"{_base(server)}/ok", content=b"x", headers={})
    assert server.received == []


def test_client_refuses_at_connect_time_without_check_url(server: _Server) -> None:
    with safe_client() as client, pytest.raises(UnsafeURL, match="loopback"):
        client.post(f"{_base(server)}/ok", content=b"x")
    with safe_client() as client, pytest.raises(UnsafeURL, match="loopback"):
        client.post(f"http://localhost:{server.server_address[1]}/ok", content=b"x")
    assert server.received == []


def test_client_ignores_proxy_environment(server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://proxy.invalid:{server.server_address[1]}")
    monkeypatch.setenv("ALL_PROXY", f"http://proxy.invalid:{server.server_address[1]}")
    with safe_client(allow=LOCAL) as client:
        assert client.post(f"{_base(server)}/ok", content=b"x").status_code == 200


def test_client_connects_to_the_vetted_address(
    server: _Server, fake_dns: dict[str, list[str]]
) -> None:
    fake_dns["hooks.test"] = ["127.0.0.1"]
    port = server.server_address[1]
    with safe_client(allow=LOCAL) as client:
        assert client.post(f"http://hooks.test:{port}/ok", content=b"x").status_code == 200
    [(_, headers, _)] = server.received
    assert headers["Host"] == f"hooks.test:{port}"


def test_dns_rebinding_is_refused_at_connect_time(
    server: _Server, fake_dns: dict[str, Any]
) -> None:
    calls = []

    def rebind() -> list[str]:
        calls.append(1)
        return [PUBLIC_V4] if len(calls) == 1 else ["127.0.0.1"]

    fake_dns["rebind.test"] = rebind
    url = f"http://rebind.test:{server.server_address[1]}/ok"
    check_url(url)
    refused = re.escape("127.0.0.1 is a loopback")
    with safe_client() as client, pytest.raises(UnsafeURL, match=refused):
        client.post(url, content=b"x")
    assert len(calls) == 2
    assert server.received == []


def test_tls_server_name_is_the_host_name_not_the_address(
    fake_dns: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_dns["tls.test"] = [PUBLIC_V4]
    seen: dict[str, Any] = {}

    class Stream(httpcore.NetworkStream):
        def start_tls(self, ssl_context: Any, server_hostname: Any = None, timeout: Any = None):
            seen["server_hostname"] = server_hostname
            raise httpcore.ConnectError("stop here")

        def close(self) -> None:
            pass

    def connect_tcp(self: Any, host: str, port: int, **kwargs: Any) -> httpcore.NetworkStream:
        seen["host"] = host
        return Stream()

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", connect_tcp)
    with safe_client() as client, pytest.raises(httpx.ConnectError):
        client.post("https://tls.test/hook", content=b"x")
    assert seen == {"host": PUBLIC_V4, "server_hostname": "tls.test"}


# --- redirects ----------------------------------------------------------------


def test_307_to_metadata_is_refused(server: _Server) -> None:
    with safe_client(allow=LOCAL) as client, pytest.raises(UnsafeURL, match="cloud metadata"):
        post_safely(
            client,
            f"{_base(server)}/307?to=http://169.254.169.254/latest/meta-data/",
            content=b"x",
            headers={},
            allow=LOCAL,
        )
    assert len(server.received) == 1


def test_302_is_returned_unfollowed(server: _Server) -> None:
    with safe_client(allow=LOCAL) as client:
        response = post_safely(
            client,
            f"{_base(server)}/302?to=http://169.254.169.254/",
            content=b"x",
            headers={},
            allow=LOCAL,
        )
    assert response.status_code == 302
    assert response.headers["location"] == "http://169.254.169.254/"


def test_307_to_an_allowed_target_is_followed_with_the_body(server: _Server) -> None:
    with safe_client(allow=LOCAL) as client:
        response = post_safely(
            client,
            f"{_base(server)}/307?to=/ok",
            content=b"payload",
            headers={"X-Signature": "abc", "Authorization": "Bearer t"},
            allow=LOCAL,
        )
    assert response.status_code == 200
    _, second = server.received
    assert second[0] == "/ok"
    assert second[2] == b"payload"
    assert second[1]["X-Signature"] == "abc"
    assert second[1]["Authorization"] == "Bearer t"  # same origin keeps it


def test_cross_origin_redirect_drops_authorization(
    server: _Server, fake_dns: dict[str, list[str]]
) -> None:
    fake_dns["other.test"] = ["127.0.0.1"]
    target = f"http://other.test:{server.server_address[1]}/ok"
    with safe_client(allow=LOCAL) as client:
        post_safely(
            client,
            f"{_base(server)}/307?to={target}",
            content=b"x",
            headers={"Authorization": "Bearer t"},
            allow=LOCAL,
        )
    _, second = server.received
    assert "Authorization" not in second[1]


def test_too_many_redirects(server: _Server) -> None:
    loop = f"{_base(server)}/307?to=/307?to=/ok"  # two hops, then /ok
    with safe_client(allow=LOCAL) as client:
        with pytest.raises(httpx.TooManyRedirects):
            post_safely(client, loop, content=b"x", headers={}, allow=LOCAL, max_redirects=1)
        assert post_safely(client, loop, content=b"x", headers={}, allow=LOCAL).status_code == 200
