"""Meta-learning algorithms, one per module, behind the `MetaAlgorithm` interface."""

from common.algorithms.anil import ANIL
from common.algorithms.base import MetaAlgorithm
from common.algorithms.execution import MetaStep
from common.algorithms.fomaml import FOMAML
from common.algorithms.maml import MAML
from common.algorithms.metasgd import MetaSGD
from common.algorithms.protonet import ProtoNet
from common.algorithms.registry import build_algorithm

__all__ = ["ANIL", "FOMAML", "MAML", "MetaAlgorithm", "MetaSGD", "MetaStep", "ProtoNet", "build_algorithm"]
