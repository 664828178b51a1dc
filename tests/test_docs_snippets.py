"""Every snippet of docs/from-other-libraries.md runs (a peer's only where it is installed)."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from minnorm.core.radius import EPS_ATOL, EPS_RTOL

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "from-other-libraries.md"
SNIPPETS = re.findall(r"<!-- run: (\S+) -->\n```python\n(.*?)```", PAGE.read_text(), re.S)


@pytest.fixture(scope="module")
def namespace():
    from minnorm.data import load_sample
    from minnorm.models import load_shipped

    x, y = load_sample()
    return {"model": load_shipped("cnn"), "x": x[:16], "y": y[:16]}


def test_page_has_snippets():
    libraries = [lib for lib, _ in SNIPPETS]
    assert libraries.count("minnorm") >= 4 and {"foolbox", "adv_lib", "torchattacks", "autoattack"} <= set(libraries)


@pytest.mark.parametrize("index", range(len(SNIPPETS)), ids=[f"{i}-{lib}" for i, (lib, _) in enumerate(SNIPPETS)])
def test_snippet_runs(index, namespace):
    library, code = SNIPPETS[index]
    if library != "minnorm":
        if library == "adv_lib":
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from peers import use_stubs

            use_stubs()
        if importlib.util.find_spec(library) is None:
            pytest.skip(f"{library} is not installed")
    scope = dict(namespace)
    with torch.random.fork_rng(devices=[]):
        exec(compile(code, f"{PAGE.name} snippet {index}", "exec"), scope)  # noqa: S102
    for name in ("robust_accuracy", "norms", "adv", "x_adv", "res", "runs"):
        if name in scope:
            if name == "robust_accuracy":
                check_robust_accuracy(scope, code, namespace)
            break
    else:
        pytest.fail("the snippet defines none of the names the page talks about")


def check_robust_accuracy(scope: dict, code: str, namespace: dict) -> None:
    """A share of the images at most the clean accuracy; from a minnorm result ``res``, the share
    of correctly classified images whose norm exceeds the radius (counted by hand; the 8/255 PGD
    run's float32 norms lie a hair above 8/255, within the tolerance)."""
    value, model, x, y = scope["robust_accuracy"], namespace["model"], namespace["x"], namespace["y"]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert value * len(y) == pytest.approx(round(value * len(y))), "not a share of the images"
    assert value <= float(correct.float().mean()), "robust accuracy above the clean accuracy"
    radius = re.search(r"res\.robust_accuracy\(([^)]*)\)", code)
    if radius and "res" in scope:
        r = eval(radius.group(1), {})  # noqa: S307 (a literal radius such as 8 / 255, from the page)
        limit = r * (1 + EPS_RTOL) + EPS_ATOL  # the tolerance rule of minnorm.core.radius
        assert value == float((correct & (scope["res"].norms.double() > limit)).float().mean())
