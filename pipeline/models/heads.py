"""Curation heads on the L2-normalised CLIP ViT-L/14 image embedding, in the layouts their authors released:

- LAION's improved aesthetic predictor v2 (`sac+logos+ava1-l14-linearMSE.pth`, christophschuhmann/
  improved-aesthetic-predictor): an MLP 768→1024→128→64→16→1 with dropouts 0.2, 0.2, 0.1 and no
  activations; state-dict keys `layers.{0,2,4,6,7}.{weight,bias}`. A ~1–10 rating (LAION-Aesthetics
  keeps > 6 or > 7).
- The older linear heads of LAION-AI/aesthetic-predictor (`sa_0_4_vit_l_14_linear.pth`,
  `sa_0_4_vit_b_32_linear.pth`): `weight` (1, d), `bias` (1,).
- LAION's CLIP-based NSFW detector (clip-retrieval's `clip_autokeras_binary_nsfw`) in its PyTorch form:
  keys `norm.mean`, `norm.variance` (Keras' Normalization), `linear_{1..4}.{weight,bias}`: Dense 64, 512,
  256 with ReLU, Dense 1, sigmoid. 1 = unsafe (clip-retrieval calls > 0.5 unsafe).

Loaded with `torch.load(weights_only=True)` (a `.pth` is a pickle: nothing but tensors is unpickled) or
from `.safetensors`, from a path or any fsspec URI. A file whose keys or shapes differ from the layout is
refused in one line naming the file and the first mismatch.

The watermark detector (LAION-5B-WatermarkDetection, timm's `efficientnet_b3a` backbone) is not here: timm
needs torchvision, which does not import beside this project's CPU torch build (see README).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

L14_DIM = 768  # CLIP ViT-L/14's projection: the space the released aesthetic MLP and NSFW heads were trained in


class HeadError(ValueError):
    """A head file that does not match its released layout."""


def mlp_layout(dim: int = L14_DIM) -> dict[str, tuple[int, ...]]:
    """The improved aesthetic predictor's state dict (nn.Sequential indices: dropouts hold no weights)."""
    sizes = [(1024, dim), (128, 1024), (64, 128), (16, 64), (1, 16)]
    out: dict[str, tuple[int, ...]] = {}
    for index, (o, i) in zip((0, 2, 4, 6, 7), sizes, strict=True):
        out[f"layers.{index}.weight"], out[f"layers.{index}.bias"] = (o, i), (o,)
    return out


def linear_layout(dim: int) -> dict[str, tuple[int, ...]]:
    """LAION-AI/aesthetic-predictor's linear head: nn.Linear(dim, 1)."""
    return {"weight": (1, dim), "bias": (1,)}


def nsfw_layout(dim: int = L14_DIM) -> dict[str, tuple[int, ...]]:
    """The CLIP NSFW detector's PyTorch state dict."""
    out: dict[str, tuple[int, ...]] = {"norm.mean": (dim,), "norm.variance": (dim,)}
    for k, (o, i) in enumerate([(64, dim), (512, 64), (256, 512), (1, 256)], start=1):
        out[f"linear_{k}.weight"], out[f"linear_{k}.bias"] = (o, i), (o,)
    return out


# `tiny:<name>`: a random-weight file in a released layout, built offline on first use (tests, presets)
TINY_HEADS = {"aesthetic": "aesthetic-mlp", "aesthetic-linear": "aesthetic-linear", "aesthetic-linear-b32": "aesthetic-linear",
              "nsfw": "nsfw"}


def resolve_head(uri: str) -> str:
    """A head's file: `tiny:<name>` built once into the cache (TINY_HEADS), anything else as it is."""
    if not uri.startswith("tiny:"):
        return uri
    from pathlib import Path

    from pipeline.models.random_weights import VERSION
    from pipeline.models.sources import cache_dir, fill_once

    name = uri.removeprefix("tiny:")
    if name not in TINY_HEADS:
        raise HeadError(f"{uri}: unknown tiny head (known: {', '.join(sorted(TINY_HEADS))})")
    dim = 512 if name.endswith("-b32") else L14_DIM
    def build(tmp: Path) -> None:
        write_random(str(tmp / "head.pth"), TINY_HEADS[name], dim, seed=len(name))

    dest = fill_once(cache_dir() / "tiny" / f"head-{name}-v{VERSION}", build)
    return str(dest / "head.pth")


def read_state_dict(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A head's tensors from a `.pth` (loaded with weights_only=True) or `.safetensors` file, local or remote."""
    import io

    import fsspec
    import torch

    uri = resolve_head(uri)
    try:
        with fsspec.open(uri, "rb", **(storage_options or {})) as f:
            data = f.read()
    except FileNotFoundError:
        raise HeadError(f"{uri}: no such file") from None
    if uri.endswith(".safetensors"):
        from safetensors.torch import load

        return dict(load(data))
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - an unsafe pickle or not a torch file: one line, not a traceback
        why = (str(e).splitlines() or [""])[0][:200]
        raise HeadError(f"{uri}: not a PyTorch state dict of tensors ({type(e).__name__}: {why})") from None
    if not isinstance(state, dict):
        raise HeadError(f"{uri}: holds a {type(state).__name__}, not a state dict")
    return dict(state)


def check_layout(uri: str, state: dict[str, Any], layout: dict[str, tuple[int, ...]]) -> None:
    """Raises HeadError naming the file and the first key missing, unexpected, or of another shape."""
    for key, shape in layout.items():
        if key not in state:
            raise HeadError(f"{uri}: key {key!r} missing (expected {sorted(layout)[:4]}...)")
        got = tuple(state[key].shape)
        if got != shape:
            raise HeadError(f"{uri}: {key!r} has shape {list(got)}, the released layout has {list(shape)}")
    extra = sorted(set(state) - set(layout))
    if extra:
        raise HeadError(f"{uri}: unexpected key {extra[0]!r} for this head's layout")


@dataclass
class Head:
    """A loaded head: `kind` (aesthetic-mlp, aesthetic-linear, nsfw), its input width and tensors."""

    kind: str
    dim: int
    uri: str
    state: dict[str, Any]

    def to(self, device: str) -> Head:
        import torch

        return Head(self.kind, self.dim, self.uri, {k: v.to(device, torch.float32) for k, v in self.state.items()})

    def __call__(self, x: Any) -> Any:
        """(n, dim) L2-normalised float32 embeddings → (n,) scores, on their device."""
        import torch

        s = self.state
        with torch.inference_mode():
            if self.kind == "aesthetic-mlp":  # Linear layers only: the dropouts are identities at inference
                for index in (0, 2, 4, 6, 7):
                    x = x @ s[f"layers.{index}.weight"].T + s[f"layers.{index}.bias"]
                return x[:, 0]
            if self.kind == "aesthetic-linear":
                return (x @ s["weight"].T + s["bias"])[:, 0]
            # Keras' Normalization divides by max(sqrt(variance), epsilon), epsilon = 1e-7
            x = (x - s["norm.mean"]) / torch.clamp(torch.sqrt(s["norm.variance"]), min=1e-7)
            for k in (1, 2, 3):
                x = torch.relu(x @ s[f"linear_{k}.weight"].T + s[f"linear_{k}.bias"])
            return torch.sigmoid(x @ s["linear_4.weight"].T + s["linear_4.bias"])[:, 0]


def load_aesthetic(uri: str, storage_options: dict[str, Any] | None = None) -> Head:
    """The improved predictor's MLP, or an older linear head (told apart by their keys)."""
    state = read_state_dict(uri, storage_options)
    if "weight" in state and "bias" in state and len(state) == 2:
        dim = int(state["weight"].shape[-1])
        check_layout(uri, state, linear_layout(dim))
        return Head("aesthetic-linear", dim, uri, state)
    check_layout(uri, state, mlp_layout())
    return Head("aesthetic-mlp", L14_DIM, uri, state)


def load_nsfw(uri: str, storage_options: dict[str, Any] | None = None) -> Head:
    state = read_state_dict(uri, storage_options)
    check_layout(uri, state, nsfw_layout())
    return Head("nsfw", L14_DIM, uri, state)


def write_random(path: str, kind: str, dim: int = L14_DIM, seed: int = 0) -> str:
    """A random-weight head file in a released layout (tests and configs/tiny-curate.yaml: the real files
    cannot be downloaded here). `.pth` via torch.save, as the authors published them."""
    import torch

    layout = {"aesthetic-mlp": mlp_layout(dim), "aesthetic-linear": linear_layout(dim), "nsfw": nsfw_layout(dim)}[kind]
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=g) * (0.5 if "weight" in k else 0.1) for k, shape in layout.items()}
    if kind == "nsfw":
        state["norm.variance"] = torch.rand(dim, generator=g) * 0.01 + 1e-4  # the embedding's variance: small
        state["norm.mean"] = torch.randn(dim, generator=g) * 0.01
    torch.save(state, path)
    return path


def load_heads(curate: Any, storage_options: dict[str, Any] | None = None) -> dict[str, Head]:
    """The `curate` config's heads that are on: score column → Head."""
    loaders = {"aesthetic_score": load_aesthetic, "nsfw_score": load_nsfw}
    return {column: loaders[column](uri, storage_options) for column, uri in curate.heads.items()}


def check_heads(curate: Any, clip_dim: int, clip_model: str, storage_options: dict[str, Any] | None = None) -> None:
    """On the driver, before Ray: every head loads in its layout and fits the CLIP model's projection;
    raises HeadError naming the setting, the file and the mismatch."""
    for column, head in load_heads(curate, storage_options).items():
        if head.dim != clip_dim:
            setting = "curate.aesthetic" if column == "aesthetic_score" else "curate.nsfw"
            raise HeadError(f"config: {setting}: {head.uri} takes {head.dim}-d CLIP embeddings (ViT-L/14's space), "
                            f"but clip.model {clip_model} projects to {clip_dim}-d")
