"""`faregate relay`'s configuration: a relay at a station holds none of the backend's secrets, and outside
development it must be told the backend's public key, against which it checks the state it hands down."""

from __future__ import annotations

import argparse

import pytest

from backend import relay_cli
from protocol.mqtt import DEVELOPMENT_PUBLIC_KEY, Signer

pytestmark = pytest.mark.security

OTHER = Signer(b"\x05" * 32).public_key


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    relay_cli.add_arguments(parser)
    return parser.parse_args(["--station", "mqtt://faregate-relay:pw@127.0.0.1:1", "--nats",
                              "nats://127.0.0.1:2", *argv])


def test_in_production_a_relay_needs_the_backend_s_public_key_and_none_of_its_secrets(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FAREGATE_ENVIRONMENT", "production")  # and no backend secret in the environment
    monkeypatch.delenv(relay_cli.KEYS_ENV, raising=False)
    assert relay_cli.run(parse()) == 2
    said = capsys.readouterr().out
    assert "--backend-key" in said and "FAREGATE_ADMIN_PASSWORD" not in said
    settings, environment = relay_cli.relay_settings("city")
    assert (settings.mqtt_prefix, environment) == ("city", "production")
    verifier = relay_cli._backend_keys([OTHER.hex()], environment)
    assert verifier is not None and len(verifier.keys) == 1


@pytest.mark.parametrize("key", ["zz", "ab" * 31, "ab" * 33])
def test_a_key_that_is_not_an_ed25519_public_key_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="64 hex digits"):
        relay_cli._backend_keys([key], "production")


def test_in_development_the_relay_checks_against_the_settings_own_key() -> None:
    assert relay_cli._backend_keys([], "development") is None  # StationRelay derives it from the settings
    both = relay_cli._backend_keys([DEVELOPMENT_PUBLIC_KEY.hex(), OTHER.hex()], "development")
    assert both is not None and len(both.keys) == 2  # a key rotation: the current and the next


def test_in_production_the_development_key_is_refused_as_the_gates_refuse_it() -> None:
    """Its seed is public: a relay trusting it would hand down anyone's forgeries (the gates' own rule,
    protocol.mqtt.auth.backend_public_keys)."""
    with pytest.raises(ValueError, match="development signing key is refused"):
        relay_cli._backend_keys([DEVELOPMENT_PUBLIC_KEY.hex()], "production")
    with pytest.raises(ValueError, match="two during a rotation"):
        relay_cli._backend_keys([OTHER.hex()] * 3, "production")
