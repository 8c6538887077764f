"""Registry: registration, creation, close-match errors, entry-point discovery with broken and unavailable plugins,
and a torch-free install's plugin listing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from edgesplit import registry
from edgesplit.errors import PluginError

GROUP = registry.ENTRY_POINT_GROUP


@pytest.fixture()
def isolated():
    with registry.isolated():
        yield


def _fake_entry_points(monkeypatch: pytest.MonkeyPatch, eps: list[metadata.EntryPoint]) -> list[str]:
    """Make ``importlib.metadata.entry_points`` report ``eps`` for the plugin group; returns the groups asked for."""
    asked: list[str] = []
    real = metadata.entry_points

    def entry_points(**params):
        if params.get("group") != GROUP:
            return real(**params)
        asked.append(params["group"])
        return metadata.EntryPoints(eps)

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    return asked


def _plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> None:
    """A module ``name`` on sys.path (not yet imported), so an entry point can import it."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_register_and_create_drops_none(isolated) -> None:
    @registry.register("codec", "toy-codec")
    def toy(a: int = 1, b: int = 2) -> tuple[int, int]:
        return a, b

    assert registry.create("codec", "toy-codec", a=5, b=None) == (5, 2)
    assert "toy-codec" in registry.available("codec")


def test_isolated_forgets_what_was_registered_inside() -> None:
    with registry.isolated():
        @registry.register("codec", "only-inside")
        def inside() -> int:
            return 1

        assert registry.create("codec", "only-inside") == 1
    assert "only-inside" not in registry.available("codec")
    assert "factorized-v3" in registry.available("codec")  # what was there before stays
    with pytest.raises(PluginError, match="unknown codec 'only-inside'"):
        registry.get("codec", "only-inside")


def test_duplicate_rejected_unless_override(isolated) -> None:
    @registry.register("codec", "dup")
    def one() -> int:
        return 1

    with pytest.raises(PluginError, match="already registered"):
        @registry.register("codec", "dup")
        def two() -> int:
            return 2

    assert registry.create("codec", "dup") == 1

    @registry.register("codec", "dup", override=True)
    def three() -> int:
        return 3

    assert registry.create("codec", "dup") == 3


def test_unknown_name_lists_close_matches(isolated) -> None:
    @registry.register("backbone", "toynet_100")
    def toynet() -> None:
        return None

    with pytest.raises(PluginError, match="did you mean 'toynet_100'"):
        registry.get("backbone", "toynet_10")


def test_unknown_kind_and_bad_params(isolated) -> None:
    with pytest.raises(PluginError, match="unknown component kind 'nope'; kinds are: .*estimator"):
        registry.available("nope")
    with pytest.raises(PluginError, match="unknown component kind"):
        registry.register("nope", "x")

    @registry.register("codec", "strict")
    def strict(a: int) -> int:
        return a

    with pytest.raises(PluginError, match=r"cannot build codec 'strict' with parameters \['b'\]"):
        registry.create("codec", "strict", b=1)


def test_entry_points_are_lazy_and_broken_plugin_does_not_hide_others(isolated, tmp_path, monkeypatch) -> None:
    _plugin_module(tmp_path, monkeypatch, "es_fake_good", """
        from edgesplit.registry import register

        @register("backbone", "fake_net")
        def fake_net():
            return "net"
    """)
    asked = _fake_entry_points(monkeypatch, [
        metadata.EntryPoint("broken", "es_fake_missing_module", GROUP),
        metadata.EntryPoint("good", "es_fake_good", GROUP),
    ])

    @registry.register("codec", "builtin")
    def builtin() -> str:
        return "b"

    assert registry.create("codec", "builtin") == "b"
    assert asked == [] and "es_fake_good" not in sys.modules  # a registered name triggers no discovery
    assert registry.create("backbone", "fake_net") == "net"
    broken = registry.broken_plugins()
    assert [(b.name, b.value) for b in broken] == [("broken", "es_fake_missing_module")]
    assert broken[0].error.startswith("ModuleNotFoundError")
    with pytest.raises(PluginError, match="plugin 'broken' .* failed to load: ModuleNotFoundError"):
        registry.get("backbone", "missing_net")
    assert asked == [GROUP]  # discovery ran once


def test_entry_point_may_name_a_setup_function(isolated, tmp_path, monkeypatch) -> None:
    _plugin_module(tmp_path, monkeypatch, "es_fake_setup", """
        from edgesplit.registry import register

        def setup():
            register("loss", "fake_loss")(lambda: "loss")
    """)
    _fake_entry_points(monkeypatch, [metadata.EntryPoint("setup", "es_fake_setup:setup", GROUP)])
    assert registry.create("loss", "fake_loss") == "loss"


def test_a_plugin_missing_its_declared_dependency_is_unavailable_not_broken(isolated, tmp_path, monkeypatch,
                                                                          capsys) -> None:
    _plugin_module(tmp_path, monkeypatch, "es_fake_needs", """
        from edgesplit.registry import register, requires

        requires("es_no_such_package", extra="heavy", distribution="es-fake")
        import es_no_such_package  # never reached

        @register("backbone", "needs_net")
        def needs_net():
            return "net"
    """)
    _fake_entry_points(monkeypatch, [metadata.EntryPoint("needs", "es_fake_needs", GROUP)])
    assert registry.broken_plugins() == []
    (u,) = registry.unavailable_plugins()
    assert (u.name, u.value, u.hint) == ("needs", "es_fake_needs",
                                         "needs es_no_such_package (pip install es-fake[heavy])")
    with pytest.raises(PluginError, match=r"unknown backbone 'needs_net'.*\n  plugin 'needs' .* is not loaded: it "
                                          r"needs es_no_such_package \(pip install es-fake\[heavy\]\)"):
        registry.create("backbone", "needs_net")

    from edgesplit.cli import main

    assert main(["plugins", "--strict"]) == 0  # an optional dependency left out is not a failure
    out = capsys.readouterr().out
    assert "BROKEN" not in out
    assert "unavailable plugin 'needs' (es_fake_needs, from ?): needs es_no_such_package (pip install es-fake[heavy])" in out


def test_requires_is_a_plugin_error_and_a_module_not_found_error() -> None:
    with pytest.raises(PluginError, match=r"needs es_no_such_package \(pip install edgesplit\[train\]\)") as info:
        registry.requires("es_no_such_package", extra="train")
    assert isinstance(info.value, ModuleNotFoundError) and info.value.name == "es_no_such_package"
    registry.requires("numpy", extra="train")  # installed: nothing happens


def test_first_party_plugins_declared() -> None:
    values = {ep.name: ep.value for ep in metadata.entry_points(group=GROUP)}
    assert {"backbones": "edgesplit.plugins.backbones", "entropic": "edgesplit.plugins.entropic",
            "quant": "edgesplit.plugins.quant", "losses": "edgesplit.train.losses"}.items() <= values.items()


def test_cli_plugins_lists_every_kind_once(capsys) -> None:
    from edgesplit.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for kind in registry.KINDS:
        assert sum(line.startswith(f"{kind}: ") for line in lines) == 1
    assert "codec: factorized-v1, factorized-v2, factorized-v3" in lines


def test_cli_plugins_lists_the_torch_components(capsys) -> None:
    pytest.importorskip("torch", reason="the first-party plugins need torch (pip install edgesplit[train])")
    from edgesplit.cli import main

    assert main(["plugins", "--strict"]) == 0
    out = capsys.readouterr().out
    for kind, name in (("backbone", "resnet18"), ("student", "entropic"), ("bottleneck", "factorized"),
                       ("loss", "kd"), ("estimator", "reste")):
        line = next(line for line in out.splitlines() if line.startswith(f"{kind}: "))
        assert name in line.split(": ", 1)[1].split(", ")
    assert "BROKEN" not in out and "unavailable" not in out


_NO_TORCH = """
import sys
sys.modules["torch"] = None  # import torch now fails, as on a device without it
from edgesplit import registry
from edgesplit.cli import main
rc = main(["plugins", "--strict"])
try:
    registry.create("backbone", "resnet18")
except registry.PluginError as exc:
    print("CREATE:", exc)
print("RC:", rc)
"""


def test_torch_free_install_lists_torch_plugins_as_unavailable() -> None:
    done = subprocess.run([sys.executable, "-c", _NO_TORCH], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "BROKEN" not in out, out
    for name, value in (("backbones", "edgesplit.plugins.backbones"), ("entropic", "edgesplit.plugins.entropic"),
                        ("quant", "edgesplit.plugins.quant"), ("losses", "edgesplit.train.losses")):
        assert (f"unavailable plugin '{name}' ({value}, from edgesplit): needs torch (pip install edgesplit[train])"
                in out), out
    assert "backbone: (none)" in out and "codec: factorized-v1, factorized-v2, factorized-v3" in out
    assert "CREATE: unknown backbone 'resnet18'" in out
    assert "plugin 'backbones' (edgesplit) is not loaded: it needs torch (pip install edgesplit[train])" in out
    assert "RC: 0" in out
