"""Column names and output schemas: the one contract between stages, writers, tests and users."""

from __future__ import annotations

import pyarrow as pa

# Columns made by the readers.
KEY = "key"
SOURCE = "source"
IMAGE = "image"  # encoded bytes; dropped by the decode stage (kept for the GPU with decode.device=cuda)
TEXT = "text"
META = "meta"  # JSON string (img2dataset's KEY.json, or other columns of a Parquet row)
STATUS = "status"
ERROR = "error"
MASK = "mask"  # a region mask's encoded bytes (decode/regions.py); never written

# Columns made by the decode stage.
PIXELS = "pixels"  # prefix of the pixel columns: uint8 HxWx3 at a model's input size; never written


def pixel_column(section: str) -> str:
    """The pixel column a model section reads: `pixels_caption`, `pixels_itm`, `pixels_clip` (models whose
    processors want the same size share one: the decode stage names it after the first)."""
    return f"{PIXELS}_{section}"


WIDTH = "width"
HEIGHT = "height"
# Hashes of duplicates (`capfilt dedup`): the image bytes' sha256 (img2dataset's own, where its shards carry
# it: of the downloaded file) and a 64-bit perceptual hash as 16 hex digits (imagehash's phash)
SHA256 = "sha256"
PHASH = "phash"
# The sample's regions (decode/regions.py) as boxes [x0, y0, x1, y1] in pixels of the shown image: its
# boxes, then its mask's box; null where it has none. Per-region outputs are lists aligned with it.
REGIONS = "regions"
REGION_CAPTIONS = "region_captions"  # a caption per region (Florence-2's region prompts)
REGION_EMBEDDINGS = "region_embeddings"  # Alpha-CLIP: an image embedding per region
# Alpha-CLIP: the alt-text's score against each region, and each candidate's ([region][candidate])
REGION_TEXT_SCORES = "clip_region_text_scores"
REGION_CAPTION_SCORES = "clip_region_caption_scores"
# decode.device=cuda: instead of pixels, per row 1–8 = a JPEG for the GPU with this EXIF orientation,
# 0 = another format (decoded on the CPU by the model's actor); never written.
GPU_DECODE = "gpu_decode"

# Columns made by the model stages.
CAPTION = "caption"
CAPTIONS = "captions"
CAPTION_FLAGS = "caption_flags"  # per candidate: what went wrong (models/flags.py: truncated, repetition, ...)

# Columns of the clean (CapFilt) job.
TEXT_SCORE = "text_score"  # the alt-text's score by `clean.rank_by`
CAPTION_SCORES = "caption_scores"  # one per candidate, same scorer
KEEP_TEXT = "keep_text"  # the alt-text passes
KEEP = "keep"  # any text passes
SCORE_COLUMNS = {  # per scorer: (alt-text score, candidates' scores)
    "itm": ("itm_text_score", "itm_caption_scores"),  # BLIP ITM match probability
    "itc": ("itc_text_score", "itc_caption_scores"),  # BLIP ITC cosine
    "clip": ("clip_text_score", "clip_caption_scores"),  # CLIP cosine
}

# Curation (`curate` config, models/heads.py): heads on the CLIP image embedding, in `clean` and `embed`.
AESTHETIC_SCORE = "aesthetic_score"  # LAION's aesthetic predictor: a ~1–10 rating
NSFW_SCORE = "nsfw_score"  # LAION's CLIP NSFW detector: the probability of unsafe
HEAD_SCORES = (AESTHETIC_SCORE, NSFW_SCORE)

# Columns of the embeddings table (fixed-size lists, L2-normalised).
IMAGE_EMBEDDING = "image_embedding"
TEXT_EMBEDDING = "text_embedding"
PROMPT_EMBEDDING = "prompt_embedding"
EMBEDDINGS = (IMAGE_EMBEDDING, TEXT_EMBEDDING, PROMPT_EMBEDDING)

# Seconds each stage spent on the rows of a block so far, as JSON ({"CaptionImages": 1.2, ...}) on one row
# of the block (null on the others): how the driver's progress line knows the busiest stage. Never written.
BUSY = "_busy"

# Provenance: the run that wrote a row (dictionary-encoded: one string per file); `OUT/runs/<run_id>.json`
# is that run's report (config, model revisions, versions, counts).
RUN_ID = "run_id"
RUN_ID_TYPE = pa.dictionary(pa.int32(), pa.string())

OK = "ok"
# A row the reader emits after the last sample of a shard: it carries the shard's row count so the
# driver knows when a shard is complete and can commit it. Stages pass it through (status != ok) and
# the writer never writes it.
SHARD_END = "_shard_end"

# Error kinds a row's `status` can take (the `error` column says more).
READ_ERROR = "read_error"
MISSING_IMAGE = "missing_image"
DECODE_ERROR = "decode_error"
TOO_LARGE = "too_large"
UNSUPPORTED_FORMAT = "unsupported_format"
DUPLICATE_KEY = "duplicate_key"  # a key seen before in the same shard: kept as `KEY#dupN`
DECODE_CRASH = "decode_crash"  # the decoder process died on this image (twice)
BAD_REGION = "bad_region"  # a region that cannot be used: outside the image, empty, a mask of another size
DECODE_TIMEOUT = "decode_timeout"  # decoding took longer than decode.timeout_s
MODEL_ERROR = "model_error"  # a model stage raised on this row (after a retry of its batch)
MODEL_OOM = "model_oom"  # this row alone does not fit in the GPU's memory

CAPTIONS_SCHEMA = pa.schema(
    [
        pa.field(KEY, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(STATUS, pa.string(), nullable=False),
        pa.field(ERROR, pa.string()),
        pa.field(TEXT, pa.string()),
        pa.field(CAPTION, pa.string()),
        pa.field(CAPTIONS, pa.list_(pa.string())),
        pa.field(CAPTION_FLAGS, pa.list_(pa.list_(pa.string()))),
        pa.field(REGION_CAPTIONS, pa.list_(pa.string())),
        pa.field(WIDTH, pa.int32()),
        pa.field(HEIGHT, pa.int32()),
        pa.field(SHA256, pa.string()),
        pa.field(PHASH, pa.string()),
        pa.field(REGIONS, pa.list_(pa.list_(pa.float32()))),
        pa.field(META, pa.string()),
    ]
)

# Arrow types of the columns that pass between stages. Ray's numpy batches turn a string column that
# is all null into float NaN and a nullable int into float; our stage adapter converts with these.
COLUMN_TYPES: dict[str, pa.DataType] = {
    KEY: pa.string(), SOURCE: pa.string(), STATUS: pa.string(), ERROR: pa.string(), TEXT: pa.string(),
    META: pa.string(), IMAGE: pa.binary(), BUSY: pa.string(), CAPTION: pa.string(), CAPTIONS: pa.list_(pa.string()),
    CAPTION_FLAGS: pa.list_(pa.list_(pa.string())),
    WIDTH: pa.int32(), HEIGHT: pa.int32(), SHA256: pa.string(), PHASH: pa.string(),
    MASK: pa.binary(), REGIONS: pa.list_(pa.list_(pa.float32())),
    REGION_CAPTIONS: pa.list_(pa.string()), REGION_TEXT_SCORES: pa.list_(pa.float32()),
    REGION_CAPTION_SCORES: pa.list_(pa.list_(pa.float32())), REGION_EMBEDDINGS: pa.list_(pa.list_(pa.float32())),
    TEXT_SCORE: pa.float32(), CAPTION_SCORES: pa.list_(pa.float32()), KEEP_TEXT: pa.bool_(), KEEP: pa.bool_(),
    **{c: pa.float32() for c, _ in SCORE_COLUMNS.values()}, **{c: pa.float32() for c in HEAD_SCORES},
    **{c: pa.list_(pa.float32()) for _, c in SCORE_COLUMNS.values()},
}

_BASE = [
    pa.field(KEY, pa.string(), nullable=False),
    pa.field(SOURCE, pa.string(), nullable=False),
    pa.field(STATUS, pa.string(), nullable=False),
    pa.field(ERROR, pa.string()),
    pa.field(TEXT, pa.string()),
]


def clean_schema(scorers: tuple[str, ...], regions: bool = False, curated: list[pa.Field] | None = None) -> pa.Schema:
    """captions/ of `capfilt clean`: the caption columns, the chosen scorer's scores, keep flags, and
    every scorer's raw scores (`itm` brings `itc` with it: one BLIP forward gives both)."""
    kinds = [k for k in ("itm", "itc", "clip") if k in scorers or (k == "itc" and "itm" in scorers)]
    fields = [*_BASE,
              pa.field(CAPTION, pa.string()), pa.field(CAPTIONS, pa.list_(pa.string())),
              pa.field(CAPTION_FLAGS, pa.list_(pa.list_(pa.string()))),
              pa.field(REGION_CAPTIONS, pa.list_(pa.string())),
              pa.field(CAPTION_SCORES, pa.list_(pa.float32())), pa.field(TEXT_SCORE, pa.float32()),
              pa.field(KEEP_TEXT, pa.bool_()), pa.field(KEEP, pa.bool_())]
    for k in kinds:
        fields += [pa.field(SCORE_COLUMNS[k][0], pa.float32()), pa.field(SCORE_COLUMNS[k][1], pa.list_(pa.float32()))]
    fields += curated or []  # the curation heads' scores (head_fields)
    if regions:  # an Alpha-CLIP scorer: the alt-text and the candidates against each region
        fields += [pa.field(REGION_TEXT_SCORES, pa.list_(pa.float32())),
                   pa.field(REGION_CAPTION_SCORES, pa.list_(pa.list_(pa.float32())))]
    fields += [pa.field(WIDTH, pa.int32()), pa.field(HEIGHT, pa.int32()), pa.field(SHA256, pa.string()),
               pa.field(PHASH, pa.string()), pa.field(REGIONS, pa.list_(pa.list_(pa.float32()))), pa.field(META, pa.string())]
    return pa.schema(fields)


def head_fields(heads: tuple[str, ...] | list[str], keep: bool = False) -> list[pa.Field]:
    """The curation heads' score columns (HEAD_SCORES, those on), and `keep` where thresholds decide it."""
    return [*(pa.field(c, pa.float32()) for c in HEAD_SCORES if c in heads), *([pa.field(KEEP, pa.bool_())] if keep else [])]


def embeddings_schema(dims: dict[str, int], dtype: str = "float16", with_status: bool = False,
                      regions: bool = False, curated: list[pa.Field] | None = None) -> pa.Schema:
    """embeddings/: `key` and one fixed-size list column per embedding (null where there is none);
    `curated`: the curation heads' columns (head_fields)."""
    value = pa.float16() if dtype == "float16" else pa.float32()
    fields = [pa.field(KEY, pa.string(), nullable=False)]
    if with_status:
        fields += [pa.field(SOURCE, pa.string(), nullable=False), pa.field(STATUS, pa.string(), nullable=False),
                   pa.field(ERROR, pa.string()), pa.field(TEXT, pa.string()),
                   pa.field(WIDTH, pa.int32()), pa.field(HEIGHT, pa.int32()), pa.field(SHA256, pa.string()),
                   pa.field(PHASH, pa.string()), pa.field(REGIONS, pa.list_(pa.list_(pa.float32())))]
    fields += [pa.field(name, pa.list_(value, d)) for name, d in dims.items()]
    fields += curated or []
    if regions:  # Alpha-CLIP: an image embedding per region, aligned with `regions`
        fields.append(pa.field(REGION_EMBEDDINGS, pa.list_(pa.list_(value, dims[IMAGE_EMBEDDING]))))
    return pa.schema(fields)
