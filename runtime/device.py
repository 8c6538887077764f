"""On-device inference: ``DeviceEncoder`` (image -> payload bytes) and ``DeviceModel`` (image -> ``Prediction``).

Images go through the bundle's evaluation crop (what training evaluated with) to uint8 NHWC; normalization is
inside the graphs, so a device needs only a backend, numpy, Pillow and the entropy coder.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from edgesplit import bitstream
from edgesplit._checks import positive_int
from edgesplit.bundle import Bundle
from edgesplit.errors import BundleError, DataError
from edgesplit.interfaces import BackendSession
from edgesplit.preprocess import ImageInput, eval_crop

from .backends import open_part

__all__ = ["Prediction", "DeviceEncoder", "DeviceModel", "predictions_from_logits", "as_bundle"]

DEFAULT_TOP_K = 5
DEFAULT_BATCH_SIZE = 32  # images per graph call in the *_batch methods (bounds memory)


@dataclass(frozen=True, eq=False)
class Prediction:
    """Top-k of one image: ``classes`` (class ids, a subset of the bundle's ``labels``) best first with their display
    ``names`` and softmax ``probs``; ``logits`` are all classes. A bundle without display names gives its ids as
    names."""

    classes: tuple[str, ...]
    probs: tuple[float, ...]
    logits: np.ndarray
    indices: tuple[int, ...]
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.names:
            object.__setattr__(self, "names", tuple(self.classes))

    @property
    def labels(self) -> tuple[str, ...]:
        """Deprecated name of ``classes`` (a bundle's ``labels`` are all its classes, not the top-k)."""
        warnings.warn("Prediction.labels is deprecated: use Prediction.classes (the top-k class ids)",
                      DeprecationWarning, stacklevel=2)
        return self.classes

    @property
    def top1(self) -> str:
        return self.classes[0]

    @property
    def top1_name(self) -> str:
        return self.names[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: classes, names, probs, top1, top1_name (logits left out)."""
        return {"classes": list(self.classes), "names": list(self.names), "probs": list(self.probs),
                "top1": self.top1, "top1_name": self.top1_name}


def predictions_from_logits(logits: np.ndarray, labels: Sequence[str], top_k: int,
                            names: Sequence[str] | None = None) -> list[Prediction]:
    """One ``Prediction`` per row of ``logits`` (N, classes); softmax in float64, ties broken by class index;
    ``names``: display names parallel to ``labels`` (default: the labels)."""
    names = labels if names is None else names
    logits = np.asarray(logits)
    wide = logits.astype(np.float64)
    wide -= wide.max(axis=1, keepdims=True)
    probs = np.exp(wide)
    probs /= probs.sum(axis=1, keepdims=True)
    k = min(top_k, logits.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [Prediction(classes=tuple(labels[i] for i in row), probs=tuple(float(probs[n, i]) for i in row),
                       logits=logits[n].copy(), indices=tuple(int(i) for i in row),
                       names=tuple(str(names[i]) for i in row))
            for n, row in enumerate(order)]


def as_bundle(bundle: Bundle | str | Path) -> Bundle:
    """An opened ``Bundle`` from a path (verified), or the bundle itself."""
    if isinstance(bundle, Bundle):
        return bundle
    if isinstance(bundle, (str, Path)):
        return Bundle.open(bundle)
    raise BundleError(f"expected a bundle directory path or an opened Bundle, got {type(bundle).__name__}")


def _require_kind(bundle: Bundle, kind: str, cls: str) -> None:
    if bundle.kind != kind:
        use = {"split": "DeviceEncoder (device) and ServerDecoder (server)", "full": "DeviceModel"}[bundle.kind]
        raise BundleError(f"{bundle.path}: {cls} needs a {kind} bundle; this is a {bundle.kind} bundle "
                          f"({bundle.manifest.get('name', 'unnamed')}): use {use}")


def _check_top_k(top_k: int) -> int:
    return positive_int(top_k, "top_k")


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


def _one_image(image: ImageInput, method: str, batch_method: str) -> ImageInput:
    """``image`` if it is a single image; a list or a 4-D array is a ``DataError`` pointing at the batch method."""
    if isinstance(image, (list, tuple)) or (isinstance(image, np.ndarray) and image.ndim == 4):
        raise DataError(f"{method} takes one image; use {batch_method}() for several")
    return image


class _SessionInfo:
    """What a backend session actually runs on, read back from it (shared by the device and server classes)."""

    session: BackendSession

    @property
    def backend(self) -> str:
        return self.session.backend

    @property
    def device(self) -> str:
        return self.session.device

    @property
    def threads(self) -> int | None:
        return self.session.threads


class _Runner(_SessionInfo):
    """What DeviceEncoder and DeviceModel share: a bundle, one session on its image part, preprocessing."""

    kind = ""
    part = ""
    output = ""

    def __init__(self, bundle: Bundle, session: BackendSession) -> None:
        self.bundle = bundle
        self.session = session
        self.preprocess_spec = bundle.preprocess
        self.batch_size = DEFAULT_BATCH_SIZE
        self.last_timings: dict[str, float] = {}
        if "image" not in session.input_names or self.output not in session.output_names:
            raise BundleError(f"{bundle.path}: the {self.part} graph has inputs {session.input_names} and outputs "
                              f"{session.output_names}; expected 'image' -> {self.output!r}")
        expected = (None, self.preprocess_spec.size, self.preprocess_spec.size, 3)
        if session.input_shapes["image"] != expected:
            raise BundleError(f"{bundle.path}: the {self.part} graph takes images of shape "
                              f"{session.input_shapes['image']}, the manifest's preprocessing crops to "
                              f"{self.preprocess_spec.size}x{self.preprocess_spec.size} (expected a dynamic batch of "
                              "uint8 NHWC crops); re-export the bundle")

    @classmethod
    def _open_session(cls, bundle: Bundle | str | Path, backend: str, device: str, threads: int | None,
                      options: Mapping[str, Any] | None) -> tuple[Bundle, BackendSession]:
        opened = as_bundle(bundle)
        _require_kind(opened, cls.kind, cls.__name__)
        return opened, open_part(opened, cls.part, backend, device=device, threads=threads, options=options)

    @property
    def fingerprint(self) -> bytes:
        return self.bundle.fingerprint

    @property
    def labels(self) -> list[str]:
        return self.bundle.labels

    def preprocess(self, images: Iterable[ImageInput]) -> np.ndarray:
        """uint8 N x size x size x 3: the bundle's evaluation crop of each image (path, PIL image or array)."""
        return np.stack([eval_crop(image, self.preprocess_spec) for image in images])

    def _batch(self, images: Any, single: str) -> list[ImageInput]:
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return list(images)
        if isinstance(images, (str, Path, np.ndarray, Image.Image)) or not isinstance(images, Iterable):
            raise DataError(f"{type(self).__name__}: expected a sequence of images, got one "
                            f"{type(images).__name__}; use {single}() for a single image")
        return list(images)

    def _run_graph(self, images: list[ImageInput]) -> tuple[np.ndarray, float, float]:
        """(graph output for all images, preprocess ms, graph ms), in chunks of ``batch_size``."""
        outputs, pre_ms, graph_ms = [], 0.0, 0.0
        step = min(self.batch_size, self.session.max_batch or self.batch_size)
        for start in range(0, len(images), step):
            t0 = time.perf_counter()
            batch = self.preprocess(images[start:start + step])
            pre_ms += _ms(t0)
            t0 = time.perf_counter()
            outputs.append(self.session.run({"image": batch})[self.output])
            graph_ms += _ms(t0)
        return np.concatenate(outputs), pre_ms, graph_ms

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(bundle={str(self.bundle.path)!r}, backend={self.backend!r}, "
                f"device={self.device!r}, threads={self.threads})")


class DeviceEncoder(_Runner):
    """The device half of a split bundle: image -> int32 symbols (graph) -> payload bytes (codec + bitstream).

    ``last_timings`` holds the milliseconds of the last call: preprocess, graph, entropy, total.
    """

    kind, part, output = "split", "encoder", "symbols"

    def __init__(self, bundle: Bundle, session: BackendSession) -> None:
        super().__init__(bundle, session)
        self.latent_shape = bundle.latent_shape
        self.codec = bundle.codec()  # in the layout the manifest's codec.id names
        if self.codec.num_channels != self.latent_shape[0]:
            raise BundleError(f"{bundle.path}: codec tables have {self.codec.num_channels} channels, the latent "
                              f"{self.latent_shape} has {self.latent_shape[0]}")

    @classmethod
    def open(cls, bundle: Bundle | str | Path, backend: str = "onnxruntime", device: str = "cpu",
             threads: int | None = None, *, options: Mapping[str, Any] | None = None) -> "DeviceEncoder":
        """Open the encoder of a split bundle with ``backend`` on ``device`` (see ``open_session``)."""
        opened, session = cls._open_session(bundle, backend, device, threads, options)
        return cls(opened, session)

    def symbols(self, images: Sequence[ImageInput]) -> np.ndarray:
        """int32 symbols (N, C, H, W) of a batch of images: preprocessing and the encoder graph, no coding."""
        symbols, _, _ = self._symbols(self._batch(images, "encode"))
        return symbols

    def _symbols(self, images: list[ImageInput]) -> tuple[np.ndarray, float, float]:
        symbols, pre_ms, graph_ms = self._run_graph(images)
        if symbols.dtype != np.int32 or tuple(symbols.shape[1:]) != self.latent_shape:
            raise BundleError(f"{self.bundle.path}: the encoder graph returned {symbols.dtype} symbols of shape "
                              f"{tuple(symbols.shape[1:])}; the manifest declares int32 {self.latent_shape}")
        return symbols, pre_ms, graph_ms

    def encode(self, image: ImageInput) -> bytes:
        """One image -> one payload (a bitstream frame carrying this bundle's fingerprint)."""
        return self.encode_batch([_one_image(image, "DeviceEncoder.encode", "encode_batch")])[0]

    def encode_batch(self, images: Sequence[ImageInput]) -> list[bytes]:
        """Several images -> one payload each, in order (graph calls of up to ``batch_size`` images)."""
        batch = self._batch(images, "encode")
        if not batch:
            return []
        t_start = time.perf_counter()
        symbols, pre_ms, graph_ms = self._symbols(batch)
        t0 = time.perf_counter()
        fingerprint = self.bundle.fingerprint
        payloads = [bitstream.encode_payload(self.codec, s, fingerprint=fingerprint) for s in symbols]
        self.last_timings = {"preprocess_ms": pre_ms, "graph_ms": graph_ms, "entropy_ms": _ms(t0),
                             "total_ms": _ms(t_start), "images": len(batch)}
        return payloads


class DeviceModel(_Runner):
    """A full (not split) bundle on the device: image -> ``Prediction``.

    ``last_timings`` holds the milliseconds of the last call: preprocess, graph, postprocess, total.
    """

    kind, part, output = "full", "model", "logits"

    def __init__(self, bundle: Bundle, session: BackendSession, top_k: int = DEFAULT_TOP_K) -> None:
        super().__init__(bundle, session)
        self.top_k = _check_top_k(top_k)

    @classmethod
    def open(cls, bundle: Bundle | str | Path, backend: str = "onnxruntime", device: str = "cpu",
             threads: int | None = None, *, top_k: int = DEFAULT_TOP_K,
             options: Mapping[str, Any] | None = None) -> "DeviceModel":
        """Open the model of a full bundle with ``backend`` on ``device`` (see ``open_session``)."""
        opened, session = cls._open_session(bundle, backend, device, threads, options)
        return cls(opened, session, top_k=top_k)

    def predict(self, image: ImageInput) -> Prediction:
        """One image -> its top-k prediction."""
        return self.predict_batch([_one_image(image, "DeviceModel.predict", "predict_batch")])[0]

    def predict_batch(self, images: Sequence[ImageInput]) -> list[Prediction]:
        """Several images -> one prediction each, in order."""
        batch = self._batch(images, "predict")
        if not batch:
            return []
        t_start = time.perf_counter()
        logits, pre_ms, graph_ms = self._run_graph(batch)
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            raise BundleError(f"{self.bundle.path}: the model returned logits of shape {logits.shape}; the manifest "
                              f"has {len(self.labels)} labels")
        t0 = time.perf_counter()
        predictions = predictions_from_logits(logits, self.labels, self.top_k, self.bundle.label_names)
        self.last_timings = {"preprocess_ms": pre_ms, "graph_ms": graph_ms, "postprocess_ms": _ms(t0),
                             "total_ms": _ms(t_start), "images": len(batch)}
        return predictions
