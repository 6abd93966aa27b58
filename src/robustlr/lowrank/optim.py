"""CondLR, the optimiser of ``U S Vᵀ`` layers (the QR-projected SGD baseline is in :mod:`robustlr.lowrank.qr_sgd`,
the checks every step makes first in :mod:`robustlr.lowrank.step_checks`).

CondLR is the method of Savostianova, Zangrando, Ceruti, Tudisco, "Robust low-rank training via approximate
orthonormal constraints", NeurIPS 2023 (arXiv 2306.01485). Its rank-adaptive option follows DLRT
(Schotthöfer et al., NeurIPS 2022); see :mod:`robustlr.lowrank.adaptive`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from robustlr.checks import check_int
from robustlr.lowrank.adaptive import augmented_update, transport_directions, validate_theta
from robustlr.lowrank.layers import LowRankLayer, write_leading_block
from robustlr.lowrank.step_checks import (
    SCALARS,
    ParamsT,
    check_finite_gradients,
    check_hyperparameters,
    checked_scalar,
    parameter_names,
)
from robustlr.lowrank.manifold import (
    S_PROJECTIONS,
    condition_projection,
    condition_projection_flagged,
    linalg_dtype,
    qr_retraction,
    svd,
    svd_flagged,
    tangent_projection,
    tangent_retraction,
    validate_tau,
)

__all__ = ["GRAD_SCALES", "CondLR"]

#: How CondLR scales the directions of ``U`` and ``V``.
GRAD_SCALES = ("reference", "exact")

def _precondition(
    decomposition: tuple[Tensor, Tensor, Tensor], d_u: Tensor, d_v: Tensor
) -> tuple[Tensor, Tensor]:
    """``d_U (S Sᵀ)⁺`` and ``d_V (Sᵀ S)⁺`` from the SVD ``S = P Σ Qᵀ`` (``decomposition``, in the linear
    algebra dtype): ``(SSᵀ)⁺ = P Σ⁻² Pᵀ``, ``(SᵀS)⁺ = Q Σ⁻² Qᵀ``, with singular values below
    ``r·eps·σ_max`` treated as zero."""
    p, sigma, qh = decomposition
    tolerance = sigma[:1] * sigma.numel() * torch.finfo(sigma.dtype).eps
    inverse_square = torch.where(sigma > tolerance, sigma.pow(-2), torch.zeros_like(sigma))
    new_u = ((d_u.to(p.dtype) @ p) * inverse_square) @ p.mT
    new_v = ((d_v.to(p.dtype) @ qh.mT) * inverse_square) @ qh
    return new_u.to(d_u.dtype), new_v.to(d_v.dtype)


def _add_scaled_(targets: list[Tensor], tensors: list[Tensor], scale: float | Tensor) -> None:
    """``t ← t + scale·x`` for every pair, in one foreach call (a tensor ``scale`` is never read on the host)."""
    if isinstance(scale, Tensor):
        torch._foreach_add_(targets, torch._foreach_mul(tensors, scale))
    else:
        torch._foreach_add_(targets, tensors, alpha=scale)


def _momentum_directions(optimizer: Optimizer, params: list[Tensor], group: dict[str, Any]) -> list[Tensor]:
    """SGD directions ``d = grad + wd·p``, then heavy ball ``buf ← μ buf + d`` (no dampening), ``d = buf``, for
    the parameters of one group (foreach calls; the first step's buffer is a copy of ``d``)."""
    grads = [p.grad for p in params]
    decay, momentum = group["weight_decay"], group["momentum"]
    if isinstance(decay, Tensor) or decay != 0:
        grads = torch._foreach_add(grads, torch._foreach_mul(params, decay))
    if not isinstance(momentum, Tensor) and momentum == 0:
        return grads
    states = [optimizer.state[p] for p in params]
    old = [(state["momentum_buffer"], d) for state, d in zip(states, grads) if "momentum_buffer" in state]
    if old:
        buffers = [buffer for buffer, _ in old]
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, [d for _, d in old])
    for state, d in zip(states, grads):
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = d.detach().clone()
    return [state["momentum_buffer"] for state in states]


@dataclass
class _Proposal:
    """One fixed-rank layer's step, directions processed (steps 1–2), before its retraction (steps 3–4)."""

    layer: LowRankLayer
    factors: tuple[Tensor, Tensor, Tensor]
    directions: tuple[Tensor, Tensor, Tensor]
    lrs: tuple[float | Tensor, float | Tensor, float | Tensor]
    hyper: dict[str, Any]


def _grouped(
    fn: Callable[[Tensor, Hashable], tuple[Tensor, ...]],
    matrices: Sequence[Tensor],
    keys: Sequence[Hashable],
    batched: bool | None,
) -> list[tuple[Tensor, ...]]:
    """``fn(x, key)`` for every matrix; batched (``None``: on CUDA devices), the matrices of equal key, shape,
    dtype and device are stacked into one call and its results unstacked (``fn`` must work on batches)."""
    results: list[tuple[Tensor, ...] | None] = [None] * len(matrices)
    buckets: dict[Hashable, list[int]] = defaultdict(list)
    for i, (x, key) in enumerate(zip(matrices, keys)):
        stack = batched if batched is not None else x.device.type == "cuda"
        buckets[(key, x.shape, x.dtype, x.device, i if not stack else -1)].append(i)
    for (key, *_), indices in buckets.items():
        if len(indices) == 1:
            results[indices[0]] = fn(matrices[indices[0]], key)
            continue
        out = fn(torch.stack([matrices[i] for i in indices]), key)
        for j, i in enumerate(indices):
            results[i] = tuple(t[j] for t in out)
    return results  # type: ignore[return-value]


def _check_condlr_keys(prefix: str, group: dict[str, Any]) -> None:
    """``tau`` and ``theta`` of a CondLR param group, as at construction."""
    try:
        group["tau"] = validate_tau(group["tau"])
        if group["theta"] is not None:
            group["theta"] = validate_theta(group["theta"])
    except ValueError as error:
        raise ValueError(f"{prefix}: {error}") from None


class CondLR(Optimizer):
    r"""CondLR: SGD with momentum on ``W = U S Vᵀ`` layers, keeping ``UᵀU = VᵀV = I`` and ``κ(S) ≤ 1 + τ``.

    One step, after a single backward pass (all factors move simultaneously; ``lr`` is each tensor's group lr):

    1. every parameter: ``d = grad + wd·p``; with momentum ``buf ← μ·buf + d`` and ``d = buf``;
    2. ``U`` and ``V`` of low-rank layers: ``d ← (I − UUᵀ) d`` (resp. ``(I − VVᵀ) d``), then scaled
       (``grad_scale``, below); the momentum buffer stores the processed direction (for ``"exact"``,
       before the preconditioner);
    3. ``p ← p − lr·d`` for every parameter;
    4. retraction: ``U ← qf(U)``, ``V ← qf(V)`` (sign-fixed QR), ``S ← Π_τ(S)``
       (:func:`~robustlr.lowrank.manifold.condition_projection`; ``s_projection`` chooses the τ = 0 variant).

    Gradient scales for ``U`` and ``V``. The projected gradient flow on the rank-r manifold is
    ``U̇ = −(I − UUᵀ) ∇_U L (SSᵀ)⁻¹``, ``V̇ = −(I − VVᵀ) ∇_V L (SᵀS)⁻¹``, ``Ṡ = −∇_S L``.

    * ``"exact"``: right-multiply by ``(SSᵀ)⁺ = P Σ⁻² Pᵀ`` (``U``) and ``(SᵀS)⁺ = Q Σ⁻² Qᵀ`` (``V``) from the SVD
      ``S = P Σ Qᵀ`` of the current core (a pseudo-inverse: singular values below ``r·eps·σ_max`` give 0).
      The momentum buffer stores the direction *before* this preconditioner: stored after it, it would be
      multiplied by ``(SSᵀ)⁻¹`` again at every step (a factor ``μ/σ²``, unstable for ``σ² < μ``).
    * ``"reference"`` (default, the reference code's heuristic): multiply by the scalar ``c = (σ_min/σ_max)²``
      of the core after the previous projection (``c = 1`` on a layer's first step), and store the scaled
      direction in the momentum buffer (as the reference code does; ``c ≤ 1`` only damps the momentum).
      ``c ∈ [1/(1+τ)², 1]`` ignores the scale of ``S``; at ``τ = 0`` it is
      1. The reference code's ``τ = 0`` ("mean") mode instead divides by a constant frozen at
      initialisation, the mean singular value of the initial weight (bug B6 of the brief): not reproduced.
      The scale-aware factor ``1/s²`` of ``S = s·Q`` is what ``"exact"`` gives at ``τ = 0``.

    Args:
        params: a model (its low-rank layers are found automatically) or an iterable of parameters / param
            groups, in which case ``model`` must be given.
        lr: learning rate (``group["lr"]``, so LR schedulers work).
        momentum: heavy-ball momentum ``μ ≥ 0`` (no dampening, no Nesterov, as in the reference).
        weight_decay: L2 coefficient added to the direction. For ``U``/``V`` it is removed by the tangent
            projection, so in effect it acts on ``S``, biases and the other parameters.
        tau: conditioning bound, ``κ(S) ≤ 1 + τ`` (the paper's τ; the reference code's ``--eps`` is ``1 + τ``).
        grad_scale: ``"reference"`` or ``"exact"``.
        s_projection: ``"polar"`` or ``"qr"``: the orthogonal factor used when ``τ = 0``.
        model: the module holding the low-rank layers when ``params`` is not a module.
        theta: ``None`` (fixed rank, as in the paper) or a truncation tolerance in ``[0, 1)`` that makes the
            step rank-adaptive (:mod:`robustlr.lowrank.adaptive`); ranks stay within each layer's
            ``max_rank`` capacity. Use it with ``grad_scale="exact"``: then the new directions enter the core
            with the magnitude of the tangent gradient, as in DLRT; ``"reference"`` shrinks them by ``σ²``.
        adapt_every: with ``theta``, adapt the rank on every ``adapt_every``-th step of each layer.
        batched: ``True`` stacks layers of equal shapes into batched Cholesky-QR/SVD calls, ``False`` runs them
            layer by layer, ``None`` (default) chooses by device: batched on CUDA (one call per shape instead of
            one per layer; not measured here, no GPU was available), per layer elsewhere. The two agree to
            rounding (1e-6 in float32). On one CPU thread, WRN-16-4 at rank 0.2, batched measured 0.86–0.94×
            the per-layer time on a shared, loaded machine (``benchmarks/condlr_step.py``): close to even.

    Every low-rank layer whose ``U``, ``S``, ``V`` are all in the optimiser is constrained; all other
    parameters (biases, BatchNorm, dense layers, vanilla factors) get plain SGD with momentum. The layer
    structure is kept by parameter identity, so ``state_dict``/``load_state_dict`` round-trip exactly.
    Per-layer state lives with ``S``: ``step`` (int) and, for ``"reference"``, ``grad_scale`` (``c``).
    Linear algebra runs in float32 (float64 for float64 parameters). A step reads the host twice, whatever the
    number of layers: the fused finiteness check of the gradients, and one flag for all its decompositions
    (see :meth:`_retract`); a rank-adaptive step also reads each adapting layer's new rank.
    """

    def __init__(
        self,
        params: nn.Module | ParamsT,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        tau: float = 0.1,
        grad_scale: str = "reference",
        s_projection: str = "polar",
        *,
        model: nn.Module | None = None,
        theta: float | None = None,
        adapt_every: int = 1,
        batched: bool | None = None,
    ) -> None:
        if batched is not None and not isinstance(batched, bool):
            raise ValueError(f"batched must be None (by device: batched on CUDA), True or False; got {batched!r}")
        self._batched = batched
        if isinstance(params, nn.Module):
            if model is not None and model is not params:
                raise ValueError("model must be omitted (or the same module) when params is a module")
            model, params = params, params.parameters()
        if model is None:
            raise ValueError(
                "model is required when params is not a module: CondLR finds the low-rank layers in it; use "
                "CondLR(model, ...) or CondLR(param_groups, ..., model=model)"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "tau": tau,
            "grad_scale": grad_scale,
            "s_projection": s_projection,
            "theta": theta,
            "adapt_every": adapt_every,
        }
        super().__init__(params, defaults)
        self._model = model
        self._layers = self._find_layers()
        self._names = parameter_names(model)
        if not self._layers:
            count = sum(isinstance(module, LowRankLayer) for module in model.modules())
            if count == 0:
                raise ValueError(
                    f"model ({type(model).__name__}) has no low-rank layer (LowRankLinear / LowRankConv2d), so CondLR "
                    "would only run plain SGD; convert it first with robustlr.lowrank.to_lowrank(model, rank) (or "
                    "use torch.optim.SGD for a dense model)"
                )
            raise ValueError(
                f"params hold none of the U, S, V factors of the {count} low-rank layer(s) of model "
                f"({type(model).__name__}), so CondLR would only run plain SGD; pass the model (or param groups "
                "holding its low-rank layers)"
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for name in SCALARS:
            group[name] = checked_scalar(name, group[name])
        group["tau"] = validate_tau(group["tau"])
        if group["grad_scale"] not in GRAD_SCALES:
            raise ValueError(f"grad_scale must be one of {GRAD_SCALES}; got {group['grad_scale']!r}")
        if group["s_projection"] not in S_PROJECTIONS:
            raise ValueError(f"s_projection must be one of {S_PROJECTIONS}; got {group['s_projection']!r}")
        if group["theta"] is not None:
            group["theta"] = validate_theta(group["theta"])
        group["adapt_every"] = check_int("adapt_every", group["adapt_every"], 1)
        if hasattr(self, "_model"):  # after construction: the new group may complete more layers
            self._layers = self._find_layers()

    def _find_layers(self) -> list[LowRankLayer]:
        """Low-rank layers of the model whose three factors are all optimised here."""
        optimised = {p for group in self.param_groups for p in group["params"]}
        layers = []
        for name, module in self._model.named_modules():
            if not isinstance(module, LowRankLayer):
                continue
            present = [p in optimised for p in (module.U, module.S, module.V)]
            if all(present):
                layers.append(module)
            elif any(present):
                raise ValueError(
                    f"params must hold all or none of U, S, V of low-rank layer {name!r}; it holds "
                    f"{[role for role, there in zip('USV', present) if there]}"
                )
        return layers

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Perform one CondLR step (see the class docstring). ``closure`` re-evaluates the loss.

        Before anything moves, the hyperparameters of every group are checked (:func:`check_hyperparameters`,
        plus ``tau`` and ``theta``) and so are the gradients (:func:`check_finite_gradients`): a bad value or a
        NaN/inf gradient raises ``ValueError`` naming it, with the parameters and the optimiser state unchanged.
        """
        check_hyperparameters(self, _check_condlr_keys)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        check_finite_gradients(self, self._names)  # host read 1
        directions, group_of = self._directions()
        proposals = []
        for layer in self._layers:
            factors = (layer.U, layer.S, layer.V)
            if not any(p in directions for p in factors):
                continue
            groups = tuple(group_of[p] for p in factors)
            hyper = groups[1]
            state = self.state[layer.S]
            state["step"] = state.get("step", 0) + 1
            d_u, d_s, d_v = self._processed_directions(
                layer, hyper, tuple(directions.get(p, torch.zeros_like(p)) for p in factors)
            )
            lrs = tuple(group["lr"] for group in groups)
            if hyper["theta"] is not None and state["step"] % hyper["adapt_every"] == 0:
                self._adapt_layer(layer, hyper, lrs, (d_u, d_s, d_v))
            else:
                proposals.append(_Proposal(layer, layer.factors(), (d_u, d_s, d_v), lrs, hyper))
        self._retract(proposals)
        return loss

    def _directions(self) -> tuple[dict[Tensor, Tensor], dict[Tensor, dict[str, Any]]]:
        """Step 1 for every parameter with a gradient, and step 3 for those outside the low-rank layers; returns
        the directions of the factors and the group of every parameter."""
        factor_params = {p for layer in self._layers for p in (layer.U, layer.S, layer.V)}
        group_of: dict[Tensor, dict[str, Any]] = {}
        directions: dict[Tensor, Tensor] = {}
        for group in self.param_groups:
            group_of.update((p, group) for p in group["params"])
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            moves = _momentum_directions(self, params, group)
            plain = [(p, d) for p, d in zip(params, moves) if p not in factor_params]
            if plain:
                _add_scaled_([p for p, _ in plain], [d for _, d in plain], -group["lr"])
            directions.update((p, d) for p, d in zip(params, moves) if p in factor_params)
        return directions, group_of

    def _processed_directions(
        self, layer: LowRankLayer, hyper: dict[str, Any], directions: tuple[Tensor, ...]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Step 2 of the class docstring for one layer (the ``"exact"`` preconditioner comes later, in
        :meth:`_retract`); the momentum buffers of ``U`` and ``V`` get the processed directions."""
        u, _, v = layer.factors()
        r = layer.rank
        d_u = tangent_projection(u, directions[0][:, :r])
        d_s = directions[1][:r, :r]
        d_v = tangent_projection(v, directions[2][:, :r])
        if hyper["grad_scale"] == "reference":
            scale = self.state[layer.S].get("grad_scale", 1.0)
            d_u, d_v = d_u * scale, d_v * scale
        for p, d in ((layer.U, d_u), (layer.V, d_v)):
            buffer = self.state[p].get("momentum_buffer")
            if buffer is not None:
                buffer[:, :r].copy_(d)
        return d_u, d_s, d_v

    def _retract(self, proposals: list[_Proposal]) -> None:
        """Steps 3–4 of the fixed-rank layers, without a host read per layer.

        The decompositions run grouped (:func:`_grouped`: layers of equal shapes in one batched call when
        ``batched``, by default on CUDA), the retraction by Cholesky QR
        (:func:`~robustlr.lowrank.manifold.tangent_retraction`) and the SVDs unchecked
        (:func:`~robustlr.lowrank.manifold.svd_flagged`); their flags are read once for the whole step
        (host read 2). A layer with a false flag (an SVD that came back non-finite, an ill-conditioned or failed
        Cholesky) is recomputed by :meth:`_checked_step` before anything is written.
        """
        if not proposals:
            return
        exact = [p for p in proposals if p.hyper["grad_scale"] == "exact"]
        cores = [p.factors[1].to(linalg_dtype(p.factors[1].dtype)) for p in exact]
        decompositions = dict(zip(map(id, exact), _grouped(lambda x, _: svd_flagged(x), cores, [None] * len(cores),
                                                           self._batched)))
        bases, cores, core_keys = [], [], []
        for p in proposals:
            d_u, d_s, d_v = p.directions
            if id(p) in decompositions:
                *decomposition, _ = decompositions[id(p)]
                d_u, d_v = _precondition(tuple(decomposition), d_u, d_v)
            (u, s, v), (lr_u, lr_s, lr_v) = p.factors, p.lrs
            bases += [u - lr_u * d_u, v - lr_v * d_v]
            cores.append(s - lr_s * d_s)
            core_keys.append((p.hyper["tau"], p.hyper["s_projection"]))
        retracted = _grouped(lambda x, _: tangent_retraction(x), bases, [None] * len(bases), self._batched)
        projected = _grouped(lambda x, key: condition_projection_flagged(x, *key), cores, core_keys, self._batched)
        flags = []
        for i, p in enumerate(proposals):
            parts = [retracted[2 * i][1], retracted[2 * i + 1][1], projected[i][2]]
            if id(p) in decompositions:
                parts.append(decompositions[id(p)][3])
            flags.append(torch.stack(parts).all())
        usable = torch.stack(flags)
        redo = [False] * len(proposals) if bool(usable.all()) else (~usable).tolist()  # host read 2
        for p, (u1, _), (v1, _), (s1, sigma, _), again in zip(
            proposals, retracted[::2], retracted[1::2], projected, redo
        ):
            if again:
                u1, s1, v1, sigma = self._checked_step(p)
            p.layer.set_factors(u1, s1, v1)
            if p.hyper["grad_scale"] == "reference":
                self.state[p.layer.S]["grad_scale"] = (sigma[-1] / sigma[0]).square().to(s1.dtype)

    @staticmethod
    def _checked_step(p: _Proposal) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Steps 3–4 of one layer with the checked decompositions (Householder QR, SVD with its fallback)."""
        (u, s, v), (d_u, d_s, d_v), (lr_u, lr_s, lr_v) = p.factors, p.directions, p.lrs
        if p.hyper["grad_scale"] == "exact":
            d_u, d_v = _precondition(svd(s.to(linalg_dtype(s.dtype))), d_u, d_v)
        s1, sigma = condition_projection(s - lr_s * d_s, p.hyper["tau"], p.hyper["s_projection"])
        return qr_retraction(u - lr_u * d_u), s1, qr_retraction(v - lr_v * d_v), sigma

    def _adapt_layer(
        self, layer: LowRankLayer, hyper: dict[str, Any], lrs: tuple, directions: tuple[Tensor, Tensor, Tensor]
    ) -> None:
        """Steps 3–4 of a rank-adaptive step (:func:`~robustlr.lowrank.adaptive.augmented_update`). The new rank
        is a shape, so this reads the host (once per adapting layer, on its adapting steps only)."""
        u, s, v = layer.factors()
        d_u, d_s, d_v = directions
        if hyper["grad_scale"] == "exact":
            d_u, d_v = _precondition(svd(s.to(linalg_dtype(s.dtype))), d_u, d_v)
        lr_u, lr_s, lr_v = lrs
        u1, s1, v1 = augmented_update(u, s, v, lr_u * d_u, lr_s * d_s, lr_v * d_v, hyper["theta"], layer.max_rank)
        s1, sigma = condition_projection(s1, hyper["tau"], hyper["s_projection"])
        self._transport_buffers(layer, u1, v1)
        layer.set_factors(u1, s1, v1)
        if hyper["grad_scale"] == "reference":
            self.state[layer.S]["grad_scale"] = (sigma[-1] / sigma[0]).square().to(s1.dtype)

    def _transport_buffers(self, layer: LowRankLayer, u1: Tensor, v1: Tensor) -> None:
        """Before a rank-adaptive update is written, re-express the momentum buffers in the new bases."""
        buffers = [self.state[p].get("momentum_buffer") for p in (layer.U, layer.S, layer.V)]
        if any(buffer is None for buffer in buffers):
            return
        u0, _, v0 = layer.factors()
        r = layer.rank
        active = (buffers[0][:, :r], buffers[1][:r, :r], buffers[2][:, :r])
        for buffer, value in zip(buffers, transport_directions(u0, v0, u1, v1, *active)):
            write_leading_block(buffer, value)
