"""The Benchmarks entry of the Airflow 3 UI: mounts the embench.ui FastAPI app under
/benchmarks in the api-server and adds a "Benchmarks" navigation entry that shows it in the
UI (an external view with a url_route: rendered inside Airflow's own page). The app itself,
its read-only database access and its authentication live in plugins/embench/ui."""

from __future__ import annotations

from typing import Any, ClassVar

from airflow.plugins_manager import AirflowPlugin

from embench.ui.app import create_app

URL_PREFIX = "/benchmarks"


class BenchmarksPlugin(AirflowPlugin):
    name = "benchmarks"
    fastapi_apps: ClassVar[list[dict[str, Any]]] = [
        {"app": create_app(), "url_prefix": URL_PREFIX, "name": "Embedding benchmarks"}
    ]
    external_views: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "Benchmarks",
            "href": f"{URL_PREFIX}/",
            "url_route": "benchmarks",
            "destination": "nav",
            "category": "browse",
        }
    ]
