"""`minnorm attack` and `minnorm demo` end to end on a tiny model (helpers.tiny_mlp) and data file."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from helpers import tiny_inputs, tiny_mlp, true_labels

from minnorm import attacks
from minnorm.cli import _common, main

MODEL = "helpers:tiny_mlp"  # tests/ is on sys.path (conftest.py)


@pytest.fixture
def data_file(tmp_path):
    x = tiny_inputs(10)
    y = true_labels(tiny_mlp(), x)
    y[-2:] = (y[-2:] + 1) % 4  # two misclassified samples
    path = tmp_path / "data.pt"
    torch.save({"x": x, "y": y}, path)
    return str(path), x, y


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_list_prints_registry(capsys):
    assert main(["attack", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["attack", "norm", "kind", "targeted", "paper"]
    for name in attacks.available():
        assert name in out


def test_attack_writes_table_and_tensors(tmp_path, data_file, capsys):
    path, x, y = data_file
    out = tmp_path / "out"
    code = main(["attack", "--attack", "fgm-l2", "--eps", "2.0", "--model", MODEL, "--data", path, "--n", "8",
                 "--out", str(out), "--batch-size", "3", "--device", "cpu"])
    assert code == 0
    assert "fgm-l2" in capsys.readouterr().out
    header, rows = read_csv(out / "samples.csv")
    assert header[:4] == ["index", "label", "clean_pred", "correct"] and "fgm-l2.norm" in header
    assert [int(r[0]) for r in rows] == list(range(8))
    saved = torch.load(out / "adversarials.pt", weights_only=True)
    assert torch.equal(saved["indices"], torch.arange(8))  # all eight are correctly classified
    assert saved["adversarials"].shape == (8, *x.shape[1:])
    assert torch.equal(saved["labels"], y[:8])
    with torch.no_grad():
        adv_pred = tiny_mlp()(saved["adversarials"]).argmax(1)
    assert torch.equal(saved["predictions"], adv_pred)
    norm_col = header.index("fgm-l2.norm")
    for r, p, a in zip(rows, adv_pred, saved["adversarials"]):
        broken = int(p) != int(r[1])
        norm = float(r[norm_col])
        assert math.isinf(norm) if not broken else norm == pytest.approx(float((a - x[int(r[0])]).norm()), rel=1e-5)
    summary = json.loads((out / "attack.json").read_text())
    assert summary["attack"] == "fgm-l2" and summary["summary"]["passes_per_sample"] >= 3


def test_attack_correct_only_targeted_safetensors(tmp_path, data_file):
    from safetensors.torch import load_file

    path, x, y = data_file
    out = tmp_path / "out"
    code = main(["attack", "--attack", "ddn", "--quick", "--eps", "1.0", "--model", MODEL, "--data", path,
                 "--correct-only", "--targeted", "--target-mode", "least-likely", "--format", "safetensors",
                 "--out", str(out)])
    assert code == 0
    saved = load_file(out / "adversarials.safetensors")
    assert torch.equal(saved["indices"], torch.arange(8))  # the two misclassified ones are dropped
    assert bool((saved["targets"] != saved["labels"]).all())
    success = saved["predictions"] == saved["targets"]
    # the same as DDN (deterministic) run directly on those samples and targets
    direct = attacks.ddn(tiny_mlp(), x[:8], saved["targets"], targeted=True, **attacks.get("ddn").quick)
    assert torch.equal(success, direct.success) and int(success.sum()) >= 4
    torch.testing.assert_close(saved["adversarials"], direct.adversarials)
    header, rows = read_csv(out / "samples.csv")
    assert [int(r[header.index("target")]) for r in rows] == saved["targets"].tolist()
    # The saved adversarials load back as data for another run.
    assert main(["attack", "--attack", "fgsm", "--eps", "0.1", "--model", MODEL,
                 "--data", str(out / "adversarials.safetensors")]) == 0


def test_attack_loads_weights(tmp_path, data_file):
    from minnorm.models import save_weights

    other = tiny_mlp(seed=1)
    weights = save_weights(other, tmp_path / "w.safetensors")
    out = tmp_path / "out"
    assert main(["attack", "--attack", "fgsm", "--eps", "0.01", "--model", MODEL, "--weights", str(weights),
                 "--data", data_file[0], "--out", str(out)]) == 0
    header, rows = read_csv(out / "samples.csv")
    with torch.no_grad():
        expected = other(data_file[1]).argmax(1)
    assert [int(r[header.index("clean_pred")]) for r in rows] == expected.tolist()


def test_attack_and_evaluate_give_identical_numbers(tmp_path, data_file, capsys):
    """Issue 10 item 4: one pipeline, so the same images and seed give the same per-sample table."""
    path = data_file[0]
    common = ["--model", MODEL, "--data", path, "--batch-size", "4", "--seed", "3", "--device", "cpu"]
    assert main(["attack", "--attack", "ddn", "--param", "steps=15", "--out", str(tmp_path / "a")] + common) == 0
    assert main(["evaluate", "--attacks", "ddn", "--param", "ddn.steps=15", "--out", str(tmp_path / "e")]
                + common) == 0
    head, a = read_csv(tmp_path / "a" / "samples.csv")
    _, e = read_csv(tmp_path / "e" / "samples.csv")
    keep = [i for i, h in enumerate(head) if not h.endswith("seconds")]  # wall time differs, nothing else
    assert [[r[i] for i in keep] for r in a] == [[r[i] for i in keep] for r in e]
    assert any(r[head.index("ddn.norm")] not in ("", "inf") for r in a)


@pytest.mark.parametrize("argv, message", [
    (["--attack", "no-such-attack"], "available: "),
    (["--attack", "fgsm"], "give --eps"),
    (["--attack", "fgsm", "--eps", "0.1", "--param", "steps"], "key=value"),
    (["--attack", "fgsm", "--eps", "0.1", "--param", "stepz=3"], "takes no parameter 'stepz'"),
    (["--attack", "ddn", "--param", "eps=0.3"], "with --eps"),
    (["--attack", "pgd-l2", "--eps", "0.5", "--param", "norm=inf"], "fixes norm=2"),
    (["--attack", "ddn", "--param", "targeted=True"], "--targeted"),
    (["--attack", "ddn", "--param", "bounds=(0, 2)"], "box"),
    (["--attack", "fgsm", "--eps", "0.1", "--model", "no_such_module:f"], "cannot import"),
    (["--attack", "fgsm", "--eps", "0.1", "--data", "missing.pt"], "no such file"),
    (["--attack", "fgsm", "--eps", "0.1", "--weights", "missing.safetensors"], "no such file"),
    (["--attack", "fgsm", "--eps", "0.1", "--model", "no-such-model"], "unknown model"),
    ([], "--attack NAME is required"),
])
def test_attack_errors_exit_2(argv, message, data_file, capsys):
    base = ["attack", "--model", MODEL, "--data", data_file[0]]
    assert main(base + argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("eps", ["nan", "-1", "inf", "1/0"])
def test_bad_radius_exits_2(eps, data_file, capsys):
    """Issue 10 item 7: `--eps nan` printed "success within l2 <= nan"."""
    with pytest.raises(SystemExit) as done:
        main(["attack", "--attack", "deepfool-l2", "--model", MODEL, "--data", data_file[0], f"--eps={eps}"])
    assert done.value.code == 2
    assert "finite radius >= 0" in capsys.readouterr().err


def test_targeted_unsupported_exits_2(data_file, capsys):
    untargeted = [s.name for s in attacks.specs() if not s.targeted]
    if not untargeted:
        pytest.skip("every registered attack supports targets")
    assert main(["attack", "--attack", untargeted[0], "--targeted", "--model", MODEL,
                 "--data", data_file[0]]) == 2
    assert "does not support targeted" in capsys.readouterr().err


def test_params():
    assert _common.parse_params(["steps=10", "norm=inf", "bounds=(0, 1)", "flag=True"]) == {
        "steps": 10, "norm": "inf", "bounds": (0, 1), "flag": True}
    assert _common.parse_params(["a=false", "b=TRUE", "c=none", "d=nonesuch"]) == {
        "a": False, "b": True, "c": None, "d": "nonesuch"}


@pytest.mark.parametrize("param, needle", [
    ("random_start=abc", "random_start is a switch, True or False; got 'abc'"),  # a truthy string ran as True
    ("random_start=1", "random_start is a switch"),
    ("steps=1e999", "steps must be an integer >= 1, got inf"),  # OverflowError traceback before
    ("steps=100000000000000000000000", "steps must be at most 2**62"),  # overflowed in alpha = eps / steps
])
def test_bad_parameter_values_exit_2(data_file, capsys, param, needle):
    code = main(["attack", "--attack", "pgd-linf", "--eps", "0.05", "--quick", "--model", MODEL,
                 "--data", data_file[0], "--param", param])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, err


def test_switch_spelt_false_runs_as_false(data_file, tmp_path, capsys):
    """``--param random_start=false`` used to be the string 'false', which ran as True."""
    runs = {}
    for spelling in ("false", "False", "true"):
        out = tmp_path / spelling
        assert main(["attack", "--attack", "pgd-linf", "--eps", "0.05", "--quick", "--model", MODEL,
                     "--data", data_file[0], "--param", f"random_start={spelling}", "--out", str(out)]) == 0
        runs[spelling] = json.loads((out / "attack.json").read_text())
    assert _recorded(runs["false"], "random_start") is False and _recorded(runs["true"], "random_start") is True


def _recorded(record: dict, key: str):
    """A hyper-parameter as the run folder's attack.json records it (wherever it sits)."""
    stack = [record]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if key in item:
                return item[key]
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    raise KeyError(key)


@pytest.mark.parametrize("argv, needle", [
    (["--budget", "99999999999999999999999"], "expected a positive integer up to 2**62"),
    (["--seed", "99999999999999999999999"], "expected a seed from 0 to 2**63 - 1"),
    (["--device", "mps"], "minnorm runs on cpu and cuda devices, got 'mps'"),
    (["--device", "meta"], "minnorm runs on cpu and cuda devices, got 'meta'"),
])
def test_bad_run_options_exit_2(data_file, capsys, argv, needle):
    try:
        code = main(["attack", "--attack", "ddn", "--quick", "--model", MODEL, "--data", data_file[0], *argv])
    except SystemExit as stop:  # argparse's own refusal
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, err


def test_demo_quick(data_file, capsys):
    code = main(["demo", "--quick", "--n", "4", "--model", MODEL, "--data", data_file[0], "--batch-size", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "clean accuracy 80.0%" in out and "first 4 correctly classified" in out
    table = out[out.index("\nattack ") + 1:].splitlines()
    shown = [line.split()[0] for line in table[2:] if line.strip() and not line.startswith("norms")]
    expected = [n for n in ("deepfool-l2", "cw-l2", "ddn", "pgd-l2", "pgd-linf") if n in attacks.available()]
    assert shown == expected


def test_demo_explicit_attacks_and_errors(data_file, capsys):
    base = ["demo", "--quick", "--n", "3", "--model", MODEL, "--data", data_file[0]]
    assert main(base + ["--attacks", "fgsm@0.05,ddn"]) == 0
    out = capsys.readouterr().out
    assert "fgsm" in out and "0.05" in out and "ddn" in out
    assert main(base + ["--attacks", "nope"]) == 2
    assert "unknown attack 'nope'" in capsys.readouterr().err
    assert main(base + ["--attacks", "ddn@0.1"]) == 2
    assert main(base + ["--attacks", "fgsm@x"]) == 2
    for bad in ("fgsm@nan", "fgsm@-1", "fgsm@inf"):  # nan and -1 were only caught after the model loaded
        assert main(["demo", "--attacks", bad, "--model", "no-such-model"]) == 2
        assert "bad radius in" in capsys.readouterr().err
    assert main(base + ["--attacks", "fgsm@8/255"]) == 0  # refused before, accepted by every other command
    assert "0.03137" in capsys.readouterr().out


def test_demo_shipped_model(capsys):
    models = pytest.importorskip("minnorm.models")
    data = pytest.importorskip("minnorm.data")
    if not (hasattr(models, "load_shipped") and hasattr(data, "load_sample")):
        pytest.skip("shipped model or embedded sample not available yet")
    if "cnn" not in models.shipped_names():
        pytest.skip("shipped cnn not available yet")
    assert main(["demo", "--quick", "--n", "4", "--attacks", "fgsm@0.1,ddn"]) == 0
    assert "clean accuracy" in capsys.readouterr().out


def test_attack_quick_uses_registered_eps(data_file, capsys):
    eps = attacks.get("fgsm").quick["eps"]
    assert main(["attack", "--attack", "fgsm", "--quick", "--model", MODEL, "--data", data_file[0]]) == 0
    assert f"robust accuracy at linf {eps:.4g}" in capsys.readouterr().out


def test_attack_reports_relative_perturbation(tmp_path, data_file, capsys):
    path, x, y = data_file
    out = tmp_path / "out"
    assert main(["attack", "--attack", "fgm-l2", "--eps", "2.0", "--model", MODEL, "--data", path,
                 "--out", str(out), "--device", "cpu"]) == 0
    assert "rel. mean" in capsys.readouterr().out
    summary = json.loads((out / "attack.json").read_text())["summary"]
    saved = torch.load(out / "adversarials.pt", weights_only=True)
    fooled = saved["predictions"] != saved["labels"]
    keep = saved["indices"][fooled]
    assert 0 < len(keep) < len(y)
    rel = (saved["adversarials"][fooled] - x[keep]).flatten(1).norm(dim=1) / x[keep].flatten(1).norm(dim=1)
    assert summary["relative_mean"] == pytest.approx(float(rel.mean()), rel=1e-5)
    assert summary["relative_worst"] == pytest.approx(float(rel.max()), rel=1e-5)
    assert summary["seconds_per_sample"] > 0


def test_attack_towards_one_class(tmp_path, data_file):
    path, x, y = data_file
    out = tmp_path / "out"
    assert main(["attack", "--attack", "ddn", "--quick", "--target", "1", "--model", MODEL, "--data", path,
                 "--out", str(out)]) == 0
    saved = torch.load(out / "adversarials.pt", weights_only=True)
    assert bool((saved["targets"] == 1).all()) and bool((saved["labels"] != 1).all())
    keep = saved["indices"]
    with torch.no_grad():
        correct = tiny_mlp()(x).argmax(1) == y
    assert torch.equal(keep, ((y != 1) & correct).nonzero().flatten())  # only correct ones not labelled 1
    direct = attacks.ddn(tiny_mlp(), x[keep], saved["targets"], targeted=True, **attacks.get("ddn").quick)
    assert torch.equal(saved["predictions"] == 1, direct.success) and int(direct.success.sum()) >= 1
    torch.testing.assert_close(saved["adversarials"], direct.adversarials)


def test_describe_prints_the_card(capsys):
    assert main(["attack", "--describe", "ddn", "--measure"]) == 0
    out = capsys.readouterr().out
    assert "Rony et al. 2019" in out and "steps" in out and "100" in out
    assert "quick settings: median 41" in out and "defaults: median 201" in out  # 2 x 100 steps + final check
    assert main(["attack", "--describe", "pgd-l2"]) == 0
    card = capsys.readouterr().out
    assert next(line for line in card.splitlines() if line.strip().startswith("norm ")).endswith("(fixed by this entry)")


@pytest.mark.parametrize("argv, needle", [
    (["--attack", "ddn", "--target", "3", "--target-mode", "least-likely"], "--target CLASS and --target-mode exclude"),
    (["--attack", "ddn", "--measure"], "--measure counts passes for --describe NAME"),
    (["--describe", ""], "unknown attack ''"),
])
def test_options_that_were_silently_ignored_exit_2(data_file, capsys, argv, needle):
    """The mode was ignored for --target, --measure without --describe did nothing, and
    --describe "" asked for --attack."""
    code = main(["attack", *argv, "--quick", "--model", MODEL, "--data", data_file[0]])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, err


def test_target_mode_alone_makes_the_run_targeted(data_file, tmp_path, capsys):
    """--target-mode without --targeted ran untargeted."""
    out = tmp_path / "run"
    assert main(["attack", "--attack", "ddn", "--target-mode", "least-likely", "--quick", "--model", MODEL,
                 "--data", data_file[0], "--out", str(out)]) == 0
    assert _recorded(json.loads((out / "results.json").read_text()), "targets") == "least-likely"


@pytest.mark.parametrize("command", [["attack", "--attack", "ddn"], ["evaluate", "--attacks", "ddn"],
                                     ["certify", "--mode", "lower"], ["train", "--model", "mlp", "--epochs", "1"]])
def test_empty_out_is_refused_by_every_command(data_file, capsys, command):
    """``--out ""`` meant "." for attack, print only for certify and out/train-MODEL for train."""
    extra = [] if command[0] == "train" else ["--model", MODEL, "--data", data_file[0]]
    code = main([*command, *extra, "--out", ""])
    err = capsys.readouterr().err
    assert code == 2 and "--out is empty" in err, err
