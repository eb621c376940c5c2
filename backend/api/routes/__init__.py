"""One router per resource, collected in api.main."""
