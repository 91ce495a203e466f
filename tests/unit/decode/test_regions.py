"""Regions as input: read from KEY.json boxes, a tar mask member or Parquet columns; a mask drawn on a
known object follows the image through EXIF rotation, resize and crop on both decode paths
(pixel-exact); a bad region is a row status."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import DecodeConfig, InputConfig
from pipeline.decode.geometry import Target
from pipeline.decode.regions import RegionError, box_map, parse_boxes, row_maps
from pipeline.io.readers import read_shard
from pipeline.io.shards import Shard
from pipeline.schema import BAD_REGION, ERROR, IMAGE, MASK, META, OK, REGIONS, SHARD_END, STATUS
from pipeline.stages.decode import DecodeImages
from tests.fixtures.samples import tar_bytes

# A stored 160×120 image (blue), a red object at x ∈ [40, 80), y ∈ [20, 60); EXIF orientation 6 shows it
# turned 90° clockwise: 120×160, the object at x ∈ [60, 100), y ∈ [40, 80).
W, H, OBJ = 160, 120, (40, 20, 80, 60)
SHOWN_BOX = [60, 40, 100, 80]
TARGETS = [Target("crop", 60, 60, "crop", shortest_edge=60), Target("squash", 80, 48),
           Target("pixels", 0, 0, "pixels", factor=28, min_pixels=56 * 56, max_pixels=200 * 200),
           Target("longest", 0, 0, "longest", resample=1, longest_edge=100)]


def stored() -> tuple[np.ndarray, np.ndarray]:
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 2] = 255
    mask = np.zeros((H, W), np.uint8)
    x0, y0, x1, y1 = OBJ
    img[y0:y1, x0:x1] = (255, 0, 0)
    mask[y0:y1, x0:x1] = 255
    return img, mask


def encode(arr: np.ndarray, orientation: int = 1) -> bytes:
    im = Image.fromarray(arr)
    exif = im.getexif()
    if orientation != 1:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="PNG", exif=exif.tobytes())
    return buf.getvalue()


def red(pixels: np.ndarray) -> np.ndarray:
    return (pixels[..., 0] >= 128) & (pixels[..., 2] < 128)


def decode_stage(images, metas=None, masks=None, inputs=None, targets=tuple(TARGETS)):
    n = len(images)
    batch = {IMAGE: np.array(images, dtype=object), STATUS: np.array([OK] * n, dtype=object),
             ERROR: np.array([None] * n, dtype=object), META: np.array(metas or [None] * n, dtype=object),
             MASK: np.array(masks or [None] * n, dtype=object)}
    return DecodeImages(DecodeConfig(formats=("PNG",)), targets, inputs or InputConfig())(batch)


@pytest.mark.parametrize("t", TARGETS, ids=[t.name for t in TARGETS])
def test_a_mask_follows_the_image_through_orientation_resize_and_crop_on_both_paths(t):
    import torch

    from pipeline.decode import gpu

    img, mask = stored()
    out = decode_stage([encode(img, 6)], [json.dumps({"regions": [SHOWN_BOX]})], [encode(mask)], targets=(t,))
    assert out[STATUS][0] == OK, out[ERROR][0]
    assert out[REGIONS][0] == [SHOWN_BOX, SHOWN_BOX]  # the box, then the mask's box
    maps = row_maps(out[REGIONS][0], out[MASK][0], 120, 160, t)
    cpu = out[t.name][0]
    assert maps.shape == (2, *cpu.shape[:2])
    object_px = red(cpu)
    assert 0 < object_px.sum() < object_px.size
    np.testing.assert_array_equal(maps[0] > 0, object_px)  # the box
    np.testing.assert_array_equal(maps[1] >= 128, object_px)  # the mask
    # The GPU path: orientation and resize on tensors by the same plan (on the CPU here; nvJPEG aside).
    frame = gpu.orient(torch.from_numpy(img).permute(2, 0, 1), 6)
    on_device = gpu.resize_on_device(frame, t).numpy()
    np.testing.assert_array_equal(maps[1] >= 128, red(on_device))


def test_boxes_in_pixels_and_normalized_and_what_is_refused():
    assert parse_boxes(json.dumps({"regions": [[0, 0, 10, 5]]}), "regions", "pixels", 20, 10) == [(0, 0, 10, 5)]
    assert parse_boxes(json.dumps({"regions": [[0.5, 0, 1, 0.5]]}), "regions", "normalized", 20, 10) == [(10, 0, 20, 5)]
    assert parse_boxes(json.dumps({"regions": "[[1, 1, 2, 2]]"}), "regions", "pixels", 20, 10) == [(1, 1, 2, 2)]
    assert parse_boxes(json.dumps({"url": "x"}), "regions", "pixels", 20, 10) == []
    assert parse_boxes(None, "regions", "pixels", 20, 10) == []
    for boxes, message in [([[0, 0, 30, 5]], "outside the 20x10 image"), ([[5, 5, 5, 8]], "is empty"),
                           ([[0, 0, 1]], "expected"), ([[0, 0, 1.5, 1]], "outside [0, 1]"), ("nope", "not a JSON list"),
                           ({"a": 1}, "expected a list")]:
        units = "normalized" if message == "outside [0, 1]" else "pixels"
        with pytest.raises(RegionError, match=message.replace("[", r"\[")):
            parse_boxes(json.dumps({"regions": boxes}), "regions", units, 20, 10)


def test_box_map_marks_pixel_centres_inside_the_box():
    m = box_map((2, 2, 6, 4), 8, 8, Target("p", 4, 4))  # halved: x ∈ [1, 3), y ∈ [1, 2)
    assert m.tolist() == [[0, 0, 0, 0], [0, 255, 255, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    m = box_map((1, 2, 3, 4), 8, 8, Target("p", 4, 4))  # x ∈ [0.5, 1.5): only the centre 0.5
    assert m.tolist() == [[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_a_bad_region_is_a_status_on_its_row_and_the_others_decode():
    img, mask = stored()
    good = encode(img)
    rows = [
        (json.dumps({"regions": [[0, 0, 10, 10]]}), None, OK),
        (json.dumps({"regions": [[0, 0, 500, 10]]}), None, "outside the 160x120 image"),
        (json.dumps({"regions": [[10, 10, 5, 20]]}), None, "is empty"),
        (None, encode(mask[:50]), "mask: 160x50, but the image is 160x120"),
        (None, b"not a png", "mask: unreadable"),
        (None, encode(np.zeros_like(mask)), "mask: empty"),
        (None, None, OK),
    ]
    out = decode_stage([good] * len(rows), [r[0] for r in rows], [r[1] for r in rows])
    for i, (_, _, want) in enumerate(rows):
        if want == OK:
            assert out[STATUS][i] == OK
        else:
            assert out[STATUS][i] == BAD_REGION and want in out[ERROR][i], (i, out[ERROR][i])
    assert out[REGIONS][0] == [[0, 0, 10, 10]] and out[REGIONS][6] is None


def test_regions_are_read_from_tar_members_and_parquet_columns(tmp_path):
    img, mask = stored()
    tar = tmp_path / "00000.tar"
    tar.write_bytes(tar_bytes({"a.png": encode(img), "a.json": json.dumps({"regions": [[1, 2, 3, 4]]}).encode(),
                               "a.mask.png": encode(mask), "b.png": encode(img)}))
    pq.write_table(pa.table({"key": ["a", "b"], "jpg": [encode(img), encode(img)], "regions": [[[1.0, 2, 3, 4]], None],
                             "mask": [encode(mask), None]}), tmp_path / "p.parquet")
    for shard in (Shard(str(tar), "webdataset"), Shard(str(tmp_path / "p.parquet"), "parquet")):
        got = [r for t in read_shard(shard, InputConfig(), {}) for r in t.to_pylist() if r[STATUS] != SHARD_END]
        assert [r["key"] for r in got] == ["a", "b"]
        assert got[0][MASK] == encode(mask) and got[1][MASK] is None
        out = decode_stage([r[IMAGE] for r in got], [r[META] for r in got], [r[MASK] for r in got])
        assert list(out[STATUS]) == [OK, OK]
        assert out[REGIONS][0] == [[1, 2, 3, 4], [float(v) for v in OBJ]] and out[REGIONS][1] is None
