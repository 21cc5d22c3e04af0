"""The benchmark's adapters on a GPU (`fedmeta benchmark evaluate --device cuda`): every method
scores the same episodes as on the CPU, its logits equal to float rounding, and its scores are
named by the device, so CPU scores are never taken for GPU ones. Skipped without CUDA."""

import numpy as np
import pytest
import torch

from simulation.adapters import FineTune, LinearProbe, MetaLearned, Prototypes, Scratch
from simulation.benchmark import Protocol, draw_episodes, score, score_steps
from tests.simulation.test_benchmark import MODEL, saved

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")


def adapters(tmp_path):
    """One of each kind, built afresh (so the CPU and the GPU copy start from the same bytes)."""
    fedavg, fomaml, protonet = saved(tmp_path, "fedavg", 5), saved(tmp_path, "fomaml"), saved(tmp_path, "protonet")
    return {
        "fomaml": lambda: MetaLearned(fomaml, steps=3),
        "protonet": lambda: MetaLearned(protonet),
        "protonet+finetune": lambda: FineTune.of_meta_model(protonet, "protonet", True, steps=5, lr=1e-2),
        "fedavg+finetune": lambda: FineTune(fedavg, steps=5, lr=1e-2),
        "fedavg+linear-probe": lambda: LinearProbe(fedavg, steps=20, lr=1e-1),
        "fedavg+prototypes": lambda: Prototypes(fedavg),
        "local": lambda: Scratch(MODEL, steps=5, lr=1e-2),
    }


def test_every_adapter_scores_the_same_episodes_on_the_gpu_as_on_the_cpu(scenario, tmp_path):
    episodes = draw_episodes(Protocol(scenario, shots=(1, 2), queries=3, episodes=4))
    classes = episodes.num_classes()
    episode = next(iter(episodes.batches[2].values()))[0]
    for name, make in adapters(tmp_path).items():
        cpu, gpu = make(), make().to(CUDA)
        assert gpu.identity() == {**cpu.identity(), "device": "cuda"}, name  # GPU scores are named so
        on_cpu = cpu.logits(episode, classes)
        on_gpu = gpu.logits(gpu.on_device(episode), classes)
        assert on_gpu.device.type == "cuda", name
        finite = torch.isfinite(on_cpu)
        assert torch.equal(finite, torch.isfinite(on_gpu.cpu())), name
        assert torch.allclose(on_gpu.cpu()[finite], on_cpu[finite], rtol=1e-3, atol=1e-3), name
        a, b = score(cpu, episodes), score(gpu, episodes)
        assert a.digests == b.digests, name
        for k in a.acc:  # float rounding may flip a query whose two best classes tie closely
            assert np.abs(a.acc[k] - b.acc[k]).mean() < 0.05, (name, k, a.acc[k], b.acc[k])


def test_a_trajectory_on_the_gpu_gives_every_step_count(scenario, tmp_path):
    """Tuning's one-trajectory scoring (`score_steps`) runs on the GPU too, and its logits come
    back to the CPU for the metrics."""
    episodes = draw_episodes(Protocol(scenario, shots=(2,), queries=3, episodes=2, role="validation"))
    make = adapters(tmp_path)["fedavg+finetune"]
    gpu = score_steps(make().to(CUDA), episodes, [0, 5])
    cpu = score_steps(make(), episodes, [0, 5])
    assert set(gpu) == {0, 5}
    assert np.abs(gpu[5].acc[2] - cpu[5].acc[2]).mean() < 0.05
