"""The deployment bundle: a directory with ``manifest.yaml``, graphs per backend and part, and codec tables.

Torch-free. Writing goes to a temporary sibling directory renamed into place, so a failed export never leaves
half a bundle; opening verifies every file's sha256 and refuses paths that escape the bundle.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np
import yaml

from ._yaml import load_bounded, short
from .errors import BundleError, ConfigError, PluginError
from .preprocess import Preprocess

try:
    import fcntl
except ImportError:  # not POSIX: stale partial directories are left for the user to remove
    fcntl = None  # type: ignore[assignment]

__all__ = ["FORMAT_VERSION", "MANIFEST", "KINDS", "Manifest", "Bundle", "BundleWriter", "sha256_file", "scratch_directory",
           "sweep_partials"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.yaml"
KINDS = ("split", "full")
PARTS = {"split": ("encoder", "decoder"), "full": ("model",)}
MAX_MANIFEST_BYTES = 1 << 20
MAX_LATENT_SIDE = 1 << 16
MAX_LATENT_ELEMENTS = 1 << 24  # symbols per payload; a student sends a few thousand


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _confined(root: Path, rel: Any, what: str) -> Path:
    """``root/rel`` if ``rel`` is a plain relative path that stays inside ``root``; else ``BundleError``."""
    if not isinstance(rel, str) or not rel:
        raise BundleError(f"{root}: {what}: expected a relative file path, got {short(rel)}")
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or "\\" in rel or rel.startswith("~"):
        raise BundleError(f"{root}: {what}: path {short(rel)} escapes the bundle (only paths inside it are allowed)")
    full = (root / pure).resolve()
    if not full.is_relative_to(root.resolve()):
        raise BundleError(f"{root}: {what}: path {short(rel)} resolves outside the bundle (symbolic link?)")
    return full


# -- manifest schema -------------------------------------------------------------------------------------------
# One check per key, run when a bundle is opened, so the accessors below can trust the manifest's shape. Each
# check gets the value and its key path; optional keys are checked only when present.

def _fail(mpath: Path, where: str, expected: str, value: Any) -> BundleError:
    return BundleError(f"{mpath}: {where}: expected {expected}, got {short(value)}; re-export the bundle")


def _key(key: Any) -> str:
    """A manifest key as it appears in a key path (quoted only when it is not a short string)."""
    return key if isinstance(key, str) and len(key) <= 60 else short(key)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_version(mpath: Path, value: Any) -> None:
    if not _int(value) or value != FORMAT_VERSION:
        raise BundleError(f"{mpath}: bundle format_version {short(value)}; this edgesplit reads {FORMAT_VERSION} "
                          "(re-export the bundle with this version)")


def _check_kind(mpath: Path, value: Any) -> None:
    if not isinstance(value, str) or value not in KINDS:
        raise BundleError(f"{mpath}: kind {short(value)} is not one of {', '.join(KINDS)}")


def _check_fingerprint(mpath: Path, value: Any) -> None:
    if not isinstance(value, str) or len(value) != 16 or any(c not in "0123456789abcdef" for c in value):
        raise _fail(mpath, "fingerprint", "16 lowercase hex digits", value)


def _check_name(mpath: Path, value: Any) -> None:
    if not isinstance(value, str):
        raise _fail(mpath, "name", "a string", value)


def _check_labels(mpath: Path, value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise _fail(mpath, "labels", "a non-empty list of class names", value)
    bad = next((i for i, label in enumerate(value) if not isinstance(label, str) or not label), None)
    if bad is not None:
        raise _fail(mpath, f"labels[{bad}]", "a non-empty string", value[bad])


def _check_input(mpath: Path, value: Any) -> None:
    if not isinstance(value, dict) or "preprocess" not in value:
        raise _fail(mpath, "input", "a mapping with a 'preprocess' entry", value)
    try:
        Preprocess.from_dict(value["preprocess"], where="input.preprocess")
    except ConfigError as exc:
        raise BundleError(f"{mpath}: {exc}; re-export the bundle") from exc


def _check_files(mpath: Path, value: Any) -> None:
    if not isinstance(value, dict) or not value:
        raise _fail(mpath, "files", "a mapping of file paths to sha256 digests", value)
    for rel, digest in value.items():
        if not isinstance(rel, str) or not rel:
            raise _fail(mpath, "files", "file paths as keys", rel)
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise _fail(mpath, f"files[{_key(rel)}]", "a sha256 digest (64 lowercase hex digits)", digest)


def _check_parts(mpath: Path, value: Any, kind: str, files: dict[str, Any]) -> None:
    if not isinstance(value, dict) or not value:
        raise _fail(mpath, "parts", f"a mapping of parts ({', '.join(PARTS[kind])}) to backends", value)
    for part, backends in value.items():
        if part not in PARTS[kind]:
            raise _fail(mpath, "parts", f"parts of a {kind} bundle ({', '.join(PARTS[kind])})", part)
        if not isinstance(backends, dict):
            raise _fail(mpath, f"parts.{part}", "a mapping of backends to files", backends)
        for backend, entry in backends.items():
            where = f"parts.{part}.{_key(backend)}"
            if not isinstance(backend, str):
                raise _fail(mpath, f"parts.{part}", "backend names as keys", backend)
            if entry is not None and not isinstance(entry, dict):
                raise _fail(mpath, where, "a mapping of keys ('model', 'weights', ...) to files", entry)
            for key, rel in (entry or {}).items():
                if key == "builder":  # a graph built in memory from the entry's files (the runtime knows which)
                    if not isinstance(rel, str) or not rel:
                        raise _fail(mpath, f"{where}.builder", "a builder name", rel)
                    continue
                if not isinstance(key, str) or not isinstance(rel, str):
                    raise _fail(mpath, f"{where}.{_key(key)}", "a file listed in 'files'", rel)
                if rel not in files:
                    raise BundleError(f"{mpath}: {where}.{key} names {short(rel)}, which is not in 'files'; "
                                      "re-export the bundle")


def _check_codec(mpath: Path, value: Any) -> None:
    if not isinstance(value, dict):
        raise _fail(mpath, "codec", "a mapping with 'file', 'id' and 'latent_shape'", value)
    if not isinstance(value.get("file"), str) or not value["file"]:
        raise _fail(mpath, "codec.file", "the path of the tables file", value.get("file"))
    if "id" in value and not isinstance(value["id"], str):
        raise _fail(mpath, "codec.id", "a codec id string", value["id"])
    shape = value.get("latent_shape")
    if (not isinstance(shape, list) or len(shape) != 3 or not all(_int(d) and 1 <= d <= MAX_LATENT_SIDE for d in shape)
            or math.prod(shape) > MAX_LATENT_ELEMENTS):
        raise _fail(mpath, "codec.latent_shape", f"3 positive integers (C, H, W), at most {MAX_LATENT_ELEMENTS} "
                                                 "elements", shape)


def _check_label_names(mpath: Path, value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise _fail(mpath, "label_names", "a list of display names parallel to 'labels'", value)
    bad = next((i for i, name in enumerate(value) if not isinstance(name, str) or not name), None)
    if bad is not None:
        raise _fail(mpath, f"label_names[{bad}]", "a non-empty string", value[bad])


def _check_mapping(key: str) -> Any:
    def check(mpath: Path, value: Any) -> None:
        if not isinstance(value, dict):
            raise _fail(mpath, key, "a mapping", value)
    return check


def _check_train_split(mpath: Path, value: Any) -> None:
    fraction, seed = (value.get("val_fraction"), value.get("seed")) if isinstance(value, dict) else (None, None)
    if (not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction < 1
            or not _int(seed)):
        raise _fail(mpath, "train_split", "{val_fraction: a number in (0, 1), seed: an integer}", value)


# Keys every manifest has, and the optional keys that the runtime reads (others are informational).
_REQUIRED = {"format_version": _check_version, "kind": _check_kind, "fingerprint": _check_fingerprint,
             "labels": _check_labels, "input": _check_input, "files": _check_files}
_OPTIONAL = {"name": _check_name, "runtime": _check_mapping("runtime"), "train_split": _check_train_split,
             "label_names": _check_label_names}


def _check_manifest(mpath: Path, manifest: Any) -> None:
    """``BundleError`` naming the first key of ``manifest`` that does not have the shape the runtime reads."""
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath}: the manifest must be a mapping of keys to values")
    if "format_version" not in manifest:
        raise BundleError(f"{mpath}: required key 'format_version' is missing")
    _check_version(mpath, manifest["format_version"])
    for key in (*_REQUIRED, "parts"):
        if key not in manifest:
            raise BundleError(f"{mpath}: required key {key!r} is missing")
    for key, check in _REQUIRED.items():
        check(mpath, manifest[key])
    for key, check in _OPTIONAL.items():
        if key in manifest:
            check(mpath, manifest[key])
    if "label_names" in manifest and len(manifest["label_names"]) != len(manifest["labels"]):
        raise BundleError(f"{mpath}: label_names has {len(manifest['label_names'])} names for "
                          f"{len(manifest['labels'])} labels; re-export the bundle")
    kind = manifest["kind"]
    _check_parts(mpath, manifest["parts"], kind, manifest["files"])
    if kind == "split":
        if "codec" not in manifest:
            raise BundleError(f"{mpath}: a split bundle needs a 'codec' entry (tables file, id, latent_shape)")
        _check_codec(mpath, manifest["codec"])


# Top-level keys in the order a manifest is written (people read it); keys outside this list are kept as read.
_ORDER = ("format_version", "kind", "name", "fingerprint", "input", "labels", "label_names", "opset", "precision",
          "binary_layers", "versions", "source", "train_split", "codec", "io", "parts", "runtime", "tensorrt",
          "files")


@dataclass
class Manifest:
    """``manifest.yaml`` as a typed object: what ``BundleWriter`` writes and ``Bundle`` reads.

    Optional entries are ``None`` when absent and are then left out of ``to_dict()``; keys this version does not
    know travel in ``extra``, so a bundle's manifest survives a read and a write unchanged.
    """

    kind: str
    labels: list[str]
    input: dict[str, Any]
    parts: dict[str, dict[str, Any]]
    fingerprint: str | None = None
    name: str | None = None
    label_names: list[str] | None = None
    opset: int | None = None
    precision: str | None = None
    binary_layers: int | None = None
    versions: dict[str, Any] | None = None
    source: dict[str, Any] | None = None
    train_split: dict[str, Any] | None = None
    codec: dict[str, Any] | None = None
    io: dict[str, Any] | None = None
    runtime: dict[str, Any] | None = None
    tensorrt: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str | Path = MANIFEST) -> "Manifest":
        """A checked manifest (``BundleError`` naming ``where`` and the first bad key, as ``Bundle.open`` reports)."""
        _check_manifest(Path(where), data)
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        """The mapping written to ``manifest.yaml``: known keys in their order, then the others, ``files`` last."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out = {k: values[k] for k in _ORDER if k != "files" and values[k] is not None}
        out.update(self.extra)
        out["files"] = self.files
        return out

    def backend_options(self, backend: str) -> dict[str, Any]:
        """The ``runtime.<backend>`` options parity was checked with (empty when none were recorded)."""
        return dict((self.runtime or {}).get(backend) or {})


@dataclass(frozen=True)
class Bundle:
    """An opened, verified bundle: ``manifest`` as read (a mapping), ``contents`` the same as a ``Manifest``."""

    path: Path
    manifest: dict[str, Any]
    contents: Manifest = field(compare=False, repr=False)

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True) -> "Bundle":
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"{root}: not a bundle directory")
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"{root}: {MANIFEST} is missing (is this an edgesplit bundle?)")
        _confined(root, MANIFEST, "manifest")  # a symbolic link out of the bundle is refused like any other path
        manifest = load_bounded(mpath, BundleError, what="manifest", max_bytes=MAX_MANIFEST_BYTES)
        contents = Manifest.from_dict(manifest, mpath)
        files = contents.files
        bundle = cls(root, manifest, contents)
        for rel, digest in files.items():
            full = _confined(root, rel, "files")
            if not full.is_file():
                raise BundleError(f"{root}: file {_key(rel)} listed in the manifest is missing")
            if verify and sha256_file(full) != digest:
                raise BundleError(f"{root}: file {_key(rel)} does not match its sha256 in the manifest "
                                  "(modified or corrupt)")
        return bundle

    # -- accessors ----------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.contents.kind

    @property
    def fingerprint(self) -> bytes:
        return bytes.fromhex(str(self.contents.fingerprint))

    @property
    def labels(self) -> list[str]:
        return list(self.contents.labels)

    @property
    def label_names(self) -> list[str]:
        """Display names parallel to ``labels`` (a bundle exported without names shows its ids)."""
        return list(self.contents.label_names or self.contents.labels)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.contents.input["preprocess"])

    @property
    def latent_shape(self) -> tuple[int, ...]:
        if self.kind != "split" or self.contents.codec is None:
            raise BundleError(f"{self.path}: a {self.kind} bundle has no latent")
        return tuple(int(v) for v in self.contents.codec["latent_shape"])

    def parts(self) -> tuple[str, ...]:
        return PARTS[self.kind]

    def backends(self, part: str) -> list[str]:
        return sorted(self.contents.parts.get(part, {}))

    def file(self, part: str, backend: str, key: str = "model") -> Path:
        """The file of ``part`` for ``backend`` (``key``: 'model', or e.g. 'weights' for OpenVINO's .bin)."""
        entry = self.contents.parts.get(part)
        if entry is None:
            raise BundleError(f"{self.path}: this {self.kind} bundle has no part {part!r} (parts: {', '.join(self.parts())})")
        if backend not in entry:
            raise BundleError(f"{self.path}: part {part!r} was not exported for backend {backend!r} "
                              f"(available: {', '.join(sorted(entry)) or 'none'}); re-export with --backend {backend}")
        rel = (entry[backend] or {}).get(key)
        if rel is None:
            raise BundleError(f"{self.path}: part {part!r} for {backend!r} has no {key!r} file")
        return _confined(self.path, rel, f"parts.{part}.{backend}.{key}")

    def codec(self) -> Any:
        """The entropy codec of a split bundle: component ``codec.id`` of registry kind ``codec``, built from the
        tables file (``create("codec", id, tables=arrays)``)."""
        from .codec import LEGACY_CODEC_ID
        from .registry import available, create, get

        if self.kind != "split" or self.contents.codec is None:
            raise BundleError(f"{self.path}: a {self.kind} bundle has no codec tables")
        entry = self.contents.codec
        path = _confined(self.path, entry.get("file"), "codec.file")
        codec_id = entry.get("id", LEGACY_CODEC_ID)  # bundles name it; a manifest without one predates v2
        try:  # get() imports plugins only for an id that is not built in, so a device stays torch-free
            get("codec", codec_id if isinstance(codec_id, str) else "")
        except PluginError as exc:
            raise BundleError(
                f"{self.path}: manifest codec.id {short(codec_id)} is not one this edgesplit decodes "
                f"({', '.join(available('codec'))}); upgrade edgesplit, or install the plugin that registers that codec"
            ) from exc
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path}: unreadable codec tables ({exc})") from exc
        try:
            return create("codec", codec_id, tables=arrays)
        except (ConfigError, PluginError, ValueError, KeyError) as exc:
            raise BundleError(f"{path}: unreadable codec tables ({exc})") from exc


def _lock(directory: Path) -> int | None:
    """An open descriptor of ``directory`` holding an exclusive ``flock`` on it, or ``None`` if another process
    holds it (or locks are not supported here). The kernel drops the lock when its process dies, however it dies."""
    if fcntl is None:
        return None
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def sweep_partials(dest: Path, min_age_s: float = 2.0) -> list[Path]:
    """Remove the temporary directories of earlier writes of ``dest`` whose writer is gone (killed, or the machine
    lost power): a live writer holds a lock on its directory. Returns what was removed."""
    try:
        candidates = list(dest.parent.glob(f".{glob.escape(dest.name)}.partial-*"))
    except OSError:
        return []
    return _remove_unlocked(candidates, min_age_s)


def _remove_unlocked(candidates: list[Path], min_age_s: float) -> list[Path]:
    """The directories among ``candidates`` that no live process holds locked, removed."""
    removed = []
    for path in candidates:
        try:
            if not path.is_dir() or path.is_symlink() or time.time() - path.stat().st_mtime < min_age_s:
                continue  # a writer that has just made its directory may not hold the lock yet
        except OSError:
            continue
        fd = _lock(path)
        if fd is None:
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


@contextmanager
def scratch_directory(prefix: str, min_age_s: float = 2.0) -> Iterator[Path]:
    """A temporary working directory, locked while in use and removed after; the directories with the same
    ``prefix`` that a killed process left in the temporary folder are removed when the next one is made."""
    root = Path(tempfile.gettempdir())
    try:
        _remove_unlocked([p for p in root.glob(f"{glob.escape(prefix)}*")], min_age_s)
    except OSError:
        pass
    path = Path(tempfile.mkdtemp(prefix=prefix))
    fd = _lock(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if fd is not None:
            os.close(fd)


class BundleWriter:
    """Builds a bundle in a temporary directory next to ``dest``; ``commit()`` hashes, writes the manifest and
    renames it into place. Leaving the ``with`` block by an exception removes the temporary directory; the
    directories of earlier writers of ``dest`` that were killed are removed when the next one starts."""

    def __init__(self, dest: str | Path, *, overwrite: bool = False) -> None:
        self.dest = Path(dest)
        if self.dest.exists() and not overwrite:
            raise BundleError(f"{self.dest} already exists; choose another --out or remove it")
        try:
            self.dest.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise BundleError(f"{self.dest}: a parent of --out is a file, not a directory ({exc.filename}); "
                              "choose another --out") from exc
        except OSError as exc:
            raise BundleError(f"{self.dest}: cannot create its directory ({exc.strerror or exc}); "
                              "choose another --out") from exc
        for stale in sweep_partials(self.dest):
            log.info("removed %s, left by an export of %s that was killed", stale, self.dest)
        try:
            self.tmp = Path(tempfile.mkdtemp(dir=self.dest.parent, prefix=f".{self.dest.name}.partial-"))
        except OSError as exc:
            raise BundleError(f"{self.dest.parent}: cannot write there ({exc.strerror or exc}); "
                              "choose another --out") from exc
        self._lock_fd = _lock(self.tmp)
        self.overwrite = overwrite
        self._committed = False
        self._digests: dict[str, tuple[tuple[int, int], str]] = {}  # rel path -> ((size, mtime_ns), sha256)

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._committed:
            shutil.rmtree(self.tmp, ignore_errors=True)
        self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def path(self, rel: str) -> Path:
        """Where to write file ``rel`` inside the bundle being built (parents created)."""
        p = _confined(self.tmp, rel, "writer")
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def files(self) -> dict[str, str]:
        """sha256 of every file written so far; a file unchanged since the last call (same size and mtime) is not
        read again (the fingerprint, staging and commit each ask)."""
        out = {}
        for p in sorted(self.tmp.rglob("*")):
            if not p.is_file() or p.name == MANIFEST:
                continue
            rel, st = p.relative_to(self.tmp).as_posix(), p.stat()
            stamp = (st.st_size, st.st_mtime_ns)
            known = self._digests.get(rel)
            if known is None or known[0] != stamp:
                known = self._digests[rel] = (stamp, sha256_file(p))
            out[rel] = known[1]
        return out

    def fingerprint(self) -> str:
        """8 bytes (hex) from the hashes of the graphs and tables: payloads carry it."""
        h = hashlib.sha256()
        for rel, digest in self.files().items():
            if not rel.startswith("reports/") and not rel.endswith(".json"):
                h.update(f"{rel}\0{digest}\n".encode())
        return h.hexdigest()[:16]

    def stage(self, manifest: Manifest | dict[str, Any]) -> Bundle:
        """Write the manifest (files hashed now, fingerprint filled in if absent) into the temporary directory and
        open it there: the bundle as it will be published, for checks that must pass before ``commit``."""
        if isinstance(manifest, Manifest):
            staged = replace(manifest, format_version=FORMAT_VERSION, files=self.files(),
                             fingerprint=manifest.fingerprint or self.fingerprint())
            data = staged.to_dict()
        else:
            data = dict(manifest)
            data["format_version"] = FORMAT_VERSION
            data["files"] = self.files()
            data.setdefault("fingerprint", self.fingerprint())
        (self.tmp / MANIFEST).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return Bundle.open(self.tmp)

    def commit(self, manifest: Manifest | dict[str, Any]) -> Bundle:
        """Stage ``manifest`` (hashing every file written since, e.g. a report) and rename the bundle into place."""
        self.stage(manifest)  # never publish a bundle that would not open
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
        self._release()
        return Bundle.open(self.dest)
