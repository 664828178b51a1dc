"""`minnorm evaluate / report / compare` end to end on the shipped CNN and the embedded sample,
the HTML report rendered in headless Chromium, and bad input failing fast."""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess

import pytest
import torch

from minnorm.cli import main

N = 6
RUN = ["evaluate", "--model", "cnn", "--data", "sample", "--n", str(N), "--attacks", "deepfool-l2,ddn,fgm-l2",
       "--quick", "--epsilons", "0.5,1,2", "--batch-size", "3", "--device", "cpu", "--examples", "3"]
FILES = ["results.json", "samples.csv", "summary.csv", "summary.md", "report.html", "plots/robust_accuracy.png",
         "plots/norm_histograms.png", "plots/examples.png"]
# Marks every <img> once the page has loaded; the extra broken image shows the check can fail.
PROBE = ("<img id='control' src='data:image/png;base64,AAAA'><script>window.addEventListener('load', () => {"
         "for (const i of document.images) i.setAttribute('data-loaded', i.complete && i.naturalWidth > 0 ? "
         "'yes' : 'no'); document.body.setAttribute('data-checked', '1');});</script></body>")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    assert main([*RUN, "--out", str(out)]) == 0
    return out


def test_writes_every_report(run_dir):
    for name in FILES:
        assert (run_dir / name).is_file(), name
    for png in run_dir.glob("plots/*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((run_dir / "results.json").read_text())
    assert [r["attack"] for r in res["summary"]] == ["deepfool-l2", "ddn", "fgm-l2", "All"]
    assert len(res["per_sample"]) == N and res["samples"] == N
    assert res["config"]["model"]["name"] == "cnn" and res["environments"][0]["torch"] == torch.__version__
    with open(run_dir / "samples.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(N))
    for r in rows:
        if r["best_attack"]:
            assert float(r["best_norm"]) == min(float(r[f"{a}.norm"]) for a in ("deepfool-l2", "ddn", "fgm-l2")
                                                if r[f"{a}.success"] == "1")
    md = (run_dir / "summary.md").read_text()
    assert "| All | best-of-all |" in md and "![robust_accuracy](plots/robust_accuracy.png)" in md


def test_html_is_self_contained_and_its_images_load_in_chromium(run_dir, tmp_path):
    page = (run_dir / "report.html").read_text()
    sources = re.findall(r"<img[^>]*src='([^']*)'", page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed; `bash run.sh test` installs it with apt-get when run as root")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE))
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'data-checked="1"' in dom, dom[-2000:]
    marks = re.findall(r"<img([^>]*)>", dom)
    loaded = {re.search(r"id=\"(\w+)\"", m).group(1) if "id=" in m else re.search(r'alt="(\w+)"', m).group(1):
              re.search(r'data-loaded="(\w+)"', m).group(1) for m in marks}
    assert loaded == {"robust_accuracy": "yes", "norm_histograms": "yes", "examples": "yes", "control": "no"}


def test_report_rebuilds_and_compare(run_dir, tmp_path, capsys):
    before = json.loads((run_dir / "results.json").read_text())
    assert main(["report", str(run_dir), "--grid", "0:2:5", "--out", str(tmp_path / "rebuilt")]) == 0
    after = json.loads((tmp_path / "rebuilt" / "results.json").read_text())
    assert after["grid"] == [0, 0.5, 1.0, 1.5, 2.0] and after["per_sample"] == before["per_sample"]
    for name in FILES:
        assert (tmp_path / "rebuilt" / name).is_file(), name

    other = tmp_path / "other"
    assert main(["evaluate", "--model", "cnn", "--data", "sample", "--n", str(N), "--attacks", "deepfool-l2",
                 "--quick", "--device", "cpu", "--no-adversarials", "--out", str(other)]) == 0
    capsys.readouterr()
    assert main(["compare", str(run_dir), str(other), "--labels", "three,one", "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "success three/one" in out and "differs: attacks" in out
    assert re.search(r"^ddn\s+100\.0% / -", out, re.M)  # an attack only one run has
    assert (tmp_path / "cmp" / "compare.png").is_file() and "| All |" in (tmp_path / "cmp" / "compare.md").read_text()


@pytest.mark.parametrize("args, fix", [
    (["--attacks", "ddn,no-such-attack"], "unknown attack 'no-such-attack'; available:"),
    (["--attacks", "ddn", "--data", "/no/such/data.pt"], "no such file or folder: /no/such/data.pt"),
    (["--attacks", "ddn", "--model", "no_such_module:make"], "--model: cannot import 'no_such_module:make'"),
    (["--attacks", "ddn", "--model", "helpers:ReshapedModel"],
     "--model helpers:ReshapedModel: the factory cannot be called with no arguments"),
    (["--attacks", "ddn", "--grid", "0,0.5,0.2"], "--grid must be strictly increasing, but 0.2 follows 0.5"),
    (["--attacks", "fgm-l2", "--epsilons", "1,1"], "--epsilons must be strictly increasing"),
    (["--attacks", "fgm-l2"], "fgm-l2 is a fixed-epsilon attack: give the radii"),
    (["--attacks", "ddn,fgsm"], "'fgsm' works in the linf norm but the evaluation is in l2"),
    (["--attacks", "ddn,tr-l2", "--param", "steps=3"], "say which attack it is for, e.g. ddn.steps"),
    # each of these used to end in a traceback or run with a setting silently dropped
    (["--attacks", ","], "--attacks ',' names no attack; give registered names"),
    (["--attacks", " ", "--norms", "l2"], "--attacks ' ' names no attack"),
    (["--norms", ","], "no norm given: name at least one, e.g. l2,linf"),
    (["--norms", "l2", "--norm", "inf", "--attacks", "ddn"], "--norm and --norms exclude each other"),
    (["--attacks", "pgd-l2", "--epsilons", "0.3", "--param", "pgd-l2.eps=0.5"],
     "give the radii of fixed-epsilon attacks with --epsilons (or --eps)"),
    (["--attacks", "pgd-l2", "--eps-search", "--param", "eps=0.5"], "upper end of --eps-search with --search-max"),
    (["--attacks", "pgd-l2", "--eps-search", "--search-max", "0"], "search_max (--search-max) must be > 0"),
    (["--attacks", "pgd-l2", "--epsilons", "0.3", "--search-steps", "20"],  # used to be dropped silently
     "--search-steps sets the bisection of --eps-search; add --eps-search"),
    (["--attacks", "pgd-l2", "--epsilons", "0.3", "--search-max", "2"], "--search-max sets the bisection"),
])
def test_bad_input_fails_fast_with_a_fix(args, fix, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["evaluate", "--n", "2", "--device", "cpu", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert fix in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("args, fix", [
    (["--search-steps", "0"], "argument --search-steps: expected a positive integer"),
    (["--search-steps", "-2"], "argument --search-steps: expected a positive integer"),
    (["--certify-time-limit", "0"], "argument --certify-time-limit: expected a number of seconds > 0 and finite"),
    (["--certify-time-limit", "-5"], "argument --certify-time-limit: expected a number of seconds > 0"),
    (["--certify-time-limit", "inf"], "got 'inf'"),
    (["--certify-time-limit", "nan"], "got 'nan'"),
])
def test_bad_numbers_are_refused_while_parsing(args, fix, tmp_path, capsys):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--model", "mlp-tiny", "--n", "1", "--attacks", "pgd-l2", "--eps-search", "--certify", "exact",
              *args, "--out", str(out)])
    assert stop.value.code == 2 and fix in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("args, note", [
    (["--attacks", "ddn", "--epsilons", "0.3"], "note: --epsilons applies to fixed-epsilon attacks only; ddn is "
                                                "minimal-norm, so it is not used"),
    (["--norms", "l2", "--eps-search", "--search-max", "2"],
     "note: --eps-search, --search-max apply to fixed-epsilon attacks only; ensemble-l2 is minimal-norm"),
])
def test_radii_of_fixed_eps_attacks_alone_get_a_note(args, note, capsys):
    assert main(["evaluate", "--model", "mlp-tiny", "--n", "1", "--quick", "--device", "cpu", *args]) == 0
    assert note in capsys.readouterr().err


def test_no_note_when_a_fixed_eps_attack_uses_the_radii(capsys):
    assert main(["evaluate", "--model", "mlp-tiny", "--n", "1", "--quick", "--device", "cpu", "--attacks",
                 "ddn,fgm-l2", "--epsilons", "0.3"]) == 0
    assert "note:" not in capsys.readouterr().err


def test_bad_weights_say_what_does_not_fit(tmp_path, capsys):
    torch.save({"w": torch.zeros(3)}, tmp_path / "w.pt")
    assert main(["evaluate", "--attacks", "ddn", "--n", "2", "--weights", str(tmp_path / "w.pt")]) == 2
    assert "does not fit SmallCNN: missing keys" in capsys.readouterr().err
