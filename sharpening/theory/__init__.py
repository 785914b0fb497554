"""Closed-form analysis: fixed points of every regime, symbolic derivations, length bias, instability."""

from sharpening.theory.fixed_points import fixed_point, log_fixed_point

__all__ = ["fixed_point", "log_fixed_point"]
