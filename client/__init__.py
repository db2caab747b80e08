"""The load generator (aiohttp) and the versioned result schema. Imports nothing from Airflow."""

__version__ = "0.1.0"
