"""a2d: Align-to-Distill knowledge distillation for neural machine translation."""

__version__ = "0.1.0"
