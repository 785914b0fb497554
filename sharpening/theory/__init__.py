"""Closed-form analysis: fixed points of every regime, symbolic derivations, length bias, instability."""

from sharpening.theory.fixed_points import NoClosedForm, fixed_point, fixed_point_is_a_set, log_fixed_point
from sharpening.theory.instability import (
    GradientMoments,
    fixed_point_jacobian,
    gradient_moments,
    lp_ref_variance,
    max_stable_lr,
    task_reward_variance,
)
from sharpening.theory.length_bias import (
    alpha_star,
    correct_mass,
    correct_mass_limit,
    expected_length,
    length_distribution,
    many_paths_model,
    mode_length,
    stop_model_sequences,
)
from sharpening.theory.signals import answer_masses, answer_mode, expected_rewards, majority_vote_moments

__all__ = [
    "fixed_point", "log_fixed_point", "fixed_point_is_a_set", "NoClosedForm",
    "majority_vote_moments", "expected_rewards", "answer_masses", "answer_mode",
    "alpha_star", "correct_mass", "correct_mass_limit", "many_paths_model",
    "expected_length", "length_distribution", "mode_length", "stop_model_sequences",
    "GradientMoments", "gradient_moments", "lp_ref_variance", "task_reward_variance",
    "fixed_point_jacobian", "max_stable_lr",
]
