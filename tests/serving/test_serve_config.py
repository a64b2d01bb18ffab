"""One home per serving default: cdd-serve's flags, the batcher and the service limits read ServeConfig."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from serving.batcher import DynamicBatcher
from serving.config import ServeConfig
from serving.server import _config, _parser, create_server
from serving.service import ServiceLimits


def test_cdd_serve_flags_default_to_serve_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CDD_SERVE_TOKEN", raising=False)
    monkeypatch.delenv("CDD_SERVE_READ_TOKEN", raising=False)
    config = _config(_parser().parse_args(["--bundle", "b", "--index", "i"]))
    assert config == ServeConfig(bundle=Path("b"), index=Path("i"))


def test_flags_override_and_are_typed_by_serve_config() -> None:
    args = _parser().parse_args(["--bundle", "b", "--index", "i", "--max-batch", "4", "--max-wait-ms", "0.5",
                                 "--max-message-mb", "2", "--index-threads", "0"])
    config = _config(args)
    assert (config.max_batch, config.max_wait_ms, config.max_message_bytes, config.index_threads) == (
        4, 0.5, 2 * 1024 * 1024, 0)
    with pytest.raises(ValueError, match="--max-k must be >= 1, got 0"):
        _config(_parser().parse_args(["--bundle", "b", "--index", "i", "--max-k", "0"]))


def test_components_take_their_defaults_from_serve_config() -> None:
    limits = ServiceLimits()
    assert (limits.max_k, limits.max_pixels, limits.max_queries, limits.max_items) == (
        ServeConfig.max_k, ServeConfig.max_pixels, ServeConfig.max_queries, ServeConfig.max_items)
    with DynamicBatcher(lambda images: images) as batcher:
        assert batcher.max_batch == ServeConfig.max_batch
        assert batcher.stats().max_wait_ms == ServeConfig.max_wait_ms
    server_defaults = inspect.signature(create_server).parameters
    for name in ("host", "max_workers", "max_message_bytes"):
        assert server_defaults[name].default == getattr(ServeConfig, name)
    assert {f.name for f in dataclasses.fields(ServeConfig) if f.default is dataclasses.MISSING} == {"bundle", "index"}


def test_overload_and_observability_flags() -> None:
    args = _parser().parse_args(["--bundle", "b", "--index", "i", "--max-concurrent-rpcs", "8", "--max-queue-images",
                                 "64", "--max-deadline-s", "5", "--instances", "2", "--watchdog-s", "0",
                                 "--metrics-port", "0", "--log-format", "json"])
    config = _config(args)
    assert (config.max_concurrent_rpcs, config.max_queue_images, config.max_deadline_s, config.instances,
            config.watchdog_s, config.metrics_port, config.log_format) == (8, 64, 5.0, 2, 0.0, 0, "json")
    server_defaults = inspect.signature(create_server).parameters
    for name in ("max_concurrent_rpcs", "max_deadline_s"):
        assert server_defaults[name].default == getattr(ServeConfig, name)
    with pytest.raises(ValueError, match="must be below --rpc-threads"):
        ServeConfig(bundle=Path("b"), index=Path("i"), max_concurrent_rpcs=40, max_workers=40)
    with pytest.raises(ValueError, match=r"--max-queue-images \(8\) must be >= --max-batch \(16\)"):
        ServeConfig(bundle=Path("b"), index=Path("i"), max_queue_images=8)
    with pytest.raises(ValueError, match="--log-format must be text or json"):
        ServeConfig(bundle=Path("b"), index=Path("i"), log_format="xml")
