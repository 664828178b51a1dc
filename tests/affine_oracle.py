"""The affine oracle now lives in helpers.py (one home); these names remain for the tests that
import them from here."""
from __future__ import annotations

from helpers import affine_inputs as inputs
from helpers import affine_minimum as untargeted_minimum
from helpers import affine_model, targeted_minimum_lp

__all__ = ["affine_model", "inputs", "targeted_minimum_lp", "untargeted_minimum"]
