"""The codec ids this version codes, and the byte each one has in a bitstream frame: the one table of both."""

from __future__ import annotations

CODEC_ID = "factorized-v3"  # what new tables code with
LEGACY_CODEC_ID = "factorized-v1"  # whole 32-bit words; decoded for bundles exported before v2
V2_CODEC_ID = "factorized-v2"  # byte-trimmed, no check state; decoded for bundles exported before v3

# Codec id -> its byte on the wire. Append only: a byte, once given out, keeps its meaning (golden frames pin it).
CODEC_BYTES: dict[str, int] = {LEGACY_CODEC_ID: 1, V2_CODEC_ID: 2, CODEC_ID: 3}
