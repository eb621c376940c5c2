"""The REST API: operator endpoints (roles viewer/operator/admin) and the commuter self-service."""
