import numpy as np
import pytest
import torch

from calmdown import runtime as rt
from calmdown.errors import InputError
from calmdown.network import ContextNet

needs_ort = pytest.mark.skipif(
    not rt.onnxruntime_available(), reason="ONNX Runtime is not installed (calmdown[onnx])"
)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = ContextNet(context_frames=2, width=8).eval()
    with torch.no_grad():  # the head starts at zero (output = mean image): make it matter
        for p in net.head.parameters():
            p.normal_(0, 0.3)
    return net


def _inputs(batch, h, w, seed=0):
    rng = np.random.default_rng(seed)
    mean = torch.from_numpy(rng.gamma(2.0, 1.0, (batch, 1, h, w)).astype(np.float32))
    frames = torch.from_numpy(rng.poisson(np.repeat(mean.numpy(), 4, axis=1)).astype(np.float32))
    return mean, frames


@pytest.mark.parametrize("name", [pytest.param("onnxruntime", marks=needs_ort), "torch"])
@pytest.mark.parametrize(("batch", "h", "w"), [(1, 32, 48), (4, 64, 40)])
def test_runtime_gives_the_networks_values(net, name, batch, h, w):
    mean, frames = _inputs(batch, h, w)
    run = rt.inference_network(net, torch.device("cpu"), name)
    assert run.name == name
    with torch.inference_mode():
        want = net(mean, frames)
        got = run(mean, frames)
    for g, e in zip(got, want, strict=True):
        assert g.shape == e.shape and g.dtype == torch.float32
        assert g.is_contiguous()
        scale = float(e.abs().max())
        assert float((g - e).abs().max()) <= 1e-5 * scale
    # Not the identity: the network's output departs from its mean-image input.
    assert float((want[0] - mean).abs().max()) > 0.1


@pytest.mark.parametrize("name", [pytest.param("onnxruntime", marks=needs_ort), "torch"])
def test_a_network_without_the_mean_image_runs_in_every_runtime(name):
    # Its ONNX export has no 'mean' input: feeding one was an error (--no-mean-image with the
    # fast extra failed at calibration).
    torch.manual_seed(1)
    blind = ContextNet(context_frames=2, width=8, use_mean_image=False).eval()
    mean, frames = _inputs(2, 32, 32)
    run = rt.inference_network(blind, torch.device("cpu"), name)
    with torch.inference_mode():
        want = blind(mean, frames)
        got = run(mean, frames)
    for g, e in zip(got, want, strict=True):
        assert float((g - e).abs().max()) <= 1e-5 * float(e.abs().max())


@pytest.mark.parametrize("name", [pytest.param("onnxruntime", marks=needs_ort), "torch"])
def test_a_frames_output_does_not_depend_on_its_batch(net, name):
    # Inference relies on it: a frame gives the same bits whichever chunk it falls in.
    mean, frames = _inputs(4, 32, 32)
    other_mean, other_frames = _inputs(4, 32, 32, seed=1)
    run = rt.inference_network(net, torch.device("cpu"), name)
    with torch.inference_mode():
        a = run(mean, frames)[0]
        mixed = run(
            torch.cat([other_mean[:2], mean[2:3], other_mean[3:]]),
            torch.cat([other_frames[:2], frames[2:3], other_frames[3:]]),
        )[0]
    assert torch.equal(mixed[2], a[2])


def test_runtime_does_not_change_the_network(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rt.inference_network(net, torch.device("cpu"), "torch")
    if rt.onnxruntime_available():
        rt.inference_network(net, torch.device("cpu"), "onnxruntime")
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
        assert v.is_contiguous()


def test_auto_takes_onnxruntime_when_installed(net, monkeypatch):
    monkeypatch.setattr(rt, "onnxruntime_available", lambda: False)
    assert rt.inference_network(net, torch.device("cpu"), "auto").name == "torch"
    with pytest.raises(InputError, match=r"pip install 'calmdown\[onnx\]'"):
        rt.inference_network(net, torch.device("cpu"), "onnxruntime")


@needs_ort
def test_auto_prefers_onnxruntime(net):
    assert rt.inference_network(net, torch.device("cpu"), "auto").name == "onnxruntime"


def test_onnxruntime_refused_on_a_gpu(net):
    with pytest.raises(InputError, match="--device cpu"):
        rt.inference_network(net, torch.device("cuda"), "onnxruntime")
