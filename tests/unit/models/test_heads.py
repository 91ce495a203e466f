"""The curation heads in their released layouts: each equals a plain PyTorch model written here (the
authors' own module shapes), on L2-normalised embeddings; a file of another layout is refused in one line."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.models.heads import HeadError, load_aesthetic, load_nsfw


class AestheticMLP(nn.Module):
    """christophschuhmann/improved-aesthetic-predictor's MLP, as its simple_inference.py defines it."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(input_size, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Normalization(nn.Module):
    """Keras' Normalization layer: (x - mean) / max(sqrt(variance), 1e-7)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("variance", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / torch.clamp(self.variance.sqrt(), min=1e-7)


class NsfwDetector(nn.Module):
    """clip-retrieval's autokeras NSFW model, ported: Normalization, Dense 64/512/256 + ReLU, Dense 1, sigmoid."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.norm = Normalization(dim)
        self.linear_1, self.linear_2 = nn.Linear(dim, 64), nn.Linear(64, 512)
        self.linear_3, self.linear_4 = nn.Linear(512, 256), nn.Linear(256, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.linear_1(self.norm(x)))
        x = torch.relu(self.linear_2(x))
        x = torch.relu(self.linear_3(x))
        return torch.sigmoid(self.linear_4(x))


def embeddings(n: int, dim: int) -> torch.Tensor:
    return nn.functional.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(1)), dim=-1)


def test_the_improved_aesthetic_mlp_equals_the_authors_module(tmp_path):
    torch.manual_seed(0)
    ref = AestheticMLP().eval()
    path = tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(ref.state_dict(), path)
    head = load_aesthetic(str(path))
    x = embeddings(17, 768)
    assert head.kind == "aesthetic-mlp"
    assert torch.allclose(head(x), ref(x)[:, 0], atol=1e-5)


@pytest.mark.parametrize("dim", [768, 512])
def test_the_older_linear_heads_equal_an_nn_linear(tmp_path, dim):
    torch.manual_seed(0)
    ref = nn.Linear(dim, 1)
    path = tmp_path / f"sa_0_4_vit_{'l_14' if dim == 768 else 'b_32'}_linear.pth"
    torch.save(ref.state_dict(), path)
    head = load_aesthetic(str(path))
    x = embeddings(9, dim)
    assert (head.kind, head.dim) == ("aesthetic-linear", dim)
    with torch.no_grad():
        assert torch.allclose(head(x), ref(x)[:, 0], atol=1e-5)


def test_the_nsfw_detector_equals_the_ported_keras_model(tmp_path):
    torch.manual_seed(0)
    ref = NsfwDetector().eval()
    ref.norm.mean.normal_(0, 0.01)
    ref.norm.variance.uniform_(1e-4, 1e-2)
    path = tmp_path / "clip_autokeras_binary_nsfw.pth"
    torch.save(ref.state_dict(), path)
    head = load_nsfw(str(path))
    x = embeddings(13, 768)
    with torch.no_grad():
        assert torch.allclose(head(x), ref(x)[:, 0], atol=1e-5)
    assert ((head(x) >= 0) & (head(x) <= 1)).all()


def test_a_file_of_another_layout_is_refused_naming_the_file_and_the_first_mismatch(tmp_path):
    state = AestheticMLP().state_dict()
    wrong = dict(state, **{"layers.2.weight": torch.zeros(64, 1024)})
    torch.save(wrong, tmp_path / "a.pth")
    with pytest.raises(HeadError) as e:
        load_aesthetic(str(tmp_path / "a.pth"))
    assert str(e.value) == f"{tmp_path / 'a.pth'}: 'layers.2.weight' has shape [64, 1024], the released layout has [128, 1024]"
    torch.save({k: v for k, v in state.items() if k != "layers.7.bias"}, tmp_path / "b.pth")
    with pytest.raises(HeadError, match=r"b.pth: key 'layers.7.bias' missing"):
        load_aesthetic(str(tmp_path / "b.pth"))
    torch.save(NsfwDetector(dim=512).state_dict(), tmp_path / "n.pth")
    with pytest.raises(HeadError, match=r"n.pth: 'norm.mean' has shape \[512\], the released layout has \[768\]"):
        load_nsfw(str(tmp_path / "n.pth"))
    torch.save(AestheticMLP().state_dict(), tmp_path / "mlp.pth")
    with pytest.raises(HeadError, match="mlp.pth: key 'norm.mean' missing"):  # the aesthetic file as the NSFW head
        load_nsfw(str(tmp_path / "mlp.pth"))
    assert all("\n" not in m for m in (str(e.value),))


def test_a_pickle_that_is_not_tensors_is_never_unpickled(tmp_path):
    class Payload:
        def __reduce__(self):  # what a malicious .pth would do on torch.load without weights_only
            return (print, ("pwned",))

    torch.save({"weight": Payload()}, tmp_path / "evil.pth", _use_new_zipfile_serialization=True)
    with pytest.raises(HeadError, match="evil.pth: not a PyTorch state dict of tensors"):
        load_aesthetic(str(tmp_path / "evil.pth"))


def test_safetensors_files_load_too(tmp_path):
    from safetensors.torch import save_file

    ref = AestheticMLP().eval()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, tmp_path / "aesthetic.safetensors")
    x = embeddings(5, 768)
    assert torch.allclose(load_aesthetic(str(tmp_path / "aesthetic.safetensors"))(x), ref(x)[:, 0], atol=1e-5)
