"""Jinja2 rendering for the report (autoescape on for every template) and the Plotly script
its charts need. No web framework here: the pipeline's report task and `embench report`
render with this module, and the UI builds its own environment on it (`make_environment`
with its templates before the report's)."""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from embench.report import text

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
# What the templates call to show a figure (the same functions as the Markdown report).
FORMATTERS = {
    name: getattr(text, name)
    for name in ("cell", "figure", "parity_text", "usd_text", "value_text", "ratio_text")
}


def _json_script(value: Any) -> Markup:
    """JSON for a <script type="application/json"> block: <, >, & and ' escaped as \\u00XX
    so no value can close the script element."""
    dumped = json.dumps(_finite(value), default=str, allow_nan=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("'", "\\u0027")):
        dumped = dumped.replace(char, escaped)
    return Markup(dumped)


def _finite(value: Any) -> Any:
    """NaN and infinities (not JSON) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def make_environment(*template_dirs: Path) -> Environment:
    """An environment over `template_dirs` (searched in order) and the report's templates."""
    env = Environment(
        loader=FileSystemLoader([*template_dirs, TEMPLATES_DIR]),
        autoescape=True,  # every template, whatever its name
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["json_script"] = _json_script
    env.globals.update(FORMATTERS)
    return env


@cache
def environment() -> Environment:
    return make_environment()


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


# Plotly's basic bundle (scatter, bar, pie: the traces the templates draw), a quarter of the
# full plotly.min.js: npm's plotly.js-basic-dist-min 4.1.1 (the plotly.js of the pinned
# `plotly` package), sha256
# 99784e3abfb07b142a15e521a439e6d9addceadb3f79553fd24c72774f0649ba; MIT, its license beside it.
PLOTLY_JS = Path(__file__).resolve().parent / "static" / "plotly-basic.min.js"


@cache
def plotly_js() -> Markup:
    """The Plotly bundle, ready to inline in a <script> element."""
    script = plotly_path().read_text(encoding="utf-8")
    return Markup(script.replace("</script", "<\\/script"))


def plotly_path() -> Path:
    """The Plotly bundle the report inlines and the UI serves."""
    return PLOTLY_JS
