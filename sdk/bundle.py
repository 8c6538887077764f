"""The deployment bundle: a directory with ``manifest.yaml``, graphs per backend and part, and codec tables.

Torch-free. Writing goes to a temporary sibling directory renamed into place, so a failed export never leaves
half a bundle; opening verifies every file's sha256 and refuses paths that escape the bundle.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import yaml

from .errors import BundleError
from .preprocess import Preprocess

__all__ = ["FORMAT_VERSION", "MANIFEST", "KINDS", "Bundle", "BundleWriter", "sha256_file"]

FORMAT_VERSION = 1
MANIFEST = "manifest.yaml"
KINDS = ("split", "full")
PARTS = {"split": ("encoder", "decoder"), "full": ("model",)}
MAX_MANIFEST_BYTES = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _confined(root: Path, rel: Any, what: str) -> Path:
    """``root/rel`` if ``rel`` is a plain relative path that stays inside ``root``; else ``BundleError``."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{root}: {what}: expected a relative file path, got {rel!r}")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel or rel.startswith("~"):
        raise BundleError(f"{root}: {what}: path {rel!r} escapes the bundle (only paths inside it are allowed)")
    full = (root / pure).resolve()
    if not full.is_relative_to(root.resolve()):
        raise BundleError(f"{root}: {what}: path {rel!r} resolves outside the bundle (symbolic link?)")
    return full


@dataclass(frozen=True)
class Bundle:
    """An opened, verified bundle."""

    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True) -> "Bundle":
        root = Path(path)
        mpath = root / MANIFEST
        if not root.is_dir():
            raise BundleError(f"{root}: not a bundle directory")
        if not mpath.is_file():
            raise BundleError(f"{root}: {MANIFEST} is missing (is this an edgesplit bundle?)")
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{mpath}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            manifest = yaml.safe_load(mpath.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise BundleError(f"{mpath}: not valid YAML: {exc}") from exc
        if not isinstance(manifest, dict):
            raise BundleError(f"{mpath}: the manifest must be a mapping")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(f"{mpath}: bundle format_version {version!r}; this edgesplit reads {FORMAT_VERSION} "
                              "(re-export the bundle with this version)")
        for key in ("kind", "fingerprint", "labels", "input", "files", "parts"):
            if key not in manifest:
                raise BundleError(f"{mpath}: required key {key!r} is missing")
        if manifest["kind"] not in KINDS:
            raise BundleError(f"{mpath}: kind {manifest['kind']!r} is not one of {', '.join(KINDS)}")
        fp = manifest["fingerprint"]
        if not isinstance(fp, str) or len(fp) != 16 or any(c not in "0123456789abcdef" for c in fp):
            raise BundleError(f"{mpath}: fingerprint must be 16 lowercase hex digits, got {fp!r}")
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise BundleError(f"{mpath}: 'files' must map file paths to sha256 digests")
        bundle = cls(root, manifest)
        for rel, digest in files.items():
            full = _confined(root, rel, "files")
            if not full.is_file():
                raise BundleError(f"{root}: file {rel} listed in the manifest is missing")
            if verify and sha256_file(full) != digest:
                raise BundleError(f"{root}: file {rel} does not match its sha256 in the manifest (modified or corrupt)")
        for part, backends in manifest["parts"].items():
            if not isinstance(backends, dict):
                raise BundleError(f"{mpath}: parts.{part} must map backends to files")
            for backend, entry in backends.items():
                if entry is not None and not isinstance(entry, dict):
                    raise BundleError(f"{mpath}: parts.{part}.{backend} must map keys to files")
                for key, rel in (entry or {}).items():
                    if key == "builder":  # a graph built in memory from the entry's files (the runtime knows which)
                        if not isinstance(rel, str) or not rel:
                            raise BundleError(f"{mpath}: parts.{part}.{backend}.builder must be a name, got {rel!r}")
                        continue
                    if isinstance(rel, str) and rel not in files:
                        raise BundleError(f"{mpath}: parts.{part}.{backend} names {rel!r}, which is not in 'files'")
        return bundle

    # -- accessors ----------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def fingerprint(self) -> bytes:
        return bytes.fromhex(self.manifest["fingerprint"])

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.manifest["input"]["preprocess"])

    @property
    def latent_shape(self) -> tuple[int, ...]:
        if self.kind != "split":
            raise BundleError(f"{self.path}: a {self.kind} bundle has no latent")
        return tuple(int(v) for v in self.manifest["codec"]["latent_shape"])

    def parts(self) -> tuple[str, ...]:
        return PARTS[self.kind]

    def backends(self, part: str) -> list[str]:
        return sorted(self.manifest["parts"].get(part, {}))

    def file(self, part: str, backend: str, key: str = "model") -> Path:
        """The file of ``part`` for ``backend`` (``key``: 'model', or e.g. 'weights' for OpenVINO's .bin)."""
        entry = self.manifest["parts"].get(part)
        if entry is None:
            raise BundleError(f"{self.path}: this {self.kind} bundle has no part {part!r} (parts: {', '.join(self.parts())})")
        if backend not in entry:
            raise BundleError(f"{self.path}: part {part!r} was not exported for backend {backend!r} "
                              f"(available: {', '.join(sorted(entry)) or 'none'}); re-export with --format {backend}")
        rel = entry[backend].get(key)
        if rel is None:
            raise BundleError(f"{self.path}: part {part!r} for {backend!r} has no {key!r} file")
        return _confined(self.path, rel, f"parts.{part}.{backend}.{key}")

    def codec(self) -> Any:
        """The ``FactorizedCodec`` of a split bundle, from its tables file."""
        from .codec import CODEC_IDS, LEGACY_CODEC_ID, FactorizedCodec

        if self.kind != "split":
            raise BundleError(f"{self.path}: a {self.kind} bundle has no codec tables")
        entry = self.manifest.get("codec", {})
        path = _confined(self.path, entry.get("file"), "codec.file")
        codec_id = entry.get("id", LEGACY_CODEC_ID)  # bundles name it; a manifest without one predates v2
        if codec_id not in CODEC_IDS:
            raise BundleError(
                f"{self.path}: manifest codec.id {codec_id!r} is not one this edgesplit decodes "
                f"({', '.join(CODEC_IDS)}); upgrade edgesplit"
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                return FactorizedCodec.from_arrays({k: z[k] for k in z.files}, codec_id=codec_id)
        except (OSError, ValueError, KeyError) as exc:
            raise BundleError(f"{path}: unreadable codec tables ({exc})") from exc


class BundleWriter:
    """Builds a bundle in a temporary directory next to ``dest``; ``commit()`` hashes, writes the manifest and
    renames it into place. Leaving the ``with`` block by an exception removes the temporary directory."""

    def __init__(self, dest: str | Path, *, overwrite: bool = False) -> None:
        self.dest = Path(dest)
        if self.dest.exists() and not overwrite:
            raise BundleError(f"{self.dest} already exists; choose another --out or remove it")
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.dest.parent, prefix=f".{self.dest.name}.partial-"))
        self.overwrite = overwrite
        self._committed = False

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._committed:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, rel: str) -> Path:
        """Where to write file ``rel`` inside the bundle being built (parents created)."""
        p = _confined(self.tmp, rel, "writer")
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def files(self) -> dict[str, str]:
        return {p.relative_to(self.tmp).as_posix(): sha256_file(p) for p in sorted(self.tmp.rglob("*"))
                if p.is_file() and p.name != MANIFEST}

    def fingerprint(self) -> str:
        """8 bytes (hex) from the hashes of the graphs and tables: payloads carry it."""
        h = hashlib.sha256()
        for rel, digest in self.files().items():
            if not rel.startswith("reports/") and not rel.endswith(".json"):
                h.update(f"{rel}\0{digest}\n".encode())
        return h.hexdigest()[:16]

    def commit(self, manifest: dict[str, Any]) -> Bundle:
        manifest = dict(manifest)
        manifest["format_version"] = FORMAT_VERSION
        manifest["files"] = self.files()
        manifest.setdefault("fingerprint", self.fingerprint())
        text = yaml.safe_dump(manifest, sort_keys=False)
        (self.tmp / MANIFEST).write_text(text, encoding="utf-8")
        Bundle.open(self.tmp)  # never publish a bundle that would not open
        os.chmod(self.tmp, 0o755)  # mkdtemp makes it private; a server running as another user must read it
        if self.dest.exists():
            if not self.overwrite:
                raise BundleError(f"{self.dest} appeared while exporting; not replacing it")
            old = self.dest.with_name(f".{self.dest.name}.old-{os.getpid()}")
            os.replace(self.dest, old)
            os.replace(self.tmp, self.dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.dest)
        self._committed = True
        return Bundle.open(self.dest)
