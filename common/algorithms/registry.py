"""Algorithm names (as used in run configs and on the command line) to classes."""

from __future__ import annotations

from common.algorithms.anil import ANIL
from common.algorithms.base import MetaAlgorithm
from common.algorithms.fedavg import FedAvg
from common.algorithms.fomaml import FOMAML
from common.algorithms.maml import MAML
from common.algorithms.metasgd import MetaSGD
from common.algorithms.protonet import ProtoNet
from common.config import ALGORITHMS, MetaConfig
from common.models import MetaNet
from common.native.build import NativeKernels

REGISTRY: dict[str, type[MetaAlgorithm]] = {cls.name: cls for cls in (MAML, FOMAML, MetaSGD, ANIL, ProtoNet, FedAvg)}
assert tuple(REGISTRY) == ALGORITHMS


def build_algorithm(model: MetaNet, config: MetaConfig, kernels: NativeKernels | None = None) -> MetaAlgorithm:
    """`config.algorithm` on `model`; `kernels` (common.native.resolve_kernels, a per-machine
    choice) run the backbone's fused ops on CPU tensors."""
    return REGISTRY[config.algorithm](model, config, kernels)
