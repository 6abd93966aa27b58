"""Building blocks of :func:`robustlr.evaluate.evaluate`.

``specs``: how attacks are given (an ε-factory wrapped with ``at_eps`` vs a ready attack); ``data``: batching
of tensor pairs, Datasets and DataLoaders; ``result``: the result dataclasses and the per-sample worst case;
``sanity``: the gradient-masking and misuse checks; ``guards``: what is refused (a model with NaN/inf weights or
logits, an attack result that is not finite floating images in ``[0, 1]`` within its declared budget).  The public
entry point is ``robustlr.evaluate``.
"""
