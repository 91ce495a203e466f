import numpy as np
import pyarrow as pa
from ray.data.extensions import ArrowTensorArray

from pipeline.columns import to_arrow, to_numpy


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert [np.asarray(x).tolist() if isinstance(x, np.ndarray) else x for x in a[name]] == \
               [np.asarray(x).tolist() if isinstance(x, np.ndarray) else x for x in b[name]], name


def test_a_table_in_chunks_converts_as_the_same_table_in_one():
    # A fused read hands a block whose last rows are a chunk of their own (the shard's end row):
    # its columns are read chunk by chunk, never combined first, with the same values and types.
    batch = {"key": np.array(["a", "b", "c"], dtype=object), "image": np.array([b"\xff", None, b""], dtype=object),
             "n": np.array([1, 2, 3]), "f": np.array([1.0, None, 2.0], dtype=object),
             "boxes": np.array([[[0, 0, 1, 1]], None, []], dtype=object),
             "pixels_clip": np.arange(3 * 2 * 2 * 3, dtype=np.uint8).reshape(3, 2, 2, 3)}
    whole = to_arrow(batch, tensor=ArrowTensorArray.from_numpy)
    chunked = pa.concat_tables([whole.slice(0, 2), whole.slice(2)])
    assert chunked["image"].num_chunks == 2
    _same(to_numpy(chunked), to_numpy(whole.combine_chunks()))
    assert to_numpy(chunked)["image"].tolist() == [b"\xff", None, b""]
    assert to_numpy(chunked)["f"].tolist() == [1.0, None, 2.0]  # a null in a numeric column: objects
    assert to_numpy(chunked)["n"].dtype == np.int64
