"""Layering (issue 11): the registry fills itself; no attack name is hard-coded outside its entry."""
from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import minnorm
from minnorm.core import with_role

SRC = Path(minnorm.__file__).resolve().parent


def test_registry_loads_the_attacks_itself():
    code = "from minnorm.core import registry; print(len(registry.available()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) == len(minnorm.attacks.available()) > 20


def test_roles_replace_hard_coded_names():
    assert with_role("fooling", 2.0)[0].name == "deepfool-l2"
    spec, extra = with_role("fooling", 1.0)  # no DeepFool in l1: the convex form with DeepFool's step
    assert spec.name == "convex-min-l1" and extra == {"class_choice": "linearised"}
    assert with_role("madry-training", math.inf)[0].name == "pgd-linf"
    assert [with_role("certify-upper", p)[0].name for p in (math.inf, 2.0, 1.0)] == ["tr-linf", "ddn", "convex-min-l1"]
    names = set(minnorm.attacks.available())
    for folder in ("evaluation", "training", "certify"):
        for path in (SRC / folder).glob("*.py"):
            if path.name == "norms.py":  # the per-norm presets name attacks on purpose
                continue
            consts = {n.value for n in ast.walk(ast.parse(path.read_text()))
                      if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            assert not consts & names, f"{path.name} hard-codes attack names {sorted(consts & names)}"
