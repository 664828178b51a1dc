"""Every registered attack reproduces the golden file (tests/golden/record.py) to 1e-6 relative."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("golden_record", HERE / "record.py")
record = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record)

GOLDEN = json.loads(record.GOLDEN.read_text()) if record.GOLDEN.is_file() else {}
CASES = list(record.cases())


@pytest.mark.parametrize("model,attack,settings", CASES, ids=[f"{m}/{a}/{s}" for m, a, s in CASES])
def test_golden(model, attack, settings):
    key = f"{model}/{attack}/{settings}"
    if key not in GOLDEN:
        pytest.fail(f"{key} is not in the golden file: record it (python tests/golden/record.py) in its own commit")
    want, got = GOLDEN[key], record.run_case(model, attack, settings)
    assert got["success"] == want["success"], f"{key}: success flags changed"
    assert got["passes"] == want["passes"], f"{key}: pass counts changed"
    for i, (a, b) in enumerate(zip(got["norm"], want["norm"])):
        assert (a is None) == (b is None) and (a is None or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)), \
            f"{key}: sample {i} norm {a} != golden {b}"
