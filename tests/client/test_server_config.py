"""The server config a result is keyed by (client.runner.server_config): settings added after
histories began leave the key unchanged at their old value, and change it otherwise."""

from __future__ import annotations

from client.result import stable_hash
from client.runner import server_config

INFO = {
    "runtime": "onnx",
    "threads": 1,
    "workers": 2,
    "spinning": False,
    "batching": {"max_batch_tokens": 8192},
    "max_seq_length": 256,
    "status": "ready",  # not configuration
}
BEFORE = {k: v for k, v in INFO.items() if k != "status"}  # what a result held before


def test_new_settings_at_their_old_values_keep_the_key():
    for added in (
        {"inter_op_threads": None, "graph_optimization_level": "all"},
        {"inter_op_threads": None, "graph_optimization_level": None},  # not the runtime's
        {},  # an older server
    ):
        assert stable_hash(server_config({**INFO, **added})) == stable_hash(BEFORE), added


def test_tuned_settings_change_the_key():
    for added in ({"inter_op_threads": 2}, {"graph_optimization_level": "basic"}):
        config = server_config({**INFO, **added})
        assert config == {**BEFORE, **added}
        assert stable_hash(config) != stable_hash(BEFORE)
    assert stable_hash(server_config({**INFO, "workers": 1})) != stable_hash(BEFORE)
