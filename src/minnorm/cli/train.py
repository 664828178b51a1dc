"""``minnorm train``: train a reference model (standard or adversarial) and export its weights."""
from __future__ import annotations

import argparse
import datetime
import platform
import shlex
from pathlib import Path
from typing import Any

import torch

from ..evaluation.store import check_out_file, write_json
from . import _common as c

_DATASETS = {"fashion-mnist", "cifar10"}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a reference model, standard or adversarial; export safetensors",
        description="Train a reference architecture on a data set, with an optional adversary (any "
                    "registered attack: pgd-linf, pgd-l2, ddn, ...). Checkpoints every epoch to --out and "
                    "resumes from there; --export writes the weights and a JSON of how they were made.",
        epilog="examples:\n  minnorm train --model cnn --epochs 8 --out out/cnn --export cnn.safetensors\n"
               "  minnorm train --model cnn --adversary ddn --max-norm 2.4 --steps 100 --out out/cnn-ddn\n"
               "  minnorm train --model cnn --adversary pgd-linf --eps 0.1 --steps 40 --attack-arg step_size=0.01",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["cnn", "mlp", "resnet"], default="cnn", help="architecture (default: cnn)")
    p.add_argument("--hidden", type=_widths, help="mlp hidden widths, comma-separated (default: 256,256)")
    p.add_argument("--activation", default="relu", help="relu, leaky_relu, silu/swish, gelu, softplus (default: relu)")
    p.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist or cifar10 (train split to train, test split to test), or any "
                        "dataset name/path for training with --test-data (default: fashion-mnist)")
    p.add_argument("--test-data", help="test set name or path (default: the test split of --data)")
    p.add_argument("--data-root", help="folder of the data files (default: $MINNORM_DATA or the Debian path)")
    p.add_argument("--train-size", type=c.positive_int, help="train on the first N training samples only")
    p.add_argument("--epochs", type=c.positive_int, default=5, help="default: 5")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    p.add_argument("--batch-size", type=c.positive_int, default=128, help="default: 128")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="default: adam")
    p.add_argument("--weight-decay", type=float, default=0.0, help="default: 0")
    p.add_argument("--schedule", choices=["onecycle", "cosine", "constant"], default="onecycle",
                   help="learning rate per step (default: onecycle)")
    p.add_argument("--adversary", metavar="NAME", help="registered attack to train against (default: none)")
    p.add_argument("--eps", "--max-norm", dest="max_norm", type=float,
                   help="adversary radius: eps of a fixed-epsilon attack, cap of a minimal-norm one")
    p.add_argument("--steps", type=c.positive_int, help="adversary steps (its default if omitted)")
    p.add_argument("--attack-arg", action="append", metavar="KEY=VALUE", default=[],
                   help="further adversary hyper-parameter as a Python literal (repeatable)")
    p.add_argument("--robust-samples", type=int, default=1000,
                   help="test samples for the per-epoch robust accuracy (default: 1000; 0: none)")
    p.add_argument("--out", help="checkpoint and log folder (default: out/train-MODEL)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    p.add_argument("--export", metavar="FILE.safetensors", help="write the final weights and FILE.json")
    p.add_argument("--init", metavar="NAME|FILE.safetensors",
                   help="start from these weights (a shipped model or a file written by --export) instead of a "
                        "random initialisation, e.g. to train a shipped model further")
    p.add_argument("--seed", type=c.seed_int, default=0, help="seed of initialisation, shuffling and attacks (default: 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... or auto (default: auto)")
    p.add_argument("--threads", type=c.positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(func=run)


def _recipe(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (canonical order, every setting spelled out)."""
    parts = ["minnorm", "train", "--model", args.model, "--activation", args.activation, "--data", args.data]
    if getattr(args, "hidden", None):
        parts[4:4] = ["--hidden", args.hidden]
    for flag, value in (("--test-data", args.test_data), ("--train-size", args.train_size),
                        ("--epochs", args.epochs), ("--lr", args.lr), ("--batch-size", args.batch_size),
                        ("--optimizer", args.optimizer), ("--weight-decay", args.weight_decay),
                        ("--schedule", args.schedule), ("--adversary", args.adversary),
                        ("--max-norm", args.max_norm), ("--steps", args.steps),
                        ("--robust-samples", args.robust_samples), ("--init", getattr(args, "init", None)),
                        ("--seed", args.seed)):
        if value is not None:
            parts += [flag, str(value)]
    for item in args.attack_arg:
        parts += ["--attack-arg", item]
    return shlex.join(parts)


def _load(args: argparse.Namespace) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    from .. import data
    name = args.data.lower()
    if name in _DATASETS:
        train = data.resolve_dataset(f"{name}:train", args.data_root)
        test_spec = args.test_data or f"{name}:test"
    else:
        if not args.test_data:
            raise ValueError("--test-data is required when --data is not fashion-mnist or cifar10")
        train = data.resolve_dataset(args.data, args.data_root)
        test_spec = args.test_data
    # a tensor file (e.g. the adversarials `minnorm attack` saved) is read as attack and evaluate read it
    test = (c.load_data(test_spec) if test_spec.endswith(c.TENSOR_SUFFIXES)
            else data.resolve_dataset(test_spec, args.data_root))
    if args.train_size:
        train = (train[0][:args.train_size], train[1][:args.train_size])
    if train[0].shape[1:] != test[0].shape[1:]:
        raise ValueError(f"train images {tuple(train[0].shape[1:])} and test images {tuple(test[0].shape[1:])} differ")
    return train, test


def _widths(text: str) -> str:
    """An argparse type for ``--hidden``: comma-separated positive integers (kept as typed, for
    the command line the run records)."""
    try:
        ok = all(1 <= int(w) <= 1 << 20 for w in text.split(","))
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"expected comma-separated widths from 1 to 2**20 such as 256,256, got {text!r}")
    return text


def _model_kwargs(args: argparse.Namespace, x: torch.Tensor, num_classes: int) -> dict[str, Any]:
    channels, height, width = x.shape[1:]
    kwargs: dict[str, Any] = {"activation": args.activation, "num_classes": num_classes}
    if args.model == "cnn":
        if height != width:
            raise ValueError(f"--model cnn needs square images, got {height}x{width}")
        kwargs.update(in_channels=channels, input_size=height)
    elif args.model == "mlp":
        kwargs.update(in_features=channels * height * width)
        if getattr(args, "hidden", None):
            kwargs.update(hidden=[int(w) for w in args.hidden.split(",")])
    else:  # BatchNorm aside, a ResNet trains better on standardised inputs; Normalize keeps the box [0, 1]
        kwargs.update(in_channels=channels, mean=x.mean(dim=(0, 2, 3)).tolist(), std=x.std(dim=(0, 2, 3)).tolist())
    return kwargs


def _load_init(model: torch.nn.Module, init: str) -> None:
    """``--init``: a shipped model's weights or a weights file; refused if built for another architecture."""
    from ..models import load_weights, shipped_names
    from ..models.weights import WEIGHTS_DIR

    path = WEIGHTS_DIR / f"{init}.safetensors" if init in shipped_names() else Path(init)
    if not path.is_file():
        raise ValueError(f"--init {init}: neither a shipped model ({', '.join(shipped_names())}) nor a weights file")
    load_weights(model, path)


def run(args: argparse.Namespace) -> int:
    from ..models import build_model, make_activation
    from ..training import accuracy, train

    make_activation(args.activation)  # fail before loading data
    c.check_out(f"out/train-{args.model}" if args.out is None else args.out)  # before hours of training, not after
    if args.export:
        if Path(args.export).suffix != ".safetensors":
            raise ValueError(f"--export must end in .safetensors, got {args.export}")
        check_out_file(args.export, "--export")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = c.resolve_device(args.device)
    adversary_kwargs = _adversary_kwargs(args)
    train_data, test_data = _load(args)
    num_classes = int(max(train_data[1].max(), test_data[1].max())) + 1
    kwargs = _model_kwargs(args, train_data[0], num_classes)
    torch.manual_seed(args.seed)
    model = build_model(args.model, **kwargs)
    if args.init:
        _load_init(model, args.init)
    model = model.to(device)
    out = Path(args.out or f"out/train-{args.model}")
    log = train(model, train_data, test_data, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                optimizer=args.optimizer, weight_decay=args.weight_decay, schedule=args.schedule,
                adversary=args.adversary, adversary_kwargs=adversary_kwargs, max_norm=args.max_norm,
                robust_samples=args.robust_samples, checkpoint_dir=out, resume=not args.no_resume,
                seed=args.seed, progress=not args.no_progress)
    last = log[-1]
    test_acc = accuracy(model, test_data)
    print(f"trained {args.model} for {last['epoch']} epochs in {last['total_seconds']:.1f} s: "
          f"clean test accuracy {test_acc:.4f} on {len(test_data[1])} samples"
          + (f", robust accuracy {last['robust_accuracy']:.4f}" if last.get("robust_accuracy") is not None else ""))
    print(f"checkpoint and logs in {out}")
    if args.export:
        _export(args, model, kwargs, train_data, test_acc, len(test_data[1]), log)
    return 0


def _adversary_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The adversary's hyper-parameters from --steps and --attack-arg, checked before any data is read."""
    if not args.adversary:
        unused = [flag for flag, value in (("--eps", args.max_norm), ("--steps", args.steps),
                                           ("--attack-arg", args.attack_arg)) if value]
        if unused:
            raise ValueError(f"{', '.join(unused)} set the adversary; name one with --adversary")
    adversary_kwargs = c.parse_params(args.attack_arg, "--attack-arg")
    if args.steps is not None:
        adversary_kwargs["steps"] = args.steps
    if args.adversary:
        c.get_attack(args.adversary)  # unknown names fail before any data is read
    return adversary_kwargs


def _export(args, model, kwargs, train_data, test_acc: float, test_samples: int, log: list[dict]) -> None:
    """--export: the weights and a JSON like the shipped ones (checked for its suffix up front)."""
    from .. import __version__
    from ..models import save_weights

    path, last = Path(args.export), log[-1]
    meta = {
        "name": path.stem, "architecture": args.model, "model_kwargs": kwargs,
        "input_shape": list(train_data[0].shape[1:]), "bounds": [0.0, 1.0], "dataset": args.data,
        "recipe": _recipe(args), "epochs": last["epoch"], "seconds": round(last["total_seconds"], 1),
        "clean_test_accuracy": test_acc, "test_samples": test_samples,
        "robust_accuracy": last.get("robust_accuracy"), "adversary": args.adversary, "max_norm": args.max_norm,
        "init": args.init,
        "log": log, "date": datetime.date.today().isoformat(), "minnorm": __version__,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
    }
    save_weights(model, path, metadata={"architecture": args.model, "model_kwargs": kwargs})
    write_json(path.with_suffix(".json"), meta)
    print(f"exported {path} and {path.with_suffix('.json')}")
