"""What compare.py and passes.py share: the model, the images, the honest scoring of an
adversarial batch, machine facts and the RESULTS.md writer."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import minnorm
from minnorm.core import is_adversarial, lp_norm

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
BOX_TOL = 1e-6  # float slack on the [0, 1] box before a returned point counts as outside it


def load_model(name: str) -> tuple[nn.Module, str]:
    """A shipped model by name (``cnn``, ``mlp``, ...); a ``.safetensors``/``.pt`` file of
    ``SmallCNN`` weights; or ``random-cnn``: ``SmallCNN`` with seeded random weights, for trying
    the harness before any weights exist. Eval mode, and no parameter requires grad, so peers
    and minnorm see exactly the same function."""
    if name.endswith((".safetensors", ".pt")):
        from minnorm.models import SmallCNN, load_weights
        model, desc = load_weights(SmallCNN(), name), f"SmallCNN with weights {Path(name).name}"
    elif name == "random-cnn":
        from minnorm.models import SmallCNN
        torch.manual_seed(0)
        model, desc = SmallCNN(), "SmallCNN with random weights (seed 0)"
    else:
        from minnorm.models import WEIGHTS_DIR, load_shipped
        model, desc = load_shipped(name), f"shipped model {name!r}"
        weights = Path(WEIGHTS_DIR) / f"{name}.safetensors"
        if weights.exists():  # shipped weights may be retrained: say which ones were measured
            desc += f" (weights sha256 {hashlib.sha256(weights.read_bytes()).hexdigest()[:12]})"
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, desc


class RowCounter(nn.Module):
    """Wraps the model and counts the rows it forwards: a library-independent cost measure
    (forward passes per sample = rows / n), immune to the machine's load."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += int(x.shape[0])
        return self.model(x)


@torch.no_grad()
def correct_images(model: nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first ``n`` images of the embedded Fashion-MNIST sample the model classifies right
    (attacking a misclassified image is trivially 'successful')."""
    from minnorm.data import load_sample
    x, y = load_sample()
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep][:n].contiguous(), y[keep][:n].contiguous()
    if x.shape[0] < n:
        print(f"note: only {x.shape[0]} of the 1000 sample images are classified correctly", file=sys.stderr)
    return x, y, f"first {x.shape[0]} correctly classified images of the embedded Fashion-MNIST test sample"


@dataclass
class Score:
    success: torch.Tensor  # bool [n]
    norms: torch.Tensor  # [n], inf where not a valid adversarial
    outside_box: int  # points returned outside the box (counted as failures)
    over_eps: int  # fixed-eps attacks: points beyond the eps ball (counted as failures)

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean())

    @property
    def median(self) -> float:
        """Median norm with failures as ``inf`` (Foolbox's convention)."""
        return float(self.norms.median())


@torch.no_grad()
def score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor, p: float,
          eps: float | None = None) -> Score:
    """Judge returned adversarials ourselves: a sample counts only if the returned tensor is
    finite, inside the box, (within eps,) and misclassified by a fresh forward pass."""
    adv = adv.detach().to(dtype=x.dtype, device=x.device).reshape(x.shape)
    finite = torch.isfinite(adv.flatten(1)).all(1)
    inside = ((adv >= -BOX_TOL) & (adv <= 1 + BOX_TOL)).flatten(1).all(1)
    norms = lp_norm(torch.where(torch.isfinite(adv), adv, x) - x, p)
    within = torch.ones_like(finite) if eps is None else norms <= eps * (1 + 1e-5) + 1e-6
    fooled = is_adversarial(model(torch.where(torch.isfinite(adv), adv, x)), y, targeted=False)
    success = finite & inside & within & fooled
    norms = torch.where(success, norms, torch.full_like(norms, math.inf))
    return Score(success, norms, int((finite & ~inside).sum()), int((finite & inside & ~within).sum()))


def parse_attack_spec(spec: str) -> tuple[str, str, dict]:
    """``[label=]name[:{json params}]`` -> (label, registered name, params); the label defaults
    to the whole spec."""
    head = spec.split(":", 1)[0]
    label, rest = spec.split("=", 1) if "=" in head else (spec, spec)
    name, _, params = rest.partition(":")
    return label, name, json.loads(params) if params else {}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int) -> str:
    return (f"{cpu_model()}, {os.cpu_count()} cores visible, torch.set_num_threads({threads}); "
            f"Python {platform.python_version()}, torch {torch.__version__}, minnorm {minnorm.__version__}")


def today() -> str:
    return _dt.date.today().isoformat()


def append_results(text: str, path: Path = RESULTS) -> None:
    """Append a section to RESULTS.md (created with its header if missing)."""
    if not path.exists():
        path.write_text("# Benchmark results\n\nWritten by `benchmarks/compare.py --markdown` and "
                        "`benchmarks/passes.py --markdown`; newest sections last.\n")
    with path.open("a") as f:
        f.write("\n" + text.rstrip() + "\n")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def fmt_norm(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.4f}"


def fmt_ratio(a: float, b: float, digits: int = 2) -> str:
    """a / b for norms and times, where inf means 'no adversarial found'."""
    if math.isinf(a) and math.isinf(b):
        return "n/a"
    if math.isinf(b):
        return f"{0:.{digits}f}"
    if math.isinf(a):
        return "inf"
    if b == 0:
        return "n/a" if a == 0 else "inf"
    return f"{a / b:.{digits}f}"
