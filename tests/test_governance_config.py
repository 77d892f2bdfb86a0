"""Tests for governance config: presets, the deep merge, and errors that point at the right file.

A cluster's governance comes from two files (its preset and the config itself), so every error
test checks *which* file the message names, as well as the key path and the fix.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resmesh.config import (
    BalanceName,
    BreakerConfig,
    ConfigError,
    FailoverConfig,
    GovernanceConfig,
    HedgeConfig,
    LimitConfig,
    Mode,
    OperationSettings,
    OutlierConfig,
    SwitchModeName,
    SwitchSettings,
    load_config,
    parse_config,
)
from resmesh.config import presets as presets_module
from resmesh.config.errors import Context
from resmesh.config.governance import GOVERNANCE_KEYS
from resmesh.knobs import knobs
from resmesh.policies.retry import RetryBudget

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "policies"
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
PRESET_NAMES = sorted(path.stem for path in PRESETS.glob("*.yaml"))


def cluster_data(**extra: Any) -> dict[str, Any]:
    """One Redis cluster with two groups; ``extra`` adds or replaces cluster keys."""
    first: object = {"address": "127.0.0.1:6379", "role": "primary"}
    if extra.get("mode") == "sharded":
        first = "127.0.0.1:6379"  # no primary: every node owns a slice of the keys
    cluster: dict[str, Any] = {
        "protocol": "redis",
        "listen": "127.0.0.1:6380",
        "groups": {"dc-a": [first], "dc-b": ["10.0.0.2:6379"]},
        "route": {"dc-a": 100, "dc-b": 0},
    }
    cluster.update(extra)
    return {"clusters": {"feed-cache": cluster}}


def write_config(folder: Path, data: object) -> Path:
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def write_preset(folder: Path, name: str, text: str) -> Path:
    (folder / "policies").mkdir(exist_ok=True)
    path = folder / "policies" / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def governance(data: object, folder: Path | None = None) -> GovernanceConfig:
    source = (folder or ROOT / "examples") / "gateway.yaml"
    return parse_config(data, source).clusters["feed-cache"].governance


def load_error(folder: Path, data: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(folder, data))
    return info.value


def assert_well_formed(error: ConfigError) -> None:
    message = str(error)
    assert message.startswith(error.file)
    assert " — fix: " in message
    assert message.isprintable()
    assert error.fix


# --- the presets -------------------------------------------------------------------------------


def test_bundled_presets_are_the_documented_four() -> None:
    assert PRESET_NAMES == ["cache", "default", "passthrough", "strict-db"]


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_each_preset_loads_and_fits_the_policy_primitives(name: str) -> None:
    settings_ = governance(cluster_data(policy=name))
    assert settings_.preset == name
    # The sections are the policies' own config types (their __post_init__ range checks ran
    # when the loader built them), and the retry budget accepts the failover section's.
    assert isinstance(settings_.breaker, BreakerConfig)
    assert isinstance(settings_.outlier, OutlierConfig)
    assert isinstance(settings_.hedge, HedgeConfig)
    assert isinstance(settings_.failover, FailoverConfig)
    assert isinstance(settings_.limit, LimitConfig)
    RetryBudget(settings_.failover.budget_ratio, settings_.failover.budget_min)


def test_default_preset_spells_out_the_built_in_defaults() -> None:
    assert governance(cluster_data(policy="default")) == GovernanceConfig(preset="default")


def test_no_policy_means_default() -> None:
    config = parse_config(cluster_data(), ROOT / "examples" / "gateway.yaml")
    feed = config.clusters["feed-cache"]
    assert feed.policy is None
    assert feed.governance == GovernanceConfig(preset="default")


def test_cache_preset() -> None:
    settings_ = governance(cluster_data(policy="cache"))
    assert settings_.hedge == HedgeConfig(enabled=True, percentile=90.0, floor=0.010, budget=0.15)
    assert settings_.failover.enabled
    assert settings_.breaker.enabled
    assert settings_.outlier.enabled
    assert settings_.balance is BalanceName.LEAST_LOADED
    assert settings_.limit == LimitConfig()


def test_passthrough_preset_turns_everything_off() -> None:
    settings_ = governance(cluster_data(policy="passthrough"))
    assert not settings_.breaker.enabled
    assert not settings_.outlier.enabled
    assert not settings_.failover.enabled
    assert not settings_.hedge.enabled
    assert settings_.limit == LimitConfig()
    assert settings_.switch == SwitchSettings()
    assert dict(settings_.operations) == {}


def test_strict_db_preset() -> None:
    settings_ = governance(cluster_data(policy="strict-db"))
    assert not settings_.hedge.enabled
    assert not settings_.failover.enabled
    assert settings_.breaker.enabled
    assert settings_.limit.concurrency is not None


SECTIONS: dict[str, type[Any]] = {
    "limit": LimitConfig,
    "breaker": BreakerConfig,
    "outlier": OutlierConfig,
    "failover": FailoverConfig,
    "hedge": HedgeConfig,
    "switch": SwitchSettings,
}


@pytest.mark.parametrize("section", SECTIONS)
def test_one_name_per_knob(section: str) -> None:
    """The default preset spells out every knob of each section, under the attribute's name."""
    preset = yaml.safe_load((PRESETS / "default.yaml").read_text(encoding="utf-8"))
    assert list(preset[section]) == list(knobs(SECTIONS[section]))
    assert set(GOVERNANCE_KEYS) == set(preset)


def test_retry_budget_defaults_are_the_failover_defaults() -> None:
    budget, failover = RetryBudget(), FailoverConfig()
    assert (budget.budget_ratio, budget.budget_min) == (failover.budget_ratio, failover.budget_min)


def test_built_in_default_when_no_preset_folder_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(presets_module, "BUNDLED_PRESETS", tmp_path / "nowhere")
    assert governance(cluster_data(), tmp_path) == GovernanceConfig(preset="default")
    assert governance(cluster_data(policy="default"), tmp_path) == GovernanceConfig(
        preset="default"
    )


def test_bundled_presets_are_package_data_and_the_top_level_folder_shows_them() -> None:
    # An installed wheel holds only the package: presets outside it would be lost.
    bundled = importlib.resources.files("resmesh") / "presets"
    shipped = sorted(
        Path(str(entry)).stem for entry in bundled.iterdir() if entry.name.endswith(".yaml")
    )
    assert shipped == PRESET_NAMES
    assert {"default", "cache", "passthrough", "strict-db"} <= set(shipped)
    assert PRESETS.resolve() == Path(str(bundled)).resolve()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "presets/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["resmesh"]


def test_a_preset_next_to_the_config_wins_over_the_bundled_one(tmp_path: Path) -> None:
    write_preset(tmp_path, "cache", "hedge: {enabled: true, percentile: 50}\n")
    write_preset(tmp_path, "default", "breaker: {enabled: false}\n")
    assert governance(cluster_data(policy="cache"), tmp_path).hedge.percentile == 50.0
    assert not governance(cluster_data(), tmp_path).breaker.enabled
    # Presets it does not replace still come from the bundled folder.
    assert not governance(cluster_data(policy="passthrough"), tmp_path).outlier.enabled


def test_empty_preset_is_all_defaults(tmp_path: Path) -> None:
    write_preset(tmp_path, "blank", "# nothing yet\n")
    assert governance(cluster_data(policy="blank"), tmp_path) == GovernanceConfig(preset="blank")


# --- the deep merge ----------------------------------------------------------------------------


def test_override_mappings_merge_key_by_key() -> None:
    settings_ = governance(cluster_data(policy="cache", governance={"hedge": {"percentile": 99}}))
    assert settings_.hedge == HedgeConfig(enabled=True, percentile=99.0, floor=0.010, budget=0.15)
    assert settings_.failover.enabled  # untouched sections stay the preset's


def test_override_scalars_replace_and_null_means_built_in_default() -> None:
    settings_ = governance(
        cluster_data(
            policy="strict-db",
            governance={
                "breaker": {"slow_call": None, "open_for": "1s"},
                "limit": {"concurrency": None, "rate": 500},
            },
        )
    )
    assert settings_.breaker.slow_call is None
    assert settings_.breaker.open_for == 1.0
    assert settings_.breaker.slow_ratio == 0.8  # still the preset's
    assert settings_.limit == LimitConfig(rate=500.0)


def test_a_null_section_resets_it_to_built_in_defaults() -> None:
    settings_ = governance(cluster_data(policy="cache", governance={"hedge": None}))
    assert settings_.hedge == HedgeConfig()


def test_empty_or_null_governance_changes_nothing() -> None:
    cache = governance(cluster_data(policy="cache"))
    assert governance(cluster_data(policy="cache", governance=None)) == cache
    assert governance(cluster_data(policy="cache", governance={})) == cache


def test_operations_merge_across_spellings(tmp_path: Path) -> None:
    write_preset(tmp_path, "ops", "operations:\n  get: {limit: {rate: 10}}\n  Keys: null\n")
    settings_ = governance(
        cluster_data(
            policy="ops",
            governance={"operations": {"GET": {"hedge": {"enabled": True}}, "mget": None}},
        ),
        tmp_path,
    )
    assert list(settings_.operations) == ["GET", "KEYS", "MGET"]
    get = settings_.operations["GET"]
    assert get.limit == LimitConfig(rate=10.0)
    assert get.hedge is not None and get.hedge.enabled
    assert settings_.operations["KEYS"] == OperationSettings()


def test_deep_merge_rule() -> None:
    """Mappings merge; lists, scalars and null replace; nothing is mutated."""
    context = Context(Path("x.yaml"), {})
    layers = (
        presets_module.Layer(context, (), "", {}),
        presets_module.Layer(context, (), "", {}),
    )
    base = {"a": {"b": 1, "c": [1, 2]}, "d": {"e": 1}, "f": 1}
    top = {"a": {"c": [3], "g": 2}, "d": None, "h": {"i": 1}}
    origin: dict[Any, int] = {(): 0}
    merged = presets_module.deep_merge(base, top, (), layers, origin)
    assert merged == {"a": {"b": 1, "c": [3], "g": 2}, "d": None, "f": 1, "h": {"i": 1}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": {"e": 1}, "f": 1}
    # Who set what, for error messages: 0 is the preset, 1 the cluster.
    assert origin[("a", "b")] == 0
    assert origin[("a", "c")] == 1
    assert origin[("f",)] == 0
    assert origin[("d",)] == 1
    assert ("d", "e") not in origin


def test_operation_hedge_inherits_the_cluster_hedge() -> None:
    settings_ = governance(
        cluster_data(
            policy="cache",
            governance={
                "hedge": {"floor": "20ms"},
                "operations": {"get": {"hedge": {"percentile": 99}}, "set": {"limit": None}},
            },
        )
    )
    assert settings_.operations["GET"].hedge == HedgeConfig(
        enabled=True, percentile=99.0, floor=0.020, budget=0.15
    )
    assert settings_.operations["SET"] == OperationSettings()


def test_operation_settings() -> None:
    settings_ = governance(
        cluster_data(
            governance={
                "operations": {
                    "keys": {"limit": {"concurrency": 1}},
                    "scan": {"idempotent": True},
                    "flushall": {"switch": {"mode": "error"}},
                    "get": {"switch": {"mode": "fallback", "value": ""}},
                }
            }
        )
    )
    assert list(settings_.operations) == ["KEYS", "SCAN", "FLUSHALL", "GET"]
    assert settings_.operations["KEYS"].limit == LimitConfig(concurrency=1)
    assert settings_.operations["SCAN"].idempotent is True
    assert settings_.operations["FLUSHALL"].switch == SwitchSettings(SwitchModeName.ERROR)
    assert settings_.operations["GET"].switch == SwitchSettings(SwitchModeName.FALLBACK, "")


def test_full_override_values() -> None:
    settings_ = governance(
        cluster_data(
            governance={
                "limit": {"rate": 1000, "burst": 1500, "concurrency": 64},
                "breaker": {"error_ratio": 0.25, "slow_call": "250ms", "window": "30s"},
                "outlier": {"base_ejection": "10s", "max_ejection": "1m", "panic_threshold": 0},
                "failover": {"max_attempts": 3, "budget_ratio": 0, "budget_min": 0},
                "hedge": {"enabled": True, "percentile": 99.5, "floor": 0},
                "switch": {"mode": "readonly"},
                "balance": "hash",
                "local_group": "dc-b",
            }
        )
    )
    assert settings_.limit == LimitConfig(1000.0, 1500.0, 64)
    assert settings_.breaker == BreakerConfig(error_ratio=0.25, slow_call=0.25, window=30.0)
    assert settings_.outlier == OutlierConfig(
        base_ejection=10.0, max_ejection=60.0, panic_threshold=0
    )
    assert settings_.failover == FailoverConfig(max_attempts=3, budget_ratio=0.0, budget_min=0)
    assert settings_.hedge == HedgeConfig(enabled=True, percentile=99.5, floor=0.0)
    assert settings_.switch == SwitchSettings(SwitchModeName.READONLY)
    assert settings_.balance is BalanceName.HASH  # allowed in replicated mode too
    assert settings_.local_group == "dc-b"


def test_switch_mode_off_may_be_written_bare() -> None:
    """YAML 1.1 reads a bare ``off`` as false; ``mode: off`` must still mean off."""
    data = yaml.safe_load("mode: off")
    assert data == {"mode": False}
    settings_ = governance(cluster_data(policy="cache", governance={"switch": data}))
    assert settings_.switch == SwitchSettings()


# --- sharded mode ------------------------------------------------------------------------------


def test_sharded_forces_hash() -> None:
    for preset in PRESET_NAMES:
        settings_ = governance(cluster_data(mode="sharded", policy=preset))
        assert settings_.balance is BalanceName.HASH, preset
    settings_ = governance(cluster_data(mode="sharded", governance={"balance": "hash"}))
    assert settings_.balance is BalanceName.HASH


def test_sharded_with_another_balance_says_why(tmp_path: Path) -> None:
    error = load_error(
        tmp_path, cluster_data(mode="sharded", governance={"balance": "round_robin"})
    )
    assert_well_formed(error)
    assert error.file == str(tmp_path / "gateway.yaml")
    assert error.key == "clusters.feed-cache.governance.balance"
    assert error.line is not None
    assert "sharded" in error.problem
    assert "each key lives on one node" in error.problem
    assert "mode: replicated" in error.fix
    assert "remove balance" in error.fix


def test_parsed_mode_is_kept() -> None:
    config = parse_config(cluster_data(mode="sharded"), ROOT / "examples" / "x.yaml")
    assert config.clusters["feed-cache"].mode is Mode.SHARDED


# --- errors in the config file's governance: section -------------------------------------------

CONFIG_ERRORS: list[tuple[dict[str, Any], str, str, str]] = [
    # (governance section, key path under it, problem contains, fix contains)
    ({"breakr": {}}, "breakr", "unknown key 'breakr'", "did you mean 'breaker'?"),
    ({"breaker": {"ratio": 0.5}}, "breaker.ratio", "unknown key", "did you mean"),
    ({"breaker": False}, "breaker", "expected a mapping", "{enabled: false}"),
    ({"breaker": {"enabled": "yes"}}, "breaker.enabled", "expected true or false", "true or false"),
    ({"breaker": {"error_ratio": 1.5}}, "breaker.error_ratio", "out of range above 0 to 1", "0.5"),
    ({"breaker": {"error_ratio": 0}}, "breaker.error_ratio", "out of range above 0", "above 0"),
    ({"breaker": {"error_ratio": "50%"}}, "breaker.error_ratio", "expected a number", "is 0.5"),
    ({"breaker": {"error_ratio": "0.5"}}, "breaker.error_ratio", "a string", "remove the quotes"),
    ({"breaker": {"error_ratio": float("nan")}}, "breaker.error_ratio", "finite", "e.g. 0.5"),
    ({"breaker": {"slow_call": "5"}}, "breaker.slow_call", "expected a duration", "unit"),
    ({"breaker": {"slow_call": 0}}, "breaker.slow_call", "more than zero", "positive"),
    ({"breaker": {"window": "-1s"}}, "breaker.window", "expected a duration", "e.g. 10s"),
    ({"breaker": {"min_calls": 0}}, "breaker.min_calls", "out of range 1..", "number from 1"),
    ({"breaker": {"open_for": "2w"}}, "breaker.open_for", "expected a duration", "ms, s, m, h"),
    (
        {"outlier": {"max_ejection": "10s"}},
        "outlier.max_ejection",
        "shorter than base_ejection",
        "raise max_ejection",
    ),
    ({"outlier": {"max_ejection_percent": 101}}, "outlier.max_ejection_percent", "0..100", "100"),
    ({"outlier": {"panic_threshold": 12.5}}, "outlier.panic_threshold", "whole number", "0 to 100"),
    ({"outlier": {"consecutive_failures": 0}}, "outlier.consecutive_failures", "1..", "from 1"),
    ({"failover": {"max_attempts": 0}}, "failover.max_attempts", "1..10", "from 1 to 10"),
    ({"failover": {"budget_ratio": 2}}, "failover.budget_ratio", "0 to 1", "e.g. 0.2"),
    ({"hedge": {"percentile": 101}}, "hedge.percentile", "0 to 100", "e.g. 90"),
    ({"hedge": {"percentile": "99%"}}, "hedge.percentile", "a number", "without '%'"),
    ({"hedge": {"floor": "10 ms"}}, "hedge.floor", "expected a duration", "e.g. 10ms"),
    ({"hedge": {"budget": -0.1}}, "hedge.budget", "0 to 1", "e.g. 0.15"),
    ({"limit": {"rate": 0}}, "limit.rate", "refuse every call", "rate: null"),
    ({"limit": {"rate": -5}}, "limit.rate", "out of range above 0", "e.g. 1000"),
    ({"limit": {"burst": 10}}, "limit.burst", "burst without rate", "add rate"),
    ({"limit": {"rate": 10, "burst": 0.5}}, "limit.burst", "out of range 1 to", "e.g. 2000"),
    ({"limit": {"concurrency": 1.5}}, "limit.concurrency", "whole number", "from 1"),
    ({"limit": 100}, "limit", "expected a mapping", "rate: 1000"),
    ({"balance": "round-robin"}, "balance", "expected one of", "did you mean 'round_robin'?"),
    ({"balance": "p2c"}, "balance", "expected one of", "least_loaded"),
    ({"switch": {"mode": "fallback"}}, "switch.mode", "needs a value", "add value"),
    ({"switch": {"mode": "miss", "value": "x"}}, "switch.value", "only used by", "remove value"),
    ({"switch": {"mode": True}}, "switch.mode", "expected one of", "use one of"),
    ({"switch": {"mode": "fallback", "value": 0}}, "switch.value", "a string", "quote it"),
    ({"switch": {"mode": "degrade"}}, "switch.mode", "expected one of", "use one of"),
    ({"local_group": "dc-c"}, "local_group", "not one of the cluster's groups", "did you mean"),
    ({"local_group": "mars"}, "local_group", "dc-a, dc-b", "local_group: dc-a"),
    ({"operations": ["GET"]}, "operations", "expected a mapping", "GET:"),
    ({"operations": {"GET": {"limt": {}}}}, "operations.GET.limt", "unknown key", "'limit'"),
    ({"operations": {"get": {"hedge": 1}}}, "operations.get.hedge", "a mapping", "{enabled"),
    ({"operations": {"GET": {"idempotent": 1}}}, "operations.GET.idempotent", "true or false", ""),
    ({"operations": {" GET": {}}}, "operations. GET", "not a valid operation", "e.g. GET"),
    ({"operations": {"get": {}, "GET": {}}}, "operations.GET", "also listed as 'get'", "keep one"),
    ({"operations": {"GTE": {}}}, "operations.GTE", "not a Redis command", "did you mean 'GET'"),
    ({"operations": {"nosuchcmd": {}}}, "operations.nosuchcmd", "not a Redis command", "GET"),
    (
        {"operations": {"SET": {"switch": {"mode": "fallback"}}}},
        "operations.SET.switch.mode",
        "",
        "",
    ),
]


@pytest.mark.parametrize(("section", "key", "problem", "fix"), CONFIG_ERRORS)
def test_config_errors_name_file_key_and_fix(
    tmp_path: Path, section: dict[str, Any], key: str, problem: str, fix: str
) -> None:
    error = load_error(tmp_path, cluster_data(governance=section))
    assert_well_formed(error)
    assert error.file == str(tmp_path / "gateway.yaml")
    assert error.key == f"clusters.feed-cache.governance.{key}"
    assert error.line is not None
    assert problem in error.problem
    assert fix in error.fix
    assert "preset" not in error.problem  # the cluster's own section: no preset to blame


def test_governance_must_be_a_mapping(tmp_path: Path) -> None:
    error = load_error(tmp_path, cluster_data(governance=["breaker"]))
    assert error.key == "clusters.feed-cache.governance"
    assert "expected a mapping" in error.problem


def test_error_line_points_at_the_key(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "clusters:\n"
        "  feed-cache:\n"
        "    protocol: redis\n"
        "    listen: 127.0.0.1:6380\n"
        "    groups: {dc-a: [127.0.0.1:6379]}\n"
        "    governance:\n"
        "      operations:\n"
        "        get:\n"
        "          limit: {rate: -1}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 9
    assert info.value.key == "clusters.feed-cache.governance.operations.get.limit.rate"


# --- unknown presets and errors inside preset files --------------------------------------------


def test_unknown_preset_lists_the_available_ones(tmp_path: Path) -> None:
    write_preset(tmp_path, "mine", "{}\n")
    error = load_error(tmp_path, cluster_data(policy="redis-cache"))
    assert_well_formed(error)
    assert error.file == str(tmp_path / "gateway.yaml")
    assert error.key == "clusters.feed-cache.policy"
    assert error.line is not None
    assert "unknown preset 'redis-cache'" in error.problem
    assert str(tmp_path / "policies") in error.problem
    assert "cache, default, mine, passthrough, strict-db" in error.fix
    assert "redis-cache.yaml" in error.fix


def test_unknown_preset_suggests_a_close_name(tmp_path: Path) -> None:
    error = load_error(tmp_path, cluster_data(policy="cahce"))
    assert error.fix.startswith("did you mean 'cache'?")


def test_policy_name_is_validated(tmp_path: Path) -> None:
    error = load_error(tmp_path, cluster_data(policy="../etc/passwd"))
    assert error.key == "clusters.feed-cache.policy"
    assert "not a valid policy name" in error.problem


PRESET_ERRORS: list[tuple[str, str, int, str, str]] = [
    # (preset text, key path in the preset, line, problem contains, fix contains)
    ("breaker:\n  error_ratio: 5\n", "breaker.error_ratio", 2, "out of range", "0.5"),
    ("hedge:\n  enabled: true\n  flor: 10ms\n", "hedge.flor", 3, "unknown key", "'floor'"),
    ("limits: {}\n", "limits", 1, "unknown key 'limits'", "did you mean 'limit'?"),
    (
        "operations:\n  GET:\n    hedge: {budget: 3}\n",
        "operations.GET.hedge.budget",
        3,
        "0 to 1",
        "",
    ),
    ("operations:\n  get: {}\n  Get: {}\n", "operations.Get", 3, "also listed as", "keep one"),
    ("switch: {mode: fallback}\n", "switch.mode", 1, "needs a value", "add value"),
    (
        "local_group: dc-z\n",
        "local_group",
        1,
        "not one of the cluster's groups",
        "under clusters.feed-cache.governance",
    ),
    ("- breaker\n", "", 0, "expected a mapping", "e.g."),
]


@pytest.mark.parametrize(("text", "key", "line", "problem", "fix"), PRESET_ERRORS)
def test_preset_errors_name_the_preset_file(
    tmp_path: Path, text: str, key: str, line: int, problem: str, fix: str
) -> None:
    preset = write_preset(tmp_path, "broken", text)
    error = load_error(tmp_path, cluster_data(policy="broken"))
    assert_well_formed(error)
    assert error.file == str(preset)
    assert error.key == (key or None)
    assert error.line == (line or None)
    assert problem in error.problem
    assert fix in error.fix
    assert "(preset 'broken', used by clusters.feed-cache)" in error.problem


def test_preset_yaml_syntax_error_names_the_preset(tmp_path: Path) -> None:
    preset = write_preset(tmp_path, "broken", "breaker: {enabled: true\n")
    error = load_error(tmp_path, cluster_data(policy="broken"))
    assert error.file == str(preset)
    assert "YAML syntax error" in error.problem
    assert error.line is not None


def test_preset_duplicate_key_is_refused(tmp_path: Path) -> None:
    preset = write_preset(tmp_path, "twice", "hedge: {}\nhedge: {}\n")
    error = load_error(tmp_path, cluster_data(policy="twice"))
    assert error.file == str(preset)
    assert error.line == 2
    assert "appears twice" in error.problem


def test_merged_errors_blame_the_file_that_set_the_value(tmp_path: Path) -> None:
    preset = write_preset(tmp_path, "fb", "switch: {mode: fallback, value: 'n/a'}\n")
    # The cluster switches mode but keeps the preset's value: the value is what is wrong now,
    # and it lives in the preset; the fix says how to drop it from the cluster's side.
    error = load_error(tmp_path, cluster_data(policy="fb", governance={"switch": {"mode": "miss"}}))
    assert error.file == str(preset)
    assert error.key == "switch.value"
    assert "value: null" in error.fix
    # ...and writing value: null from the cluster's side fixes it.
    settings_ = governance(
        cluster_data(policy="fb", governance={"switch": {"mode": "miss", "value": None}}), tmp_path
    )
    assert settings_.switch == SwitchSettings(SwitchModeName.MISS)


def test_merged_ejection_times_blame_the_later_edit(tmp_path: Path) -> None:
    write_preset(tmp_path, "short", "outlier: {max_ejection: 1m}\n")
    error = load_error(
        tmp_path, cluster_data(policy="short", governance={"outlier": {"base_ejection": "2m"}})
    )
    assert error.file == str(tmp_path / "gateway.yaml")
    assert error.key == "clusters.feed-cache.governance.outlier.base_ejection"


def test_preset_local_group_is_checked_per_cluster(tmp_path: Path) -> None:
    write_preset(tmp_path, "dc-b-first", "local_group: dc-b\n")
    assert governance(cluster_data(policy="dc-b-first"), tmp_path).local_group == "dc-b"
    data = cluster_data(policy="dc-b-first")
    data["clusters"]["feed-cache"]["groups"] = {"dc-a": ["127.0.0.1:6379"]}
    data["clusters"]["feed-cache"]["route"] = {"dc-a": 100}
    error = load_error(tmp_path, data)
    assert error.file.endswith("dc-b-first.yaml")
    assert "used by clusters.feed-cache" in error.problem


def test_preset_balance_yields_to_sharding_but_the_clusters_own_does_not(tmp_path: Path) -> None:
    write_preset(tmp_path, "rr", "balance: round_robin\n")
    assert governance(cluster_data(policy="rr"), tmp_path).balance is BalanceName.ROUND_ROBIN
    sharded = governance(cluster_data(policy="rr", mode="sharded"), tmp_path)
    assert sharded.balance is BalanceName.HASH
    error = load_error(
        tmp_path, cluster_data(policy="rr", mode="sharded", governance={"balance": "random"})
    )
    assert error.key == "clusters.feed-cache.governance.balance"


def test_preset_is_read_once_per_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_preset(tmp_path, "shared", "hedge: {enabled: true}\n")
    reads: list[Path] = []
    original = presets_module.read_text

    def counting(source: Path, missing: str, missing_fix: str) -> str:
        reads.append(source)
        return original(source, missing, missing_fix)

    monkeypatch.setattr(presets_module, "read_text", counting)
    data = cluster_data(policy="shared")
    data["clusters"]["other"] = {
        "protocol": "redis",
        "listen": "127.0.0.1:6381",
        "groups": {"dc-a": ["127.0.0.1:6382"]},
        "policy": "shared",
    }
    config = load_config(write_config(tmp_path, data))
    assert all(c.governance.hedge.enabled for c in config.clusters.values())
    assert reads.count(tmp_path / "policies" / "shared.yaml") == 1


# --- objects -----------------------------------------------------------------------------------


def test_governance_objects_are_frozen_slotted_and_read_only() -> None:
    settings_ = governance(cluster_data(governance={"operations": {"get": {"limit": {"rate": 1}}}}))
    for cls in (
        LimitConfig,
        BreakerConfig,
        OutlierConfig,
        FailoverConfig,
        HedgeConfig,
        SwitchSettings,
        OperationSettings,
        GovernanceConfig,
    ):
        assert "__slots__" in vars(cls), cls
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings_.breaker = BreakerConfig()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings_.operations["GET"].limit.rate = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings_.operations["SET"] = OperationSettings()  # type: ignore[index]
    with pytest.raises(TypeError):
        GovernanceConfig().operations["GET"] = OperationSettings()  # type: ignore[index]


# --- the quickstart's commented example --------------------------------------------------------


def test_quickstart_uses_the_cache_preset() -> None:
    feed = load_config(QUICKSTART).clusters["feed-cache"]
    assert feed.policy == "cache"
    assert feed.governance == governance(cluster_data(policy="cache"))


def test_quickstart_commented_governance_example_is_valid(tmp_path: Path) -> None:
    """Uncommenting the documented ``governance:`` block gives a valid config."""
    lines = QUICKSTART.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "# governance:")
    indent = lines[start].index("#")
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not re.match(rf"^ {{{indent}}}#   ", line):
            break
        block.append(line)
    uncommented = [line[:indent] + line[indent + 2 :] for line in block]
    text = "\n".join(lines[:start] + uncommented + lines[start + len(block) :]) + "\n"
    path = tmp_path / "quickstart.yaml"
    path.write_text(text, encoding="utf-8")
    # The copy lives elsewhere, so presets come from the bundled folder, as for the original.
    feed = load_config(path).clusters["feed-cache"]
    settings_ = feed.governance
    assert settings_.preset == "cache"
    assert settings_.limit == LimitConfig(rate=50000.0, concurrency=1024)
    assert settings_.local_group == "dc-a"
    assert settings_.operations["KEYS"].limit == LimitConfig(concurrency=1)
    assert settings_.operations["GET"].hedge == HedgeConfig(
        enabled=True, percentile=99.0, floor=0.010, budget=0.15
    )
    assert settings_.switch == SwitchSettings(SwitchModeName.MISS)


# --- hypothesis: junk under governance: (or in a preset) only raises ConfigError -------------

_GOVERNANCE_WORDS = [
    *GOVERNANCE_KEYS,
    *knobs(BreakerConfig),
    *knobs(OutlierConfig),
    *knobs(FailoverConfig),
    *knobs(HedgeConfig),
    "rate",
    "burst",
    "concurrency",
    "mode",
    "value",
    "idempotent",
    "GET",
    "get",
    "Get",
]
_VALUES = [
    *(member.value for member in BalanceName),
    *(member.value for member in SwitchModeName),
    "dc-a",
    "dc-z",
    "10ms",
    "5s",
    "50%",
    "0.5",
    "",
]
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from(_VALUES)
)
_keys = st.sampled_from(_GOVERNANCE_WORDS) | st.text(max_size=6) | st.integers() | st.none()
_junk = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_keys, children, max_size=5),
    max_leaves=20,
)
# Mostly well-shaped: known sections holding junk, so the value validators are reached.
_shaped = st.dictionaries(
    st.sampled_from(GOVERNANCE_KEYS),
    st.dictionaries(st.sampled_from(_GOVERNANCE_WORDS), _junk, max_size=4) | _junk,
    max_size=5,
)


def _check(data: object, policy: str | None, mode: str) -> None:
    source = ROOT / "examples" / "fuzz.yaml"
    extra: dict[str, Any] = {"governance": data, "mode": mode}
    if policy is not None:
        extra["policy"] = policy
    try:
        config = parse_config(cluster_data(**extra), source)
    except ConfigError as error:
        assert_well_formed(error)
        if error.file == str(source):
            assert error.key is not None
            assert error.key.startswith("clusters.feed-cache.")
    else:
        assert isinstance(config.clusters["feed-cache"].governance, GovernanceConfig)


@given(
    _shaped | _junk,
    st.sampled_from([None, *PRESET_NAMES]),
    st.sampled_from(["replicated", "sharded"]),
)
@settings(max_examples=400, deadline=None)
def test_junk_under_governance_only_raises_config_error(
    data: object, policy: str | None, mode: str
) -> None:
    _check(data, policy, mode)


@given(_shaped | _junk, _shaped | _junk)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_junk_preset_under_junk_override_only_raises_config_error(
    tmp_path_factory: pytest.TempPathFactory, preset: object, override: object
) -> None:
    folder = tmp_path_factory.getbasetemp() / "fuzz-presets"
    folder.mkdir(exist_ok=True)
    write_preset(folder, "fuzz", yaml.safe_dump(preset, allow_unicode=True))
    try:
        config = parse_config(cluster_data(policy="fuzz", governance=override), folder / "x.yaml")
    except ConfigError as error:
        assert_well_formed(error)
        assert error.file in (str(folder / "x.yaml"), str(folder / "policies" / "fuzz.yaml"))
    else:
        assert config.clusters["feed-cache"].governance.preset == "fuzz"
