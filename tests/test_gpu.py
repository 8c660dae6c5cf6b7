"""Device paths on a real CUDA GPU: pinned host buffers, non_blocking copies, in-place application.

Skipped where no GPU is present (CI has none); run them on a GPU machine with
``pytest tests/test_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import tvreg
from tvreg.testing import ToyClassifier, accuracy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """Three vectors of a 48-tensor model: enough tensors that copies overlap decodes."""
    work = tmp_path_factory.mktemp("many")
    g = torch.Generator().manual_seed(0)
    base = {f"layer{i:02d}.weight": torch.randn(384, 384, generator=g) for i in range(40)}
    base.update({f"norm{i}.bias": torch.randn(384, generator=g) for i in range(8)})
    save_file(base, str(work / "base.safetensors"))
    reg = tvreg.open(work / "registry")
    for k in range(3):
        ft = {n: t + 1e-3 * torch.randn(t.shape, generator=g) for n, t in base.items()}
        save_file(ft, str(work / f"ft{k}.safetensors"))
        reg.create(f"v{k}", work / "base.safetensors", work / f"ft{k}.safetensors")
    yield reg
    reg.close()


def test_vector_tensors_on_cuda_equal_the_host_ones(filled):
    vec = filled.get("topic")
    host = vec.state_dict()
    dev = vec.state_dict(device="cuda")
    assert {t.device.type for t in dev.values()} == {"cuda"}
    for n, t in host.items():
        assert torch.equal(dev[n].cpu(), t)
    for n, t in vec.tensors(device="cuda", dtype=torch.bfloat16).items():
        assert t.dtype == torch.bfloat16 and torch.equal(t.cpu(), host[n].to(torch.bfloat16))


@pytest.mark.parametrize("kw", [{}, {"method": "ties", "density": 0.3},
                                {"method": "dare_linear", "density": 0.5, "seed": 3}],
                         ids=["task_arithmetic", "ties", "dare"])
def test_composition_on_cuda_equals_the_host_result(many, kw):
    comp = many.resolve("0.5*v0 + v1 - 0.25*v2", **kw)
    host = comp.state_dict()
    held = dict(comp.iter_tensors(device="cuda"))  # every tensor kept while later ones copy
    torch.cuda.synchronize()
    dev16 = comp.state_dict(device="cuda", dtype=torch.bfloat16)
    assert list(held) == list(host)
    for n, t in host.items():
        assert held[n].device.type == "cuda" and torch.equal(held[n].cpu(), t)
        assert torch.equal(dev16[n].cpu(), t.to(torch.bfloat16))


def test_apply_to_a_cuda_module_behaves_like_the_finetuned_model(filled, zoo):
    model = ToyClassifier(width=32)
    model.load_state_dict(load_file(zoo.base))
    model.cuda()
    filled.resolve("sentiment").apply_to(model)
    ft = ToyClassifier(width=32)
    ft.load_state_dict(load_file(zoo.finetuned["sentiment"]))
    tokens = torch.randint(1, 64, (64, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens.cuda()).cpu(), ft(tokens), rtol=1e-5, atol=1e-5)
    assert accuracy(model.cpu(), "sentiment") == accuracy(ft, "sentiment")


def test_apply_to_a_cuda_state_dict_in_place(many):
    comp = many.resolve("v0 + v1")
    base = load_file(str(many.root) + "/../base.safetensors")
    on_gpu = {n: t.cuda() for n, t in base.items()}
    comp.apply_to(on_gpu, scale=0.5)
    torch.cuda.synchronize()
    merged = comp.state_dict()
    for n, t in base.items():
        torch.testing.assert_close(on_gpu[n].cpu(), t + 0.5 * merged[n], rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["tsv", "iso_c", "iso_cts"])
def test_spectral_svds_on_cuda_equal_the_host_ones(many, method, tmp_path):
    """The SVDs on the GPU (device="cuda", or asked for on CUDA), within 1e-4 of the host's;
    a file written with --device cuda holds host tensors."""
    host = many.resolve("v0 + 0.5*v1 + v2", method=method).state_dict()
    for comp, where in ((many.resolve("v0 + 0.5*v1 + v2", method=method, device="cuda"), None),
                        (many.resolve("v0 + 0.5*v1 + v2", method=method), "cuda")):
        dev = comp.state_dict(device=where)
        for n, t in host.items():
            err = float((dev[n].cpu().double() - t.double()).norm() / t.double().norm())
            assert err <= 1e-4, (n, err)
    out = tmp_path / "m.safetensors"
    many.resolve("v0 + v1", method=method, device="cuda").save(str(out))
    assert set(load_file(str(out))) == set(host)
