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


def test_pixels_come_back_through_the_shared_file_equal_to_an_in_process_decode(fresh_child, photos):
    """More pixels than the shared file holds (~78 MiB of 512×512 images > WRAP_BYTES): the child starts over
    at its beginning after the parent has taken the earlier ones; every array equals decode_many's."""
    import os

    import numpy as np

    from pipeline.decode.child import WRAP_BYTES
    from pipeline.decode.image import decode_many

    targets = (Target("big", 512, 512), Target("small", 32, 32))
    datas = [jpeg(photos[i % len(photos)], quality=70 + i % 20) for i in range(100)]
    cfg = DecodeConfig(batch_size=100)
    out = IsolatedDecoder.decode(datas, targets, cfg)
    here = decode_many(datas, targets, cfg)
    assert sum(a.nbytes for r in out for a in r[1].values()) > WRAP_BYTES
    for (kind, px, w, h, hashed), (kind2, px2, w2, h2, hashed2) in zip(out, here, strict=True):
        assert (kind, w, h, hashed) == (kind2, w2, h2, hashed2) == (OK, w, h, hashed)
        assert px.keys() == px2.keys() and all(np.array_equal(px[k], px2[k]) and px[k].flags.owndata for k in px)
    assert os.fstat(IsolatedDecoder.pixels.fd).st_size <= WRAP_BYTES  # started over, not grown with the batch
    again = IsolatedDecoder.decode(datas[:3], targets, cfg)  # the next request reuses the file from its start
    assert all(np.array_equal(a[1]["big"], b[1]["big"]) for a, b in zip(again, here, strict=False))


def test_a_full_shared_file_sends_what_does_not_fit_through_the_pipe(fresh_child, monkeypatch, photos):
    """As on a full /dev/shm (a container's is 64 MiB): neither file may grow past 1 MiB here, so the
    request's bytes (over 1 MiB) go through the pipe, and the pixels of the images that no longer fit
    too; every result still equals the in-process decode."""
    import os

    import numpy as np

    from pipeline.decode import child
    from pipeline.decode.image import decode_many

    room = 1 << 20
    monkeypatch.setenv("CAPFILT_FAILPOINT_SHARED_BYTES", str(room))  # the child's files
    monkeypatch.setattr(child, "_ROOM", room)  # this process's
    monkeypatch.setattr(IsolatedDecoder, "pixels", None)  # new, empty files
    monkeypatch.setattr(IsolatedDecoder, "inputs", None)
    targets = (Target("big", 512, 512),)
    datas = [jpeg(photos[i % len(photos)], quality=95 - i % 10) for i in range(90)]
    assert sum(map(len, datas)) > room
    out = IsolatedDecoder.decode(datas, targets, DecodeConfig(batch_size=90))
    here = decode_many(datas, targets, DecodeConfig(batch_size=90))
    assert [r[0] for r in out] == [OK] * 90
    assert all(np.array_equal(a[1]["big"], b[1]["big"]) for a, b in zip(out, here, strict=True))
    assert os.fstat(IsolatedDecoder.inputs.fd).st_size == 0  # the bytes never fitted: all went by the pipe
    assert 0 < os.fstat(IsolatedDecoder.pixels.fd).st_size <= room  # the first pixels fitted, the rest did not


def test_pixels_are_written_into_the_rows_given_across_the_files_restart(fresh_child, photos):
    """The decode stage hands each image's rows of its columns: the child's pixels are copied straight
    there (no array of their own), across the shared file's restart; a target without a row given, or
    with one of another shape, comes back as its own array; every value equals decode_many's."""
    import numpy as np

    from pipeline.decode.image import decode_many

    targets = (Target("big", 512, 512), Target("small", 32, 32), Target("odd", 16, 16))
    n = 100  # ~78 MiB of 512×512 pixels: past WRAP_BYTES
    datas = [jpeg(photos[i % len(photos)], quality=70 + i % 20) for i in range(n)]
    datas[7] = b"not an image"
    big = np.zeros((n, 512, 512, 3), np.uint8)
    odd = np.zeros((n, 8, 8, 3), np.uint8)  # not the target's shape: never written
    into = [{"big": big[i], "odd": odd[i]} for i in range(n)]
    out = IsolatedDecoder.decode(datas, targets, DecodeConfig(batch_size=n), into)
    here = decode_many(datas, targets, DecodeConfig(batch_size=n))
    for i, ((kind, px, *rest), (kind2, px2, *rest2)) in enumerate(zip(out, here, strict=True)):
        assert (kind, rest) == (kind2, rest2)
        if kind != OK:
            assert i == 7 and not big[i].any()
            continue
        assert px.keys() == {"small", "odd"}
        assert np.array_equal(big[i], px2["big"]) and np.array_equal(px["small"], px2["small"])
        assert np.array_equal(px["odd"], px2["odd"])
    assert not odd.any()
