"""Malformed manifests and recipes: each is a ``BundleError`` / ``ConfigError`` naming the key, fast and bounded."""

from __future__ import annotations

import copy
import hashlib
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import yaml

from edgesplit.bundle import MANIFEST, Bundle
from edgesplit.codec import FactorizedCodec, discretized_laplace_pmfs
from edgesplit.config import load_train_config, load_yaml
from edgesplit.errors import BundleError, ConfigError
from edgesplit.preprocess import Preprocess

BOMB = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def good_manifest(root: Path) -> dict[str, Any]:
    """A split manifest with real (tiny) files: what an export writes, minus the graphs' contents."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "encoder.onnx").write_bytes(b"enc")
    (root / "decoder.onnx").write_bytes(b"dec")
    codec = FactorizedCodec(*discretized_laplace_pmfs(np.linspace(0.5, 2.0, 4), 4))
    np.savez(root / "codec.npz", **codec.to_arrays())
    files = {rel: _sha(root / rel) for rel in ("encoder.onnx", "decoder.onnx", "codec.npz")}
    return {
        "format_version": 1, "kind": "split", "name": "tiny", "fingerprint": "0123456789abcdef",
        "input": {"name": "image", "preprocess": Preprocess(size=32, resize=36).to_dict()},
        "labels": ["apple", "banana", "cherry"],
        "codec": {"id": codec.codec_id, "file": "codec.npz", "latent_shape": [4, 8, 8]},
        "parts": {"encoder": {"onnxruntime": {"model": "encoder.onnx"}},
                  "decoder": {"onnxruntime": {"model": "decoder.onnx"}}},
        "files": files,
    }


def write(root: Path, manifest: Any) -> Path:
    (root / MANIFEST).write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    return root


def test_the_fixture_manifest_opens(tmp_path: Path) -> None:
    bundle = Bundle.open(write(tmp_path, good_manifest(tmp_path)))
    assert bundle.labels == ["apple", "banana", "cherry"] and bundle.latent_shape == (4, 8, 8)
    assert bundle.preprocess == Preprocess(size=32, resize=36)
    assert bundle.codec().num_channels == 4


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = m
        for key in parents:
            node = node[key]
        node[last] = value
    return edit


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = m
        for key in parents:
            node = node[key]
        del node[last]
    return edit


WRONG_SHAPES = [
    (_set("parts", []), "parts"),
    (_set("parts", "x"), "parts"),
    (_set("parts", {"encoder": []}), "parts.encoder"),
    (_set("parts", {"head": {}}), "parts"),
    (_set("parts.encoder.onnxruntime", ["encoder.onnx"]), "parts.encoder.onnxruntime"),
    (_set("parts.encoder.onnxruntime.model", "missing.onnx"), "parts.encoder.onnxruntime.model"),
    (_set("labels", None), "labels"),
    (_set("labels", []), "labels"),
    (_set("labels", ["a", 2, "c"]), "labels[1]"),
    (_set("labels", "abc"), "labels"),
    (_set("input", []), "input"),
    (_set("input", {}), "input"),
    (_drop("input.preprocess"), "input"),
    (_set("input.preprocess", None), "input.preprocess"),
    (_drop("input.preprocess.size"), "input.preprocess"),
    (_set("input.preprocess.size", "big"), "input.preprocess.size"),
    (_set("input.preprocess.size", True), "input.preprocess.size"),
    (_set("input.preprocess.resize", 8), "input.preprocess"),
    (_set("input.preprocess.mean", [0.5]), "input.preprocess.mean"),
    (_set("input.preprocess.std", [0.2, 0.0, 0.2]), "input.preprocess.std"),
    (_set("input.preprocess.interpolation", "lanczos"), "input.preprocess.interpolation"),
    (_drop("codec"), "codec"),
    (_set("codec", "codec.npz"), "codec"),
    (_drop("codec.latent_shape"), "codec.latent_shape"),
    (_set("codec.latent_shape", [4, 8]), "codec.latent_shape"),
    (_set("codec.latent_shape", [4, 8, 0]), "codec.latent_shape"),
    (_set("codec.latent_shape", [4, 8, True]), "codec.latent_shape"),
    (_set("codec.latent_shape", [1 << 15, 1 << 15, 1 << 15]), "codec.latent_shape"),
    (_drop("codec.file"), "codec.file"),
    (_set("codec.id", 7), "codec.id"),
    (_set("format_version", True), "format_version"),
    (_set("format_version", "1"), "format_version"),
    (_set("format_version", 2), "format_version"),
    (_set("kind", ["split"]), "kind"),
    (_set("kind", "half"), "kind"),
    (_set("fingerprint", 123), "fingerprint"),
    (_set("name", ["x"]), "name"),
    (_set("files", []), "files"),
    (_set("files", {"encoder.onnx": 5}), "files[")
    , (_set("runtime", "fast"), "runtime"),
    (_set("train_split", [0.2]), "train_split"),
    (_drop("kind"), "'kind'"),
]


@pytest.mark.parametrize("edit,key", WRONG_SHAPES, ids=[k for _, k in WRONG_SHAPES])
def test_a_manifest_of_the_wrong_shape_names_the_key(tmp_path: Path, edit: Any, key: str) -> None:
    manifest = copy.deepcopy(good_manifest(tmp_path))
    edit(manifest)
    with pytest.raises(BundleError) as info:
        Bundle.open(write(tmp_path, manifest))
    assert key in str(info.value)


@pytest.mark.parametrize("top", [[], "text", 5, None])
def test_a_manifest_that_is_not_a_mapping(tmp_path: Path, top: Any) -> None:
    with pytest.raises(BundleError, match="mapping"):
        Bundle.open(write(tmp_path, top))


def test_a_deeply_nested_manifest_is_refused_without_recursion(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text("[" * 300_000 + "]" * 300_000)
    with pytest.raises(BundleError, match="nested deeper"):
        Bundle.open(tmp_path)


@pytest.mark.parametrize("key", ["kind", "fingerprint", "format_version", "name", "input.preprocess.size"])
def test_an_alias_bomb_in_a_manifest_is_refused_at_once(tmp_path: Path, key: str) -> None:
    manifest = good_manifest(tmp_path)
    _set(key, "BOMB")(manifest)
    text = BOMB + yaml.safe_dump(manifest, sort_keys=False).replace("BOMB", "*l9")
    (tmp_path / MANIFEST).write_text(text)
    start = time.perf_counter()
    with pytest.raises(BundleError) as info:
        Bundle.open(tmp_path)
    assert time.perf_counter() - start < 1.0
    assert "aliases" in str(info.value) and len(str(info.value)) < 500


def test_manifest_limits(tmp_path: Path) -> None:
    manifest = good_manifest(tmp_path)
    manifest["name"] = "x" * 5000  # one absurd scalar
    with pytest.raises(BundleError, match="characters"):
        Bundle.open(write(tmp_path, manifest))
    (tmp_path / MANIFEST).write_bytes(b"name: '" + b"x" * (1 << 20) + b"'\n")
    with pytest.raises(BundleError, match="larger than"):
        Bundle.open(tmp_path)
    (tmp_path / MANIFEST).write_bytes(b"kind: \xff\xfe split\n")
    with pytest.raises(BundleError, match="not UTF-8"):
        Bundle.open(tmp_path)
    (tmp_path / MANIFEST).write_text("format_version: " + "9" * 5000 + "\n")
    with pytest.raises(BundleError):
        Bundle.open(tmp_path)


def test_messages_never_quote_a_huge_value(tmp_path: Path) -> None:
    manifest = good_manifest(tmp_path)
    manifest["kind"] = "k" * 4000
    with pytest.raises(BundleError) as info:
        Bundle.open(write(tmp_path, manifest))
    assert len(str(info.value)) < 400


def test_a_manifest_symlinked_out_of_the_bundle_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    manifest = good_manifest(root)
    outside = write(tmp_path, manifest) / MANIFEST  # a valid manifest, but outside the bundle
    (root / MANIFEST).symlink_to(outside)
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.open(root)


# -- recipes ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["epochs", "name"])
def test_an_alias_bomb_in_a_recipe_is_refused_at_once(tmp_path: Path, key: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(BOMB + f"{key}: *l9\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases") as info:
        load_train_config(path)
    assert time.perf_counter() - start < 1.0 and len(str(info.value)) < 500


def test_recipe_files_that_are_not_yaml_text(tmp_path: Path) -> None:
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_yaml(binary)
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested deeper"):
        load_yaml(deep)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        load_yaml(big)
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml(tmp_path)  # a directory
    anchor = tmp_path / "anchor.yaml"
    anchor.write_text("a: &x 1\nb: 2\n")
    with pytest.raises(ConfigError, match="anchors"):
        load_yaml(anchor)
    plain = tmp_path / "plain.yaml"
    plain.write_text("a: 1\nb: [1, 2, {c: d}]\n")
    assert load_yaml(plain) == {"a": 1, "b": [1, 2, {"c": "d"}]}
