"""The load generator (aiohttp) and the versioned result schema. Imports nothing from Airflow."""
