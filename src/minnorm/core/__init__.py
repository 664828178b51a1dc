"""The contract every attack obeys (see DESIGN.md): results, lp geometry, counting, checks, registry,
and the kernel pieces attacks share (objectives, PGD's step, boundary steps, segment searches)."""
from .best import BestAdversarial
from .boundary import linear_boundary_steps, nearest_boundary_step
from .counting import CountedModel, PassBudgetExceeded, call_with_budget
from .gradients import per_objective_gradients
from .linalg import power_iteration
from .norms import (batch_view, clip_box, dual_exponent, holder_direction, lp_norm, min_step_to_hyperplane, norm_label,
                    norm_name, parse_norm, project_lp_ball, relative_perturbation, scale_to_norm)
from .objectives import (cross_entropy, cross_entropy_objective, dlr, dlr_objective, logit_difference, logit_margin,
                         margin_objective, top_other_classes)
from .radius import EPS_ATOL, EPS_RTOL, broken_within, check_radius, parse_fraction, radius_limit, radius_text
from .registry import AttackSpec, available, get, register, specs, with_role
from .result import AttackResult
from .run import AttackRun, check_eval_mode, is_adversarial, make_generator, rand_like, start_attack
from .segment import bisect, bisect_segment, regula_falsi, segment_points
from .steps import ascent_direction, box_blocked, l1_coordinates, pgd_step, sparse_l1_direction
from .validation import (check_batch, check_bounds, check_inputs, check_int, check_label_range, check_logits,
                         check_positive, check_real, check_switch, model_errors_explained)

__all__ = [
    "AttackResult", "AttackRun", "AttackSpec", "BestAdversarial", "CountedModel", "EPS_ATOL", "EPS_RTOL",
    "PassBudgetExceeded", "ascent_direction", "available", "batch_view", "bisect", "bisect_segment", "box_blocked",
    "broken_within", "call_with_budget", "check_batch", "check_bounds", "check_eval_mode", "check_inputs",
    "check_int", "check_label_range", "check_logits", "check_positive", "check_radius", "check_real", "check_switch",
    "clip_box", "cross_entropy", "cross_entropy_objective", "dlr", "dlr_objective", "dual_exponent", "get",
    "holder_direction", "is_adversarial", "l1_coordinates", "linear_boundary_steps", "logit_difference",
    "logit_margin", "lp_norm", "make_generator", "margin_objective", "min_step_to_hyperplane",
    "model_errors_explained", "nearest_boundary_step", "norm_label", "norm_name", "parse_fraction", "parse_norm",
    "per_objective_gradients", "pgd_step", "power_iteration", "project_lp_ball", "radius_limit", "radius_text",
    "rand_like", "register", "regula_falsi", "relative_perturbation", "scale_to_norm", "segment_points",
    "sparse_l1_direction", "specs", "start_attack", "top_other_classes", "with_role",
]
