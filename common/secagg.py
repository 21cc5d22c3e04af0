"""Secure aggregation of sites' vectors, after Bonawitz et al. (CCS 2017): the coordinator learns
the sum of what the surviving sites sent, and nothing about any single site's vector, even when
sites drop out after sharing their keys.

Per round, with n sites and a threshold t (any t sites can recover what a dropped site owes):

1. **advertise**: every site makes two X25519 key pairs: `c` to encrypt shares to its peers, and
   `s` to agree pairwise masks. It sends both public keys.
2. **share**: every site draws a self-mask seed `b`. It splits `b` and its `s` private key into
   Shamir shares (t of n) and encrypts one share of each for each peer (AES-GCM, keyed by ECDH
   on the `c` keys). The coordinator only routes the ciphertexts.
3. **mask**: every site quantizes its vector into Z_(2^64), then adds PRG(b) and, for each peer
   j, +PRG(s_ij) if its index is lower, else -PRG(s_ij), where s_ij = ECDH(s_i, s_j). The
   pairwise masks cancel in the sum; the self mask hides the vector even from a coordinator
   who later learns the pairwise seeds of a dropped site.
4. **unmask**: the coordinator names the survivors (masked vector received) and the dropped
   sites (shares sent, no masked vector). Survivors return their shares of each survivor's `b`,
   and of each dropped site's `s` private key, never both for the same site. The coordinator
   rebuilds the masks, removes them, and dequantizes the sum.

The PRG is ChaCha20 (cryptography) and Shamir's scheme works over the prime field 2^521 - 1.
Pure Python and numpy: no flwr. The `State` of a site is plain bytes, so it can live in Flower's
`context.state` between the protocol's messages.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

# Z_(2^64): numpy's uint64 addition wraps around by itself. Sums of quantized vectors stay
# below 2^53, so they convert to float64 exactly (sites * levels < 2^53).
MODULUS_BITS = 64
MODULUS = 1 << MODULUS_BITS
EXACT = 1 << 53
PRIME = (1 << 521) - 1  # Shamir field: a 32-byte secret is one element


class SecAggError(RuntimeError):
    pass


# --- primitives -------------------------------------------------------------------------------


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def agree(private: bytes, peer_public: bytes, purpose: bytes) -> bytes:
    """A 32-byte key both ends derive: ECDH (X25519), then HKDF-SHA256 bound to `purpose`."""
    shared = X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedmeta-secagg/" + purpose).derive(shared)


def prg(seed: bytes, length: int) -> np.ndarray:
    """`length` pseudo-random elements of Z_(2^64) from a 32-byte seed (ChaCha20 keystream)."""
    stream = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor().update(b"\x00" * (8 * length))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


def shamir_split(secret: bytes, threshold: int, holders: list[int]) -> dict[int, bytes]:
    """Shares of `secret` (at most 65 bytes) for the holders' x-coordinates (non-zero ints)."""
    value = int.from_bytes(secret, "big")
    coefficients = [value] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in holders:
        y = 0
        for c in reversed(coefficients):
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(66, "big")
    return shares


def shamir_combine(shares: dict[int, bytes], length: int = 32) -> bytes:
    """The secret from at least `threshold` shares (Lagrange interpolation at 0)."""
    points = [(x, int.from_bytes(y, "big")) for x, y in shares.items()]
    secret = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >> (8 * length):
        raise SecAggError(f"{len(points)} shares do not reconstruct a {length}-byte secret: too few, or corrupted")
    return secret.to_bytes(length, "big")


def quantize(vector: np.ndarray, clip_range: float, levels: int) -> np.ndarray:
    """Floats in [-clip_range, clip_range] to integers in [0, levels] (values outside are clipped)."""
    scaled = (np.clip(vector.astype(np.float64), -clip_range, clip_range) + clip_range) / (2 * clip_range) * levels
    return np.rint(scaled).astype(np.uint64)


def clipped_count(vector: np.ndarray, clip_range: float) -> int:
    """How many coordinates `quantize` would clip (a site reports this count, never the values)."""
    return int((np.abs(vector) > clip_range).sum())


def dequantize_sum(total: np.ndarray, count: int, clip_range: float, levels: int) -> np.ndarray:
    """The float sum of `count` quantized vectors, from the sum of their integers."""
    return total.astype(np.float64) * (2 * clip_range) / levels - count * clip_range


# --- one site ---------------------------------------------------------------------------------


@dataclass
class SiteState:
    """What a site keeps between the protocol's messages (serializable, never sent)."""

    index: int
    c_private: bytes = b""
    s_private: bytes = b""
    b_seed: bytes = b""
    peers: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # index -> (c_public, s_public)
    held: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # index -> (share of b, share of s key)

    def to_bytes(self) -> bytes:
        hexed = lambda pair: [pair[0].hex(), pair[1].hex()]
        return json.dumps(
            {
                "index": self.index,
                "c": self.c_private.hex(),
                "s": self.s_private.hex(),
                "b": self.b_seed.hex(),
                "peers": {str(k): hexed(v) for k, v in self.peers.items()},
                "held": {str(k): hexed(v) for k, v in self.held.items()},
            }
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SiteState:
        d = json.loads(data)
        pair = lambda v: (bytes.fromhex(v[0]), bytes.fromhex(v[1]))
        return cls(
            d["index"],
            bytes.fromhex(d["c"]),
            bytes.fromhex(d["s"]),
            bytes.fromhex(d["b"]),
            {int(k): pair(v) for k, v in d["peers"].items()},
            {int(k): pair(v) for k, v in d["held"].items()},
        )


def advertise(index: int) -> tuple[SiteState, tuple[bytes, bytes]]:
    """Stage 1: fresh key pairs; returns the state to keep and the two public keys to send."""
    if index < 1:
        raise ValueError(
            f"site index {index}: secure aggregation numbers sites from 1 (0 is the shared secret's point)"
        )
    c, s = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    state = SiteState(index, _raw_private(c), _raw_private(s), secrets.token_bytes(32))
    return state, (_raw_public(c), _raw_public(s))


def share_keys(state: SiteState, public_keys: dict[int, tuple[bytes, bytes]], threshold: int) -> dict[int, bytes]:
    """Stage 2: one encrypted pair of shares (of b, of the s private key) for every peer."""
    if state.index not in public_keys or len(public_keys) < threshold:
        raise SecAggError(
            f"site {state.index}: {len(public_keys)} sites advertised keys, fewer than the threshold {threshold}"
        )
    state.peers = dict(public_keys)
    holders = sorted(public_keys)
    b_shares = shamir_split(state.b_seed, threshold, holders)
    s_shares = shamir_split(state.s_private, threshold, holders)
    state.held[state.index] = (b_shares[state.index], s_shares[state.index])
    out = {}
    for j in holders:
        if j == state.index:
            continue
        key = agree(state.c_private, public_keys[j][0], b"shares")
        nonce = secrets.token_bytes(12)
        out[j] = nonce + AESGCM(key).encrypt(nonce, b_shares[j] + s_shares[j], f"{state.index}->{j}".encode())
    return out


def masked_input(
    state: SiteState, vector: np.ndarray, received: dict[int, bytes], clip_range: float, levels: int
) -> np.ndarray:
    """Stage 3: keep the shares addressed to this site; return the masked, quantized vector.
    Pairwise masks are agreed only with the peers whose shares arrived (the sites that finished
    stage 2), so that every mask can be removed later even if that peer drops."""
    for j, blob in received.items():
        if j not in state.peers:
            raise SecAggError(f"site {state.index}: shares from site {j}, which advertised no keys")
        key = agree(state.c_private, state.peers[j][0], b"shares")
        try:
            plain = AESGCM(key).decrypt(blob[:12], blob[12:], f"{j}->{state.index}".encode())
        except InvalidTag as error:
            raise SecAggError(
                f"site {state.index}: the shares from site {j} do not decrypt (tampered or misrouted)"
            ) from error
        state.held[j] = (plain[:66], plain[66:])
    state.peers = {j: keys for j, keys in state.peers.items() if j in received or j == state.index}
    y = quantize(vector, clip_range, levels) + prg(state.b_seed, len(vector))
    for j, (_, s_public) in state.peers.items():
        if j == state.index:
            continue
        mask = prg(agree(state.s_private, s_public, b"mask"), len(y))
        y = y + mask if state.index < j else y - mask  # uint64: wraps modulo 2^64
    return y


def unmask(state: SiteState, survivors: list[int], dropped: list[int]) -> dict[str, dict[int, bytes]]:
    """Stage 4: shares of the survivors' self masks and of the dropped sites' mask keys."""
    if set(survivors) & set(dropped):
        raise SecAggError(
            f"site {state.index}: "
            f"a site cannot both survive and drop ({sorted(set(survivors) & set(dropped))}); refusing"
        )
    return {
        "b": {j: state.held[j][0] for j in survivors if j in state.held},
        "s": {j: state.held[j][1] for j in dropped if j in state.held},
    }


# --- the coordinator --------------------------------------------------------------------------


def unmasked_sum(
    masked: dict[int, np.ndarray],
    public_keys: dict[int, tuple[bytes, bytes]],
    responses: dict[int, dict[str, dict[int, bytes]]],
    threshold: int,
    clip_range: float,
    levels: int,
) -> np.ndarray:
    """The float sum of the survivors' vectors from their masked vectors and the unmask shares.
    `public_keys`: the sites that finished stage 2 (shares sent); those of them without a masked
    vector are the dropped ones."""
    survivors = sorted(masked)
    dropped = sorted(set(public_keys) - set(masked))
    if len(responses) < threshold:
        raise SecAggError(
            f"only {len(responses)} sites answered the unmask request, fewer than the threshold {threshold}: "
            "the sum cannot be recovered this round"
        )
    if len(public_keys) * levels >= EXACT:
        raise SecAggError(
            f"{len(public_keys)} sites x {levels} levels would overflow the exact range; lower secagg levels"
        )
    total = np.zeros_like(next(iter(masked.values())))
    for y in masked.values():
        total = total + y
    length = len(total)
    for j in survivors:  # remove each survivor's self mask
        shares = {holder: r["b"][j] for holder, r in responses.items() if j in r["b"]}
        if len(shares) < threshold:
            raise SecAggError(f"{len(shares)} shares of site {j}'s self mask, fewer than the threshold {threshold}")
        total = total - prg(shamir_combine(dict(list(shares.items())[:threshold])), length)
    for d in dropped:  # remove the pairwise masks the survivors still carry for each dropped site
        shares = {holder: r["s"][d] for holder, r in responses.items() if d in r["s"]}
        if len(shares) < threshold:
            raise SecAggError(
                f"{len(shares)} shares of dropped site {d}'s mask key, fewer than the threshold {threshold}"
            )
        s_private = shamir_combine(dict(list(shares.items())[:threshold]))
        for j in survivors:
            mask = prg(agree(s_private, public_keys[j][1], b"mask"), length)
            # survivor j added +mask if j < d, else -mask: subtract what it added
            total = total - mask if j < d else total + mask
    return dequantize_sum(total, len(survivors), clip_range, levels)
