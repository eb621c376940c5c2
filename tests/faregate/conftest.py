"""The backend's broker fixture (amqtt always, Mosquitto when it runs, the shipped Mosquitto for the
suites in SHIPPED_SUITES), for the simulated gate's tests."""

from tests.backend.conftest import broker, pytest_generate_tests, shipped_mosquitto

__all__ = ["broker", "pytest_generate_tests", "shipped_mosquitto"]
