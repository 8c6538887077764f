"""Input-codec baselines: every codec round-trips through Pillow, lower quality gives fewer bytes, ranges checked."""

from __future__ import annotations

import numpy as np
import pytest

from edgesplit.errors import ConfigError
from edgesplit.train.evaluate import INPUT_CODECS, compress_image


def _crop() -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64]
    img = np.stack([(x * 4) % 256, (y * 4) % 256, ((x + y) * 2) % 256], -1).astype(np.uint8)
    return np.clip(img.astype(int) + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("codec", INPUT_CODECS)
def test_codec_round_trips_and_rate_follows_quality(codec: str) -> None:
    if codec == "jxl":
        pytest.importorskip("pillow_jxl", reason="pip install edgesplit[codecs]")
    crop = _crop()
    low, n_low = compress_image(crop, codec, 10)
    high, n_high = compress_image(crop, codec, 90)
    assert low.shape == high.shape == crop.shape and low.dtype == np.uint8
    assert n_low < n_high
    err_low = np.abs(low.astype(int) - crop).mean()
    err_high = np.abs(high.astype(int) - crop).mean()
    assert err_high < err_low  # the decoded image is what was coded, not the input


@pytest.mark.parametrize("codec,quality", [("jpeg", 0), ("webp", 101), ("avif", -1), ("jxl", 101)])
def test_quality_out_of_range(codec: str, quality: int) -> None:
    with pytest.raises(ConfigError, match="quality must be"):
        compress_image(_crop(), codec, quality)


def test_unknown_codec() -> None:
    with pytest.raises(ConfigError, match="unknown input codec"):
        compress_image(_crop(), "bpg", 50)
