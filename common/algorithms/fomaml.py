"""First-order MAML: the inner-loop gradients are treated as constants, so the meta-gradient is
the query gradient at the adapted weights. Cheaper in time and memory, no Hessian terms."""

from common.algorithms.maml import MAML


class FOMAML(MAML):
    name = "fomaml"
    first_order = True
