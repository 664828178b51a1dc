"""Every snippet of docs/from-other-libraries.md runs (a peer's only where it is installed)."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

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
            value = scope[name]
            if name == "robust_accuracy":
                assert 0.0 <= value <= 1.0
            break
    else:
        pytest.fail("the snippet defines none of the names the page talks about")
