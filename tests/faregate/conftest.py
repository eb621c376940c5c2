"""The backend's broker fixture (amqtt always, Mosquitto when it runs), for the simulated gate's tests."""

from tests.backend.conftest import broker

__all__ = ["broker"]
