"""``robustlr demo``: the main job in one command.

Trains LeNet5 on real Fashion-MNIST as a dense, a vanilla low-rank and a CondLR network, attacks each with
FGSM, PGD-L∞, PGD-L2 and LoRa-PGD over ε grids, studies the spectrum of PGD perturbations, and writes
``report.md`` with tables and figures (see :func:`run_demo`).
"""

from .pipeline import run_demo
from .results import DemoResult, ModelResult
from .settings import MODELS, NORMS, DemoSettings

__all__ = ["MODELS", "NORMS", "DemoResult", "DemoSettings", "ModelResult", "run_demo"]
