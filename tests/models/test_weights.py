import pytest
import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models import weights


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 4)
        self.mid = nn.Linear(4, 4)
        self.head = nn.Linear(4, 11, bias=False)
        self.head.weight = self.emb.weight


def test_tied_weights_round_trip(tmp_path):
    a, b = Tied(), Tied()
    weights.save_weights(a, tmp_path / "m.safetensors")
    weights.load_weights(b, tmp_path / "m.safetensors")
    assert torch.equal(a.emb.weight, b.emb.weight) and b.head.weight is b.emb.weight


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    weights.save_weights(Tied(), tmp_path / "m.safetensors")
    other = Tied()
    other.mid = nn.Linear(4, 5)
    with pytest.raises(LmforgeError, match=r"'mid.weight' has shape \(4, 4\) but the model expects \(5, 4\)"):
        weights.load_weights(other, tmp_path / "m.safetensors")


def test_truncated_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "m.safetensors"
    weights.save_weights(Tied(), path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(LmforgeError, match="corrupt or truncated"):
        weights.load_weights(Tied(), path)


def test_tied_duplicate_stored_once_and_wrappers_looked_through(tmp_path):
    from safetensors.torch import load_file

    model = Tied()
    weights.save_weights(torch.compile(model), tmp_path / "m.safetensors")
    stored = load_file(str(tmp_path / "m.safetensors"))
    assert set(stored) == {"emb.weight", "mid.weight", "mid.bias"}


def test_unexpected_key_is_named(tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in weights.weights_for_save(Tied()).items()}
    save_file({**sd, "extra.weight": torch.zeros(2)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(LmforgeError, match=r"unexpected weight 'extra\.weight'"):
        weights.load_weights(Tied(), tmp_path / "m.safetensors")


def test_one_flipped_bit_in_a_weights_file_is_caught(tmp_path):
    """save_weights records a digest of the tensors in the header; reading checks it."""
    from lmforge.models.weights import read_safetensors, save_weights

    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    path = tmp_path / "model.safetensors"
    save_weights(model, path)
    assert torch.equal(read_safetensors(path)["weight"], model.weight)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # one bit of the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(LmforgeError, match="do not match the checksum the file was written with"):
        read_safetensors(path)
