"""Training: it learns, checkpoints resume exactly, adversaries restore the model's state."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from minnorm import models
from minnorm.training import Adversary, accuracy, attack_mode, learning_rate, train

torch.set_num_threads(1)


def _blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of 1x6x6 images in [0, 1]: a bright left or a bright right half, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.35 * torch.rand(n, 1, 6, 6, generator=g)
    x[y == 0, :, :, :3] += 0.4
    x[y == 1, :, :, 3:] += 0.4
    return x.clamp(0, 1), y


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.MLP(in_features=36, hidden=(16,), num_classes=2)


TRAIN, TEST = _blobs(192, 0), _blobs(64, 1)


def test_one_epoch_improves_accuracy():
    model = _mlp()
    before = accuracy(model, TEST)
    log = train(model, TRAIN, TEST, epochs=1, lr=0.01, batch_size=16, progress=False)
    assert log[0]["test_accuracy"] == accuracy(model, TEST) > max(before, 0.9)
    assert log[0]["robust_accuracy"] is None and log[0]["train_loss"] < math.log(2)


def test_resume_equals_uninterrupted(tmp_path):
    kwargs = {"epochs": 2, "lr": 0.01, "batch_size": 16, "adversary": "fgsm", "max_norm": 0.05,
              "robust_samples": 16, "progress": False, "seed": 3}
    straight = _mlp()
    log_straight = train(straight, TRAIN, TEST, **kwargs)

    def interrupt(entry):
        if entry["epoch"] == 1:
            raise KeyboardInterrupt

    first = _mlp()
    with pytest.raises(KeyboardInterrupt):
        train(first, TRAIN, TEST, checkpoint_dir=tmp_path, on_epoch_end=interrupt, **kwargs)
    assert json.loads((tmp_path / "log.json").read_text())[0]["epoch"] == 1
    resumed = _mlp(seed=99)  # a fresh process would build a differently initialised model
    log_resumed = train(resumed, TRAIN, TEST, checkpoint_dir=tmp_path, **kwargs)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    strip = lambda log: [{k: v for k, v in e.items() if "seconds" not in k} for e in log]
    assert strip(log_resumed) == strip(log_straight)
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,") and len(lines) == 3
    # a finished run resumes to nothing; changed settings are refused
    assert len(train(resumed, TRAIN, TEST, checkpoint_dir=tmp_path, **kwargs)) == 2
    with pytest.raises(ValueError, match="different settings \\(lr\\)"):
        train(resumed, TRAIN, TEST, checkpoint_dir=tmp_path, **{**kwargs, "lr": 0.02})


class _Recorder(nn.Module):
    """Records (train mode, grad enabled, requires_grad of the weights) at every forward pass."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        self.calls: list[tuple[bool, bool, bool]] = []

    def forward(self, x):
        self.calls.append((self.training, torch.is_grad_enabled(), self.net[1].weight.requires_grad))
        return self.net(x)


def test_adversary_restores_train_mode_and_requires_grad(tmp_path):
    torch.manual_seed(0)
    model = _Recorder()
    model.net[4].requires_grad_(False)  # a frozen head must stay frozen
    model.net[2].eval()  # and a submodule the user put in eval mode stays there
    train(model, TRAIN, TEST, epochs=1, batch_size=32, adversary="fgsm", max_norm=0.1, robust_samples=8,
          progress=False)
    train_steps = [c for c in model.calls if c[0]]
    attack_calls = [c for c in model.calls if not c[0] and not c[2]]
    assert len(train_steps) == 6 and all(c[1] and c[2] for c in train_steps)
    assert len(attack_calls) >= 12  # fgsm: a clean pass, a gradient pass (and a final pass) per batch
    assert model.training and not model.net[2].training
    assert model.net[1].weight.requires_grad and not model.net[4].weight.requires_grad


def test_attack_mode_restores_on_error():
    model = _Recorder()
    with pytest.raises(RuntimeError), attack_mode(model):
        assert not model.training and not model.net[1].weight.requires_grad
        raise RuntimeError
    assert model.training and model.net[1].weight.requires_grad


def test_adversary_settings():
    adv = Adversary("fgsm", 0.1)
    assert adv.kwargs["eps"] == 0.1 and math.isinf(adv.norm)
    x, y = TEST[0][:8], TEST[1][:8]
    model = _mlp()
    out = adv.perturb(model, x, y)
    assert float((out - x).abs().max()) <= 0.1 + 1e-6 and out.min() >= 0 and out.max() <= 1
    assert Adversary("fgsm", kwargs={"eps": 0.2}).max_norm == 0.2
    with pytest.raises(ValueError, match="max_norm"):
        Adversary("fgsm")
    with pytest.raises(ValueError, match="unknown attack"):
        Adversary("no-such-attack", 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        Adversary("fgsm", -1.0)


def test_bad_hyper_parameters():
    model = _mlp()
    for bad, match in (({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"batch_size": 0}, "batch_size"),
                       ({"schedule": "linear"}, "schedule"), ({"optimizer": "rmsprop"}, "optimizer")):
        with pytest.raises(ValueError, match=match):
            train(model, TRAIN, TEST, **{"epochs": 1, "progress": False, **bad})


def test_learning_rate_schedules():
    assert learning_rate("constant", 0.1, 50, 100) == 0.1
    assert learning_rate("cosine", 0.1, 0, 100) == pytest.approx(0.1)
    assert learning_rate("cosine", 0.1, 100, 100) == pytest.approx(0.0)
    assert learning_rate("onecycle", 0.1, 0, 100) == pytest.approx(0.004)
    assert learning_rate("onecycle", 0.1, 20, 100) == pytest.approx(0.1)


def test_cli_train_exports(tmp_path):
    from minnorm.cli import main
    x, y = TRAIN
    np.savez(tmp_path / "train.npz", x=x.numpy(), y=y.numpy())
    np.savez(tmp_path / "test.npz", x=TEST[0].numpy(), y=TEST[1].numpy())
    weights = tmp_path / "w.safetensors"
    code = main(["train", "--model", "mlp", "--data", str(tmp_path / "train.npz"), "--test-data",
                 str(tmp_path / "test.npz"), "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "run"),
                 "--export", str(weights), "--device", "cpu", "--no-progress"])
    assert code == 0
    info = json.loads(weights.with_suffix(".json").read_text())
    assert info["architecture"] == "mlp" and info["model_kwargs"]["in_features"] == 36
    assert info["recipe"].startswith("minnorm train --model mlp")
    model = models.build_model(info["architecture"], **info["model_kwargs"])
    models.load_weights(model, weights)
    assert info["clean_test_accuracy"] == accuracy(model, TEST) > 0.9  # the exported weights' own accuracy


def test_madry_pgd_runs_every_step_and_stays_in_the_ball():
    from minnorm.training.pgd import madry_pgd
    model = _mlp()
    train(model, TRAIN, None, epochs=1, lr=0.01, batch_size=16, progress=False)
    x, y = TEST[0][:16], TEST[1][:16]
    calls = []
    hook = model.register_forward_pre_hook(lambda m, inp: calls.append(len(inp[0])))
    for norm, eps in (("inf", 0.1), (2, 0.5), (1, 2.0)):
        calls.clear()
        adv = madry_pgd(model, x, y, eps=eps, norm=norm, steps=5, generator=torch.Generator().manual_seed(0))
        assert calls == [16] * 5  # no early stopping: the whole batch, every step
        from minnorm.core import lp_norm
        assert float(lp_norm(adv - x, norm).max()) <= eps * (1 + 1e-5) and 0 <= adv.min() and adv.max() <= 1
    hook.remove()
    loss = lambda z: nn.functional.cross_entropy(model(z), y, reduction="none")
    adv = madry_pgd(model, x, y, eps=0.1, steps=5, random_start=False)
    assert bool((loss(adv) >= loss(x) - 1e-6).all())
    alone = torch.cat([madry_pgd(model, x[i:i + 1], y[i:i + 1], eps=0.1, steps=5, random_start=False)
                       for i in range(4)])
    assert torch.allclose(alone, adv[:4], atol=1e-6)


def test_pgd_training_path():
    adv = Adversary("pgd-linf", 0.1, {"steps": 3})
    assert adv.kwargs == {"steps": 3, "eps": 0.1}
    with pytest.raises(ValueError, match="Madry PGD training takes"):
        Adversary("pgd-l2", 1.0, {"restarts": 2})
    model = _mlp()
    log = train(model, TRAIN, TEST, epochs=1, lr=0.01, batch_size=32, adversary="pgd-l2", max_norm=0.5,
                adversary_kwargs={"steps": 2, "random_start": False}, robust_samples=16, progress=False)
    assert model.training
    assert log[0]["robust_accuracy"] == robust_accuracy(model, Adversary("pgd-l2", 0.5, {"steps": 2, "random_start": False}))


def test_ddn_training_adversary_caps_every_sample():
    # Rony et al. Sec. 5: DDN's perturbation renormed to at most max_norm, for every sample --
    # also the ones DDN never made adversarial (their capped last iterate), none left clean.
    model = _mlp()
    train(model, TRAIN, None, epochs=1, lr=0.01, batch_size=16, progress=False)
    x, y = TEST[0][:32], TEST[1][:32]
    adv = Adversary("ddn", 0.3, {"steps": 20})
    assert adv._train_kwargs["max_norm"] == 0.3 and "max_norm" not in adv.kwargs
    model.train()
    out = adv.perturb(model, x, y, torch.Generator().manual_seed(0))
    assert model.training
    from minnorm.core import lp_norm
    norms = lp_norm(out - x, 2)
    assert float(norms.max()) <= 0.3 + 1e-5 and 0 <= out.min() and out.max() <= 1
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    # correctly classified samples all move, most of them up to the cap
    assert bool((norms[correct] > 0).all()) and float(norms[correct].median()) > 0.25
    free = minnorm_ddn(model, x, y, steps=20)
    inside = free.success & (free.norms <= 0.3)
    torch.testing.assert_close(out[inside], free.adversarials[inside])  # within the cap: DDN's own answer
    robust = adv.robust_correct(model, x, y)
    assert bool((robust == (correct & ~inside)).all())


def robust_accuracy(model: nn.Module, adv: Adversary, samples: int = 16) -> float:
    """The trainer's robust accuracy on the first ``samples`` test images, by hand (a deterministic adversary)."""
    return float(adv.robust_correct(model, TEST[0][:samples], TEST[1][:samples]).float().mean())


def minnorm_ddn(model, x, y, **kwargs):
    from minnorm.attacks import ddn
    return ddn(model.eval(), x, y, **kwargs)


def test_any_registered_attack_is_an_adversary():
    # A minimal-norm Linf attack (trust region, as in the TR paper's appendix): its perturbation
    # is projected onto the max_norm ball; samples it does not break train on clean images.
    model = _mlp()
    train(model, TRAIN, None, epochs=1, lr=0.01, batch_size=16, progress=False)
    x, y = TEST[0][:16], TEST[1][:16]
    adv = Adversary("tr-linf", 0.02, {"steps": 10, "refine_steps": 0})
    assert adv.spec.minimal and math.isinf(adv.norm)
    out = adv.perturb(model, x, y)
    assert float((out - x).abs().max()) <= 0.02 + 1e-6
    assert float((out - x).abs().flatten(1).amax(1).max()) > 0.01  # the cap binds: not the clean input
    log = train(model, TRAIN, TEST, epochs=1, lr=0.01, batch_size=32, adversary="tr-linf", max_norm=0.02,
                adversary_kwargs={"steps": 5, "refine_steps": 0}, robust_samples=16, progress=False)
    assert log[0]["robust_accuracy"] == robust_accuracy(model, Adversary("tr-linf", 0.02, {"steps": 5, "refine_steps": 0}))


def test_cli_train_with_ddn_adversary(tmp_path, capsys):
    from minnorm.cli import main
    np.savez(tmp_path / "train.npz", x=TRAIN[0].numpy(), y=TRAIN[1].numpy())
    np.savez(tmp_path / "test.npz", x=TEST[0].numpy(), y=TEST[1].numpy())
    weights = tmp_path / "ddn.safetensors"
    argv = ["train", "--model", "mlp", "--data", str(tmp_path / "train.npz"), "--test-data",
            str(tmp_path / "test.npz"), "--epochs", "2", "--batch-size", "32", "--adversary", "ddn",
            "--max-norm", "0.5", "--steps", "5", "--robust-samples", "16", "--out", str(tmp_path / "run"),
            "--export", str(weights), "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    info = json.loads(weights.with_suffix(".json").read_text())
    assert "--adversary ddn --max-norm 0.5 --steps 5 --robust-samples 16" in info["recipe"]
    assert info["adversary"] == "ddn" and info["max_norm"] == 0.5 and info["epochs"] == 2
    assert [e["epoch"] for e in info["log"]] == [1, 2]
    model = models.build_model(info["architecture"], **info["model_kwargs"])
    models.load_weights(model, weights)
    last = info["log"][-1]  # the exported weights' own numbers, recomputed
    assert last["test_accuracy"] == info["clean_test_accuracy"] == accuracy(model, TEST)
    assert last["robust_accuracy"] == info["robust_accuracy"] == robust_accuracy(model, Adversary("ddn", 0.5, {"steps": 5}))
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["config"]["adversary_kwargs"] == {"steps": 5}
    assert "robust accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("hidden", ["-5", "0", "", "64,abc"])
def test_bad_mlp_widths_are_refused_before_training(tmp_path, capsys, hidden):
    """``--hidden -5`` ended in torch's negative-dimension traceback, ``0`` trained a zero-width
    MLP and ``""`` fell back to 256,256 silently."""
    from minnorm.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["train", "--model", "mlp", "--hidden", hidden, "--epochs", "1", "--out", str(tmp_path / "run"),
              "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "argument --hidden: expected comma-separated widths" in err, err
    assert not (tmp_path / "run").exists()


def test_adversary_radius_given_twice_is_refused():
    """``--eps 0.1 --attack-arg eps=0.3`` trained at 0.3 while the log, the projection and the
    exported metadata said 0.1."""
    with pytest.raises(ValueError, match="radius is given twice: max_norm=0.1 and eps=0.3"):
        Adversary("pgd-linf", max_norm=0.1, kwargs={"eps": 0.3})
    with pytest.raises(ValueError, match="max_norm=2.0 and max_norm=1.0"):
        Adversary("ddn", max_norm=2.0, kwargs={"max_norm": 1.0})
    assert Adversary("pgd-linf", max_norm=0.1, kwargs={"eps": 0.1}).kwargs["eps"] == 0.1


@pytest.mark.parametrize("extra", [["--eps", "0.1"], ["--steps", "5"], ["--attack-arg", "step_size=0.01"]])
def test_adversary_options_without_adversary_are_refused(tmp_path, capsys, extra):
    """They were ignored: the model trained without an adversary."""
    from minnorm.cli import main

    code = main(["train", "--model", "mlp", "--epochs", "1", "--out", str(tmp_path / "run"), "--device", "cpu",
                 "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and f"{extra[0]} set the adversary; name one with --adversary" in err, err


def test_attack_arg_without_value_names_its_option(tmp_path, capsys):
    from minnorm.cli import main

    code = main(["train", "--model", "mlp", "--adversary", "fgsm", "--eps", "0.1", "--attack-arg", "steps",
                 "--epochs", "1", "--out", str(tmp_path / "run"), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--attack-arg expects key=value" in err, err  # it said --param


def test_cli_train_tests_on_saved_adversarials(tmp_path, capsys):
    """--test-data took datasets only; the adversarials file `minnorm attack` writes was refused."""
    from minnorm.cli import main
    x, y = TRAIN
    np.savez(tmp_path / "train.npz", x=x.numpy(), y=y.numpy())
    torch.save({"adversarials": TEST[0], "labels": TEST[1]}, tmp_path / "adv.pt")
    code = main(["train", "--model", "mlp", "--data", str(tmp_path / "train.npz"), "--test-data",
                 str(tmp_path / "adv.pt"), "--epochs", "1", "--batch-size", "32", "--out", str(tmp_path / "run"),
                 "--device", "cpu", "--no-progress"])
    assert code == 0, capsys.readouterr().err
