"""Which upload URLs the server may connect to: the one place the `signed_url` policy lives.

`signed_url` is chosen by whoever sends the request, and the server PUTs a graph to it from
inside its own network. Without a policy that is server-side request forgery: cloud metadata
(169.254.169.254), loopback services and private addresses are all reachable, in whatever
spelling the resolver accepts (`2130706433`, `0x7f.1`, `0177.0.0.1`, `::ffff:a9fe:a9fe`). So:

1. The URL's host must match ``UPLOAD_ALLOWED_HOSTS``. Entries are exact names
   (``minio.internal``), patterns, IP addresses (``127.0.0.1``) or networks (``10.0.0.0/8``).
   In a pattern a leading ``*.`` stands for one or more whole labels (``*.example.com``: any
   name ending in ``.example.com``, e.g. a bucket name with dots in it), and any other ``*``
   for one or more characters inside a single label, never a dot (``s3.*.amazonaws.com``
   matches ``s3.us-east-1.amazonaws.com`` but not ``s3.a.b.amazonaws.com``;
   ``s3-*.amazonaws.com`` matches ``s3-us-west-2.amazonaws.com``). A lone ``*`` matches every
   host; the last label is never a pattern. The default admits the object stores' presigned
   endpoints only (`DEFAULT_ALLOWED_HOSTS`), not every name under ``amazonaws.com``: EC2
   public names (``ec2-1-2-3-4.compute-1.amazonaws.com``), load balancers and API gateways
   live there too, and anyone can rent one. IPv4 written in any form but dotted decimal is
   refused outright: libc resolves ``2130706433`` to 127.0.0.1, which a string allowlist
   would not see.
2. The host is resolved once, and every address must be public (not loopback, private,
   link-local, site-local (``fec0::/10``), shared, multicast, reserved or a cloud metadata
   address, also when embedded in IPv6 as IPv4-mapped, NAT64 or 6to4), unless the host is
   *explicitly* allowed: it matched an exact name entry, or the address lies in an IP or
   network entry. A pattern never allows a private address, so a name under it cannot be
   pointed inside.
3. The upload connects to an address from that same check (`UploadTarget.addresses`), so a
   second DNS answer (rebinding) can never swap it; TLS still verifies the certificate and
   sends SNI for the original name, and the Host header is the original host, which the
   presigned signature covers.

Refusals raise `UploadURLRefused` (a ValueError) with a message safe to show the client: it
names the host, never the query string (the signature).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlsplit

# The presigned PUT endpoints of S3, R2 and GCS, in every form their SDKs write (docs/uploads.md
# lists them with examples): S3 path-style and virtual-hosted, global, regional (dot and legacy
# dash forms), dualstack, FIPS and Transfer Acceleration, and the China partition; R2 accounts
# (and jurisdictions); GCS path-style and virtual-hosted.
S3_ENDPOINTS = (
    "s3.amazonaws.com",
    "*.s3.amazonaws.com",
    "s3.*.amazonaws.com",
    "*.s3.*.amazonaws.com",
    "s3.dualstack.*.amazonaws.com",
    "*.s3.dualstack.*.amazonaws.com",
    "s3-*.amazonaws.com",
    "*.s3-*.amazonaws.com",
    "s3-fips.*.amazonaws.com",
    "*.s3-fips.*.amazonaws.com",
    "s3-fips.dualstack.*.amazonaws.com",
    "*.s3-fips.dualstack.*.amazonaws.com",
    "*.s3-accelerate.dualstack.amazonaws.com",
    "s3.*.amazonaws.com.cn",
    "*.s3.*.amazonaws.com.cn",
)
OTHER_STORE_ENDPOINTS = (
    "*.r2.cloudflarestorage.com",
    "storage.googleapis.com",
    "*.storage.googleapis.com",
)
DEFAULT_ALLOWED_HOSTS = ",".join(S3_ENDPOINTS + OTHER_STORE_ENDPOINTS)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> the addresses to try, as text; socket.getaddrinfo by default.
Resolver = Callable[[str, int], list[str]]

_DEFAULT_PORTS = {"http": 80, "https": 443}
# An LDH label (underscores too: some S3-compatible hosts use them); at most 63 characters.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# Well-known metadata endpoints. Most are caught as link-local or private already; Azure's
# wire server 168.63.129.16 is a public address, so it has to be named.
_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "fd00:ec2::254",
        "100.100.100.200",
        "168.63.129.16",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class UploadURLRefused(ValueError):
    """The server will not upload to this URL; the message is safe to return to the client."""


def redact_url(url: str) -> str:
    """Drop the query (the signature), fragment and any user:password from a URL for display."""
    parts = urlsplit(url)
    if not (parts.scheme and parts.hostname):
        return parts.path
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True)
class UploadTarget:
    """A URL that passed the policy, with the addresses that were checked for it.

    Attributes:
        url: the URL exactly as given; it carries the signature, so never log it.
        scheme: ``http`` or ``https``.
        host: the lower-case host name, or the IP address in canonical text (no brackets).
        port: the TCP port (the scheme's default when the URL has none).
        request_target: path and query as written, for the request line.
        host_header: the Host header a client would send for this URL (signed by S3).
        addresses: the checked IP addresses to connect to, in resolver order.
        shown: the redacted URL (scheme, host, port, path) for logs and replies.
    """

    url: str
    scheme: str
    host: str
    port: int
    request_target: str
    host_header: str
    addresses: tuple[str, ...]
    shown: str


@dataclass(frozen=True)
class _Parsed:
    scheme: str
    host: str
    port: int
    ip: IPAddress | None


def _non_canonical_ipv4(host: str) -> bool:
    """True for hosts libc reads as IPv4 that are not dotted decimal (hex, octal, integer)."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return True
    return False


def _parse(url: str) -> _Parsed:
    """Check the URL's shape, without any policy or DNS. Raises UploadURLRefused."""
    if not isinstance(url, str) or not url.isascii() or any(c.isspace() for c in url):
        raise UploadURLRefused("must be an ASCII http(s) URL without spaces")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise UploadURLRefused("must not contain control characters")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. brackets around something that is not an IPv6 address
        raise UploadURLRefused("is not a valid URL (check the host)") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.netloc:
        raise UploadURLRefused("must be an http(s) URL")
    if "@" in parts.netloc:
        raise UploadURLRefused("must not contain a user name or password")
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        raise UploadURLRefused("has an invalid port") from None
    if port == 0:
        raise UploadURLRefused("has an invalid port")
    if not host:
        raise UploadURLRefused("has no host")
    bracketed = parts.netloc.startswith("[")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if bracketed != (ip is not None and ip.version == 6):
        raise UploadURLRefused(f"host '{host}' is not a valid host name or IP address")
    if ip is None:
        if _non_canonical_ipv4(host):
            raise UploadURLRefused(
                f"host '{host}' is an IPv4 address in a non-standard form; "
                "write IP addresses in dotted decimal"
            )
        labels = host.split(".")
        if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
            raise UploadURLRefused(f"host '{host}' is not a valid host name")
        if labels[-1].isdigit():
            raise UploadURLRefused(f"host '{host}' is not a valid host name")
    return _Parsed(scheme, host, port or _DEFAULT_PORTS[scheme], ip)


def check_url_syntax(url: str) -> str:
    """Validate a `signed_url`'s shape (no policy, no DNS); for request-model validation.

    Args:
        url: the URL as sent by the client.

    Returns:
        The URL unchanged: re-normalising a presigned URL would break its signature.

    Raises:
        UploadURLRefused: not an http(s) URL, credentials in it, or a host that is neither a
        valid name nor an IP address in canonical form.
    """
    _parse(url)
    return url


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, IPv4-compatible)."""
    if ip.version == 4:
        return None
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why an address is not public ("a loopback address", ...), or None when it is.

    Args:
        ip: the address to classify; IPv4 carried inside IPv6 is classified as IPv4 too.

    Returns:
        A short phrase for the refusal message, or None for a public unicast address.
    """
    for candidate in (_embedded_ipv4(ip), ip):
        if candidate is None:
            continue
        if candidate in _METADATA:
            return "a cloud metadata address"
        if candidate.is_loopback:
            return "a loopback address"
        if candidate.is_link_local:
            return "a link-local address"
        if candidate.is_unspecified:
            return "an unspecified address"
        if candidate.is_multicast:
            return "a multicast address"
        if candidate.version == 6 and candidate.is_site_local:
            return "a site-local address"  # fec0::/10: deprecated, still routed inside some sites
        if candidate.is_private:
            return "a private address"
        if candidate.is_reserved or not candidate.is_global:
            return "a non-public address"
    return None


def _plain(ip: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 compares as the IPv4 address it maps; scope ids are dropped."""
    if ip.version == 6:
        assert isinstance(ip, ipaddress.IPv6Address)
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.scope_id:
            return ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    return ip


_PATTERN_LABEL = re.compile(r"[a-z0-9_-]*\*?[a-z0-9_-]*")


def _pattern_regex(name: str) -> re.Pattern[str]:
    """A host pattern as a regex over lower-case names (the syntax in the module docstring)."""
    labels = name.split(".")
    prefix = ""
    if labels[0] == "*" and len(labels) > 1:
        prefix = r"(?:[a-z0-9_-]+\.)+"
        labels = labels[1:]
    parts = [re.escape(label).replace(r"\*", "[a-z0-9_-]+") for label in labels]
    return re.compile(prefix + r"\.".join(parts))


def _valid_pattern(name: str) -> bool:
    labels = name.split(".")
    body = labels[1:] if labels[0] == "*" and len(labels) > 1 else labels
    if not body or "*" in body[-1]:
        return False  # the last label is always literal
    for label in body:
        if label.count("*") > 1 or not _PATTERN_LABEL.fullmatch(label):
            return False
        if not _LABEL.fullmatch(label.replace("*", "a")):
            return False
    return True


@dataclass(frozen=True)
class AllowList:
    """Parsed UPLOAD_ALLOWED_HOSTS (see the module docstring for the entry forms)."""

    names: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]
    any_host: bool
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, text: str | Iterable[str]) -> AllowList:
        """Parse a comma-separated string (or a list) of entries.

        Args:
            text: e.g. ``"*.s3.amazonaws.com, s3.*.amazonaws.com, minio.internal, 10.0.0.0/8"``.

        Returns:
            The allowlist.

        Raises:
            ValueError: an entry that is none of the accepted forms.
        """
        entries = text.split(",") if isinstance(text, str) else list(text)
        names: set[str] = set()
        patterns: list[re.Pattern[str]] = []
        networks: list[IPNetwork] = []
        any_host = False
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            if entry == "*":
                any_host = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=True))
                continue
            except ValueError:
                pass
            if "*" in entry:
                if _valid_pattern(entry):
                    patterns.append(_pattern_regex(entry))
                    continue
            elif not _non_canonical_ipv4(entry) and all(
                _LABEL.fullmatch(label) for label in entry.split(".")
            ):
                names.add(entry)
                continue
            raise ValueError(
                f"invalid entry {raw.strip()!r}: use a host name, a pattern like *.domain or "
                "s3.*.amazonaws.com, *, an IP address or a network like 10.0.0.0/8"
            )
        return cls(frozenset(names), tuple(patterns), any_host, tuple(networks))

    def in_networks(self, ip: IPAddress) -> bool:
        plain = _plain(ip)
        return any(plain.version == net.version and plain in net for net in self.networks)

    def host_rule(self, parsed: _Parsed) -> str | None:
        """ "explicit" or "wildcard" for a host the list admits, None when it does not."""
        if parsed.ip is not None:
            if self.in_networks(parsed.ip):
                return "explicit"
            return "wildcard" if self.any_host else None
        if parsed.host in self.names:
            return "explicit"
        if self.any_host or any(p.fullmatch(parsed.host) for p in self.patterns):
            return "wildcard"
        return None


def validate_allowed_hosts(text: str) -> str:
    """Settings validator for UPLOAD_ALLOWED_HOSTS: parse it once so a typo fails at start-up.

    Args:
        text: the comma-separated allowlist.

    Returns:
        The text unchanged.
    """
    AllowList.parse(text)
    return text


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve a host name with the system resolver, as the upload would have.

    Args:
        host: a host name.
        port: the TCP port (it can select records, e.g. for /etc/gai.conf policies).

    Returns:
        The distinct addresses in the resolver's order.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class UploadGuard:
    """Applies UPLOAD_ALLOWED_HOSTS and the public-address rule to `signed_url`s.

    Args:
        allowed_hosts: the allowlist, as UPLOAD_ALLOWED_HOSTS text or a list of entries.
        resolver: ``(host, port) -> addresses``; tests inject DNS answers here.
    """

    def __init__(
        self,
        allowed_hosts: str | Iterable[str] = DEFAULT_ALLOWED_HOSTS,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.allowed = AllowList.parse(allowed_hosts)
        self._resolve = resolver

    def check(self, url: str) -> UploadTarget:
        """Apply the whole policy to a URL and pin the addresses that passed.

        Args:
            url: the presigned URL.

        Returns:
            The target to upload to, carrying the checked addresses.

        Raises:
            UploadURLRefused: the URL is malformed, its host is not allowed, it does not
            resolve, or it resolves to an address that is not public and not explicitly
            allowed.
        """
        parsed = _parse(url)
        rule = self.allowed.host_rule(parsed)
        if rule is None:
            raise UploadURLRefused(
                f"host '{parsed.host}' is not an allowed upload host (UPLOAD_ALLOWED_HOSTS)"
            )
        if parsed.ip is not None:
            addresses = [parsed.ip]
        else:
            try:
                answers = self._resolve(parsed.host, parsed.port)
            except (OSError, UnicodeError):
                answers = []
            addresses = []
            for text in answers:
                try:
                    addresses.append(ipaddress.ip_address(text))
                except ValueError:
                    continue
            if not addresses:
                raise UploadURLRefused(f"host '{parsed.host}' could not be resolved")
        # An exact name entry is trusted wherever it points; anything else must be public
        # unless the address itself lies in an allowed IP or network entry.
        if not (rule == "explicit" and parsed.ip is None):
            for ip in addresses:
                problem = address_problem(ip)
                if problem is not None and not self.allowed.in_networks(ip):
                    where = "is" if parsed.ip is not None else "resolves to"
                    raise UploadURLRefused(
                        f"host '{parsed.host}' {where} {problem}; uploads go only to public "
                        "addresses unless the host is listed in UPLOAD_ALLOWED_HOSTS"
                    )
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        shown_host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
        default_port = parsed.port == _DEFAULT_PORTS[parsed.scheme]
        host_header = shown_host if default_port else f"{shown_host}:{parsed.port}"
        return UploadTarget(
            url=url,
            scheme=parsed.scheme,
            host=parsed.host,
            port=parsed.port,
            request_target=target,
            host_header=host_header,
            addresses=tuple(str(ip) for ip in addresses),
            shown=redact_url(url),
        )


# Presigned query parameters that say when a URL stops working: (date, lifetime, shown as).
_SIGNED_LIFETIMES = (
    ("x-amz-date", "x-amz-expires", "X-Amz-Date + X-Amz-Expires"),
    ("x-goog-date", "x-goog-expires", "X-Goog-Date + X-Goog-Expires"),
)
_SIGNED_DATE = re.compile(r"\d{8}T\d{6}Z")


def presigned_expiry(url: str) -> tuple[datetime, str] | None:
    """When a presigned URL stops working, from its signing date plus lifetime, if it says.

    AWS SigV4 (and S3-compatible stores: R2, MinIO, SeaweedFS) write `X-Amz-Date` and
    `X-Amz-Expires`; Google Cloud Storage V4 writes `X-Goog-Date` and `X-Goog-Expires`.

    Args:
        url: the presigned URL (its query is read, never returned or shown).

    Returns:
        (expiry time in UTC, which parameters said so), or None when the URL carries no
        date and lifetime.

    Raises:
        UploadURLRefused: the parameters are there but malformed (the store would refuse the
        URL too); the message names the parameter, never its value.
    """
    try:
        query = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    except ValueError:
        return None
    for date_key, lifetime_key, shown in _SIGNED_LIFETIMES:
        if date_key not in query or lifetime_key not in query:
            continue
        date_text, lifetime_text = query[date_key], query[lifetime_key]
        if not _SIGNED_DATE.fullmatch(date_text):
            raise UploadURLRefused(f"{shown.split(' ')[0]} is not a date like 20261204T120000Z")
        try:
            signed = datetime.strptime(date_text, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        except ValueError:
            raise UploadURLRefused(f"{shown.split(' ')[0]} is not a valid date") from None
        if not (lifetime_text.isascii() and lifetime_text.isdigit() and len(lifetime_text) < 10):
            raise UploadURLRefused(f"{shown.split(' + ')[1]} is not a number of seconds")
        return signed + timedelta(seconds=int(lifetime_text)), shown
    return None


def check_not_expired(url: str, now: datetime | None = None) -> None:
    """Refuse a presigned URL whose own date and lifetime say it has expired.

    Args:
        url: the presigned URL.
        now: the current time (UTC; default: the clock).

    Raises:
        UploadURLRefused: it has expired, or its date or lifetime is malformed.
    """
    found = presigned_expiry(url)
    if found is None:
        return
    expiry, shown = found
    now = now or datetime.now(timezone.utc)
    if now >= expiry:
        raise UploadURLRefused(
            f"the presigned URL expired at {expiry.strftime('%Y-%m-%dT%H:%M:%SZ')} ({shown}), "
            f"{int((now - expiry).total_seconds())} s ago; presign a new one"
        )
