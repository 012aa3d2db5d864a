import pytest
import torch

from amnet.core.errors import InputError
from amnet.model import AMNet, AMNetConfig, Discriminator, GeometricController, count_parameters


@pytest.mark.parametrize("kernel,expected", [(1, 4_085_200), (3, 6_848_464)])
def test_reenactor_parameter_count(kernel, expected):
    assert count_parameters(AMNet(AMNetConfig(kernel=kernel)).reenactor) == expected


def test_fuser_and_discriminator_parameter_counts():
    assert count_parameters(AMNet(AMNetConfig(landmarks=212)).fuser) == 1_864_495
    assert count_parameters(Discriminator()) == 2_766_913


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("k", [1, 3])
def test_gc_forms_agree(n, k):
    torch.manual_seed(k * 10 + n)
    gc = GeometricController(16, k)
    x, f_geo = torch.randn(n, 16, 12, 10), torch.randn(n, 256)
    outs = {}
    for form in ("loop", "grouped", "elementwise"):
        gc.form = form
        outs[form] = gc(x, f_geo)
    assert outs["loop"].abs().max() > 0.1  # a real signal, not all zeros
    for form in ("grouped", "elementwise"):
        assert (outs[form] - outs["loop"]).abs().max().item() < 1e-5, form


def test_gc_uses_each_samples_own_weights():
    torch.manual_seed(0)
    gc = GeometricController(8, 1)
    x = torch.randn(1, 8, 4, 4).repeat(2, 1, 1, 1)
    y = gc(x, torch.randn(2, 256))  # same feature map, different f_Geo
    assert (y[0] - y[1]).abs().max() > 1e-3


@pytest.mark.parametrize("k", [1, 3])
def test_whole_model_forms_agree(k):
    torch.manual_seed(1)
    model = AMNet(AMNetConfig(kernel=k)).eval()
    args = (torch.rand(3, 3, 32, 24) * 2 - 1, torch.randn(3, 1, 64, 60), torch.randn(3, 3), torch.rand(3, 2))
    with torch.no_grad():
        ref_face, ref_lm = model(*args)  # built in the loop form
        for form in ("grouped", "elementwise"):
            with model.gc_form(form):
                face, lm = model(*args)
            # Nine GCs and InstanceNorms compound fp32 rounding: 1.3e-5 on AVX2 kernels, 0 in the grouped form.
            assert (face - ref_face).abs().max() < 5e-5
            assert torch.equal(lm, ref_lm)
    assert ref_face.shape == (3, 3, 32, 24) and ref_lm.shape == (3, 212)
    assert ref_face.abs().max() <= 1.0  # tanh output


@pytest.mark.parametrize("k", [1, 3])
def test_fused_gc_heads_compute_every_gc_weight(k):
    """GCHeads (three kernels for the 18 GC MLPs) gives each GC its own weights and bias, saves nothing extra."""
    torch.manual_seed(2)
    model = AMNet(AMNetConfig(kernel=k)).eval()
    f_geo = torch.randn(3, 256)
    args = (torch.rand(3, 3, 32, 24) * 2 - 1, torch.randn(3, 1, 64, 60), torch.randn(3, 3), torch.rand(3, 2))
    keys = set(model.state_dict())
    with torch.no_grad():
        ref = model(*args)
        want = [gc.predict(f_geo) for gc in model.reenactor.gcs]
        model.reenactor.fuse_gc_heads()
        got = model.reenactor.gc_heads(f_geo)
        face, lm = model(*args)
    assert len(got) == 9 and [w.shape[1] for w, _ in got] == [c * k * k for c in model.reenactor.CELL_CHANNELS]
    for (w, b), (w_ref, b_ref) in zip(got, want):
        assert torch.allclose(w, w_ref, atol=1e-5) and torch.allclose(b, b_ref, atol=1e-5)
    assert (face - ref[0]).abs().max() < 5e-5 and torch.equal(lm, ref[1])
    assert set(model.state_dict()) == keys  # the fused buffers are never saved
    with torch.no_grad():  # the forward really reads the fused heads: move one bias, the face moves
        model.reenactor.gc_heads.bias_b2 += 0.5
        assert (model(*args)[0] - face).abs().max() > 1e-3
        # ... and a model in training mode ignores them (their weights are copies)
        assert (model.train()(*args)[0] - ref[0]).abs().max() < 5e-5


@pytest.mark.parametrize("h,w", [(30, 32), (32, 34), (6, 8)])
def test_bad_spatial_size_is_a_clear_error(h, w):
    with pytest.raises(InputError, match="divisible by 4"):
        AMNet()(torch.zeros(1, 3, h, w), torch.zeros(1, 1, 64, 60), torch.zeros(1, 3), torch.zeros(1, 2))


def test_f_geo_is_standardised_per_sample():
    model = AMNet().eval()
    seen = {}
    model.fuser.fuse_mlp.register_forward_hook(lambda m, i, o: seen.setdefault("fused", o))
    with torch.no_grad():
        f_geo, _ = model.fuser(torch.randn(4, 1, 64, 60) * 50, torch.randn(4, 3), torch.randn(4, 2))
    x = seen["fused"]
    expected = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(f_geo, expected, atol=1e-5)
    assert torch.allclose(f_geo.mean(1), torch.zeros(4), atol=1e-5)


def test_gflops_match_the_papers_figures():
    from amnet.flops import gflops_per_frame

    model = AMNet()
    assert gflops_per_frame(model, 256) == pytest.approx(20.1, rel=0.02)
    assert gflops_per_frame(model, 128) == pytest.approx(5.2, rel=0.02)
