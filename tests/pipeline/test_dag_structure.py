"""The DAG parses, and its shape is what the design says: setups paired with teardowns, a
mapped task group per (model, variant), the host pool, timeouts and retries everywhere."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
GROUP = "benchmark"


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags["embedding_benchmark"]


def test_dag_settings(dag, app_config):
    assert dag.schedule == app_config.benchmark.schedule
    assert dag.catchup is False
    assert dag.max_active_runs == 1
    assert {"benchmark", "embeddings"} <= set(dag.tags)
    assert "provision_host" in dag.doc_md


def test_task_graph(dag):
    assert set(dag.task_ids) == {
        "plan",
        "provision_host",
        "release_host",
        "detect_regressions",
        "report",
        "outcome",
        *(
            f"{GROUP}.{t}"
            for t in (
                "prepare_model",
                "ship_to_host",
                "tune_server",
                "start_server",
                "run_benchmark",
                "stop_server",
                "store_results",
            )
        ),
    }
    task = dag.get_task
    assert task(f"{GROUP}.ship_to_host").upstream_task_ids == {
        f"{GROUP}.prepare_model",
        "provision_host",
    }
    # tuned on the host once the model is there, before the benchmark's server starts
    assert task(f"{GROUP}.tune_server").upstream_task_ids == {
        f"{GROUP}.prepare_model",
        f"{GROUP}.ship_to_host",
        "provision_host",
    }
    assert task(f"{GROUP}.start_server").upstream_task_ids == {
        f"{GROUP}.tune_server",
        "provision_host",
    }
    assert f"{GROUP}.tune_server" in task(f"{GROUP}.run_benchmark").upstream_task_ids
    assert task(f"{GROUP}.store_results").upstream_task_ids >= {f"{GROUP}.run_benchmark"}
    # judged once after every group (repetitions pooled), whatever some groups did
    assert task("detect_regressions").upstream_task_ids == {"release_host"}
    assert task("detect_regressions").trigger_rule == "all_done"
    assert task("report").trigger_rule == "all_done"
    assert "detect_regressions" in task("report").upstream_task_ids
    # last, whatever came before: its failure (a failed task, or a regression with
    # fail_on_regression) is the run's, after the verdicts were stored and the report written
    last = task("outcome")
    assert last.upstream_task_ids == {"report"}
    assert last.trigger_rule == "all_done" and not last.downstream_task_ids


def test_every_setup_is_paired_with_its_teardown(dag):
    setups = {t.task_id for t in dag.tasks if t.is_setup}
    teardowns = {t.task_id: t for t in dag.tasks if t.is_teardown}
    assert setups == {"provision_host", f"{GROUP}.start_server"}
    assert set(teardowns) == {"release_host", f"{GROUP}.stop_server"}
    assert "provision_host" in teardowns["release_host"].upstream_task_ids
    assert f"{GROUP}.start_server" in teardowns[f"{GROUP}.stop_server"].upstream_task_ids


def test_the_benchmark_group_is_mapped_over_the_plan(dag):
    group = dag.task_group_dict[GROUP]
    assert type(group).__name__ == "MappedTaskGroup"
    assert "plan" in dag.get_task(f"{GROUP}.prepare_model").upstream_task_ids


def test_host_pool_timeouts_and_retries(dag):
    on_host = {
        f"{GROUP}.{t}"
        for t in ("ship_to_host", "tune_server", "start_server", "run_benchmark", "stop_server")
    }
    for task in dag.tasks:
        assert task.execution_timeout is not None, task.task_id
        assert task.execution_timeout <= timedelta(hours=1), task.task_id
        assert (task.pool == "embench_benchmark_host") == (task.task_id in on_host), task.task_id
    for task_id in (
        f"{GROUP}.prepare_model",
        f"{GROUP}.tune_server",
        f"{GROUP}.start_server",
        "provision_host",
    ):
        task = dag.get_task(task_id)
        assert task.retries >= 2 and task.retry_exponential_backoff, task_id
    assert dag.get_task(f"{GROUP}.run_benchmark").retries >= 1
    # Finish a benchmark before the next server starts on the same host.
    weight = {
        t: dag.get_task(f"{GROUP}.{t}").priority_weight
        for t in ("ship_to_host", "tune_server", "start_server", "run_benchmark", "stop_server")
    }
    assert weight["stop_server"] > weight["run_benchmark"] > weight["start_server"]
    assert weight["start_server"] > weight["tune_server"] > weight["ship_to_host"]


def test_params_validate_the_trigger_form(dag):
    from airflow.sdk.exceptions import ParamValidationError

    params = dag.params
    assert set(params) == {
        "models",
        "runtimes",
        "variants",
        "scenarios",
        "repetitions",
        "provisioner",
        "launcher",
        "fail_on_regression",
        "autotune",
    }
    assert params["models"] == ["all-minilm-l6-v2", "all-mpnet-base-v2"]
    for name, bad in (("launcher", "nope"), ("repetitions", 0), ("models", ["nope"])):
        with pytest.raises(ParamValidationError):
            params.get_param(name).resolve(bad)
    assert params.get_param("variants").resolve(["int8"]) == ["int8"]
    assert params.get_param("runtimes").resolve(["openvino"]) == ["openvino"]
    with pytest.raises(ParamValidationError):
        params.get_param("runtimes").resolve(["tensorrt"])
    with pytest.raises(ParamValidationError):
        params.get_param("autotune").resolve("yes")


def test_each_host_slot_has_its_own_host_pool_and_groups(repo_root, tmp_path, monkeypatch):
    """host.parallel 2 x two instance types: four hosts, each provisioned and released by its
    own setup and teardown, with its own mapped group in its own pool of one."""
    import shutil

    from airflow.dag_processing.dagbag import DagBag

    config_dir = tmp_path / "config"
    shutil.copytree(repo_root / "config", config_dir)
    benchmark = config_dir / "benchmark.yaml"
    text = benchmark.read_text().replace("host:\n", "host:\n  parallel: 2\n", 1)
    types = "  ec2:\n    instance_types: [c7i.large, c7g.large]\n"
    benchmark.write_text(text.replace("  ec2:\n", types, 1))
    monkeypatch.setenv("EMBENCH_CONFIG_DIR", str(config_dir))
    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert bag.import_errors == {}, bag.import_errors
    dag = bag.dags["embedding_benchmark"]
    setups = {t.task_id for t in dag.tasks if t.is_setup}
    assert {s for s in setups if s.startswith("provision_host")} == {
        "provision_host",
        "provision_host_1",
        "provision_host_2",
        "provision_host_3",
    }
    for slot, suffix in enumerate(("", "_1", "_2", "_3")):
        group = f"{GROUP}{suffix}"
        assert type(dag.task_group_dict[group]).__name__ == "MappedTaskGroup"
        pool = f"embench_benchmark_host{suffix}"
        for name in ("ship_to_host", "tune_server", "start_server", "run_benchmark", "stop_server"):
            assert dag.get_task(f"{group}.{name}").pool == pool, (group, name)
        assert dag.get_task(f"{group}.prepare_model").pool != pool
        assert f"provision_host{suffix}" in dag.get_task(f"{group}.ship_to_host").upstream_task_ids
        assert f"targets_of_slot_{slot}" in dag.get_task(f"{group}.prepare_model").upstream_task_ids
        release = dag.get_task(f"release_host{suffix}")
        assert release.is_teardown and f"provision_host{suffix}" in release.upstream_task_ids
        assert f"release_host{suffix}" in dag.get_task("detect_regressions").upstream_task_ids
