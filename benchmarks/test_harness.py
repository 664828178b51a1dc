"""Smoke tests of the benchmark harness (not part of tests/: run
``python -m pytest benchmarks/test_harness.py -q``). Tiny model, a handful of images."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import compare  # noqa: E402
import peers  # noqa: E402

torch.set_num_threads(1)


class Linear(nn.Module):
    """Predicts class 0 iff the mean pixel is below 0.5: easy to reason about in tests."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([0.5 - m, m - 0.5], dim=1)


def test_score_rechecks_everything():
    model = Linear()
    x = torch.full((5, 1, 2, 2), 0.4)
    y = torch.zeros(5, dtype=torch.long)
    adv = x.clone()
    adv[1] = 0.6  # fooled, inside the box
    adv[2] = 1.5  # fooled but outside the box
    adv[3, 0, 0, 0] = math.nan
    adv[4] = 0.6
    s = common.score(model, x, y, adv, p=math.inf, eps=None)
    assert s.success.tolist() == [False, True, False, False, True]
    assert s.outside_box == 1
    assert s.norms[1] == pytest.approx(0.2) and math.isinf(s.norms[0]) and math.isinf(s.norms[3])
    assert s.median == pytest.approx(math.inf) or math.isinf(s.median)
    # within eps 0.1 nothing may count
    assert not common.score(model, x, y, adv, p=math.inf, eps=0.1).success.any()


def test_ratio_formatting():
    assert common.fmt_ratio(1.0, 2.0) == "0.50"
    assert common.fmt_ratio(math.inf, math.inf) == "n/a"
    assert common.fmt_ratio(1.0, math.inf) == "0.00"
    assert common.fmt_ratio(math.inf, 1.0) == "inf"


def test_every_method_maps_its_budget_onto_minnorm():
    import minnorm
    for method in peers.METHODS.values():
        if method.attack not in minnorm.attacks.available():
            continue  # attack not written yet
        spec = minnorm.attacks.get(method.attack)
        kwargs = method.minnorm_kwargs(spec.fn, method.budget)
        assert len(kwargs) <= len(method.budget)


def test_unknown_budget_key_is_rejected():
    def fn(model, inputs, labels, *, steps: int = 1):
        return None
    method = peers.Method("m", "m", 2.0, {"steps": 1, "zzz": 2}, {})
    with pytest.raises(ValueError, match="zzz"):
        method.minnorm_kwargs(fn, method.budget)


def test_adv_lib_imports_with_stubs():
    if peers.library_version("adv_lib") is None:
        pytest.skip("adv_lib not installed (benchmarks/install_peers.sh)")
    import adv_lib.attacks
    assert callable(adv_lib.attacks.df)


def test_compare_end_to_end(tmp_path, capsys):
    pytest.importorskip("minnorm.models")
    out = tmp_path / "RESULTS.md"
    rc = compare.main(["--attack", "fgsm", "--model", "random-cnn", "--n", "4", "--repeats", "1",
                       "--budget", "eps=0.3", "--markdown", "--results", str(out)])
    assert rc == 0
    text = out.read_text()
    assert "## fgsm vs peers" in text and "| pair |" in text and "fwd/sample" in text
    assert "median norm minnorm" in capsys.readouterr().out


def test_head_to_head_leaves_minnorms_other_attacks_out_of_the_reference():
    import minnorm_peers
    results = {"minnorm a": {"norms": [1.0, 2.0, 3.0, 4.0]}, "minnorm b": {"norms": [0.5, 0.5, 0.5, 0.5]},
               "peer x": {"norms": [2.0, 1.0, 3.0, math.inf]}, "peer y": {"norms": [1.5, 4.0, 6.0, 2.0]}}
    rows = {row[0]: row for row in minnorm_peers.head_to_head(results)}
    # a against min(x, y, a) = [1, 1, 3, 2]: ratios 1, 2, 1, 2; b (0.5 everywhere) does not count
    assert rows["minnorm a"][1:4] == ["1.5000", "2.0000", "2/4"]
    # x: 2, 1, 1, inf (with a failure the median is the lower middle value); y: 1.5, 4, 2, 1
    assert rows["minnorm a"][4] == "peer y 1.7500 / 4.0000"  # best by p90
    assert rows["minnorm a"][5] == "peer x 1.0000 / inf"  # best by median
    assert rows["minnorm b"][1:4] == ["1.0000", "1.0000", "4/4"]


def test_attack_spec_takes_an_optional_label_and_json_params():
    assert common.parse_attack_spec("ensemble-l1") == ("ensemble-l1", "ensemble-l1", {})
    assert common.parse_attack_spec('a=fmn-l1:{"targets": 3}') == ("a", "fmn-l1", {"targets": 3})
    spec = 'fmn-l1:{"x": "a=b"}'  # an '=' inside the parameters is not a label
    assert common.parse_attack_spec(spec) == (spec, "fmn-l1", {"x": "a=b"})
