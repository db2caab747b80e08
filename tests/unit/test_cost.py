"""Prices and cost: the shipped price table, the loader's errors (file, line, key), where a
host's price comes from, the labels that carry it, and the arithmetic of $ per million."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import pytest

from client.result import INSTANCE_TYPE_LABEL
from embench.config import load_config
from embench.config.loader import AppConfig
from embench.cost import (
    PRICE_LABEL,
    PRICE_LABELS,
    PRICE_SOURCE_LABEL,
    HostPrice,
    host_price,
    price_from_labels,
    price_labels,
    scenario_costs,
    usd_for,
    usd_per_million,
)
from embench.errors import ConfigError
from embench.report import ReportData, markdown
from embench.report.cost import rank_by_cost

PRICES_DOC = "prices.yaml"


def _config(repo_root: Path, tmp_path: Path, edits: dict[str, tuple[str, str]]) -> Path:
    """A copy of the shipped config folder with `file: (old, new)` replaced in each file
    (old "" appends new)."""
    config_dir = tmp_path / "config"
    shutil.copytree(repo_root / "config", config_dir)
    for file, (old, new) in edits.items():
        path = config_dir / file
        text = path.read_text()
        if old:
            assert old in text, f"test case no longer matches the shipped {file}: {old!r}"
            text = text.replace(old, new, 1)
        else:
            text += new
        path.write_text(text)
    return config_dir


def _line(config_dir: Path, file: str, text: str) -> int:
    content = (config_dir / file).read_text()
    return content[: content.index(text)].count("\n") + 1


def test_the_shipped_price_table_is_sourced_and_dated(app_config: AppConfig) -> None:
    table = app_config.prices
    assert table is not None
    assert (table.region, table.currency) == ("us-east-1", "USD")
    # the launch template's default type (terraform/variables.tf) has a price
    assert table.prices["c7i.4xlarge"].usd_per_hour == 0.714
    listed = {s.url: s.as_of for s in table.sources}
    for instance_type, entry in table.prices.items():
        assert entry.source in listed, instance_type
        assert entry.as_of == listed[entry.source], instance_type
        assert entry.usd_per_hour > 0
    assert table.prices["m7g.large"].as_of == date(2026, 6, 17)
    assert app_config.benchmark.cost.usd_per_hour == {}


BAD_PRICES = [
    (  # a price that is not a price
        "  c7i.4xlarge:\n    usd_per_hour: 0.714\n",
        "  c7i.4xlarge:\n    usd_per_hour: -0.714\n",
        "    usd_per_hour: -0.714",
        "prices.c7i.4xlarge.usd_per_hour: input should be greater than 0, got -0.714",
    ),
    (  # a quoted number is a mistake worth reporting
        "  c7i.4xlarge:\n    usd_per_hour: 0.714\n",
        '  c7i.4xlarge:\n    usd_per_hour: "0.714"\n',
        '    usd_per_hour: "0.714"',
        "prices.c7i.4xlarge.usd_per_hour: expected a number, got '0.714'",
    ),
    (  # an unknown key
        "    as_of: 2026-06-17\n    note:",
        "    as_off: 2026-06-17\n    note:",
        "    as_off: 2026-06-17",
        "prices.m7g.large.as_off: unknown key 'as_off' (did you mean 'as_of'?); "
        "expected one of: usd_per_hour, source, as_of, note",
    ),
    (  # not an instance type
        "  c7i.large:\n",
        "  C7i.Large:\n",
        "  C7i.Large:",
        "prices.C7i.Large: string should match pattern '^[a-z][a-z0-9-]*\\.[a-z0-9]+$', "
        "got 'C7i.Large'",
    ),
]


@pytest.mark.parametrize(("old", "new", "at", "message"), BAD_PRICES)
def test_a_bad_price_table_names_file_line_and_key(
    repo_root: Path, tmp_path: Path, old: str, new: str, at: str, message: str
) -> None:
    config_dir = _config(repo_root, tmp_path, {PRICES_DOC: (old, new)})
    with pytest.raises(ConfigError) as caught:
        load_config(config_dir)
    line = _line(config_dir, PRICES_DOC, at)
    assert str(caught.value) == f"{config_dir / PRICES_DOC}:{line}: {message}"


def test_every_price_must_name_a_listed_source(repo_root: Path, tmp_path: Path) -> None:
    old = "  m7i.xlarge:\n    usd_per_hour: 0.2016\n    source: https://c3x.dev/"
    new = "  m7i.xlarge:\n    usd_per_hour: 0.2016\n    source: https://elsewhere.example/"
    config_dir = _config(repo_root, tmp_path, {PRICES_DOC: (old, new)})
    with pytest.raises(ConfigError, match=r"prices.yaml: \(top level\): every price's source"):
        load_config(config_dir)


BAD_COST = [
    (
        "cost:\n  usd_per_hours: {local: 0.5}\n",
        "cost.usd_per_hours: unknown key 'usd_per_hours' (did you mean 'usd_per_hour'?); "
        "expected one of: price_table, usd_per_hour",
    ),
    (
        "cost:\n  usd_per_hour: {c7i.large: 0}\n",
        "cost.usd_per_hour.c7i.large: input should be greater than 0, got 0",
    ),
    (
        "cost:\n  price_table: my-prices.yaml\n",
        "cost.price_table: file not found: {dir}/my-prices.yaml (relative to the config "
        "folder {dir})",
    ),
]


@pytest.mark.parametrize(("added", "message"), BAD_COST)
def test_a_bad_cost_section_names_file_line_and_key(
    repo_root: Path, tmp_path: Path, added: str, message: str
) -> None:
    config_dir = _config(repo_root, tmp_path, {"benchmark.yaml": ("", added)})
    with pytest.raises(ConfigError) as caught:
        load_config(config_dir)
    line = _line(config_dir, "benchmark.yaml", added.splitlines()[1])
    expected = message.replace("{dir}", str(config_dir))
    assert str(caught.value) == f"{config_dir / 'benchmark.yaml'}:{line}: {expected}"


def test_without_the_default_price_table_nothing_is_priced(repo_root: Path, tmp_path: Path) -> None:
    config_dir = _config(repo_root, tmp_path, {})
    (config_dir / PRICES_DOC).unlink()
    config = load_config(config_dir)
    assert config.prices is None
    assert (
        host_price(config, instance_type="c7i.4xlarge", host_name="i-0", provisioner="ec2") is None
    )


def test_where_a_host_price_comes_from(repo_root: Path, tmp_path: Path) -> None:
    overrides = (
        "cost:\n  usd_per_hour:\n    c7g.large: 0.05\n    bench-1: 1.25\n    local: 0.02\n"
        "    i-0abc: 3.0\n"
    )
    config = load_config(_config(repo_root, tmp_path, {"benchmark.yaml": ("", overrides)}))

    def price(instance_type: str | None, host: str, provisioner: str) -> HostPrice | None:
        return host_price(
            config, instance_type=instance_type, host_name=host, provisioner=provisioner
        )

    # an override by instance type comes first, before the host's name and the table
    assert price("c7g.large", "i-0abc", "ec2") == HostPrice(
        0.05, "benchmark.yaml cost.usd_per_hour[c7g.large]"
    )
    # then the host's name (an ssh host; here an instance id too)
    assert price(None, "bench-1", "ssh") == HostPrice(
        1.25, "benchmark.yaml cost.usd_per_hour[bench-1]"
    )
    assert price("c7i.4xlarge", "i-0abc", "ec2") == HostPrice(
        3.0, "benchmark.yaml cost.usd_per_hour[i-0abc]"
    )
    # `local` prices this machine, and only the local provisioner's
    assert price(None, "worker-7", "local") == HostPrice(
        0.02, "benchmark.yaml cost.usd_per_hour[local]"
    )
    assert price(None, "bench-2", "ssh") is None
    # else the table, by instance type, with its source and date
    table = price("c7i.4xlarge", "i-0def", "ec2")
    assert table is not None and table.usd_per_hour == 0.714 and table.as_of == "2026-07-21"
    assert table.source == (
        "prices.yaml: https://github.com/scttfrdmn/starburst/blob/"
        "62e71ff9cc27489664f5bf45c8e3faf4956e639a/R/cost.R (as of 2026-07-21)"
    )
    # a type nobody prices: no price, no error
    assert price("x9z.huge", "i-0def", "ec2") is None


def test_the_labels_carry_the_price_and_read_back() -> None:
    assert PRICE_LABELS == ("instance_type", "price_usd_per_hour", "price_source")
    price = HostPrice(0.0893, "prices.yaml: https://example.org/p (as of 2026-07-21)", "2026-07-21")
    labels = price_labels(price, "c7i.large")
    assert labels == {
        INSTANCE_TYPE_LABEL: "c7i.large",
        PRICE_LABEL: "0.0893",
        PRICE_SOURCE_LABEL: "prices.yaml: https://example.org/p (as of 2026-07-21)",
    }
    back = price_from_labels(labels)
    assert back is not None and (back.usd_per_hour, back.source) == (0.0893, price.source)
    assert price_labels(None, None) == {}
    assert price_labels(None, "c7i.large") == {INSTANCE_TYPE_LABEL: "c7i.large"}
    for bad in ({}, {PRICE_LABEL: "free"}, {PRICE_LABEL: "-1"}, {PRICE_LABEL: "nan"}):
        assert price_from_labels(bad) is None


def test_dollars_per_million_embeddings() -> None:
    # c7i.4xlarge at $0.714/h embedding 250 texts/s: 900,000 embeddings an hour, so a million
    # cost 0.714 / 0.9 = $0.79333...
    assert usd_per_million(0.714, 250.0) == pytest.approx(0.7933333333, rel=1e-9)
    # twice the throughput halves it; twice the price doubles it
    assert usd_per_million(0.714, 500.0) == pytest.approx(0.7933333333 / 2, rel=1e-9)
    assert usd_per_million(1.428, 250.0) == pytest.approx(0.7933333333 * 2, rel=1e-9)
    for missing in ((None, 250.0), (0.714, None), (0.714, 0.0), (0.714, -3.0)):
        assert usd_per_million(*missing) is None
    # the benchmark's own cost: half an hour of that host
    assert usd_for(0.714, 1800.0) == pytest.approx(0.357)
    assert usd_for(None, 1800.0) is None and usd_for(0.714, None) is None


def test_a_search_scenario_is_priced_at_its_peak_too() -> None:
    labels = {
        INSTANCE_TYPE_LABEL: "c7g.xlarge",
        PRICE_LABEL: "0.145",
        PRICE_SOURCE_LABEL: "prices.yaml: https://example.org (as of 2026-07-21)",
    }
    # the peak under the SLO: 50 requests/s of 4 texts each = 200 embeddings/s
    costs = scenario_costs(labels, texts_per_s=180.0, peak_qps=50.0, texts_per_request=4)
    assert costs["peak_texts_per_s"] == 200.0
    assert costs["usd_per_million"] == pytest.approx(0.145 / (180 * 3600) * 1e6, rel=1e-12)
    assert costs["usd_per_million_at_peak"] == pytest.approx(0.145 / 0.72, rel=1e-12)
    row = {"model": "m", "scenario": "search", "runtime": "onnx", "variant": "int8"}
    rows = [{**row, **costs, "texts_per_s": 180.0, "search_over": "rate", "valid": True}]
    (ranking,) = rank_by_cost(rows)
    assert ranking.search and ranking.ranked[0].usd_per_million_at_peak == pytest.approx(
        0.145 / 0.72, rel=1e-12
    )
    text = markdown(ReportData(title="t", rows=rows, verdicts=[], cost=[ranking]))
    header = "| rank | configuration | texts/s | $/hour | $/M embeddings | $/M at peak under SLO |"
    assert header in text
    assert "| 1 | onnx/int8 on c7g.xlarge | 180.0 | 0.145 | 0.2238 | 0.2014 |" in text
