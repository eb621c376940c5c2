"""A broker's address from an MQTT URL: mqtt://[user:password@]host[:port], mqtts:// for TLS.

The one reading of such a URL for both ends: gate/config.py (a gate's `mqtt.url`) and backend/mqtt.py
(`FAREGATE_MQTT_URL`). The user name and password are percent-decoded; an empty one counts as none.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

#: The URL schemes understood, and whether each means TLS.
SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}
PORT = 1883
TLS_PORT = 8883


class NotAnMqttUrl(ValueError):
    """Another scheme, or no host (a bad port raises urllib's own ValueError)."""


@dataclass(frozen=True)
class MqttUrl:
    host: str
    port: int | None  # None when the URL names none: the default depends on whether TLS is used
    username: str | None
    password: str | None
    tls: bool  # the scheme asks for TLS (mqtts://, ssl://)

    def port_or_default(self, tls: bool | None = None) -> int:
        """The port named, else 8883 with TLS (the scheme's, unless `tls` says otherwise), else 1883."""
        return self.port or (TLS_PORT if (self.tls if tls is None else tls) else PORT)


def parse_mqtt_url(url: str) -> MqttUrl:
    """Read `url`: NotAnMqttUrl for another scheme or no host, ValueError for a bad port (neither message
    repeats the URL, which may hold a password)."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise NotAnMqttUrl("not an MQTT URL: expected mqtt://host:port or mqtts://host:port")
    return MqttUrl(
        host=parts.hostname,
        port=parts.port or None,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=SCHEMES[parts.scheme],
    )


def for_log(urls: str) -> str:
    """`urls` (one, or several comma-separated: a cluster's nodes) as a log line may show them: each
    password replaced by `***`. The backend's and relays' broker URLs carry their login."""
    shown = []
    for url in urls.split(","):
        parts = urlsplit(url.strip())
        if parts.password is not None:
            user = parts.username or ""
            host = parts.netloc.rsplit("@", 1)[1]
            url = parts._replace(netloc=f"{user}:***@{host}").geturl()
        shown.append(url)
    return ",".join(shown)
