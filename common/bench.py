"""`fedmeta bench maml`: one second-order meta-batch, fedmeta vs `higher` vs a plain autograd loop.

All three use the same network, initial weights and tasks in one process. Repetitions are
interleaved (fedmeta, higher, autograd, fedmeta, ...) so a noisy shared machine slows each
method alike, and the medians are compared as ratios.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from common.algorithms import build_algorithm
from common.backbones import build_model
from common.config import EpisodeConfig, MetaConfig
from common.functional import Params, forward, tensor_sum
from common.models import ModelConfig
from common.native import KERNELS, resolve_kernels
from common.tasks import EpisodeSampler, TaskBatch, site_generator


@dataclass(frozen=True)
class BenchConfig:
    tasks: int = 8
    ways: int = 5
    shots: int = 5
    queries: int = 15
    inner_steps: int = 5
    inner_lr: float = 0.4
    width: int = 64
    image_size: int = 28
    repeats: int = 5
    device: str = "cpu"
    execution: str = "auto"
    seed: int = 0
    tf32: bool = False  # CUDA: TF32 convolutions and matmuls (faster; gradients then agree to ~1e-3 only)
    kernels: str = "auto"  # CPU norm/max-pool/ReLU: auto | native | torch (common.native.resolve_kernels)
    model: str = "conv"  # the backbone (common/backbones)

    def __post_init__(self) -> None:
        self.meta_config()  # execution gets the checks a run config gets
        self.model_config()
        if self.kernels not in KERNELS:
            raise ValueError(f"kernels={self.kernels!r}: choose one of {', '.join(KERNELS)}")

    def meta_config(self) -> MetaConfig:
        """Second-order MAML as fedmeta runs it in the bench: one chunk of all the tasks."""
        return MetaConfig(
            "maml",
            inner_steps=self.inner_steps,
            inner_lr=self.inner_lr,
            chunk_size=self.tasks,
            execution=self.execution,
        )

    def model_config(self) -> ModelConfig:
        return ModelConfig(image_size=self.image_size, num_classes=self.ways, width=self.width, backbone=self.model)


@dataclass(frozen=True)
class BenchResult:
    fedmeta_s: float
    higher_s: float
    autograd_s: float
    speedup_vs_higher: float
    speedup_vs_autograd: float
    max_rel_grad_diff: float  # the gradient check: fedmeta's float32 meta-gradient vs higher's in float64
    grad_error_vs_float64: dict[str, float]  # each method's float32 gradient against higher's float64 one
    fedmeta_vs_higher_float32: float  # both in float32: the sum of two roundings
    peak_mem_mb: dict[str, float | None]
    device: str
    execution: str
    kernels: str
    threads: int
    config: dict

    def to_dict(self) -> dict:
        return asdict(self)


class _PeakMemory:
    """Peak memory a callable adds: CUDA allocator peak, or Linux peak RSS (VmHWM) on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def measure(self, fn: Callable[[], object]) -> float | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            fn()
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - base) / 2**20
        status, clear = Path("/proc/self/status"), Path("/proc/self/clear_refs")
        if not status.exists():
            return None
        try:
            clear.write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            return None
        base = self._field(status, "VmRSS")
        fn()
        return (self._field(status, "VmHWM") - base) / 1024

    @staticmethod
    def _field(status: Path, name: str) -> int:
        line = next(line for line in status.read_text().splitlines() if line.startswith(name + ":"))
        return int(line.split()[1])


def _tasks(cfg: BenchConfig) -> TaskBatch:
    g = torch.Generator().manual_seed(cfg.seed)
    classes, per_class = max(cfg.ways * 2, 10), cfg.shots + cfg.queries + 5
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = torch.randn(len(labels), 1, cfg.image_size, cfg.image_size, generator=g)
    sampler = EpisodeSampler(images, labels, EpisodeConfig(cfg.ways, cfg.shots, cfg.queries))
    return sampler.sample_batch(cfg.tasks, site_generator(cfg.seed))


def _autograd_loop(model, meta: Params, batch: TaskBatch, cfg: BenchConfig) -> Params:
    """The textbook second-order MAML loop: per task, autograd.grad(create_graph=True)."""
    leaves = [v.detach().requires_grad_() for v in meta.values()]
    total = [torch.zeros_like(v) for v in leaves]
    for sx, sy, qx, qy in zip(*batch.tensors()):
        fast = leaves
        for _ in range(cfg.inner_steps):
            loss = F.cross_entropy(forward(model, dict(zip(meta, fast)), sx), sy)
            grads = torch.autograd.grad(loss, fast, create_graph=True)
            fast = [p - cfg.inner_lr * g for p, g in zip(fast, grads)]
        query = F.cross_entropy(forward(model, dict(zip(meta, fast)), qx), qy)
        for acc, g in zip(total, torch.autograd.grad(query, leaves)):
            acc += g / len(batch)
    return dict(zip(meta, total))


def _higher_loop(model, meta: Params, batch: TaskBatch, cfg: BenchConfig) -> Params:
    """higher's innerloop_ctx per task; `model` is reset to `meta` first, so it can be reused."""
    try:
        import higher
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SystemExit("the `higher` baseline is not installed: pip install 'fedmeta[bench]'") from exc
    model.load_state_dict(meta, strict=True)
    model.zero_grad(set_to_none=True)
    inner_opt = torch.optim.SGD(model.parameters(), lr=cfg.inner_lr)
    for sx, sy, qx, qy in zip(*batch.tensors()):
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(cfg.inner_steps):
                diffopt.step(F.cross_entropy(fmodel(sx), sy))
            (F.cross_entropy(fmodel(qx), qy) / len(batch)).backward()
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def max_relative_difference(a: Params, b: Params) -> float:
    """Largest, over parameter tensors, of |a - b| / |b| (Euclidean norms).

    A tensor whose reference gradient is below 0.1% of the whole gradient's norm (a conv bias
    that a following norm layer cancels has a gradient of pure rounding noise) is compared
    against that floor instead, so noise is not reported as a relative error of 100%.
    """
    floor = 1e-3 * torch.sqrt(tensor_sum(g.double().pow(2).sum() for g in b.values())).item()
    return max(((a[k] - b[k]).norm() / max(b[k].norm().item(), floor, 1e-30)).item() for k in b)


def _float64_reference(model, meta: Params, batch: TaskBatch, cfg: BenchConfig) -> Params:
    """The meta-gradient computed by higher in float64: what every float32 result is checked
    against (higher's own float32 result differs from it by about 1e-5 on this workload)."""
    wide = copy.deepcopy(model).double()
    batch = dataclasses.replace(batch, support_x=batch.support_x.double(), query_x=batch.query_x.double())
    grads = _higher_loop(wide, {k: v.double() for k, v in meta.items()}, batch, cfg)
    return {k: g.to(meta[k].dtype) for k, g in grads.items()}


def run_maml_bench(cfg: BenchConfig, progress: Callable[[str], None] = lambda _: None) -> BenchResult:
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    try:
        return _run(cfg, progress)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def _run(cfg: BenchConfig, progress: Callable[[str], None]) -> BenchResult:
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model_config()).to(device)
    algo = build_algorithm(model, cfg.meta_config(), resolve_kernels(cfg.kernels) if device.type == "cpu" else None)
    meta = algo.init_meta_params()
    batch = _tasks(cfg).to(device)
    # the baselines differentiate through MONAI's blocks run in order (the same function, tested)
    higher_model = build_model(model.config).to(device).reference()  # built once, outside the timed calls
    reference = model.reference()
    methods: dict[str, Callable[[], Params]] = {
        "fedmeta": lambda: algo.meta_gradient(meta, batch).grads,
        "higher": lambda: _higher_loop(higher_model, meta, batch, cfg),
        "autograd": lambda: _autograd_loop(reference, meta, batch, cfg),
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    grads: dict[str, Params] = {}
    times: dict[str, list[float]] = {name: [] for name in methods}
    memory = _PeakMemory(device)
    for fn in methods.values():  # warm-up, so allocator growth is not charged to the first method
        fn()
    peak = {name: memory.measure(fn) for name, fn in methods.items()}
    for rep in range(cfg.repeats):
        for name, fn in methods.items():
            sync()
            start = time.perf_counter()
            grads[name] = fn()
            sync()
            times[name].append(time.perf_counter() - start)
        progress(f"repeat {rep + 1}/{cfg.repeats}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()))
    median = {name: statistics.median(t) for name, t in times.items()}
    exact = _float64_reference(higher_model, meta, batch, cfg)
    error = {name: max_relative_difference(g, exact) for name, g in grads.items()}
    return BenchResult(
        fedmeta_s=median["fedmeta"],
        higher_s=median["higher"],
        autograd_s=median["autograd"],
        speedup_vs_higher=median["higher"] / median["fedmeta"],
        speedup_vs_autograd=median["autograd"] / median["fedmeta"],
        max_rel_grad_diff=error["fedmeta"],
        grad_error_vs_float64=error,
        fedmeta_vs_higher_float32=max_relative_difference(grads["fedmeta"], grads["higher"]),
        peak_mem_mb=peak,
        device=str(device),
        execution=algo.execution_mode(device),
        kernels=algo.kernels_on(device),
        threads=torch.get_num_threads(),
        config=asdict(cfg),
    )
