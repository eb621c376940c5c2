"""Deployment files: the Mosquitto configuration gates and the backend authenticate against."""
