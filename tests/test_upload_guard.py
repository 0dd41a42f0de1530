"""The SSRF policy for `signed_url` (issue 11, finding 5), and that uploads keep to it.

DNS answers are injected through the guard's resolver where a test needs a name to point at a
given address (a fake for an injected fault: the network has no such names); `localhost` is
resolved for real. Connections go to real local servers, plain and TLS (trustme CA).
"""

from __future__ import annotations

import ipaddress
import logging
import ssl

import pytest
import trustme

from neuronpedia_graph.settings import Settings, SettingsError, load_settings
from neuronpedia_graph.upload.guard import (
    DEFAULT_ALLOWED_HOSTS,
    UploadGuard,
    UploadURLRefused,
    address_problem,
    check_url_syntax,
)
from neuronpedia_graph.upload.transfer import UploadError, UploadPolicy, put_graph
from tests.fault_targets import flaky_target, tls_target
from tests.test_upload_http import INTERNAL_URLS

SIGNATURE = "X-Amz-Signature=5ecret5ecret5ecret"
POLICY = UploadPolicy(connect_timeout=2.0, read_timeout=5.0, retries=1, backoff_factor=0.01)


class FakeDns:
    """Answers from `table`; later lookups of a name answer from `then` (DNS rebinding).

    Counts lookups; an unknown name does not resolve.
    """

    def __init__(
        self, table: dict[str, list[str]], then: dict[str, list[str]] | None = None
    ) -> None:
        self.table = table
        self.then = then or {}
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        seen_before = host in self.lookups
        self.lookups.append(host)
        if seen_before and host in self.then:
            return self.then[host]
        if host not in self.table:
            raise OSError("name does not resolve")
        return self.table[host]


def refused(guard: UploadGuard, url: str) -> str:
    with pytest.raises(UploadURLRefused) as info:
        guard.check(url)
    message = str(info.value)
    assert "5ecret" not in message and "X-Amz" not in message
    return message


# --- every written form of an internal address --------------------------------------------


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_internal_addresses_are_refused_in_every_form_even_under_a_wildcard(url: str) -> None:
    guard = UploadGuard("*")  # every host name allowed: only the address rule stands

    message = refused(guard, f"{url}?{SIGNATURE}")

    assert any(
        phrase in message
        for phrase in ("non-standard form", "address; uploads go only to public", "loopback")
    ), message


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_internal_addresses_are_refused_by_the_default_allowlist(url: str) -> None:
    refused(UploadGuard(), f"{url}?{SIGNATURE}")


def test_non_standard_ipv4_is_refused_even_when_its_address_is_allowed() -> None:
    guard = UploadGuard("127.0.0.1")

    for host in ("2130706433", "0x7f.0.0.1", "0177.0.0.1", "127.1", "127.0.1"):
        assert "non-standard form" in refused(guard, f"http://{host}:9000/b/k?{SIGNATURE}")
    assert guard.check("http://127.0.0.1:9000/b/k").addresses == ("127.0.0.1",)


@pytest.mark.parametrize(
    ("ip", "problem"),
    [
        ("169.254.169.254", "a cloud metadata address"),
        ("::ffff:169.254.169.254", "a cloud metadata address"),
        ("64:ff9b::a9fe:a9fe", "a cloud metadata address"),
        ("127.0.0.5", "a loopback address"),
        ("::ffff:7f00:1", "a loopback address"),
        ("169.254.1.1", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("10.1.2.3", "a private address"),
        ("fd12::1", "a private address"),
        ("fec0::1", "a site-local address"),
        ("fefe:1::5", "a site-local address"),
        ("0.0.0.0", "an unspecified address"),
        ("ff02::1", "a multicast address"),
        ("100.64.1.1", "a non-public address"),
        ("240.0.0.1", "a private address"),
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("52.216.1.1", None),
    ],
)
def test_address_classification(ip: str, problem: str | None) -> None:
    assert address_problem(ipaddress.ip_address(ip)) == problem


# --- the allowlist -------------------------------------------------------------------------


# Every presigned endpoint form the stores' SDKs write, with a public address to resolve to.
STORE_ENDPOINTS = [
    "s3.amazonaws.com",  # path-style, global
    "bucket.s3.amazonaws.com",  # virtual-hosted, global
    "my.dotted.bucket.s3.amazonaws.com",  # a bucket name with dots
    "s3.us-west-2.amazonaws.com",  # path-style, regional
    "bucket.s3.us-west-2.amazonaws.com",  # virtual-hosted, regional
    "s3-us-west-2.amazonaws.com",  # legacy dash-region, path-style
    "bucket.s3-us-west-2.amazonaws.com",  # legacy dash-region, virtual-hosted
    "s3-external-1.amazonaws.com",
    "s3.dualstack.eu-central-1.amazonaws.com",  # dualstack, path-style
    "bucket.s3.dualstack.eu-central-1.amazonaws.com",  # dualstack, virtual-hosted
    "s3-fips.us-east-1.amazonaws.com",
    "bucket.s3-fips.us-east-1.amazonaws.com",
    "s3-fips.dualstack.us-east-1.amazonaws.com",
    "bucket.s3-fips.dualstack.us-east-1.amazonaws.com",
    "bucket.s3-accelerate.amazonaws.com",  # Transfer Acceleration
    "bucket.s3-accelerate.dualstack.amazonaws.com",
    "s3.cn-north-1.amazonaws.com.cn",  # China partition
    "bucket.s3.cn-north-1.amazonaws.com.cn",
    "0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com",  # R2 account, path-style
    "bucket.0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com",  # R2 virtual-hosted
    "0123456789abcdef0123456789abcdef.eu.r2.cloudflarestorage.com",  # R2 jurisdiction
    "storage.googleapis.com",  # GCS path-style
    "bucket.storage.googleapis.com",  # GCS virtual-hosted
]
# Names anyone can rent or register, and near misses of the store endpoints.
LOOKALIKES = [
    "ec2-1-2-3-4.compute-1.amazonaws.com",  # EC2 public DNS (us-east-1)
    "ec2-1-2-3-4.us-west-2.compute.amazonaws.com",  # EC2 public DNS (other regions)
    "my-lb-1234567890.us-east-1.elb.amazonaws.com",  # a load balancer
    "abcdef1234.execute-api.us-east-1.amazonaws.com",  # an API gateway
    "abc.cloudfront.net",
    "amazonaws.com",
    "evil.amazonaws.com",
    "evils3.amazonaws.com",
    "s3.amazonaws.com.evil.net",
    "bucket.s3.amazonaws.com.evil.net",
    "s3.us-west-2.evil.amazonaws.com.evil.net",
    "s3.a.b.amazonaws.com",  # a regional `*` is one label, never more
    "bucket.xs3.us-west-2.amazonaws.com",
    "s3.amazonaws.co",
    "s3.us-west-2.amazonaws.com.cn.evil.net",
    "r2.cloudflarestorage.com",
    "evilr2.cloudflarestorage.com",
    "r2.cloudflarestorage.com.evil.net",
    "storage.googleapis.com.evil.net",
    "evilstorage.googleapis.com",
    "googleapis.com",
    "www.googleapis.com",
    "52.216.1.1",  # a public IP, but not listed
]


@pytest.mark.parametrize("host", STORE_ENDPOINTS)
def test_default_allowlist_admits_every_store_endpoint_form(host: str) -> None:
    guard = UploadGuard(resolver=FakeDns({host: ["52.216.1.1"]}))
    target = guard.check(f"https://{host}/bucket/g.json?{SIGNATURE}")
    assert target.addresses == ("52.216.1.1",) and target.host == host


@pytest.mark.parametrize("host", LOOKALIKES)
def test_default_allowlist_refuses_rentable_and_lookalike_hosts(host: str) -> None:
    dns = FakeDns({host: ["52.216.1.1"]})
    message = refused(UploadGuard(resolver=dns), f"https://{host}/bucket/g.json?{SIGNATURE}")
    assert "not an allowed upload host" in message
    assert dns.lookups == []  # refused hosts are never looked up


def test_default_allowlist_is_the_settings_default() -> None:
    assert Settings().upload_allowed_hosts == DEFAULT_ALLOWED_HOSTS
    assert "*.amazonaws.com" not in DEFAULT_ALLOWED_HOSTS.split(",")


def test_store_endpoints_must_still_resolve_to_public_addresses() -> None:
    dns = FakeDns({"bucket.s3.us-east-1.amazonaws.com": ["169.254.169.254"]})
    message = refused(UploadGuard(resolver=dns), "https://bucket.s3.us-east-1.amazonaws.com/g")
    assert "resolves to a cloud metadata address" in message


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("*.example.com", ["a.example.com", "a.b.example.com"], ["example.com", "aexample.com"]),
        ("s3.*.example.com", ["s3.x.example.com"], ["s3.x.y.example.com", "s3.example.com"]),
        ("s3-*.example.com", ["s3-x.example.com"], ["s3-x.y.example.com", "s3.example.com"]),
        ("*.s3.*.example.com", ["b.c.s3.x.example.com"], ["s3.x.example.com", "b.s3.example.com"]),
        ("files.example.com", ["files.example.com"], ["a.files.example.com"]),
    ],
)
def test_pattern_syntax(pattern: str, matches: list[str], misses: list[str]) -> None:
    hosts = {h: ["93.184.216.34"] for h in matches + misses}
    guard = UploadGuard(pattern, FakeDns(hosts))
    for host in matches:
        assert guard.check(f"https://{host}/k").host == host
    for host in misses:
        assert "not an allowed upload host" in refused(guard, f"https://{host}/k")


def test_a_wildcard_host_must_resolve_to_public_addresses_only() -> None:
    dns = FakeDns(
        {
            "meta.amazonaws.com": ["169.254.169.254"],
            "mapped.amazonaws.com": ["::ffff:10.0.0.1"],
            "mixed.amazonaws.com": ["52.216.1.1", "127.0.0.1"],
            "empty.amazonaws.com": [],
        }
    )
    guard = UploadGuard("*.amazonaws.com", resolver=dns)

    assert "resolves to a cloud metadata address" in refused(guard, "https://meta.amazonaws.com/")
    assert "resolves to a private address" in refused(guard, "https://mapped.amazonaws.com/")
    assert "resolves to a loopback address" in refused(guard, "https://mixed.amazonaws.com/")
    assert "could not be resolved" in refused(guard, "https://empty.amazonaws.com/")
    assert "could not be resolved" in refused(guard, "https://nxdomain.amazonaws.com/")


def test_explicit_entries_may_point_inside() -> None:
    dns = FakeDns({"minio.internal": ["10.0.0.7"], "s3.corp.example": ["10.9.9.9"]})
    guard = UploadGuard("minio.internal, *.corp.example, 127.0.0.1, 192.168.0.0/16, ::1", dns)

    assert guard.check("http://minio.internal:9000/b/k").addresses == ("10.0.0.7",)
    assert guard.check("http://127.0.0.1:9000/b/k").addresses == ("127.0.0.1",)
    assert guard.check("http://[::ffff:127.0.0.1]:9000/b/k").addresses == ("::ffff:7f00:1",)
    assert guard.check("http://192.168.4.2/b/k").addresses == ("192.168.4.2",)
    assert guard.check("http://[::1]:9000/b/k").addresses == ("::1",)
    # A wildcard is never trusted with an internal address, and other internal IPs stay out.
    assert "private" in refused(guard, "http://s3.corp.example/b/k")
    assert "not an allowed upload host" in refused(guard, "http://10.0.0.7/b/k")
    assert "not an allowed upload host" in refused(guard, "http://127.0.0.2/b/k")


def test_lone_star_allows_public_hosts_only() -> None:
    guard = UploadGuard("*", FakeDns({"files.example.org": ["93.184.216.34"]}))

    assert guard.check("https://files.example.org/k").addresses == ("93.184.216.34",)
    assert guard.check("https://93.184.216.34/k").addresses == ("93.184.216.34",)


@pytest.mark.parametrize(
    "entry",
    [
        "*.",
        "exa mple.com",
        "2130706433",
        "10.0.0.0/33",
        "10.0.0.1/8",
        "ftp://x",
        "a..b",
        "example.*",  # the last label is never a pattern
        "s3.**.example.com",
        "a*b*c.example.com",
        "*.*",
    ],
)
def test_bad_allowlist_entries_fail_at_startup(entry: str) -> None:
    with pytest.raises(SettingsError, match="UPLOAD_ALLOWED_HOSTS"):
        load_settings([], environ={"UPLOAD_ALLOWED_HOSTS": f"*.amazonaws.com,{entry}"})


def test_allowlist_and_workers_come_from_the_environment() -> None:
    settings = load_settings(
        [], environ={"UPLOAD_ALLOWED_HOSTS": "minio.internal, 10.0.0.0/8", "UPLOAD_WORKERS": "2"}
    )

    assert settings.upload_allowed_hosts == "minio.internal, 10.0.0.0/8"
    assert settings.upload_workers == 2
    with pytest.raises(SettingsError, match="UPLOAD_WORKERS"):
        load_settings([], environ={"UPLOAD_WORKERS": "0"})


# --- URL shape (request validation) --------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"ftp://bucket.s3.amazonaws.com/k?{SIGNATURE}", "must be an http(s) URL"),
        (f"file:///etc/passwd?{SIGNATURE}", "must be an http(s) URL"),
        (f"https://user:pw@bucket.s3.amazonaws.com/k?{SIGNATURE}", "user name or password"),
        (f"https://bucket.s3.amazonaws.com:99999/k?{SIGNATURE}", "invalid port"),
        (f"https://bucket.s3.amazonaws.com./k?{SIGNATURE}", "not a valid host name"),
        (f"https://b%75cket.s3.amazonaws.com/k?{SIGNATURE}", "not a valid host name"),
        (f"https://bücket.s3.amazonaws.com/k?{SIGNATURE}", "ASCII"),
        (f"https://bucket.s3.amazonaws.com /k?{SIGNATURE}", "without spaces"),
        (f"https://[bucket]/k?{SIGNATURE}", "not a valid URL"),
        (f"https://0x7f000001/k?{SIGNATURE}", "non-standard form"),
        (f"https:///k?{SIGNATURE}", "must be an http(s) URL"),
    ],
)
def test_malformed_urls_are_refused_without_echoing_the_signature(url: str, message: str) -> None:
    with pytest.raises(UploadURLRefused) as info:
        check_url_syntax(url)
    assert message in str(info.value)
    assert "5ecret" not in str(info.value)
    refused(UploadGuard("*"), url)


def test_good_urls_pass_unchanged() -> None:
    url = f"https://bucket.s3.amazonaws.com/a%20b/g.json?{SIGNATURE}&x-id=PutObject"
    assert check_url_syntax(url) == url


# --- connecting to the address that was checked -------------------------------------------


def test_upload_goes_to_the_checked_address_with_the_original_host_header() -> None:
    with flaky_target(fail_times=0) as target:
        port = target.url.split(":")[2].split("/")[0]
        dns = FakeDns(
            {"s3.rebind.invalid": ["127.0.0.1"]}, then={"s3.rebind.invalid": ["10.0.0.1"]}
        )
        guard = UploadGuard("s3.rebind.invalid", dns)
        checked = guard.check(f"http://s3.rebind.invalid:{port}/bucket/graph.json?{SIGNATURE}")

        # The name now points elsewhere; the upload must not ask again, nor follow it.
        assert dns("s3.rebind.invalid", int(port)) == ["10.0.0.1"]
        result = put_graph(checked, b'{"a": 1}', compressed=False, policy=POLICY)

    assert result.status == 200
    assert result.url == f"http://s3.rebind.invalid:{port}/bucket/graph.json"
    assert dns.lookups == ["s3.rebind.invalid", "s3.rebind.invalid"]  # the check, and ours
    (request,) = target.requests
    assert request.headers["host"] == f"s3.rebind.invalid:{port}"
    assert request.path == f"/bucket/graph.json?{SIGNATURE}"
    assert request.body == b'{"a": 1}'


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_tls_uses_sni_and_checks_the_certificate_for_the_original_name(ca, tmp_path) -> None:
    name = "bucket.s3.tls-test.invalid"
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    policy = UploadPolicy(connect_timeout=2.0, read_timeout=5.0, retries=0, ca_certs=str(ca_file))

    with tls_target(server_ctx, name) as target:
        guard = UploadGuard(name, FakeDns({name: ["127.0.0.1"]}))
        result = put_graph(
            guard.check(target.url + "?" + SIGNATURE), b"{}", compressed=False, policy=policy
        )

    assert result.status == 200
    assert target.server_names == [name]
    port = target.url.split(":")[2].split("/")[0]
    assert target.requests[0].headers["host"] == f"{name}:{port}"


def test_tls_certificate_for_another_name_is_refused_without_retry(ca, tmp_path) -> None:
    name = "bucket.s3.tls-test.invalid"
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.example").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    policy = UploadPolicy(connect_timeout=2.0, read_timeout=5.0, retries=3, ca_certs=str(ca_file))

    with tls_target(server_ctx, name) as target:
        guard = UploadGuard(name, FakeDns({name: ["127.0.0.1"]}))
        with pytest.raises(UploadError) as info:
            put_graph(guard.check(target.url), b"{}", compressed=False, policy=policy)

    assert info.value.status is None and info.value.attempts == 1
    assert info.value.detail.startswith("TLS error (") and "mismatch" in info.value.detail.lower()
    assert target.requests == []


def test_tls_with_an_unknown_ca_is_refused(ca, tmp_path, caplog) -> None:
    name = "bucket.s3.tls-test.invalid"
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(server_ctx)

    with tls_target(server_ctx, name) as target, caplog.at_level(logging.WARNING):
        guard = UploadGuard(name, FakeDns({name: ["127.0.0.1"]}))
        with pytest.raises(UploadError) as info:  # certifi's bundle does not know the test CA
            put_graph(guard.check(target.url), b"{}", compressed=False, policy=POLICY)

    assert "certificate verify failed" in info.value.detail or "unable to get local issuer" in (
        info.value.detail
    )
    assert target.requests == []
