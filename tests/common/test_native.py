"""The fused C kernels: the same values and first and second derivatives as PyTorch's operators."""

import ctypes
import os
import stat
import warnings

import pytest
import torch
import torch.nn.functional as F

from common.algorithms import build_algorithm
from common.backbones import build_model
from common.config import MetaConfig
from common.models import ModelConfig
from common.native import build, ops, resolve_kernels
from common.native.build import NativeKernelsUnavailable, library_path, load_kernels
from tests.common.conftest import labelled_set


@pytest.fixture(scope="module")
def kernels():
    return load_kernels()


def f64(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def reference(x, groups, w=None, b=None):
    """What the fused function replaces: PyTorch's group norm, max-pool, ReLU."""
    pool = F.max_pool2d if x.dim() == 4 else F.max_pool3d
    return F.relu(pool(F.group_norm(x, groups, w, b), 2))


@pytest.mark.parametrize(
    ("shape", "groups"),
    [((3, 8, 6, 6), 4), ((2, 4, 7, 5), 2), ((2, 4, 3, 3), 4), ((2, 4, 4, 5, 6), 2), ((1, 2, 3, 3, 3), 1)],
)
def test_norm_pool_relu_values_and_two_derivatives_match_pytorch(kernels, shape, groups):
    x, w, b = f64(*shape), f64(shape[1], seed=1), f64(shape[1], seed=2)
    fn = lambda x, w, b: ops.norm_pool_relu(kernels, x, groups, w, b)
    torch.testing.assert_close(fn(x, w, b), reference(x, groups, w, b), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_instance_norm_is_a_group_per_channel_without_affine(kernels):
    x = f64(3, 4, 6, 6)
    fn = lambda x: ops.norm_pool_relu(kernels, x, 4)
    torch.testing.assert_close(fn(x), F.relu(F.max_pool2d(F.instance_norm(x), 2)), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_mismatched_parameters_are_refused_not_misread(kernels):
    """The C code reads raw memory: a float32 weight for a float64 map must not get that far."""
    x = f64(2, 4, 6, 6)
    with pytest.raises(ValueError, match=r"weight is 4 x torch.float32.*needs 4 x torch.float64"):
        ops.norm_pool_relu(kernels, x, 2, torch.ones(4), torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="bias is 3 x"):
        ops.norm_pool_relu(kernels, x, 2, torch.ones(4, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="C divisible by groups"):
        ops.norm_pool_relu(kernels, x, 3)


def test_double_backward_equals_pytorchs(kernels):
    """The same Hessian-vector terms as PyTorch's composite, on a loss that uses every output."""

    def second(fn):
        x, w, b = f64(2, 8, 6, 6), f64(8, seed=1), f64(8, seed=2)
        gx, gw, gb = torch.autograd.grad((fn(x, w, b) * f64(2, 8, 3, 3, seed=3)).sum(), (x, w, b), create_graph=True)
        loss = (gx.sin() * gx).sum() + (gw * gw).sum() + (gb.cos() * gb).sum()
        return torch.autograd.grad(loss, (x, w))

    ours = second(lambda x, w, b: ops.norm_pool_relu(kernels, x, 4, w, b))
    for a, b in zip(ours, second(lambda x, w, b: reference(x, 4, w, b))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_ties_and_nans_are_routed_like_pytorch(kernels, dtype, sign):
    """Ties go to the window's first maximum (a positive or negative scale keeps or flips the
    order), windows whose maximum is <= 0 route nothing, and a NaN poisons its group as in PyTorch."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-2, 3, (4, 4, 8, 6), generator=g).to(dtype)  # many ties
    x[3, 2, 5, 1] = float("nan")
    w = sign * torch.rand(4, generator=g, dtype=dtype) + sign * 0.5
    b = torch.zeros(4, dtype=dtype)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = ops.norm_pool_relu(kernels, ours, 2, w, b), reference(theirs, 2, w, b)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert out[3, 2:].isnan().all() and not out[:3].isnan().any()
    upstream = torch.arange(out.numel(), dtype=dtype).reshape(out.shape) % 7 + 1
    out.backward(upstream)
    ref.backward(upstream)
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("norm", ["group", "instance"])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("algorithm", ["maml", "meta-sgd", "anil", "protonet"])
def test_meta_gradient_is_the_same_with_either_kernels(norm, dims, algorithm):
    """Every algorithm's meta-gradient, second order through the inner loop, float64."""
    from common.config import EpisodeConfig
    from common.tasks import EpisodeSampler, site_generator

    config = ModelConfig(spatial_dims=dims, image_size=8, num_classes=3, width=4, depth=2, norm=norm, num_groups=2)
    torch.manual_seed(0)
    model = build_model(config).double()
    images, labels = labelled_set(size=8)
    if dims == 3:
        images = images.unsqueeze(-1).expand(*images.shape, 8) + 0.1 * torch.randn(
            *images.shape, 8, dtype=torch.float64
        )
    batch = EpisodeSampler(images, labels, EpisodeConfig(ways=3, shots=2, queries=3)).sample_batch(2, site_generator(1))
    grads = {}
    for kernels in ("native", "torch"):
        algo = build_algorithm(
            model, MetaConfig(algorithm, inner_steps=2, inner_lr=0.3, execution="loop"), resolve_kernels(kernels)
        )
        assert algo.kernels_name == kernels and algo.kernels_on(torch.device("cuda")) == "torch"
        grads[kernels] = algo.meta_gradient(algo.init_meta_params(), batch).grads
    for name, g in grads["torch"].items():
        torch.testing.assert_close(grads["native"][name], g, rtol=1e-10, atol=1e-12, msg=name)


def test_vmap_falls_back_to_pytorchs_operators(tiny_model, tiny_batch):
    """C kernels cannot run under torch.func transforms; vmap gives the loop's gradient anyway."""
    results = {}
    for execution in ("loop", "vmap"):
        algo = build_algorithm(
            tiny_model, MetaConfig("maml", inner_steps=2, inner_lr=0.3, execution=execution), resolve_kernels("native")
        )
        results[execution] = algo.meta_gradient(algo.init_meta_params(), tiny_batch).grads
    for name, g in results["loop"].items():
        torch.testing.assert_close(results["vmap"][name], g, rtol=1e-10, atol=1e-12)


def test_library_is_built_once_and_cached(tmp_path):
    first = load_kernels(tmp_path)
    built = first.path.stat().st_mtime_ns
    second = load_kernels(tmp_path)
    assert second.path == first.path and second.path.stat().st_mtime_ns == built
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temporary files left


def _fake_compiler(folder, script: str) -> None:
    folder.mkdir()
    cc = folder / "cc"
    cc.write_text("#!/bin/sh\n" + script)
    cc.chmod(cc.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fresh_auto():
    """`auto` decides once per process: forget that decision around the test."""
    import common.native

    common.native._load.cache_clear()
    yield
    common.native._load.cache_clear()


def test_no_compiler_means_auto_warns_once_and_native_says_what_to_install(tmp_path, monkeypatch, fresh_auto):
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, gcc or clang here
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.warns(
        RuntimeWarning, match="fused CPU kernels are unavailable, using PyTorch's operators.*no C compiler"
    ):
        assert resolve_kernels("auto") is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: a second site or algorithm in the process is not warned again
        assert resolve_kernels("auto") is None
    with pytest.raises(NativeKernelsUnavailable, match=r"no C compiler.*install one.*kernels='torch'"):
        resolve_kernels("native")
    model = build_model(ModelConfig(image_size=8, num_classes=3, width=4, depth=2, num_groups=2))
    assert build_algorithm(model, MetaConfig("maml"), resolve_kernels("torch")).kernels_name == "torch"
    with pytest.raises(ValueError, match="kernels='fast': choose one of auto, native, torch"):
        resolve_kernels("fast")


def test_failed_compile_reports_the_compilers_words_and_leaves_no_file(tmp_path, monkeypatch):
    _fake_compiler(tmp_path / "bin", "echo 'kernels.c:1: error: this compiler is broken' >&2\nexit 1\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    cache = tmp_path / "cache"
    with pytest.raises(
        NativeKernelsUnavailable, match=r"(?s)could not compile.*this compiler is broken.*kernels='torch'"
    ):
        load_kernels(cache)
    assert list(cache.iterdir()) == []
    assert not library_path(cache, str(tmp_path / "bin" / "cc")).exists()


def test_compile_errors_point_at_the_real_source_line(tmp_path, monkeypatch):
    """Every kernel is plain code, not a macro body: an error inside one is reported at its own
    line of kernels.c (a macro would report the line that expands it)."""
    lines = build.SOURCE.read_text().splitlines(keepends=True)
    body = next(i for i, ln in enumerate(lines) if ln.startswith("int FN(gnpool_double_backward)("))
    at = next(i for i in range(body, len(lines)) if "FN(gnpool_sparse_sums)(" in lines[i])  # inside the body
    lines.insert(at, "    int not_c = ;\n")
    broken = tmp_path / "src" / "kernels.c"
    broken.parent.mkdir()
    broken.write_text("".join(lines))
    monkeypatch.setattr(build, "SOURCE", broken)
    cache = tmp_path / "cache"
    with pytest.raises(NativeKernelsUnavailable, match="could not compile") as error:
        load_kernels(cache)
    assert f"kernels.c:{at + 1}:" in str(error.value), str(error.value)
    assert "kernels='torch'" in str(error.value)
    assert list(cache.iterdir()) == []  # no library, no objects, no build folder


def test_library_exports_the_six_kernels_and_nothing_else(kernels):
    lib = ctypes.CDLL(str(kernels.path))
    exported = {f"{name}_{suffix}" for name in build.SIGNATURES for suffix in build.SUFFIXES}
    assert exported == {
        f"gnpool_{kind}_{suffix}" for kind in ("forward", "backward", "double_backward") for suffix in ("f32", "f64")
    }
    for symbol in exported:
        assert hasattr(lib, symbol), symbol
    for helper in ("gn_stats_f32", "gnpool_sparse_sums_f64", "pool_row2_f32", "pool_grid_of"):
        assert not hasattr(lib, helper), f"{helper} should stay internal (static)"


def test_unwritable_cache_is_named(tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("")  # root can write anywhere; a file in the way of the folder still fails
        cache = blocker / "kernels"
    else:
        tmp_path.chmod(0o500)
        cache = tmp_path / "kernels"
    with pytest.raises(NativeKernelsUnavailable, match=f"cannot create the kernel cache {cache}.*make it writable"):
        load_kernels(cache)


def test_monai_metatensor_images_take_the_c_kernels(tiny_model, tiny_batch):
    """Site images loaded through MONAI are MetaTensors; the fast path takes them as plain tensors."""
    import dataclasses

    from monai.data import MetaTensor

    wrapped = dataclasses.replace(
        tiny_batch, support_x=MetaTensor(tiny_batch.support_x), query_x=MetaTensor(tiny_batch.query_x)
    )
    algo = build_algorithm(
        tiny_model, MetaConfig("maml", inner_steps=2, inner_lr=0.3, execution="loop"), resolve_kernels("native")
    )
    meta = algo.init_meta_params()
    expected = algo.meta_gradient(meta, tiny_batch).grads
    for name, g in algo.meta_gradient(meta, wrapped).grads.items():
        torch.testing.assert_close(g, expected[name], rtol=0, atol=0)


def test_the_embedded_copy_is_kernels_c_and_builds_the_same_library(tmp_path, monkeypatch):
    """A Flower app bundle carries no .c file: the ClientApp compiles kernels_source.py's copy."""
    from common.native.embed import embedded_module
    from common.native.kernels_source import TEXT

    assert build.SOURCE.read_text(encoding="utf-8") == TEXT, "kernels.c changed: run `python -m common.native.embed`"
    assert build.EMBEDDED.read_text(encoding="utf-8") == embedded_module(TEXT)
    from_source = load_kernels(tmp_path / "a")
    monkeypatch.setattr(build, "SOURCE", tmp_path / "absent" / "kernels.c")  # as in a FAB
    from_copy = load_kernels(tmp_path / "b")
    assert from_copy.path.name == from_source.path.name  # the same cache key: the same text
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(
        ops.norm_pool_relu(from_copy, x, 2), ops.norm_pool_relu(from_source, x, 2), rtol=0, atol=0
    )
