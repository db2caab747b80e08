"""The Benchmarks UI: a FastAPI app (embench.ui.app, mounted by plugins/benchmarks_plugin.py
in Airflow's api-server) and the Jinja2 rendering shared with the HTML run report."""
