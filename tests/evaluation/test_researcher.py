"""Issue 14: robust accuracy at eps first class, notebooks, DataLoaders, targets, progress."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_inputs, tiny_mlp, true_labels

import minnorm
from minnorm.cli import main
from minnorm.core import radius_text

MODEL = "helpers:tiny_mlp"


@pytest.fixture
def data():
    model, x = tiny_mlp(), tiny_inputs(10)
    return model, x, true_labels(model, x, wrong=(4,))


def test_headline_at_the_asked_radii(data, tmp_path, capsys):
    model, x, y = data
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    assert main(["evaluate", "--model", MODEL, "--data", str(tmp_path / "d.pt"), "--attacks",
                 "deepfool-linf,pgd-linf", "--quick", "--eps", "8/255,0.1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    head = next(line for line in out.splitlines() if line.startswith("attack "))
    assert "RA@8/255" in head and "RA@0.1" in head  # the user's radii, not a grid of its own
    ev = minnorm.evaluate(model, (x, y), "deepfool-linf,pgd-linf", "inf", quick=True, eps=[8 / 255, 0.1],
                          progress=False)
    for e in (8 / 255, 0.1):
        line = f"robust accuracy at linf {radius_text(e)}: {100 * ev.robust_accuracy(e):.1f}% (best of 2 attacks, an upper bound"
        assert line in out
    # pgd-linf ran at the asked radii (no --epsilons needed), and its RA there is 1 - success there
    row = ev.row("pgd-linf")
    assert set(row["success_at"]) == {f"{8 / 255:g}", "0.1"}
    assert ev.robust_accuracy(0.1, "pgd-linf") == pytest.approx(ev.clean_accuracy * (1 - row["success_at"]["0.1"]))


def test_radius_text():
    assert radius_text(8 / 255) == "8/255" and radius_text(0.5) == "0.5" and radius_text(0.1) == "0.1"


def test_notebook_views(data):
    model, x, y = data
    ev = minnorm.evaluate(model, (x, y), "ddn", 2, quick=True, eps=0.5, progress=False)
    text = repr(ev)
    assert "l2 norm, 10 samples" in text and len(text.splitlines()) == 1
    page = ev._repr_html_()
    assert "<table>" in page and "data:image/png;base64," in page and "robust accuracy at l2 0.5" in page
    pd = pytest.importorskip("pandas")
    frame = ev.to_pandas()
    assert isinstance(frame, pd.DataFrame) and list(frame.index) == ["ddn", "All"]
    assert frame.loc["ddn", "success_rate"] == ev.row("ddn")["success_rate"]
    assert len(ev.to_pandas("samples")) == 10
    res = minnorm.attacks.get("ddn")(model, x, y, steps=5)
    assert repr(res).startswith("AttackResult(10 samples, success") and "\n" not in repr(res)
    assert "tensor(" not in str(res)


def test_dataloader_equals_tensors(data):
    model, x, y = data
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    a = minnorm.evaluate(model, loader, "ddn", 2, quick=True, progress=False)
    b = minnorm.evaluate(model, (x, y), "ddn", 2, quick=True, progress=False)
    drop = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]  # noqa: E731
    assert repr(drop(a.per_sample())) == repr(drop(b.per_sample()))  # (nan != nan)


def test_targets_class_and_every_other(data):
    model, x, y = data
    one = minnorm.evaluate(model, (x, y), "ddn", 2, quick=True, targets=2, progress=False)
    assert (one.table["target"] == 2).all()
    assert one.table["index"].tolist() == (y != 2).nonzero().flatten().tolist()  # class 2 left out, indices kept
    assert one.config["left_out"] == int((y == 2).sum())
    every = minnorm.evaluate(model, (x, y), "ddn", 2, quick=True, targets="all", progress=False)
    # the smallest norm over every target is at most the one towards class 2
    finite = one.table["correct"] & (one.table["ddn.norm"] < math.inf)
    rows = one.table["index"][finite]
    assert (every.table["ddn.norm"][rows] <= one.table["ddn.norm"][finite] + 1e-6).all()
    with pytest.raises(ValueError, match="untargeted only"):
        minnorm.evaluate(model, (x, y), "deepfool-l2", 2, quick=True, targets="all", progress=False)


class RecordingBar:
    seen: list = []

    def __init__(self, *args, total=None, unit=None, **kwargs):
        RecordingBar.seen = [("total", total, unit)]

    def set_description(self, text):
        self.seen.append(("desc", text))

    def update(self, n):
        self.seen.append(("update", n))

    def close(self):
        pass


def test_progress_is_per_sample_and_names_the_attack(data, monkeypatch):
    import minnorm.evaluation.run as run_module

    monkeypatch.setattr(run_module, "tqdm", RecordingBar)
    model, x, y = data
    minnorm.evaluate(model, (x, y), "ddn,fmn-l2", 2, quick=True, progress=True, batch_size=4)
    seen = RecordingBar.seen
    assert seen[0] == ("total", 20, "sample")  # 10 samples x 2 attacks
    assert ("desc", "fmn-l2 (l2), batch 2") in seen
    assert sum(n for kind, n in seen[1:] if kind == "update") == 20


def test_both_norms_in_one_run(data, tmp_path, capsys):
    model, x, y = data
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    out = tmp_path / "out"
    assert main(["evaluate", "--model", MODEL, "--data", str(tmp_path / "d.pt"), "--norms", "l2,linf", "--attacks",
                 "ddn,deepfool-linf,fmn-linf", "--quick", "--eps", "linf=8/255,l2=0.5", "--out", str(out),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "== l2 ==" in printed and "== linf ==" in printed
    assert "robust accuracy at l2 0.5:" in printed and "robust accuracy at linf 8/255:" in printed
    l2, linf = minnorm.evaluation.Evaluation.load(out / "l2"), minnorm.evaluation.Evaluation.load(out / "linf")
    assert l2.attack_names == ["ddn"] and linf.attack_names == ["deepfool-linf", "fmn-linf"]
    page = (out / "report.html").read_text()
    assert "<section id='l2'>" in page and "<section id='linf'>" in page and page.count("data:image/png") == 2
    assert f"robust accuracy at linf 8/255: {100 * linf.robust_accuracy(8 / 255):.1f}%" in page
    # presets when no attacks are named; an attack of a norm not asked for is refused
    per = minnorm.evaluation.norms.split_attacks(["l2", "inf"], None)
    assert set(per) == {"l2", "linf"} and all(per.values())
    with pytest.raises(ValueError, match="not among the norms"):
        minnorm.evaluation.norms.split_attacks(["l2"], ["fmn-linf"])
    assert main(["evaluate", "--model", MODEL, "--data", str(tmp_path / "d.pt"), "--attacks", "ddn",
                 "--eps", "l2=0.5"]) == 2


def test_standard_preset_is_the_default(data, tmp_path, capsys):
    model, x, y = data
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    base = ["evaluate", "--model", MODEL, "--data", str(tmp_path / "d.pt"), "--quick", "--device", "cpu"]
    assert main(base + ["--norm", "inf"]) == 0  # no attack named: the standard ensemble of the norm
    assert "ensemble-linf" in capsys.readouterr().out
    assert main(base + ["--preset", "standard", "--norm", "2", "--eps", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "ensemble-l2" in printed and "apgd-at-eps-l2" in printed  # with radii: APGD-CE at them too
    assert "best of 2 attacks" in printed
    assert main(base + ["--preset", "standard", "--attacks", "ddn"]) == 2
    capsys.readouterr()
    assert main(base + ["--norm", "l3"]) == 2  # no ensemble for l3: said so, not as an unknown attack
    assert "has an ensemble for the norms l2, linf, l1, not l3" in capsys.readouterr().err
    assert minnorm.evaluation.norms.split_attacks(["l1"], None) == {"l1": ["ensemble-l1"]}


def test_preset_checks_the_radii_asked_for_with_apgd(data):
    """A minimal-norm search stops just above the boundary; where radii are asked for the preset
    adds APGD-CE at them (only for the norms with radii, and not when fixed-eps attacks are searched)."""
    split = minnorm.evaluation.norms.split_attacks
    assert split(["l2", "linf"], None, {"linf"}) == {"l2": ["ensemble-l2"], "linf": ["ensemble-linf", "apgd-at-eps-linf"]}
    assert split(["l2"], ["ddn"], {"l2"}) == {"l2": ["ddn"]}  # named attacks are run as named
    model, x, y = data
    runs = minnorm.evaluate_norms(model, (x, y), ["linf", "l1"], eps={"linf": [0.05]}, quick=True)
    assert runs["linf"].attack_names == ["ensemble-linf", "apgd-at-eps-linf"]
    assert runs["l1"].attack_names == ["ensemble-l1"]
    best = runs["linf"].robust_accuracy(0.05)
    assert best <= min(runs["linf"].robust_accuracy(0.05, name) for name in runs["linf"].attack_names)
    searched = minnorm.evaluate_norms(model, (x, y), ["linf"], eps={"linf": [0.05]}, eps_search=True, quick=True)
    assert searched["linf"].attack_names == ["ensemble-linf"]


def test_preset_radius_check_from_the_command_line(data, tmp_path, capsys):
    model, x, y = data
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    out = tmp_path / "out"
    assert main(["evaluate", "--model", MODEL, "--data", str(tmp_path / "d.pt"), "--quick", "--device", "cpu",
                 "--norms", "l2,linf", "--eps", "linf=0.05", "--out", str(out)]) == 0
    assert "apgd-at-eps-linf" in capsys.readouterr().out
    assert minnorm.evaluation.Evaluation.load(out / "linf").attack_names == ["ensemble-linf", "apgd-at-eps-linf"]
    assert minnorm.evaluation.Evaluation.load(out / "l2").attack_names == ["ensemble-l2"]


class FailsOnBatch(torch.nn.Module):
    """The tiny MLP, raising once it sees the samples of the second batch (an interruption)."""

    def __init__(self, inner, marker):
        super().__init__()
        self.inner, self.marker, self.armed = inner, marker, True
        self.eval()

    def forward(self, x):
        if self.armed and bool((x.flatten(1)[:, :1] == self.marker).any()):
            raise KeyboardInterrupt
        return self.inner(x)


def test_resume_says_how_far_it_got(data, tmp_path, capsys):
    model, x, y = data
    failing = FailsOnBatch(model, x[5].flatten()[0].item())
    with pytest.raises(KeyboardInterrupt):
        minnorm.evaluate(failing, (x, y), "ddn", 2, quick=True, batch_size=5, out=tmp_path / "run", progress=True)
    capsys.readouterr()
    failing.armed = False
    done = minnorm.evaluate(failing, (x, y), "ddn", 2, quick=True, batch_size=5, out=tmp_path / "run", progress=True)
    assert "resuming: 1 of 2 batches done" in capsys.readouterr().err
    again = minnorm.evaluate(model, (x, y), "ddn", 2, quick=True, batch_size=5, progress=False)
    drop = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]  # noqa: E731
    assert repr(drop(done.per_sample())) == repr(drop(again.per_sample()))


def test_cli_targets(data, tmp_path, capsys):
    model, x, y = data
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    base = ["evaluate", "--model", MODEL, "--data", str(tmp_path / "d.pt"), "--attacks", "ddn", "--quick",
            "--device", "cpu"]
    assert main(base + ["--targets", "all", "--out", str(tmp_path / "all")]) == 0
    assert main(base + ["--targets", "1", "--out", str(tmp_path / "one")]) == 0
    one = minnorm.evaluation.Evaluation.load(tmp_path / "one")
    assert (one.table["target"] == 1).all() and one.config["targets"].startswith("given:")
    assert minnorm.evaluation.Evaluation.load(tmp_path / "all").config["targets"] == "all"
    assert main(base + ["--targets", "sideways"]) == 2


def test_target_equal_to_the_label_is_left_out(data):
    # A targeted attack towards a sample's own class asks nothing: such samples are in no number
    # (they used to count as robust, unbroken, and raise the gradient-masking warning).
    model, x, y = data
    ev = minnorm.evaluate(model, (x, y), "ddn", 2, quick=True, targets=2, eps=0.05, progress=False)
    own = int((y == 2).sum())
    assert own and ev.samples == len(y) - own and ev.config["left_out"] == own
    assert (ev.table["label"] != 2).all()
    robust = ev.table["correct"] & ~(ev.table["best_norm"] <= 0.05)
    assert ev.robust_accuracy(0.05) == pytest.approx(robust.sum() / (len(y) - own))
    assert ev.row()["success_rate"] == 1.0 and not ev.warnings  # every attacked sample broken, nothing suspect
    from minnorm.evaluation.report import settings_lines

    assert f"{len(y) - own} samples ({own} more left out: their target is their label)" in settings_lines(ev)[1]
    given = (y + 1) % 4
    given[0] = y[0]  # a tensor of targets: only that sample is left out
    assert minnorm.evaluate(model, (x, y), "ddn", 2, quick=True, targets=given, progress=False).samples == len(y) - 1
    assert minnorm.evaluate(model, (x, y), "ddn", 2, quick=True, targets=3, progress=False).config["left_out"] \
        == int((y == 3).sum())
    with pytest.raises(ValueError, match=r"every sample's target is its own label \(class 2\)"):
        minnorm.evaluate(model, (x[y == 2], y[y == 2]), "ddn", 2, quick=True, targets=2, progress=False)
    with pytest.raises(ValueError, match="every sample's target is its own label: "):
        minnorm.evaluate(model, (x, y), "ddn", 2, quick=True, targets=y.clone(), progress=False)


def test_cli_target_equal_to_the_label(data, tmp_path, capsys):
    model, x, y = data
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    torch.save({"x": x[y == 2], "y": y[y == 2]}, tmp_path / "twos.pt")
    own, n = int((y == 2).sum()), len(y)
    common = ["--model", MODEL, "--quick", "--device", "cpu", "--eps", "10"]
    for cmd in (["attack", "--attack", "ddn", "--target", "2"], ["evaluate", "--attacks", "ddn", "--targets", "2"]):
        assert main(cmd + common + ["--data", str(tmp_path / "d.pt")]) == 0
        out, err = capsys.readouterr()
        assert f"note: {own} of {n} samples left out: their target is their own label" in err
        assert f"data: {tmp_path / 'd.pt'}, {n - own} samples" in out
        assert "robust accuracy at l2 10: 0.0%" in out  # ddn breaks every attacked sample, none counts unbroken
        assert "gradient masking" not in out
        assert main(cmd + common + ["--data", str(tmp_path / "twos.pt")]) == 2
        out, err = capsys.readouterr()
        assert "every sample's target is its own label (class 2)" in err and "robust accuracy" not in out


def test_target_too_big_for_a_tensor(data, capsys, tmp_path):
    model, x, y = data
    for t in (4, 2 ** 70, -1):
        with pytest.raises(ValueError, match=rf"target {t} is out of range: targets must be in 0\.\.3 \(the model "
                                             r"has 4 classes\)"):
            minnorm.evaluate(model, (x, y), "ddn", 2, quick=True, targets=t, progress=False)
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    big = "99999999999999999999999"
    for cmd in (["attack", "--attack", "ddn", "--target", big], ["evaluate", "--attacks", "ddn", "--targets", big]):
        assert main(cmd + ["--model", MODEL, "--data", str(tmp_path / "d.pt"), "--quick", "--device", "cpu"]) == 2
        assert f"error: target {big} is out of range: targets must be in 0..3 (the model has 4 classes)" in \
            capsys.readouterr().err
    with pytest.raises(ValueError, match="targets: label 4 at index 0 is out of range"):
        minnorm.evaluate(model, (x, y), "ddn", 2, quick=True, targets=torch.full_like(y, 4), progress=False)


def test_eps_no_attack_answers_is_refused(data, tmp_path, capsys):
    # pgd-l2 ran only at 0.1: robust accuracy at 0.5 would count every sample robust (100%, untested).
    model, x, y = data
    with pytest.raises(ValueError, match=r"eps 0\.5: no attack runs there \(the fixed-epsilon attacks run at 0\.1"):
        minnorm.evaluate(model, (x, y), "pgd-l2", 2, quick=True, eps=[0.1, 0.5], epsilons=[0.1], progress=False)
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    base = ["evaluate", "--model", MODEL, "--data", str(tmp_path / "d.pt"), "--quick", "--device", "cpu",
            "--eps", "0.5", "--epsilons", "0.1", "--out", str(tmp_path / "out")]
    assert main(base + ["--attacks", "pgd-l2"]) == 2
    out, err = capsys.readouterr()
    assert "no attack runs there" in err and "robust accuracy" not in out
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # answered: by a minimal-norm attack, an epsilon search, or a fixed-eps attack run at the radius
    assert main(base + ["--attacks", "pgd-l2,ddn"]) == 0
    assert "robust accuracy at l2 0.5:" in capsys.readouterr().out
    ev = minnorm.evaluate(model, (x, y), "pgd-l2", 2, quick=True, eps=0.5, eps_search=True, progress=False)
    assert ev.headlines()[0].startswith("robust accuracy at l2 0.5:")
    ev = minnorm.evaluate(model, (x, y), "pgd-l2", 2, quick=True, eps=0.5, epsilons=[0.1, 0.5], progress=False)
    assert ev.headlines()[0].startswith("robust accuracy at l2 0.5:")
