"""The isolated decoder: a crash or a hang costs the image it happened on, as a row, never the batch."""

from __future__ import annotations

import time

import pytest

from pipeline.config import DecodeConfig
from pipeline.decode.geometry import Target
from pipeline.decode.isolated import IsolatedDecoder
from pipeline.schema import DECODE_CRASH, DECODE_TIMEOUT, OK
from tests.fixtures.hostile import POISON
from tests.fixtures.samples import jpeg

HANG = b"CAPFILT-HANG"
TARGETS = (Target("p", 32, 32),)


@pytest.fixture()
def fresh_child(monkeypatch):
    """A decoder child started with the hang failpoint in its environment (and none left behind)."""
    monkeypatch.setenv("CAPFILT_FAILPOINT_DECODE_HANG", HANG.decode())
    IsolatedDecoder.close()
    yield
    IsolatedDecoder.close()


def test_a_hang_becomes_a_decode_timeout_row_and_the_rest_decode(fresh_child, photos):
    good = jpeg(photos[0])
    start = time.monotonic()
    out = IsolatedDecoder.decode([good, HANG + good, good, good], TARGETS, DecodeConfig(timeout_s=2))
    took = time.monotonic() - start
    assert [r[0] for r in out] == [OK, DECODE_TIMEOUT, OK, OK]
    assert "decode.timeout_s=2s" in out[1][1] and out[2][1]["p"].shape == (32, 32, 3)
    assert took < 2 + 10  # the deadline, plus starting a new child
    print(f"a hung image cost {took:.1f}s with decode.timeout_s=2")


def test_a_crash_is_tried_once_more_then_becomes_a_decode_crash_row(fresh_child, photos):
    good = jpeg(photos[1])
    out = IsolatedDecoder.decode([good, POISON + good, good], TARGETS, DecodeConfig())
    assert [r[0] for r in out] == [OK, DECODE_CRASH, OK]
    assert "2 attempts" in out[1][1]


def test_a_healthy_child_is_reused(fresh_child, photos):
    IsolatedDecoder.decode([jpeg(photos[0])], TARGETS, DecodeConfig())
    pid = IsolatedDecoder.proc.pid
    out = IsolatedDecoder.decode([jpeg(photos[2])] * 3, TARGETS, DecodeConfig())
    assert [r[0] for r in out] == [OK] * 3 and IsolatedDecoder.proc.pid == pid
