"""Launchers: start the server under test and the load client, on a host, as Docker
containers (default) or as local processes (machines without Docker)."""
