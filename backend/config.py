"""Backend configuration from the environment (FAREGATE_*; DATABASE_URL also accepted unprefixed).

Secrets have development defaults so that `faregate backend` runs out of the box; outside
development those defaults are refused at start, so a production deployment cannot run on a key
that is printed in this file.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fare_core import DEVELOPMENT_SAM_KEY
from protocol.mqtt import DEVELOPMENT_SIGNING_SEED, DEVELOPMENT_UPLINK_MASTER_KEY
from protocol.mqtt.address import for_log

if TYPE_CHECKING:
    from .ledger import ServiceDay

DEV_SECRET = "changethis"
DEV_PAYMENT_SECRET = "changethis-payments"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FAREGATE_", env_file=None, extra="forbid", populate_by_name=True
    )
    #: the process holds the backend's secrets and broker login, so production refuses their
    #: development defaults (False: a station relay, `RelaySettings`)
    holds_backend_secrets: ClassVar[bool] = True

    environment: Literal["development", "test", "production"] = "development"

    # database
    database_url: str = Field(
        default="sqlite+aiosqlite:///./faregate.db",
        validation_alias=AliasChoices("FAREGATE_DATABASE_URL", "DATABASE_URL"),
    )
    database_schema: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")  # PostgreSQL

    # MQTT
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_version: Literal["5", "3.1.1"] = "5"
    mqtt_prefix: str = Field(default="faregate", pattern=r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    # TLS to the broker: on with an mqtts:// URL (port 8883 by default) or when a CA file is given;
    # the broker's certificate is verified against this CA (the system's CAs when unset)
    mqtt_ca_file: str | None = None
    # a city behind station relays: the backend's messages to the gates go as NATS publishes on the
    # cluster, nats://host:port[,...], instead of through mqtt_url (backend/nats_publisher.py)
    publish_nats_url: str = ""
    # TLS to the NATS cluster (workers, relays, the publisher): on with tls:// node URLs; the nodes'
    # certificate is verified against this CA (the system's CAs when unset)
    nats_ca_file: str | None = None

    # ingest
    ingest: bool = True  # run the MQTT ingest inside `faregate backend`
    ingest_group: str = "faregate"  # shared subscription group; "" = plain subscription (amqtt)
    ingest_client_id: str = "faregate-ingest-1"  # fixed, so the broker keeps the session across restarts
    ingest_batch_size: int = Field(default=1000, ge=1, le=20_000)
    ingest_batch_wait_ms: int = Field(default=20, ge=0, le=60_000)  # longest a tap waits for its batch
    ingest_receive_maximum: int = Field(default=10_000, ge=1, le=65_535)  # unacked taps in flight
    # a gap in a gate's sequence still open after this long (resend asked meanwhile) raises an alarm
    ingest_gap_alarm_s: float = Field(default=60.0, gt=0, le=86_400)
    reconcile: bool = True  # re-run fare_core on every tap after it is stored
    # deny-list a phone caught cloned or replayed (counter_reused / balance_jump, at the first reuse);
    # fare_core still lets a deny-listed rider inside the paid area out, charged (docs/ledger.md)
    auto_denylist: bool = True
    # a gate whose status time is further than this from the backend's clock raises one clock_skew
    # alarm an hour (its taps are ordered by the wallet counter whatever its clock says)
    clock_skew_alarm_s: float = Field(default=120.0, gt=0, le=86_400)

    # fare core
    # default: the simulator's development key, so a demo's taps reconcile (refused outside development)
    sam_master_key: str = Field(default=DEVELOPMENT_SAM_KEY.hex(), pattern=r"^[0-9a-fA-F]{32}$")

    # message authentication (docs/security.md): the Ed25519 seed that signs every backend-to-gate
    # message, and the master key each gate's uplink MAC key is diversified from (32 bytes, hex; the
    # `_next` master is also accepted while gates are re-keyed); development defaults refused elsewhere
    downlink_signing_key: str = Field(default=DEVELOPMENT_SIGNING_SEED.hex(), pattern=r"^[0-9a-fA-F]{64}$")
    uplink_master_key: str = Field(default=DEVELOPMENT_UPLINK_MASTER_KEY.hex(), pattern=r"^[0-9a-fA-F]{64}$")
    uplink_master_key_next: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")

    # reports and exports
    service_utc_offset_min: int = Field(default=480, ge=-1439, le=1439)  # local time of the network
    service_day_start_min: int = Field(default=240, ge=0, le=1439)  # the service day starts at 04:00

    # API and security
    admin_username: str = "admin"
    admin_password: str = DEV_SECRET  # the first admin account, created when none exists
    token_ttl_s: int = Field(default=12 * 3600, ge=60)
    max_page_size: int = Field(default=500, ge=1, le=10_000)
    login_attempts_per_minute: int = Field(default=10, ge=1)
    # request bodies (api/limits.py): the large limit only for the fare-table upload with a bearer token,
    # the authenticated one on every other route with a bearer token, the smallest without one and on
    # the routes open to all (/login, the payment webhook)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_authenticated_body_bytes: int = Field(default=64 * 1024, ge=1024)
    max_unauthenticated_body_bytes: int = Field(default=16 * 1024, ge=1024)
    # direct peers (IP addresses or networks) whose X-Forwarded-For is believed; JSON list in the env
    trusted_proxies: list[str] = Field(default_factory=list)

    # commuter top-ups: a payment intent, credited only on the provider's signed confirmation
    payment_webhook_secret: str = DEV_PAYMENT_SECRET  # HMAC-SHA256 key shared with the provider
    # the provider's name in the ledger: its confirmations post from the account payments:<name>
    payment_provider: str = Field(default="provider", pattern=r"^[a-z0-9_\-]{1,40}$")
    payment_webhook_tolerance_s: int = Field(default=300, ge=10, le=3600)  # timestamp skew accepted
    topup_max_fen: int = Field(default=50_000, ge=1, le=100_000_00)  # per top-up (500 yuan)
    topup_max_fen_per_day: int = Field(default=200_000, ge=1)  # per phone, any rolling 24 hours

    @property
    def service_day(self) -> ServiceDay:
        """The network's service day from its two settings (revenue, the board's "today", TIDES, the
        taps' partitions all date by it)."""
        from .ledger import ServiceDay  # ledger loads the tables (SQLAlchemy): only when asked

        return ServiceDay(self.service_utc_offset_min, self.service_day_start_min)

    @model_validator(mode="after")
    def _no_default_secrets(self) -> Settings:
        if self.environment != "development" and self.holds_backend_secrets:
            defaults = (
                ("admin_password", DEV_SECRET),
                ("sam_master_key", DEVELOPMENT_SAM_KEY.hex()),
                ("downlink_signing_key", DEVELOPMENT_SIGNING_SEED.hex()),
                ("uplink_master_key", DEVELOPMENT_UPLINK_MASTER_KEY.hex()),
                ("payment_webhook_secret", DEV_PAYMENT_SECRET),
            )
            left = [f"FAREGATE_{n.upper()}" for n, default in defaults if getattr(self, n) == default]
            if left:  # every one named at once, so an operator fixes them in one go
                raise ValueError(
                    f"{', '.join(left)} still {'has its' if len(left) == 1 else 'have their'} development"
                    f" default; set a secret for environment={self.environment!r}"
                )
            if len(self.admin_password) < 12:
                raise ValueError("FAREGATE_ADMIN_PASSWORD must have at least 12 characters")
        return self

    @model_validator(mode="after")
    def _publish_nats_url_is_a_cluster(self) -> Settings:
        parts = [part.strip() for part in self.publish_nats_url.split(",") if part.strip()]
        if not all(part.startswith(("nats://", "tls://")) for part in parts):
            raise ValueError("FAREGATE_PUBLISH_NATS_URL is nats://host:port[,nats://...], not "
                             f"{for_log(self.publish_nats_url)!r}")
        return self

    @model_validator(mode="after")
    def _mqtt_credentials_outside_development(self) -> Settings:
        """An anonymous backend would mean a broker that lets anyone publish taps and commands."""
        if self.environment != "development" and self.holds_backend_secrets:
            parts = urlsplit(self.mqtt_url if "://" in self.mqtt_url else f"mqtt://{self.mqtt_url}")
            if not ((self.mqtt_username or parts.username) and (self.mqtt_password or parts.password)):
                raise ValueError(
                    "FAREGATE_MQTT_USERNAME and FAREGATE_MQTT_PASSWORD (or user:password in "
                    f"FAREGATE_MQTT_URL) must be set for environment={self.environment!r}"
                )
        return self


class RelaySettings(Settings):
    """A station relay's settings (`faregate relay`): the same fields and environment, without the two
    checks that are about the backend's own secrets and login. A relay holds none of the backend's
    secrets (it checks signatures with the public key), and its logins are in its station and cluster
    URLs, not in FAREGATE_MQTT_URL."""

    holds_backend_secrets: ClassVar[bool] = False


@lru_cache
def get_settings() -> Settings:
    return Settings()
