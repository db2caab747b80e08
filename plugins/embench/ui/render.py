"""The UI's Jinja2 environment: its pages' templates, then the report's (base.html and the
report's sections, which the pages share), rendered as the report renders them."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment

from embench.report.render import make_environment

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


@cache
def environment() -> Environment:
    return make_environment(TEMPLATES_DIR)


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)
