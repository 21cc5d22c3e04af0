"""Secure aggregation: masks cancel, a site that drops after sharing its keys is recovered from
the others' shares, what the coordinator receives reveals no single site's vector."""

import numpy as np
import pytest

from common import secagg
from common.secagg import SecAggError, SiteState

CLIP, LEVELS = 4.0, 1 << 40


def run(vectors: dict[int, np.ndarray], threshold: int, drop_after_sharing=(), tamper=None):
    """The four stages as the coordinator drives them; returns (sum, what the coordinator saw)."""
    states, public = {}, {}
    for i in vectors:
        states[i], public[i] = secagg.advertise(i)
    outbox = {i: secagg.share_keys(states[i], public, threshold) for i in vectors}
    inbox = {j: {i: outbox[i][j] for i in vectors if i != j} for j in vectors}
    if tamper is not None:
        sender, receiver = tamper
        blob = bytearray(inbox[receiver][sender])
        blob[-1] ^= 1
        inbox[receiver][sender] = bytes(blob)
    masked = {
        i: secagg.masked_input(states[i], vectors[i], inbox[i], CLIP, LEVELS)
        for i in vectors
        if i not in drop_after_sharing
    }
    survivors, dropped = sorted(masked), sorted(drop_after_sharing)
    # the survivors' states go through bytes, as through Flower's context.state between messages
    responses = {i: secagg.unmask(SiteState.from_bytes(states[i].to_bytes()), survivors, dropped) for i in survivors}
    return secagg.unmasked_sum(masked, public, responses, threshold, CLIP, LEVELS), masked


def vectors(n, length=1000, seed=0):
    rng = np.random.default_rng(seed)
    return {i: rng.normal(0, 0.5, length).astype(np.float32) for i in range(1, n + 1)}


def test_the_sum_is_the_plain_sum_within_quantization_error():
    v = vectors(4)
    total, masked = run(v, threshold=3)
    expected = sum(x.astype(np.float64) for x in v.values())
    assert np.abs(total - expected).max() <= 4 * (2 * CLIP / LEVELS)  # half a level per site, rounded up
    for i, y in masked.items():  # what the coordinator got from a site is not that site's vector
        plain = secagg.quantize(v[i], CLIP, LEVELS)
        assert not np.array_equal(y, plain)
        assert np.corrcoef(y.astype(np.float64), plain.astype(np.float64))[0, 1] < 0.2


def test_a_site_dropping_after_sharing_keys_is_recovered():
    v = vectors(4, seed=1)
    total, _ = run(v, threshold=3, drop_after_sharing=[2])
    expected = v[1].astype(np.float64) + v[3] + v[4]
    assert np.abs(total - expected).max() <= 3 * (2 * CLIP / LEVELS)


def test_too_many_dropouts_fail_clearly():
    with pytest.raises(SecAggError, match="fewer than the threshold 3"):
        run(vectors(4, seed=2), threshold=3, drop_after_sharing=[1, 2])


def test_tampered_shares_are_named():
    with pytest.raises(SecAggError, match="shares from site 3 do not decrypt"):
        run(vectors(3, seed=3), threshold=2, tamper=(3, 1))


def test_shamir_needs_the_threshold():
    secret = bytes(range(32))
    shares = secagg.shamir_split(secret, 3, [1, 2, 3, 4, 5])
    assert secagg.shamir_combine({k: shares[k] for k in (2, 4, 5)}) == secret
    with pytest.raises(SecAggError, match="2 shares do not reconstruct"):  # 2 of 3: a random field element
        secagg.shamir_combine({k: shares[k] for k in (1, 3)})


def test_a_site_refuses_to_reveal_both_secrets_of_one_peer():
    state, _ = secagg.advertise(1)
    with pytest.raises(SecAggError, match="cannot both survive and drop"):
        secagg.unmask(state, survivors=[1, 2], dropped=[2])
