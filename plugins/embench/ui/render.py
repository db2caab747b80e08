"""Jinja2 rendering (autoescape on for every template) and the bundled Plotly script.

No FastAPI here: the pipeline's report task renders the HTML report with this module too."""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def _json_script(value: Any) -> Markup:
    """JSON for a <script type="application/json"> block: <, >, & and ' escaped as \\u00XX
    so no value can close the script element."""
    text = json.dumps(_finite(value), default=str, allow_nan=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("'", "\\u0027")):
        text = text.replace(char, escaped)
    return Markup(text)


def _finite(value: Any) -> Any:
    """NaN and infinities (not JSON) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,  # every template, whatever its name
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["json_script"] = _json_script
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


@cache
def plotly_js() -> Markup:
    """plotly.min.js from the `plotly` package, ready to inline in a <script> element."""
    text = plotly_path().read_text(encoding="utf-8")
    return Markup(text.replace("</script", "<\\/script"))


def plotly_path() -> Path:
    path = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    if not path.is_file():  # pragma: no cover - a broken plotly install
        raise FileNotFoundError(f"plotly.min.js not found at {path}")
    return path
