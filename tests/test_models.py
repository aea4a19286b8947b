"""Backbones and pretrained-weight loading (no downloads: weights come from state_dict files in tmp dirs)."""
import subprocess, sys
import pytest
import torch
import torchvision

from ala_paper.models import ARCHS, CosineClassifier, build_model


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_builds_and_runs(arch):
    torch.manual_seed(0)
    m = build_model(arch, 13, cosine=True).eval()
    size = 32 if arch.startswith('resnet') and arch[6:].isdigit() and int(arch[6:]) < 50 else 64
    with torch.no_grad():
        out = m(torch.randn(2, 3, size, size))
    assert out.shape == (2, 13) and out.abs().max() <= 1 + 1e-5
    assert isinstance(m.head, CosineClassifier)
    assert isinstance(build_model(arch, 13, cosine=False).head, torch.nn.Linear)


def test_torchvision_state_dict_file_loads(tmp_path):
    src = torchvision.models.resnet50(weights=None)  # a torchvision-format file, fc included
    torch.save(src.state_dict(), tmp_path / "r50.pth")
    m = build_model("resnet50", 365, cosine=False, pretrained=tmp_path / "r50.pth")
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k
    assert m.head.weight.shape == (365, 2048)


def test_checkpoint_wrapped_and_mismatched_files(tmp_path):
    src = build_model("resnet32", 10, cosine=True)
    torch.save({"epoch": 3, "state_dict": src.state_dict()}, tmp_path / "ck.pt")
    m = build_model("resnet32", 100, cosine=True, pretrained=str(tmp_path / "ck.pt"))
    assert torch.equal(m.backbone.stem[0].weight, src.backbone.stem[0].weight)
    with pytest.raises(ValueError, match="do not fit"):
        build_model("resnet50", 10, cosine=True, pretrained=tmp_path / "ck.pt")
    with pytest.raises(FileNotFoundError, match="not found"):
        build_model("resnet32", 10, cosine=True, pretrained=tmp_path / "missing.pt")


def test_weights_only_refuses_pickled_code(tmp_path, capsys):
    import pickle
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only"):
        build_model("resnet8", 10, cosine=True, pretrained=tmp_path / "evil.pt")
    assert "pwned" not in capsys.readouterr().out            # the payload never ran


@pytest.mark.parametrize('user_sets', ["torch.backends.fp32_precision = 'tf32'",          # the new API (PyTorch 2.9+)
                                       "torch.backends.cuda.matmul.allow_tf32 = True"])  # the legacy one
def test_cosine_head_under_either_tf32_api(user_sets):
    "A fresh process sets TF32 one way; the head and the float64 layout check run, and leave the setting as it was."
    code = f"""
import torch
from ala_paper.models import CosineClassifier
from ala_paper.benchmarks import layout_gradient_error
{user_sets}
before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
with torch.autocast('cpu', dtype=torch.bfloat16):
    out = CosineClassifier(8, 3)(torch.randn(4, 8))
assert out.dtype == torch.float32, out.dtype
err = layout_gradient_error(False, arch='resnet8', batch_size=4)
assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before
print('ok', before, max(err.values()) < 1e-3)
"""
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok ('tf32', 'tf32') True"), r.stderr[-2000:]
