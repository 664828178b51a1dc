"""Record (or check) the golden file: every registered attack on 16 images of the shipped models.

    python tests/golden/record.py              # rewrite golden.json (commit it with the reason)
    python tests/golden/record.py ddn tr-l2    # re-record only these attacks' entries

Per sample: norm, success and passes, for each attack with its ``quick`` settings, plus the
registry defaults for the attacks named in ``DEFAULTS`` (on the MLP; the CNN only with quick
settings, to keep the test short). Fixed-eps attacks run at ``EPS`` of their norm. A refactor
must reproduce it (tests/golden/test_golden.py); a deliberate change is re-recorded in a commit
of its own that says why.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden.json"
MODELS = ("mlp", "cnn")
DEFAULTS = ("ddn", "tr-l2", "tr-linf", "deepfool-l2", "deepfool-linf")
EPS = {1.0: 5.0, 2.0: 0.5, math.inf: 0.03}
N = 16


def cases():
    import minnorm

    for model in MODELS:
        for spec in minnorm.attacks.specs():
            yield model, spec.name, "quick"
            if model == "mlp" and spec.name in DEFAULTS:
                yield model, spec.name, "defaults"


def run_case(model_name: str, name: str, settings: str) -> dict:
    import minnorm
    from minnorm.data import load_sample
    from minnorm.models import load_shipped

    torch.set_num_threads(1)
    model = load_shipped(model_name)
    x, y = load_sample()
    x, y = x[:N], y[:N]
    spec = minnorm.attacks.get(name)
    kw = dict(spec.quick) if settings == "quick" else {}
    if not spec.minimal:
        kw.setdefault("eps", EPS[spec.norm])
    res = spec(model, x, y, generator=torch.Generator().manual_seed(0), **kw)
    return {"norm": [None if not math.isfinite(v) else v for v in res.norms.double().tolist()],
            "success": res.success.tolist(), "passes": res.passes.tolist()}


def record(only: set[str] | None = None) -> dict:
    """Every case, or (``only``) the stored file with just the cases of those attacks recomputed."""
    if not only:
        return {f"{m}/{a}/{s}": run_case(m, a, s) for m, a, s in cases()}
    known = {a for _, a, _ in cases()}
    if only - known:
        raise SystemExit(f"not registered: {', '.join(sorted(only - known))}")
    golden = json.loads(GOLDEN.read_text())
    golden.update({f"{m}/{a}/{s}": run_case(m, a, s) for m, a, s in cases() if a in only})
    return golden


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1] / "src"))
    GOLDEN.write_text(json.dumps(record(set(sys.argv[1:])), indent=0, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
