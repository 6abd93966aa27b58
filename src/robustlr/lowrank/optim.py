"""CondLR, the optimiser of ``U S Vᵀ`` layers (the QR-projected SGD baseline is in :mod:`robustlr.lowrank.qr_sgd`,
the checks every step makes first in :mod:`robustlr.lowrank.step_checks`).

CondLR is the method of Savostianova, Zangrando, Ceruti, Tudisco, "Robust low-rank training via approximate
orthonormal constraints", NeurIPS 2023 (arXiv 2306.01485). Its rank-adaptive option follows DLRT
(Schotthöfer et al., NeurIPS 2022); see :mod:`robustlr.lowrank.adaptive`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
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

def _inverse_grams(decomposition: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``(S Sᵀ)⁺ = P Σ⁻² Pᵀ`` and ``(Sᵀ S)⁺ = Q Σ⁻² Qᵀ`` from the SVD ``S = P Σ Qᵀ`` (``decomposition``, batched),
    with singular values below ``r·eps·σ_max`` treated as zero."""
    p, sigma, qh = decomposition
    tolerance = sigma[..., :1] * sigma.shape[-1] * torch.finfo(sigma.dtype).eps
    inverse_square = torch.where(sigma > tolerance, sigma.pow(-2), torch.zeros_like(sigma)).unsqueeze(-2)
    return (p * inverse_square) @ p.mT, (qh.mT * inverse_square) @ qh


def _precondition(direction: Tensor, inverse_gram: Tensor) -> Tensor:
    """``D · M`` in the dtype of ``M`` (the linear algebra dtype), returned in ``D``'s."""
    return (direction.to(inverse_gram.dtype) @ inverse_gram).to(direction.dtype)


def _checked_precondition(s: Tensor, d_u: Tensor, d_v: Tensor) -> tuple[Tensor, Tensor]:
    """The ``"exact"`` preconditioner of one layer, ``d_U (S Sᵀ)⁺`` and ``d_V (Sᵀ S)⁺``, from the checked SVD of
    its core (:func:`~robustlr.lowrank.manifold.svd`)."""
    m_u, m_v = _inverse_grams(svd(s.to(linalg_dtype(s.dtype))))
    return _precondition(d_u, m_u), _precondition(d_v, m_v)


def _descend(x: Tensor, direction: Tensor, lr: float | Tensor) -> Tensor:
    """``x − lr·D`` as a new tensor (a tensor ``lr`` is never read on the host)."""
    return x - lr * direction if isinstance(lr, Tensor) else torch.sub(x, direction, alpha=lr)


def _add_scaled_(targets: list[Tensor], tensors: list[Tensor], scale: float | Tensor) -> None:
    """``t ← t + scale·x`` for every pair, in one foreach call (a tensor ``scale`` is never read on the host)."""
    if isinstance(scale, Tensor):
        torch._foreach_add_(targets, torch._foreach_mul(tensors, scale))
    else:
        torch._foreach_add_(targets, tensors, alpha=scale)


def _momentum_directions(optimizer: Optimizer, params: list[Tensor], group: dict[str, Any]) -> list[Tensor]:
    """SGD directions ``d = grad + wd·p``, then heavy ball ``buf ← μ buf + d`` (no dampening), ``d = buf``, for
    the parameters of one group (foreach calls, as ``torch.optim.SGD``'s; the first step's buffer is a copy of
    ``d``)."""
    grads = [p.grad for p in params]
    decay, momentum = group["weight_decay"], group["momentum"]
    if isinstance(decay, Tensor):
        grads = torch._foreach_add(grads, torch._foreach_mul(params, decay))
    elif decay != 0:
        grads = torch._foreach_add(grads, params, alpha=decay)
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


@dataclass(eq=False)
class _Proposal:
    """One layer's step, filled in as it proceeds: the active factors, their directions after step 1, the param
    groups of ``U``, ``S``, ``V`` (``groups[1]`` holds the layer's hyperparameters and state lives with ``S``),
    the momentum buffers of ``U`` and ``V``, whether the layer adapts its rank on this step; then the processed
    directions of ``U`` and ``V`` (step 2; for ``"exact"``, before the preconditioner) and the new factors and
    ``"reference"`` gradient scale of a fixed-rank layer (steps 3–4), both by role (0: ``U``, 1: ``S``, 2: ``V``)."""

    layer: LowRankLayer
    factors: tuple[Tensor, Tensor, Tensor]
    directions: tuple[Tensor, Tensor, Tensor]
    groups: tuple[dict[str, Any], dict[str, Any], dict[str, Any]]
    state: dict[str, Any]
    buffers: tuple[Tensor | None, Tensor | None]
    adapt: bool
    processed: dict[int, Tensor] = field(default_factory=dict)
    moved: dict[int, Tensor] = field(default_factory=dict)
    scale: Tensor | None = None

    @property
    def hyper(self) -> dict[str, Any]:
        return self.groups[1]


#: The usability flags of one batched decomposition, with the proposals they belong to (in batch order).
_Flags = list[tuple[Tensor, list[_Proposal]]]


def _batches(keys: Sequence[Hashable], batched: bool) -> list[list[int]]:
    """Positions of equal keys together (``batched``) or each alone, in first-seen order."""
    if not batched:
        return [[i] for i in range(len(keys))]
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    return list(groups.values())


def _stack(tensors: Sequence[Tensor]) -> Tensor:
    """A batch of equal-shape tensors: a view of a single one, a stacked copy of several."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(list(tensors))


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
        batched: ``True`` or ``None`` (the default) stacks the matrices of equal shape (and param group) of all
            layers and runs each step of their linear algebra (tangent projection, Cholesky QR, SVD) as one
            batched call per shape; ``False`` runs them layer by layer. The two agree to rounding (1e-6 in
            float32). Fewer, larger calls pay on every device: on one CPU thread, WRN-16-4 at rank 0.2, the
            batched step measured 0.82–0.90× the per-layer one (``benchmarks/condlr_step.py``, a shared, loaded
            machine). On CUDA, where each call is a kernel launch, batching should matter more (not measured: no
            GPU was available).

    Every low-rank layer whose ``U``, ``S``, ``V`` are all in the optimiser is constrained; all other
    parameters (biases, BatchNorm, dense layers, vanilla factors) get plain SGD with momentum. The layer
    structure is kept by parameter identity, so ``state_dict``/``load_state_dict`` round-trip exactly.
    Per-layer state lives with ``S``: ``step`` (int) and, for ``"reference"``, ``grad_scale`` (``c``).
    Linear algebra runs in float32 (float64 for float64 parameters). A step reads the host twice, whatever the
    number of layers: the fused finiteness check of the gradients, and one flag for all its decompositions
    (see :meth:`_move`); a rank-adaptive step also reads each adapting layer's new rank.

    Cost. Beyond SGD's own work (momentum, weight decay, update), a step multiplies every ``n × r`` basis four
    times (``UᵀG`` and ``G − U(UᵀG)`` for its direction ``G``, ``XᵀX`` and ``X L⁻ᵀ`` for its retraction: ``8nr²``
    flops; 0.23 GFLOP for WRN-16-4 at rank 0.2) and takes one SVD per ``r × r`` core. On one CPU thread these alone cost about four SGD steps of the same model,
    so the step is at least ≈ 5× SGD's there (``benchmarks/condlr_step.py``, ``floor_vs_sgd_step``).
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
            raise ValueError(f"batched must be None (the default: batched), True or False; got {batched!r}")
        self._batched = batched is not False
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

    def _find_layers(self) -> list[tuple[LowRankLayer, tuple[Tensor, Tensor, Tensor]]]:
        """Low-rank layers of the model whose three factors are all optimised here, with their ``U``, ``S``,
        ``V`` parameters."""
        optimised = {p for group in self.param_groups for p in group["params"]}
        layers = []
        for name, module in self._model.named_modules():
            if not isinstance(module, LowRankLayer):
                continue
            params = (module.U, module.S, module.V)
            present = [p in optimised for p in params]
            if all(present):
                layers.append((module, params))
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
        for layer, params in self._layers:
            keys = [id(p) for p in params]
            if not any(key in directions for key in keys):
                continue
            groups = tuple(group_of[key] for key in keys)
            state = self.state[params[1]]
            state["step"] = state.get("step", 0) + 1
            moves = tuple(directions[key] if key in directions else torch.zeros_like(p) for key, p in zip(keys, params))
            r = layer.rank
            if r != layer.max_rank:  # the active blocks (slicing costs a call per tensor: only where needed)
                params, moves = layer.factors(), (moves[0][:, :r], moves[1][:r, :r], moves[2][:, :r])
            buffers = tuple(self.state[p].get("momentum_buffer") for p in (layer.U, layer.V))
            adapt = groups[1]["theta"] is not None and state["step"] % groups[1]["adapt_every"] == 0
            proposals.append(_Proposal(layer, params, moves, groups, state, buffers, adapt))  # type: ignore[arg-type]
        self._move(proposals)
        return loss

    def _directions(self) -> tuple[dict[int, Tensor], dict[int, dict[str, Any]]]:
        """Step 1 for every parameter with a gradient, and step 3 for those outside the low-rank layers; returns
        the directions of the factors and the group of every parameter, by ``id`` of the parameter."""
        factors = {id(p) for _, params in self._layers for p in params}
        group_of: dict[int, dict[str, Any]] = {}
        directions: dict[int, Tensor] = {}
        for group in self.param_groups:
            keys = [id(p) for p in group["params"]]
            group_of.update(dict.fromkeys(keys, group))
            params = [(key, p) for key, p in zip(keys, group["params"]) if p.grad is not None]
            if not params:
                continue
            moves = _momentum_directions(self, [p for _, p in params], group)
            plain = [(p, d) for (key, p), d in zip(params, moves) if key not in factors]
            if plain:
                _add_scaled_([p for p, _ in plain], [d for _, d in plain], -group["lr"])
            directions.update((key, d) for (key, _), d in zip(params, moves) if key in factors)
        return directions, group_of

    def _move(self, proposals: list[_Proposal]) -> None:
        """Steps 2–4 of every layer, without a host read per layer.

        The matrices of equal shape and param group run as batches (:func:`_batches`; one call per batch
        instead of one per layer), the retraction by Cholesky QR
        (:func:`~robustlr.lowrank.manifold.tangent_retraction`) and the SVDs unchecked
        (:func:`~robustlr.lowrank.manifold.svd_flagged`); their flags are read once for the whole step
        (host read 2). A layer with a false flag (an SVD that came back non-finite, an ill-conditioned or failed
        Cholesky) is recomputed by :meth:`_checked_step` before anything is written. The new factors of the
        other layers are written by one foreach copy. Rank-adaptive layers take :meth:`_adapt_layer` instead.
        """
        if not proposals:
            return
        fixed = [p for p in proposals if not p.adapt]
        flags: _Flags = []
        inverse_grams = self._inverse_grams([p for p in fixed if p.hyper["grad_scale"] == "exact"], flags)
        self._move_bases(proposals, inverse_grams, flags)
        for p in proposals:
            if p.adapt:
                d_u, d_v = p.processed[0], p.processed[2]
                self._adapt_layer(p.layer, p.hyper, tuple(g["lr"] for g in p.groups), (d_u, p.directions[1], d_v))
        self._project_cores(fixed, flags)
        redo: list[_Proposal] = []
        if flags:
            usable = torch.cat([ok for ok, _ in flags])
            if not bool(usable.all()):  # host read 2
                owners = [p for _, batch in flags for p in batch]
                redo = [p for p, ok in zip(owners, usable.tolist()) if not ok]
        for p in redo:
            p.moved[0], p.moved[1], p.moved[2], sigma = self._checked_step(p)
            if p.hyper["grad_scale"] == "reference":
                p.scale = (sigma[-1] / sigma[0]).square().to(p.moved[1].dtype)
        targets: list[Tensor] = []
        sources: list[Tensor] = []
        for p in fixed:
            new = (p.moved[0], p.moved[1], p.moved[2])
            if p.layer.max_rank == p.layer.rank:  # the factors are the whole parameters: one foreach copy
                targets += p.factors
                sources += new
            else:
                p.layer.set_factors(*new)  # also zeroes the unused capacity
            if p.scale is not None:
                p.state["grad_scale"] = p.scale
        if targets:
            torch._foreach_copy_(targets, sources)

    def _inverse_grams(self, proposals: list[_Proposal], flags: _Flags) -> dict[_Proposal, tuple[Tensor, Tensor]]:
        """For ``grad_scale="exact"``: ``(S Sᵀ)⁺`` and ``(Sᵀ S)⁺`` of the current core of every proposal, from
        batched unchecked SVDs (their flags join ``flags``)."""
        grams: dict[_Proposal, tuple[Tensor, Tensor]] = {}
        cores = [p.factors[1] for p in proposals]
        for batch in _batches([(c.shape, c.dtype, c.device) for c in cores], self._batched):
            members = [proposals[i] for i in batch]
            s = _stack([cores[i] for i in batch])
            *decomposition, ok = svd_flagged(s.to(linalg_dtype(s.dtype)))
            m_u, m_v = _inverse_grams(tuple(decomposition))  # type: ignore[arg-type]
            grams.update((p, pair) for p, pair in zip(members, zip(m_u.unbind(0), m_v.unbind(0))))
            flags.append((ok, members))
        return grams

    def _move_bases(
        self, proposals: list[_Proposal], inverse_grams: dict[_Proposal, tuple[Tensor, Tensor]], flags: _Flags
    ) -> None:
        """Step 2 for the ``U`` and ``V`` of every layer (``processed``; the momentum buffers get them too) and,
        for fixed-rank layers, steps 3–4: preconditioner (``"exact"``), ``X = B − lr·D`` and its Cholesky-QR
        retraction (``moved[0]``, ``moved[2]``; the flags join ``flags``)."""
        entries = [(p, role) for p in proposals for role in (0, 2)]
        bases = [p.factors[role] for p, role in entries]
        keys = [(x.shape, x.dtype, x.device, id(p.groups[role]), id(p.hyper), p.adapt)
                for x, (p, role) in zip(bases, entries)]
        for batch in _batches(keys, self._batched):
            members = [entries[i] for i in batch]
            first, role = members[0]
            basis = _stack([bases[i] for i in batch])
            direction = tangent_projection(basis, _stack([p.directions[r] for p, r in members]))
            if first.hyper["grad_scale"] == "reference":
                scales = [p.state.get("grad_scale") for p, _ in members]
                if any(scale is not None for scale in scales):
                    one = None if all(c is not None for c in scales) else direction.new_ones(())
                    direction.mul_(torch.stack([one if c is None else c for c in scales]).view(-1, 1, 1))
            directions = direction.unbind(0)
            written = [(p.buffers[r // 2], d) for (p, r), d in zip(members, directions) if p.buffers[r // 2] is not None]
            if written:
                rank = direction.shape[-1]
                torch._foreach_copy_([b if b.shape[-1] == rank else b[:, :rank] for b, _ in written],
                                     [d for _, d in written])
            for (p, r), d in zip(members, directions):
                p.processed[r] = d
            if first.adapt:
                continue
            step = direction
            if first.hyper["grad_scale"] == "exact":
                step = _precondition(direction, _stack([inverse_grams[p][r // 2] for p, r in members]))
            retracted, ok = tangent_retraction(_descend(basis, step, first.groups[role]["lr"]))
            for (p, r), q in zip(members, retracted.unbind(0)):
                p.moved[r] = q
            flags.append((ok, [p for p, _ in members]))

    def _project_cores(self, proposals: list[_Proposal], flags: _Flags) -> None:
        """Steps 3–4 for the cores of fixed-rank layers: ``S − lr·D_S`` projected onto ``κ ≤ 1 + τ``
        (``moved[1]``), with the next ``"reference"`` gradient scale ``(σ_min/σ_max)²`` (``scale``). The flags of
        the SVDs join ``flags``."""
        cores = [p.factors[1] for p in proposals]
        keys = [(s.shape, s.dtype, s.device, id(p.hyper)) for s, p in zip(cores, proposals)]
        for batch in _batches(keys, self._batched):
            members = [proposals[i] for i in batch]
            hyper = members[0].hyper
            moved = _descend(_stack([cores[i] for i in batch]), _stack([p.directions[1] for p in members]),
                             hyper["lr"])
            s1, sigma, ok = condition_projection_flagged(moved, hyper["tau"], hyper["s_projection"])
            for p, s in zip(members, s1.unbind(0)):
                p.moved[1] = s
            if hyper["grad_scale"] == "reference":
                for p, scale in zip(members, (sigma[:, -1] / sigma[:, 0]).square().to(s1.dtype).unbind(0)):
                    p.scale = scale
            flags.append((ok, members))

    @staticmethod
    def _checked_step(p: _Proposal) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Steps 3–4 of one layer with the checked decompositions (Householder QR, SVD with its fallback), from
        its processed directions."""
        (u, s, v), d_u, d_v = p.factors, p.processed[0], p.processed[2]
        lr_u, lr_s, lr_v = (group["lr"] for group in p.groups)
        if p.hyper["grad_scale"] == "exact":
            d_u, d_v = _checked_precondition(s, d_u, d_v)
        s1, sigma = condition_projection(_descend(s, p.directions[1], lr_s), p.hyper["tau"], p.hyper["s_projection"])
        return qr_retraction(_descend(u, d_u, lr_u)), s1, qr_retraction(_descend(v, d_v, lr_v)), sigma

    def _adapt_layer(
        self, layer: LowRankLayer, hyper: dict[str, Any], lrs: tuple, directions: tuple[Tensor, Tensor, Tensor]
    ) -> None:
        """Steps 3–4 of a rank-adaptive step (:func:`~robustlr.lowrank.adaptive.augmented_update`). The new rank
        is a shape, so this reads the host (once per adapting layer, on its adapting steps only)."""
        u, s, v = layer.factors()
        d_u, d_s, d_v = directions
        if hyper["grad_scale"] == "exact":
            d_u, d_v = _checked_precondition(s, d_u, d_v)
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
