"""The contract every attack obeys (see DESIGN.md): results, lp geometry, counting, checks, registry."""
from .best import BestAdversarial
from .gradients import per_objective_gradients
from .counting import CountedModel, PassBudgetExceeded, call_with_budget
from .norms import (batch_view, clip_box, dual_exponent, holder_direction, lp_norm, parse_norm,
                    project_lp_ball, relative_perturbation, scale_to_norm)
from .radius import EPS_ATOL, EPS_RTOL, broken_within, check_radius, parse_fraction, radius_limit, radius_text
from .registry import AttackSpec, available, get, register, specs, with_role
from .result import AttackResult
from .run import AttackRun, check_eval_mode, is_adversarial, make_generator, rand_like, start_attack
from .validation import (check_batch, check_bounds, check_inputs, check_int, check_label_range, check_logits,
                         check_positive)

__all__ = [
    "AttackResult", "AttackRun", "AttackSpec", "BestAdversarial", "CountedModel", "EPS_ATOL", "EPS_RTOL",
    "PassBudgetExceeded", "available", "per_objective_gradients",
    "batch_view", "broken_within", "call_with_budget", "check_eval_mode",
    "check_radius", "parse_fraction", "radius_limit", "radius_text", "check_label_range",
    "check_batch", "check_bounds", "check_inputs", "check_int", "check_logits", "check_positive", "clip_box", "dual_exponent",
    "get", "holder_direction", "is_adversarial", "lp_norm", "make_generator", "parse_norm", "project_lp_ball",
    "rand_like", "register", "relative_perturbation", "scale_to_norm", "specs", "start_attack", "with_role",
]
