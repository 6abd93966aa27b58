"""robustlr: low-rank adversarial attacks and robust low-rank training."""
__version__ = "0.1.0"
