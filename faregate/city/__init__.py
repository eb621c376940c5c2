"""A city, not a station (issue 16), composed from real engines: station servers and downlink
(station*.py, downlink*.py), the central broker cluster's launchers (cluster.py) and several ingest
workers (workers.py). Composition only: it starts and wires processes; the ingest is backend/ingest/."""
