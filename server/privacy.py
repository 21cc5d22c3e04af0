"""Site-level differential privacy at the coordinator: clipped, noised mean and its accounting.

The Gaussian mechanism is applied to the sum of the sites' clipped meta-gradients
(sensitivity `clip`: adding or removing one site moves the sum by at most `clip` in L2). The
noise has standard deviation `noise_multiplier * clip`, and the sum is divided by the number of
sites sampled that round. The noise is added either by the coordinator (`server`) or in equal
shares by the sites (`sites`: each adds N(0, (σC)²/n)). The second mode composes with secure
aggregation, where the coordinator never sees a single site's update. If k of the n sampled
sites do not report, only k shares are in the sum, and the round is accounted with the noise
that is actually there: σ·sqrt(k/n).

The accounting is Flower's RDP accountant (Google's dp-accounting), with no credit taken for
sampling sites (`no-amplification`). That is exact when every training site takes part in every
round (fraction-train = 1, the default) and conservative otherwise. Rounds in which the
meta-model did not move release nothing and cost nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from common.functional import tensor_sum
from common.privacy import add_noise, clip

NOISE_MODES = ("server", "sites")


@dataclass
class Privacy:
    clip: float
    noise_multiplier: float
    delta: float
    mode: str
    population: int  # training sites: the units whose participation is protected
    accountant: RdpAccountant = field(init=False)

    def __post_init__(self) -> None:
        if self.mode not in NOISE_MODES:
            raise ValueError(f"dp-noise={self.mode!r}: choose one of {', '.join(NOISE_MODES)}")
        self.accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=self.delta,
                population_size=max(1, self.population),
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
            )
        )

    def aggregate(self, updates: list[dict[str, torch.Tensor]], sampled: int) -> tuple[dict[str, torch.Tensor], float]:
        """The private mean of the accepted updates over the `sampled` sites, and the noise
        multiplier it actually carries."""
        if self.mode == "server":
            clipped = [clip(u, self.clip)[0] for u in updates]  # enforce the bound whatever a site did
            total = {k: tensor_sum(u[k].double() for u in clipped) for k in updates[0]}
            total = add_noise(total, self.noise_multiplier * self.clip)
            effective = self.noise_multiplier
        else:  # the sites clipped and noised: the coordinator only sums
            total = {k: tensor_sum(u[k].double() for u in updates) for k in updates[0]}
            effective = self.received_multiplier(len(updates), sampled)
        return {k: (v / sampled).float() for k, v in total.items()}, effective

    def received_multiplier(self, received: int, sampled: int) -> float:
        """Site-added noise: the multiplier the sum carries when `received` of `sampled` shares arrived."""
        return self.noise_multiplier * math.sqrt(received / sampled)

    def account(self, effective_multiplier: float, sampled: int) -> dict[str, float]:
        self.accountant.compose(
            GaussianPrivacyEvent(
                effective_multiplier,
                min(sampled, self.accountant.config.population_size),
                self.accountant.config.population_size,
            )
        )
        spent = self.accountant.get_privacy_spent(self.delta)
        return {
            "epsilon": spent.epsilon,
            "delta": self.delta,
            "noise-multiplier": effective_multiplier,
            "releases": spent.num_releases,
        }
