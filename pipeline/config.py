"""Typed, validated config: YAML file + `--set key=value` overrides → a frozen `Config`.

Every error is one line naming the field, what was expected and what came, e.g.
`config: caption.num_beams: expected int, got 'three'`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad config: the message names the field."""


@dataclass(frozen=True)
class InputConfig:
    format: Literal["auto", "webdataset", "parquet", "folder"] = "auto"
    # Where a sample's image, alt-text and key are (io/layout.py): "auto" finds them by common names
    # (img2dataset's `jpg` + `caption`, Hugging Face's `image` struct + `text`/`caption`, LAION's `TEXT`, ...).
    image_column: str = "auto"  # Parquet: bytes, or a struct with a `bytes` field (Hugging Face's Image)
    # Parquet: the alt-text column; webdataset: the alt-text member (`txt`); null: the input has no alt-text
    text_column: str | None = "auto"
    text_field: str | None = None  # webdataset: the alt-text is this field of KEY.json instead of a member
    key_column: str = "auto"  # Parquet: the key column (`key`, `uid`), else `<file>/<row>`
    image_extensions: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
    rows_per_block: int = 64  # rows per block a read task yields (a block streams, a shard never loads whole)
    max_image_bytes: int = 64 * 2**20  # a larger member/file is not read: its row gets `too_large`
    max_text_chars: int = 16384  # longer alt-text is cut (web alt-text can be megabytes of junk)
    # Transient read errors (the filesystem's OSError: throttling past botocore's retries, resets, timeouts,
    # 403 expired credentials, 5xx): the shard is read again this many more times, backing off from
    # retry_backoff_s (doubling, at most 60 s); then it fails, uncommitted, and the run exits 4.
    # A folder is read as shards of this many samples (image + same-name .txt), each committed on its own
    # (0: a whole folder is one shard).
    files_per_shard: int = 1000
    # Regions (decode/regions.py): boxes in a KEY.json field / Parquet column, in pixels of the shown image
    # or normalized to [0, 1]; a mask as a tar member (KEY.mask.png) or a Parquet bytes column.
    regions_field: str = "regions"
    region_units: Literal["pixels", "normalized"] = "pixels"
    mask_member: str = "mask.png"
    mask_column: str = "mask"
    read_retries: int = 5
    retry_backoff_s: float = 1.0
    # CPUs per read task; null = decode.num_cpus, so that Ray fuses each read with its decode in one
    # task (the JPEG bytes never go through the object store, and there is one pool of task workers).
    num_cpus: float | None = None


@dataclass(frozen=True)
class DecodeConfig:
    max_pixels: int = 50_000_000  # checked from the header, before any pixel is decoded
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # PIL format names
    fast: bool = True  # JPEG: libjpeg-turbo scaled decode + area resize (≈3×; cos ≥ 0.99 vs the processor path)
    draft: bool = True  # PIL path: JPEG DCT-scaled decoding when the image is ≥2× the model's input size
    isolate: bool = True  # decode in a child process: a decoder crash becomes a row, not a dead task
    max_memory_mb: int = 2048  # address-space cap of that child: a bomb that slips past max_pixels fails alone
    timeout_s: float = 60.0  # per image, in that child: a decoder that hangs longer makes a `decode_timeout` row (0: none)
    batch_size: int = 32
    num_cpus: float = 0.5
    concurrency: int | None = None  # decode tasks in flight; null = as many as the CPUs allow
    # "cuda": JPEGs are decoded by each model's actor on its GPU (nvJPEG via torchvision) and resized
    # there; the CPU tasks check headers only (format, max_pixels) and pass the bytes on. For fast models
    # whose CPU decode is the bottleneck (CLIP B/32). Other formats decode on the CPU in the actor.
    device: Literal["cpu", "cuda"] = "cpu"


@dataclass(frozen=True)
class ModelConfig:
    """Where a model comes from and how Ray runs it: one actor pool per model stage."""

    model: str = ""  # HF id, local dir, s3:// dir, or tiny:<name>
    revision: str | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    trust_remote_code: bool = False
    batch_size: int = 16
    num_gpus: float = 0.0  # per actor; fractional packs several models on one GPU
    num_cpus: float = 1.0
    num_threads: int | None = None  # torch threads per actor on CPU; null = ceil(num_cpus)
    # Actors in the pool. null: on GPUs (num_gpus > 0), from one up to one per GPU of the cluster (for each
    # set of the job's models: Ray Data's autoscaling pool); on CPUs, one
    concurrency: int | None = None
    compile: bool = False  # torch.compile the vision tower on a GPU (first batches pay the compile)
    # Two batches in each actor: one's CPU work (staging, processor, copies, token decoding) while the other
    # is on the device (models/turns.py); false: one batch at a time
    overlap: bool = True


@dataclass(frozen=True)
class CaptionConfig(ModelConfig):
    model: str = "Salesforce/blip-image-captioning-base"
    strategy: Literal["greedy", "beam", "sample"] = "beam"
    num_beams: int = 3
    num_captions: int = 1  # candidates per image (sampling, or the top beams)
    top_p: float = 0.9
    temperature: float = 1.0
    max_new_tokens: int = 20
    min_new_tokens: int = 5
    prompt: str | None = None  # conditional captioning, e.g. "a photography of"
    seed: int = 0
    # KV cache of generation: "static" preallocates it, and on a GPU transformers then compiles the
    # decoder step (torch.compile) for the models it marks compilable (BLIP-2 OPT/Flan-T5, GPT-2 decoders);
    # BLIP's own text decoder does not support it.
    cache: Literal["dynamic", "static"] = "dynamic"
    # LLaVA only: an Alpha-CLIP directory (`capfilt convert alpha-clip`) in place of its CLIP vision tower:
    # region-focused captions (`region_captions`), the whole image (an all-ones alpha) for `caption`.
    vision_tower: str | None = None


@dataclass(frozen=True)
class ItmConfig(ModelConfig):
    """BLIP image-text matching (`BlipForImageTextRetrieval`): ITM probability and ITC cosine."""

    model: str = "Salesforce/blip-itm-base-coco"
    max_text_tokens: int = 35  # BLIP's own text length for retrieval


@dataclass(frozen=True)
class ClipConfig(ModelConfig):
    """CLIP (`CLIPModel`, any size): cosine similarity of L2-normalised embeddings; also the embedder."""

    model: str = "openai/clip-vit-large-patch14"


@dataclass(frozen=True)
class TextEmbedConfig(ModelConfig):
    """A sentence-transformers model for prompt embeddings (all-MiniLM-L6-v2: 384-d)."""

    model: str = "sentence-transformers/all-MiniLM-L6-v2"
    batch_size: int = 128


@dataclass(frozen=True)
class CleanConfig:
    """CapFilt: which scorers judge the alt-text and the candidates, and how a row is kept."""

    scorers: tuple[Literal["itm", "clip"], ...] = ("itm",)
    # threshold: the thresholds below; top_fraction: a global cut after the run; keep_fraction: the threshold
    # of rank_by calibrated on the first shards (pipeline/review/calibration.py); rerank: LAION-COCO
    mode: Literal["threshold", "top_fraction", "keep_fraction", "rerank"] = "threshold"
    rank_by: Literal["itm", "clip"] = "itm"  # the score `caption`, `keep` and top_fraction use
    itm_threshold: float = 0.5  # BLIP's authors' advice
    clip_threshold: float = 0.28  # LAION's cut for ViT-B/32; pick per model
    fraction: float = 0.3  # top_fraction: this share of ok rows, by their best text; keep_fraction: of alt-texts
    calibration_shards: int = 4  # keep_fraction: shards held back to calibrate the threshold on
    top_k: int = 1  # rerank: candidates kept per image, best first (LAION-COCO)
    embed: bool = False  # also write the CLIP embeddings table in the same pass


@dataclass(frozen=True)
class EmbedConfig:
    dtype: Literal["float16", "float32"] = "float16"
    text: bool = True  # also embed the alt-text where there is one


@dataclass(frozen=True)
class CurateConfig:
    """Curation heads on the CLIP image embedding the job computes anyway (models/heads.py), in `clean`
    and `embed`: each a `.pth`/`.safetensors` path or URI in its released layout, or null (off). They were
    trained on CLIP ViT-L/14's 768-d space: the CLIP model must project to it."""

    aesthetic: str | None = None  # LAION's improved aesthetic predictor (MLP), or an older linear head
    nsfw: str | None = None  # LAION's CLIP NSFW detector, PyTorch form
    aesthetic_min: float | None = None  # keep needs aesthetic_score ≥ this (LAION-Aesthetics: 6 or 7)
    nsfw_max: float | None = None  # keep needs nsfw_score < this (clip-retrieval: 0.5)

    @property
    def heads(self) -> dict[str, str]:
        """The heads that are on: score column → file."""
        return {c: uri for c, uri in (("aesthetic_score", self.aesthetic), ("nsfw_score", self.nsfw)) if uri}


@dataclass(frozen=True)
class DedupConfig:
    """`capfilt dedup OUT` (pipeline/dedup): which duplicates to find among a finished run's rows."""

    exact: bool = True  # equal sha256
    perceptual: bool = True  # phashes within phash_distance bits
    phash_distance: int = 4  # re-encodes and 0.5×/2× resizes of a photo: 0–4 bits; other photos: ~32
    semantic: bool | None = None  # SemDeDup on the image embeddings; null: when the output has them
    eps: float = 0.05  # semantic duplicates: cosine ≥ 1 − eps to an item ranked before, in the same cluster
    clusters: int | None = None  # k-means clusters; null: one per ~5,000 embeddings
    sample: int = 100_000  # embeddings the k-means is fitted on (a bounded sample)
    keep: Literal["hard", "easy", "score"] = "hard"  # which item of a group stays (after rows the run kept)
    score_column: str = "aesthetic_score"  # keep: score — the column whose highest stays
    seed: int = 0


@dataclass(frozen=True)
class OutputConfig:
    compression: str = "zstd"
    # The driver holds at most this many rows of an open shard; the rest wait as parts in OUT/_staging/
    # until the shard commits as one file (one row group per part): its memory does not grow with shard size.
    rows_per_part: int = 4096


@dataclass(frozen=True)
class RunConfig:
    address: str | None = None  # Ray cluster to attach to; null = RAY_ADDRESS or a local Ray
    progress: Literal["auto", "bar", "log", "none"] = "auto"
    log_every_s: float = 10.0
    num_cpus: int | None = None  # local Ray only; null = all cores
    stall_timeout_s: float = 1800.0  # no block for this long (lost node, hung actor) → exit 3 with a message
    grace_s: float = 30.0  # on SIGTERM/SIGINT: how long the shards in flight may take to commit, then exit 5
    # The steady rate (and the ETA from it) is measured over this many seconds at least, once every stage
    # has produced (the first block reached the driver); a shorter run reports none.
    steady_window_s: float = 10.0
    verbose: bool = False  # --verbose: the libraries' own notices and progress bars on stderr too
    # Attached to a one-node Ray (`ray start --head`, then --address): the model actors stay loaded this
    # many seconds after a run, for the next run with the same models (ray_start.keep_warm_s); 0: off.
    keep_warm_s: float = 300.0


@dataclass(frozen=True)
class Config:
    input: InputConfig = field(default_factory=InputConfig)
    storage: dict[str, Any] = field(default_factory=dict)  # fsspec storage options (s3fs: endpoint_url, ...)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    itm: ItmConfig = field(default_factory=ItmConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    text_embed: TextEmbedConfig = field(default_factory=TextEmbedConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self, redact: bool = True) -> dict[str, Any]:
        """Plain dict of the config; storage options that look like secrets are redacted."""
        d = dataclasses.asdict(self)
        if redact:
            d["storage"] = redact_options(d["storage"])
        return d

    def digest(self, sections: tuple[str, ...] | None = None) -> str:
        """Short hash of the settings that change the output: the job's sections, less Ray wiring."""
        d = self.to_dict()
        keep = sections or tuple(k for k in d if k not in ("run", "storage"))
        d = {k: v for k, v in d.items() if k in keep + ("input", "decode", "output")}
        for section in d.values():
            if isinstance(section, dict):
                for wiring in ("batch_size", "num_gpus", "num_cpus", "num_threads", "concurrency", "overlap", "rows_per_block",
                               "read_retries", "retry_backoff_s", "timeout_s", "files_per_shard", "rows_per_part"):
                    section.pop(wiring, None)
        # Where the alt-text and images are read from is not a setting of the output: a rerun that fixes a
        # column name resumes the same output (each shard's marker records the columns it was read by).
        for where in ("image_column", "text_column", "text_field"):
            d.get("input", {}).pop(where, None)
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


_SECRET_WORDS = ("secret", "key", "token", "password", "credential", "session")


def redact_options(options: Any) -> Any:
    """Replaces values whose key looks like a credential with '***' (recursively)."""
    if isinstance(options, dict):
        return {
            k: "***" if any(w in str(k).lower() for w in _SECRET_WORDS) else redact_options(v)
            for k, v in options.items()
        }
    return options


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "list of " + _type_name(typing.get_args(tp)[0])
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Checks `value` against the annotation `tp`; returns it converted (lists → tuples, int → float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin is tuple:
        if isinstance(value, list | tuple):
            (item,) = typing.get_args(tp)[:1]
            return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this loader does not know is a programming error
        raise TypeError(f"unsupported config type {tp!r} at {where}")
    raise ConfigError(f"config: {where}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: Any, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config: {where or 'top level'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            path = f"{where}.{k}" if where else str(k)
            raise ConfigError(f"config: {path}: unknown field (expected one of: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    cfg = cls(**kwargs)
    _check_ranges(cfg, where)
    return cfg


_POSITIVE = {"batch_size", "clusters", "sample", "num_beams", "num_captions", "max_new_tokens", "max_pixels", "rows_per_block",
             "concurrency", "top_k", "max_text_tokens", "max_image_bytes", "max_text_chars", "max_memory_mb"}
_NON_NEGATIVE = {"rows_per_part", "files_per_shard", "grace_s", "timeout_s", "read_retries", "retry_backoff_s",
                 "stall_timeout_s", "steady_window_s", "keep_warm_s",
                 "num_gpus", "num_cpus", "min_new_tokens", "temperature"}


def _check_ranges(cfg: Any, where: str) -> None:
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        path = f"{where}.{f.name}" if where else f.name
        if f.name in _POSITIVE and v is not None and not isinstance(v, dict) and v <= 0:
            raise ConfigError(f"config: {path}: expected a positive number, got {v!r}")
        if f.name in _NON_NEGATIVE and v is not None and v < 0:
            raise ConfigError(f"config: {path}: expected a number ≥ 0, got {v!r}")
    if isinstance(cfg, DecodeConfig):
        from PIL import Image

        Image.init()
        for fmt in cfg.formats:
            if fmt.upper() not in Image.OPEN:
                raise ConfigError(f"config: {where}.formats: expected PIL format names such as JPEG, PNG, WEBP; "
                                  f"got {fmt!r}")
    if isinstance(cfg, CleanConfig):
        _check_clean(cfg, where)
    if isinstance(cfg, DedupConfig):
        if not 0 <= cfg.phash_distance <= 16:
            raise ConfigError(f"config: {where}.phash_distance: expected 0..16 bits, got {cfg.phash_distance!r}")
        if not 0 < cfg.eps < 1:
            raise ConfigError(f"config: {where}.eps: expected a number in (0, 1), got {cfg.eps!r}")
    if isinstance(cfg, CurateConfig):
        for threshold, head in (("aesthetic_min", "aesthetic"), ("nsfw_max", "nsfw")):
            if getattr(cfg, threshold) is not None and not getattr(cfg, head):
                raise ConfigError(f"config: {where}.{threshold}: set, but {where}.{head} (the head it thresholds) is not")
    if isinstance(cfg, CaptionConfig):
        if not 0 < cfg.top_p <= 1:
            raise ConfigError(f"config: {where}.top_p: expected a number in (0, 1], got {cfg.top_p!r}")
        if cfg.strategy == "greedy" and cfg.num_captions != 1:
            raise ConfigError(f"config: {where}.num_captions: expected 1 with strategy 'greedy', got {cfg.num_captions}")
        if cfg.strategy == "beam" and cfg.num_captions > cfg.num_beams:
            raise ConfigError(
                f"config: {where}.num_captions: expected ≤ num_beams ({cfg.num_beams}) with strategy 'beam', "
                f"got {cfg.num_captions}"
            )


def _check_clean(cfg: CleanConfig, where: str) -> None:
    if not cfg.scorers:
        raise ConfigError(f"config: {where}.scorers: expected at least one of 'itm', 'clip', got []")
    if cfg.rank_by not in cfg.scorers:
        raise ConfigError(f"config: {where}.rank_by: expected one of the scorers {list(cfg.scorers)}, "
                          f"got {cfg.rank_by!r}")
    if not 0 < cfg.fraction <= 1:
        raise ConfigError(f"config: {where}.fraction: expected a number in (0, 1], got {cfg.fraction!r}")
    if cfg.calibration_shards < 1:
        raise ConfigError(f"config: {where}.calibration_shards: expected an integer >= 1, got {cfg.calibration_shards!r}")


def parse_override(item: str) -> tuple[list[str], Any]:
    """`caption.batch_size=32` → (['caption', 'batch_size'], 32); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"config: --set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"config: --set {item!r}: expected a dotted key such as caption.batch_size")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML (e.g. a prompt with colons): the plain string; the field's type still checks it
    return parts, value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                defaults: dict[str, dict[str, Any]] | None = None) -> Config:
    """Loads a job's defaults (each job declares its own), then YAML, then `--set` overrides; validates once."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config: file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config: {p}: not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config: {p}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
    data = _merge(defaults or {}, data)
    for item in overrides or []:
        parts, value = parse_override(item)
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"config: {'.'.join(parts)}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return _build(Config, data, "")
