"""Optimizer add-ons: the ProGrad wrapper and PromptSRC's Gaussian prompt aggregation."""

from .gpa import GaussianPromptAggregator
from .prograd import ProGrad

__all__ = ["GaussianPromptAggregator", "ProGrad"]
