"""Registry: registration, creation, close-match errors, and entry-point discovery with broken plugins."""

from __future__ import annotations

import sys
import types
from importlib import metadata

import pytest

from edgesplit import registry
from edgesplit.errors import PluginError


@pytest.fixture()
def clean_registry(monkeypatch: pytest.MonkeyPatch):
    registry.load_plugins()  # the real plugins, imported once per process, stay registered after the test
    saved = {k: dict(v) for k, v in registry._components.items()}
    saved_origins = dict(registry._origins)
    saved_loaded = set(registry._loaded_entry_points)
    saved_broken = list(registry._broken)
    registry._reset_for_tests()
    yield
    for k in registry._components:
        registry._components[k].clear()
        registry._components[k].update(saved[k])
    registry._origins.clear()
    registry._origins.update(saved_origins)
    registry._reset_for_tests()
    registry._loaded_entry_points.update(saved_loaded)
    registry._broken.extend(saved_broken)
    registry._discovered = True


def _fake_entry_points(monkeypatch: pytest.MonkeyPatch, eps: list[metadata.EntryPoint]) -> None:
    monkeypatch.setattr(registry, "_entry_points", lambda: eps)


def test_register_and_create_drops_none(clean_registry) -> None:
    @registry.register("codec", "toy-codec")
    def toy(a: int = 1, b: int = 2) -> tuple[int, int]:
        return a, b

    assert registry.create("codec", "toy-codec", a=5, b=None) == (5, 2)
    assert "toy-codec" in registry.available("codec")


def test_duplicate_rejected_unless_override(clean_registry) -> None:
    @registry.register("codec", "dup")
    def one() -> int:
        return 1

    with pytest.raises(PluginError, match="already registered"):
        @registry.register("codec", "dup")
        def two() -> int:
            return 2

    @registry.register("codec", "dup", override=True)
    def three() -> int:
        return 3

    assert registry.create("codec", "dup") == 3


def test_unknown_name_lists_close_matches(clean_registry) -> None:
    @registry.register("backbone", "toynet_100")
    def toynet() -> None:
        return None

    with pytest.raises(PluginError, match="did you mean 'toynet_100'"):
        registry.get("backbone", "toynet_10")


def test_unknown_kind_and_bad_params(clean_registry) -> None:
    with pytest.raises(PluginError, match="unknown component kind"):
        registry.available("nope")

    @registry.register("codec", "strict")
    def strict(a: int) -> int:
        return a

    with pytest.raises(PluginError, match="cannot build codec 'strict'"):
        registry.create("codec", "strict", b=1)


def test_entry_points_are_lazy_and_broken_plugin_does_not_hide_others(clean_registry, monkeypatch) -> None:
    good = types.ModuleType("es_fake_good")
    exec("from edgesplit.registry import register\n@register('backbone', 'fake_net')\ndef fake_net():\n    return 'net'",
         good.__dict__)
    monkeypatch.setitem(sys.modules, "es_fake_good", good)
    eps = [
        metadata.EntryPoint("broken", "es_fake_missing_module", registry.ENTRY_POINT_GROUP),
        metadata.EntryPoint("good", "es_fake_good", registry.ENTRY_POINT_GROUP),
    ]
    calls = []
    monkeypatch.setattr(registry, "_entry_points", lambda: calls.append(1) or eps)
    # a built-in name does not trigger discovery
    @registry.register("codec", "builtin")
    def builtin() -> str:
        return "b"

    assert registry.create("codec", "builtin") == "b"
    assert calls == []
    # the plugin's component is found; the broken plugin is reported by name with its error
    assert registry.create("backbone", "fake_net") == "net"
    broken = registry.broken_plugins()
    assert [b.name for b in broken] == ["broken"]
    assert "ModuleNotFoundError" in broken[0].error
    with pytest.raises(PluginError, match="plugin 'broken'"):
        registry.get("backbone", "missing_net")
    assert calls == [1]  # discovery ran once


def test_first_party_plugins_declared() -> None:
    names = {ep.name for ep in metadata.entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert {"backbones", "entropic", "quant"} <= names


def test_cli_plugins_lists_kinds(capsys) -> None:
    from edgesplit.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for kind in registry.KINDS:
        assert out.count(f"{kind}:") == 1
    assert "resnet18" in out and "factorized-v1" in out and "kd" in out
