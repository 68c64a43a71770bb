"""Strict JSON for what the CLI prints and saves.

Python's json writes an infinite PSNR (identical pixels: a flat image, a lossless baseline) as `Infinity`,
which RFC 8259 does not allow and strict parsers (jq, JavaScript's JSON.parse, Python's own with
parse_constant raising) reject. Non-finite numbers are written as null instead; the tables show them as inf.
"""
from __future__ import annotations

import json
import math


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_text(value) -> str:
    """`value` as indented strict JSON, non-finite numbers as null."""
    return json.dumps(_finite(value), indent=1, allow_nan=False)
