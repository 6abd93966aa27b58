"""Device-side, batch-independent randomness: per-sample keys and counter-based noise.

Every random draw of an attack is a pure function of ``(sample, seed, restart, purpose, position)``: it never
touches the global RNG, never copies the batch to the host, and does not depend on which batch the sample is
in nor where in it, so attacking a batch equals attacking each image alone.  Everything runs on the tensors'
device in integer arithmetic, vectorised over the batch.

**Arithmetic.**  All integers are ``int64`` tensors with two's-complement wraparound (``+``, ``*`` modulo
``2⁶⁴``); torch's CPU kernels and CUDA's 64-bit integer units wrap identically, so the bits are the same on
every device.  ``>>`` on ``int64`` is arithmetic (sign-extending); :func:`_shr` masks it into the logical
shift the hash needs.  :func:`mix64` is the splitmix64 finaliser (Steele, Lea & Flood, OOPSLA 2014)

    z ← (z ⊕ (z ≫ 30))·0xBF58476D1CE4E5B9,  z ← (z ⊕ (z ≫ 27))·0x94D049BB133111EB,  z ← z ⊕ (z ≫ 31)

a bijection of 64-bit words with full avalanche; :func:`mix64_int` is the same map on Python integers (the
reference the tests check the tensor version against, overflow included).

**Keys** (:func:`sample_keys`, once per attack call and only if some noise is drawn).  The float32 bit pattern
``b_{n,i}`` of entry ``i`` (logical C·H·W order, whatever the memory format) of sample ``n`` is read as an
integer and mixed with a position word ``p_i = mix64(i·φ)`` (``φ = 0x9E3779B97F4A7C15``), then

    k_n = mix64( Σ_i h(b_{n,i} ⊕ p_i) ),   h(z) = (z·M) ⊕ ((z·M) ≫ 16)  (32-bit words, ``p_i`` the top
                                                                   half of its 64-bit mix)

the sum taken exactly in int64.  ``h`` is non-linear, so moving a value to another position changes the key;
integer sums are exact, so the key of a sample is the same in any batch.

**Noise** (:class:`Noise`).  A draw is addressed by a *stream* ``s = stream(seed, restart, purpose)`` (a
64-bit hash of the three, computed on the host from Python numbers: no tensor is read) and a per-sample base
``β_n = mix64(k_n + s)``; the ``k``-th 64-bit word of sample ``n`` is splitmix64's output
``w_{n,k} = mix64(β_n + (k+1)·φ)`` (a counter-based generator: any word can be computed independently).
A draw of ``m`` entries (``m`` = the product of its shape, taken in logical order) uses ``h = ⌈m/2⌉`` words,
two entries per word.  Each word holds two signed 24-bit fields, the top 24 bits of its two 32-bit halves
read as two's-complement integers (an arithmetic shift, i.e. floor division by 2⁸),

    a_{n,k} = ⌊lo(w_{n,k}) / 2⁸⌋,   b_{n,k} = ⌊hi(w_{n,k}) / 2⁸⌋   ∈ [−2²³, 2²³)

(``lo``, ``hi``: bits 0–31 and 32–63 as signed 32-bit integers; the fields are bits 8–31 and 40–63).

* Uniforms: entries ``2k`` and ``2k+1`` come from ``f = a_k`` and ``f = b_k``: ``"unit"`` is
  ``f·2⁻²⁴ + ½ ∈ [0, 1)`` and ``"uniform"`` is ``f·2⁻²³ ∈ [−1, 1)``, both exact in float32 (a 24-bit
  mantissa).
* Gaussians: Box–Muller with both outputs of a pair, ``ρ_k = √(−2 ln(½ − b_k·2⁻²⁴))`` (the argument is
  ``1 − u`` for the unit ``u`` of ``b_k``, in ``(0, 1]``, so ``ρ_k ≤ √(48 ln 2) ≈ 5.77``) and
  ``θ_k = 2π·a_k·2⁻²⁴ ∈ [−π, π)``; entry ``k`` is ``ρ_k cos θ_k`` and entry ``h + k`` is ``ρ_k sin θ_k``
  (an odd ``m`` drops the last sine).

The noise is float32 (the attacks' working dtype; wider working dtypes get it upcast) and in the memory
format asked for.  The halves of a word are read through an int32 view of the int64 words, whose order in
memory is the host's byte order: on a big-endian host they are swapped back, so the numbers are the same.
"""

from __future__ import annotations

import hashlib
import math
import sys

import torch

__all__ = ["KINDS", "Noise", "mix64", "mix64_int", "sample_keys", "stream"]

KINDS = ("unit", "uniform", "normal")
"""Distributions: ``"unit"`` U[0, 1), ``"uniform"`` U[−1, 1), ``"normal"`` N(0, 1)."""

_MASK = (1 << 64) - 1


def _signed(word: int) -> int:
    """A 64-bit word as the two's-complement int64 that torch stores."""
    word &= _MASK
    return word - (1 << 64) if word >> 63 else word


_PHI = _signed(0x9E3779B97F4A7C15)
_C1 = _signed(0xBF58476D1CE4E5B9)
_C2 = _signed(0x94D049BB133111EB)
_M32 = 0x9E3779B1 - (1 << 32)
_UNIT = 2.0**-24
_BIG_ENDIAN = sys.byteorder == "big"


def _shr(z: torch.Tensor, bits: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Logical right shift of int64 or int32 words (torch's ``>>`` sign-extends), into ``out`` if given."""
    width = 8 * z.element_size()
    shifted = z >> bits if out is None else torch.bitwise_right_shift(z, bits, out=out)
    return shifted.bitwise_and_((1 << (width - bits)) - 1)


def _float32(fields: torch.Tensor, factor: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """``fields · factor`` as float32 in one pass, into ``out`` if given (the factor is a float32 scalar, so
    the result is float32 whatever torch's default dtype)."""
    return torch.mul(fields, torch.tensor(factor, dtype=torch.float32), out=out)


def mix64(z: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """The splitmix64 finaliser of int64 words, computed in place on ``z`` (which it returns), with one
    scratch tensor of ``z``'s size (``scratch``, an int64 tensor of ``z``'s shape, or a new one): no other
    temporaries."""
    scratch = torch.empty_like(z) if scratch is None else scratch
    z ^= _shr(z, 30, scratch)
    z *= _C1
    z ^= _shr(z, 27, scratch)
    z *= _C2
    z ^= _shr(z, 31, scratch)
    return z


def mix64_int(word: int) -> int:
    """:func:`mix64` on a Python integer (the reference: unbounded integers reduced modulo 2⁶⁴ explicitly);
    returns the signed int64 value."""
    z = word & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return _signed(z ^ (z >> 31))


def stream(seed: int, restart: int, purpose: str) -> int:
    """The 64-bit stream word of ``(seed, restart, purpose)``: a blake2b hash of the three (host-side, from
    Python numbers only), as a signed int64."""
    digest = hashlib.blake2b(f"{seed}:{restart}:{purpose}".encode(), digest_size=8).digest()
    return _signed(int.from_bytes(digest, "little"))


def sample_keys(x: torch.Tensor) -> torch.Tensor:
    """Per-sample int64 keys ``k_n`` of a batch ``x`` of shape ``(N, ...)`` (see the module docstring), on
    ``x``'s device: a function of each sample's float32 values and their positions only.

    The per-entry words are 32-bit (``h`` with ``M = 0x9E3779B1`` and a 16-bit shift, modulo 2³²), so the
    work tensor is the size of a float32 batch; their sum is exact in int64 (at most C·H·W terms below 2³¹).
    """
    bits = x.detach().to(torch.float32).view(torch.int32)
    positions = mix64(torch.arange(math.prod(x.shape[1:]), device=x.device, dtype=torch.int64).mul_(_PHI))
    h = bits ^ (positions >> 32).to(torch.int32).view(x.shape[1:])
    h *= _M32
    h ^= _shr(h, 16)
    return mix64(h.sum(dim=tuple(range(1, x.dim())), dtype=torch.int64))


class Noise:
    """Random tensors of a batch, keyed per sample: the same sample gets the same draws in any batch.

    Args:
        keys: the samples' keys, shape ``(N,)`` int64 (:func:`sample_keys`).
        seed: the attack's seed (any Python integer).
    """

    def __init__(self, keys: torch.Tensor, seed: int) -> None:
        if keys.dtype != torch.int64 or keys.dim() != 1:
            raise ValueError(f"keys must be a 1-D int64 tensor, got {keys.dtype} of shape {tuple(keys.shape)}")
        self.keys = keys
        self.seed = seed

    def words(self, count: int, restart: int, purpose: str, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """The 64-bit words ``w_{n,k}``, ``k < count``, of ``(restart, purpose)``: shape ``(N, count)``;
        ``scratch`` (int64, that shape) is :func:`mix64`'s."""
        base = mix64(self.keys + stream(self.seed, restart, purpose))
        counter = torch.arange(1, 1 + count, device=self.keys.device, dtype=torch.int64).mul_(_PHI)
        return mix64(torch.add(base[:, None], counter), scratch)

    def fields(self, count: int, restart: int, purpose: str, scratch: torch.Tensor | None = None) -> torch.Tensor:
        """The signed 24-bit fields ``(a_{n,k}, b_{n,k})`` of ``count`` words, int32 of shape ``(N, count, 2)``,
        computed in place over the words' memory (``scratch``: see :meth:`words`)."""
        halves = self.words(count, restart, purpose, scratch).view(torch.int32).view(-1, count, 2)
        if _BIG_ENDIAN:  # the view put each word's high half first
            halves = halves.flip(-1)
        return halves.bitwise_right_shift_(8)

    def draw(self, kind: str, shape: tuple[int, ...], restart: int, purpose: str,
             memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """A float32 tensor ``(N, *shape)`` of ``kind`` (:data:`KINDS`) for ``(restart, purpose)``, in
        ``memory_format`` (``channels_last`` needs a 3-entry ``shape``).

        The result's memory is first the hash's scratch (its ``2⌈m/2⌉`` float32 entries are the bytes of
        ``⌈m/2⌉`` int64 words), so a draw allocates the words, the result and, for Gaussians, the radii.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        m = math.prod(shape)
        count = (m + 1) // 2
        n = self.keys.shape[0]
        out = torch.empty((n, 2 * count), device=self.keys.device, dtype=torch.float32)
        f = self.fields(count, restart, f"{kind}/{purpose}", out.view(torch.int64))
        if kind == "normal":
            cos, sin = out.view(n, 2, count).unbind(1)
            _float32(f[..., 0], 2 * math.pi * _UNIT, out=cos)  # θ
            torch.sin(cos, out=sin)
            cos.cos_()
            out.view(n, 2, count).mul_(_float32(f[..., 1], -_UNIT).add_(0.5).log_().mul_(-2.0).sqrt_()[:, None])
        else:
            _float32(f.view(n, 2 * count), _UNIT if kind == "unit" else 2 * _UNIT, out=out)
            if kind == "unit":
                out.add_(0.5)
        out = out[:, :m].reshape(n, *shape)
        return out.contiguous(memory_format=memory_format)
