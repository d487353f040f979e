"""The `edvae` command line: train | eval | encode | decode | compare | demo."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .errors import EdvaeError

DEFAULT_CPU_CONFIG = "fashion-mnist-cpu.yaml"


def _packaged_config(name: str) -> Path:
    return Path(__file__).parent / "resources" / "configs" / name


def build_config(args: argparse.Namespace):
    from .config import apply_override, from_dict, load_file

    data = load_file(args.config) if args.config else {}
    flags = {"method": "model.method", "dataset": "train.dataset", "data_dir": "train.data_dir",
             "steps": "train.steps", "batch_size": "train.batch_size", "width": "model.width",
             "seed": "train.seed", "device": "train.device"}
    for attr, key in flags.items():
        value = getattr(args, attr, None)
        if value is not None:
            section, name = key.split(".")
            data.setdefault(section, {})[name] = value
    for assignment in args.set or []:
        apply_override(data, assignment)
    return from_dict(data)


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    cfg = build_config(args)
    result = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    if result is not None:  # None on the other ranks of a data-parallel run
        print(json.dumps({k: v for k, v in result.items() if k != "code_counts"}, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .train import evaluate_run

    result = evaluate_run(args.run_dir, device=args.device)
    result.pop("code_counts", None)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:26s} {value}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from .tokenize import encode_files

    n = encode_files(args.run_dir, args.images, Path(args.output), args.device)
    print(f"wrote {n} code maps to {args.output}")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from .tokenize import decode_file

    n = decode_file(args.run_dir, Path(args.codes), Path(args.output), args.device)
    print(f"wrote {n} images to {args.output}")
    return 0


def cmd_compare(args: argparse.Namespace, command: str | None = None) -> int:
    from .compare import run_grid, write_report

    out = Path(args.out)
    rows = run_grid(args.methods, args.seeds, out, args.config, args.set or [], args.jobs, args.threads)
    table = write_report(out, rows, args.methods, command or "edvae " + shlex.join(sys.argv[1:]))
    print(table)
    print(f"runs, results.json, summary.md and perplexity.png are in {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    args.config = str(_packaged_config(DEFAULT_CPU_CONFIG))
    args.methods = ["edvae", "dvae"]
    args.seeds = [0]
    args.set = [f"train.steps={args.steps}", *(args.set or [])]
    return cmd_compare(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edvae", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a discrete VAE (then evaluate it on the test split)")
    t.add_argument("--config", help="YAML file with sections model and train")
    t.add_argument("--method", help="quantizer: edvae, dvae")
    t.add_argument("--dataset", help="fashion-mnist, cifar10, celeba, lsun-church, folder, synthetic")
    t.add_argument("--data-dir", dest="data_dir")
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", dest="batch_size", type=int)
    t.add_argument("--width", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto, cpu, cuda, mps")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key")
    t.add_argument("--out", required=True, help="run folder (must be new unless --resume)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a run on its test split; writes eval.json and PNGs")
    e.add_argument("run_dir")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=cmd_eval)

    en = sub.add_parser("encode", help="images (files or folders) -> a .npy of code maps")
    en.add_argument("run_dir")
    en.add_argument("images", nargs="+")
    en.add_argument("-o", "--output", required=True, help="codes file (.npy)")
    en.add_argument("--device", default="auto")
    en.set_defaults(func=cmd_encode)

    de = sub.add_parser("decode", help="a .npy of code maps -> PNG images")
    de.add_argument("run_dir")
    de.add_argument("codes")
    de.add_argument("-o", "--output", required=True, help="folder for the PNGs")
    de.add_argument("--device", default="auto")
    de.set_defaults(func=cmd_decode)

    for name, helptext in (("compare", "train a method x seed grid and tabulate it"),
                           ("demo", "EdVAE vs dVAE on Fashion-MNIST, CPU-sized, one seed")):
        c = sub.add_parser(name, help=helptext)
        if name == "compare":
            c.add_argument("--methods", nargs="+", default=["edvae", "dvae"])
            c.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
            c.add_argument("--config")
        else:
            c.add_argument("--steps", type=int, default=1500)
        c.add_argument("--set", action="append", metavar="KEY=VALUE")
        c.add_argument("--out", default="runs/demo" if name == "demo" else "runs/compare")
        c.add_argument("--jobs", type=int, default=2, help="runs trained at once")
        c.add_argument("--threads", type=int, default=1, help="CPU threads per run")
        c.set_defaults(func=cmd_demo if name == "demo" else cmd_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except EdvaeError as exc:
        print(f"edvae: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
