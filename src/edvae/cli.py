"""The `edvae` command line: train, eval, encode, decode, compare, demo, bench, prior, sample, fid, study."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from .checkpoint import atomic_write_text
from .collapse_study import config_from_args, run_study
from .compare import parse_variants, run_grid, write_report
from .config import config_data, from_dict
from .demo_summary import closing_sentences
from .errors import EdvaeError
from .fid import measure, summary_line
from .prior.sample import sample_run
from .prior.train_prior import train_prior
from .progress import LiveDisplay
from .quantizers import QUANTIZERS
from .study_file import SCALES
from .study_run import run_bench, run_lines, study_plan
from .tokenize import decode_file, encode_files
from .train import evaluate_run, resumed_config, train

DEFAULT_CPU_CONFIG = "fashion-mnist-cpu.yaml"

# the flags every command that trains shares, and the config keys they set
TRAINING_FLAGS = {"steps": "train.steps", "batch_size": "train.batch_size", "seed": "train.seed",
                  "device": "train.device"}
VAE_FLAGS = {**TRAINING_FLAGS, "method": "model.method", "dataset": "train.dataset",
             "data_dir": "train.data_dir", "width": "model.width", "pretrain_steps": "train.pretrain_steps",
             "compile": "train.compile", "cuda_graph": "train.cuda_graph"}


def flag_values(args: argparse.Namespace, flags: dict[str, str]) -> dict[str, object]:
    return {key: getattr(args, attr, None) for attr, key in flags.items()}


def flag_overrides(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    """The flags given, as `key=value` assignments, then --set's."""
    given = [f"{key}={value}" for key, value in flag_values(args, flags).items() if value is not None]
    return [*given, *(args.set or [])]


def config_mapping(args: argparse.Namespace) -> dict[str, object]:
    """What `edvae train` was given: the --config file, the flags, then --set."""
    return config_data(args.config, flag_values(args, VAE_FLAGS), args.set or [])


def build_config(args: argparse.Namespace):
    """The validated config of a new run from `edvae train`'s arguments."""
    return from_dict(config_mapping(args))


def cmd_train(args: argparse.Namespace) -> int:
    cfg = resumed_config(Path(args.out), config_mapping(args)) if args.resume else build_config(args)
    result = train(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    if result is not None:  # None on the other ranks of a data-parallel run
        print(json.dumps({k: v for k, v in result.items() if k != "code_counts"}, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    result = evaluate_run(args.run_dir, device=args.device)
    result.pop("code_counts", None)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:26s} {value}")
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    n = encode_files(args.run_dir, args.images, Path(args.output), args.device)
    print(f"wrote {n} code maps to {args.output}")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    n = decode_file(args.run_dir, Path(args.codes), Path(args.output), args.device)
    print(f"wrote {n} images to {args.output}")
    return 0


def cmd_compare(args: argparse.Namespace, command: str | None = None, closing=None) -> int:
    """The grid on the bench engine; `closing(rows)` gives sentences to end the report with."""
    out = Path(args.out)
    variants = parse_variants(getattr(args, "variant", None) or [])
    overrides = flag_overrides(args, {k: v for k, v in VAE_FLAGS.items() if k not in ("method", "seed")})
    rows = run_grid(args.methods, args.seeds, out, args.config, overrides, args.jobs, args.threads,
                    variants, LiveDisplay())
    sentences = closing(rows) if closing is not None else None
    table = write_report(out, rows, args.methods, command or "edvae " + shlex.join(args.argv), sentences)
    print(table)
    if sentences:
        print("\n\n".join(sentences) + "\n")
    print(f"runs, results.json, summary.md and perplexity.png are in {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """A small study preset: EdVAE and dVAE, one seed, the packaged CPU protocol (A) cut to
    --steps, with the live display; the report ends with sentences computed from its numbers."""
    args.config = str(Path(__file__).parent / "resources" / "configs" / DEFAULT_CPU_CONFIG)
    args.methods = ["edvae", "dvae"]
    args.seeds = [0]
    return cmd_compare(args, closing=closing_sentences)


def cmd_bench(args: argparse.Namespace) -> int:
    out = Path(args.out or f"runs/{Path(args.study).stem}-{args.scale}")
    if args.list:
        print("\n".join(run_lines(study_plan(args.study, args.scale, args.set or [], args.only), out)))
        return 0
    text = run_bench(args.study, args.scale, out, args.jobs, args.threads, "edvae " + shlex.join(args.argv),
                     args.set or [], args.inception_weights, progress=not args.no_progress, only=args.only)
    print(text)
    print(f"runs, results.json, tables.md and the figures are in {out}")
    return 0


def cmd_prior_train(args: argparse.Namespace) -> int:
    out = args.out or str(Path(args.run_dir) / "prior")
    result = train_prior(args.run_dir, out, overrides=flag_overrides(args, TRAINING_FLAGS),
                         preset=args.preset, resume=args.resume, codes_cache=args.codes_cache,
                         progress=not args.no_progress,
                         log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(result, indent=2))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    info = sample_run(args.run_dir, args.n, prior_dir=args.prior, out=args.out,
                      temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                      batch_size=args.batch_size, device=args.device)
    print(f"wrote {info['n']} samples to {info['images']} and a grid to {info['grid']}")
    return 0


def cmd_fid(args: argparse.Namespace) -> int:
    result = measure(run_dir=args.run, samples=args.samples, reconstructions=args.reconstructions,
                     reference=args.reference, split=args.split, limit=args.limit, features=args.features,
                     inception_weights=args.inception_weights, classifier=args.classifier,
                     classifier_steps=args.classifier_steps, batch_size=args.batch_size,
                     device=args.device, log=lambda m: print(m, file=sys.stderr))
    text = json.dumps(result, indent=2)
    if args.output:
        atomic_write_text(Path(args.output), text + "\n")
    print(summary_line(result), file=sys.stderr)  # stdout stays one JSON document
    print(text)
    return 0


def cmd_study_collapse(args: argparse.Namespace) -> int:
    cfg = config_from_args(codebook_sizes=args.sizes, widths=args.widths, seeds=args.seeds, steps=args.steps,
                           pretrain_steps=args.pretrain_steps, width=args.width,
                           width_sweep_codebook=args.width_sweep_codebook, components=args.components,
                           arms=args.arms, threads=args.threads)
    command = "edvae " + shlex.join(args.argv) if args.command_text is None else args.command_text
    result = run_study(cfg, args.out, command=command, log=lambda m: print(m, file=sys.stderr))
    print((Path(args.out) / "summary.md").read_text())
    print(f"results.json, summary.md, codebook-sweep.png, width-sweep.png and latents.png are in {args.out} "
          f"({result['seconds']:.0f} s)")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_training_flags(p: argparse.ArgumentParser, seed: bool = True) -> None:
    """--steps, --batch-size, --seed (not on grids: they take --seeds), --device and --set: the same
    on every command that trains."""
    p.add_argument("--steps", type=int, help="training steps (train.steps)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="train.batch_size")
    if seed:
        p.add_argument("--seed", type=int, help="train.seed")
    p.add_argument("--device", help="auto, cpu, cuda, mps (train.device)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key")


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="train a discrete VAE (then evaluate it on the test split)")
    t.add_argument("--config", help="YAML file with sections model and train")
    t.add_argument("--method", help="quantizer: " + ", ".join(sorted(QUANTIZERS)))
    t.add_argument("--dataset", help="fashion-mnist, cifar10, celeba, lsun-church, folder, synthetic")
    t.add_argument("--data-dir", dest="data_dir")
    t.add_argument("--width", type=int)
    t.add_argument("--pretrain-steps", dest="pretrain_steps", type=int,
                   help="train encoder -> decoder this many steps without quantization, then set the "
                        "codebook by K-means on encoder outputs (codebook methods only)")
    add_training_flags(t)
    add_compile_flags(t)
    t.add_argument("--out", required=True, help="run folder (must be new unless --resume)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)


def _add_eval(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a run on its test split; writes eval.json and PNGs")
    e.add_argument("run_dir")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=cmd_eval)


def _add_codec(sub) -> None:
    """encode and decode: a run folder, what to read, -o and --device."""
    for name, helptext, source, nargs, output_help in (
        ("encode", "images (files or folders) -> a .npy of code maps", "images", "+", "codes file (.npy)"),
        ("decode", "a .npy of code maps -> PNG images", "codes", None, "folder for the PNGs"),
    ):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("run_dir")
        c.add_argument(source, nargs=nargs)
        c.add_argument("-o", "--output", required=True, help=output_help)
        c.add_argument("--device", default="auto")
        c.set_defaults(func=cmd_encode if name == "encode" else cmd_decode)


def _add_grid(sub) -> None:
    for name, helptext in (("compare", "train a method x seed grid and tabulate it"),
                           ("demo", "EdVAE vs dVAE on Fashion-MNIST, CPU-sized, one seed")):
        c = sub.add_parser(name, help=helptext)
        if name == "compare":
            c.add_argument("--methods", nargs="+", default=["edvae", "dvae"])
            c.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
            c.add_argument("--config")
            c.add_argument("--variant", nargs="+", action="append", metavar="LABEL METHOD [KEY=VALUE]",
                           help="a labelled method with its own settings, usable in --methods")
        add_training_flags(c, seed=False)
        c.add_argument("--width", type=int, help="model.width")
        add_compile_flags(c)
        c.add_argument("--out", default="runs/demo" if name == "demo" else "runs/compare")
        c.add_argument("--jobs", type=int, default=2, help="runs trained at once")
        c.add_argument("--threads", type=int, default=1, help="CPU threads per run")
        c.set_defaults(func=cmd_demo if name == "demo" else cmd_compare,
                       steps=1500 if name == "demo" else None)


def _add_bench(sub) -> None:
    b = sub.add_parser("bench", help="run a study file (studies/*.yaml): every run validated first, "
                                     "resumable, N at once, one progress line, tables and figures")
    b.add_argument("study", help="the study file")
    b.add_argument("--scale", default="paper", choices=SCALES,
                   help="paper: the protocol's steps, batch, width and kernel per data set; cpu-small: the "
                        "study's Fashion-MNIST CPU protocol (docs/results.md)")
    b.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key of every run (a swept key too: all take this value)")
    b.add_argument("--out", help="output folder (default runs/STUDY-SCALE)")
    b.add_argument("--jobs", type=_positive_int, default=2, help="runs at once (several may share a GPU)")
    b.add_argument("--threads", type=_positive_int, default=1, help="CPU threads per run")
    b.add_argument("--inception-weights", dest="inception_weights", metavar="FILE",
                   help="FID's Inception weights for generation studies (FD_edvae-classifier is always "
                        "measured)")
    b.add_argument("--only", action="append", metavar="PATTERN",
                   help="only the runs whose names match (shell pattern, e.g. 'fashion-mnist/edvae-*'; "
                        "repeatable): a study split over sessions or machines, into one --out")
    b.add_argument("--list", action="store_true",
                   help="print the validated run list (and where each run stands in --out) and exit")
    b.add_argument("--no-progress", action="store_true", help="no progress line")
    b.set_defaults(func=cmd_bench)


def _add_prior(sub) -> None:
    pr = sub.add_parser("prior", help="the learned prior over a run's code maps (PixelSNAIL)")
    prs = pr.add_subparsers(dest="prior_command", required=True)
    pt = prs.add_parser("train", help="encode the run's splits once (cached), fit PixelSNAIL, report "
                                      "test bits per code beside the uniform and unigram baselines")
    pt.add_argument("run_dir")
    pt.add_argument("--out", help="prior folder (new unless --resume); default RUN_DIR/prior")
    pt.add_argument("--preset", default="auto", help="auto (by map size), 8x8, 16x16, 32x32")
    add_training_flags(pt)  # --set: model.channels, model.blocks, train.lr, ... (docs/prior.md)
    pt.add_argument("--codes-cache", dest="codes_cache", help="folder for the cached code maps; "
                    "default the prior folder")
    pt.add_argument("--resume", action="store_true", help="continue the prior in --out exactly")
    pt.add_argument("--no-progress", action="store_true")
    pt.set_defaults(func=cmd_prior_train)


def _add_sample(sub) -> None:
    sa = sub.add_parser("sample", help="ancestral samples from a run's prior, decoded to PNGs")
    sa.add_argument("run_dir")
    sa.add_argument("-n", type=int, required=True, help="number of samples")
    sa.add_argument("--prior", help="prior folder; default RUN_DIR/prior")
    sa.add_argument("--out", help="output folder (new); default PRIOR/samples-n..-t..-k..-seed..")
    sa.add_argument("--temperature", type=float, default=1.0)
    sa.add_argument("--top-k", dest="top_k", type=int, default=0, help="0 = the full distribution")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--batch-size", dest="batch_size", type=_positive_int, default=64)
    sa.add_argument("--device", default="auto")
    sa.set_defaults(func=cmd_sample)


def _add_fid(sub) -> None:
    f = sub.add_parser("fid", help="FID (edvae's InceptionV3 of FID) or FD_edvae-classifier of samples "
                                   "or reconstructions against a data split or folder (docs/prior.md)")
    f.add_argument("--run", help="run folder: its dataset is the reference, its model reconstructs")
    f.add_argument("--samples", help="folder of generated images (e.g. SAMPLES/images)")
    f.add_argument("--reconstructions", action="store_true",
                   help="measure the run's reconstructions of the reference split instead of samples (rFID)")
    f.add_argument("--reference", help="folder of reference images instead of the run's split")
    f.add_argument("--split", choices=["train", "test"],
                   help="the run's split used as reference; default train for --samples (the paper's "
                        "Table 3), test for --reconstructions (rFID)")
    f.add_argument("--limit", type=int, help="use the first N reference images")
    f.add_argument("--features", default="inception", choices=["inception", "classifier"],
                   help="inception: FID, comparable with the paper; classifier: "
                        "FD_edvae-classifier, no downloaded weights, NOT comparable with FID")
    f.add_argument("--inception-weights", dest="inception_weights", metavar="FILE",
                   help="pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or "
                        "weights-inception-2015-12-05-6726825d.pth (torch-fidelity), checked by SHA-256; "
                        "default: either name in torch.hub's checkpoint folder. Never downloaded: get it "
                        "from github.com/mseitzer/pytorch-fid/releases/download/fid_weights/ (docs/prior.md)")
    f.add_argument("--classifier", help="classifier file (.safetensors); trained on the run's dataset "
                                        "and saved there if missing (default ~/.cache/edvae/fd-classifier)")
    f.add_argument("--classifier-steps", dest="classifier_steps", type=_positive_int, default=1500)
    f.add_argument("--batch-size", dest="batch_size", type=_positive_int, default=100)
    f.add_argument("--device", default="auto")
    f.add_argument("-o", "--output", help="also write the result to this JSON file")
    f.set_defaults(func=cmd_fid)


def _add_study(sub) -> None:
    st = sub.add_parser("study", help="self-contained studies (see docs/)")
    sts = st.add_subparsers(dest="study_command", required=True)
    sc = sts.add_parser("collapse", help="tokens and embeddings collapse of VQ on a synthetic Gaussian "
                                         "mixture: codebook sizes x widths x {random, K-means, pretrain} "
                                         "(docs/collapse-study.md)")
    sc.add_argument("--out", default="docs/results/collapse-study", help="folder for results and PNGs")
    sc.add_argument("--sizes", nargs="+", type=_positive_int, help="codebook sizes (default 16 .. 1024)")
    sc.add_argument("--widths", nargs="+", type=_positive_int, help="hidden widths (default 4 .. 64)")
    sc.add_argument("--seeds", nargs="+", type=int, help="default 0 1 2")
    sc.add_argument("--steps", type=_positive_int, help="Adam steps per run (default 1000)")
    sc.add_argument("--pretrain-steps", dest="pretrain_steps", type=int,
                    help="of --steps, without quantization in the pretrain arm (default 500)")
    sc.add_argument("--width", type=_positive_int, help="width of the codebook-size sweep (default 64)")
    sc.add_argument("--width-sweep-codebook", dest="width_sweep_codebook", type=_positive_int,
                    help="codebook size of the width sweep (default 256)")
    sc.add_argument("--components", type=_positive_int, help="Gaussians in the mixture (default 16)")
    sc.add_argument("--arms", nargs="+", help="random kmeans pretrain (default all three)")
    sc.add_argument("--threads", type=_positive_int, help="torch CPU threads (default 1)")
    sc.add_argument("--command-text", dest="command_text", help=argparse.SUPPRESS)
    sc.set_defaults(func=cmd_study_collapse)


def add_compile_flags(p: argparse.ArgumentParser) -> None:
    """--compile and --cuda-graph (docs/performance.md); absent, the config's values hold."""
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the training step (train.compile); the compile time is printed once "
                        "and not counted in the logged seconds")
    p.add_argument("--cuda-graph", dest="cuda_graph", action="store_true", default=None,
                   help="with --compile, on CUDA: replay the compiled step as CUDA graphs "
                        "(train.cuda_graph). This has never run on a GPU: untested")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edvae", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_eval, _add_codec, _add_grid, _add_bench, _add_prior,
                _add_sample, _add_fid, _add_study):
        add(sub)
    return p


def one_line(exc: Exception, limit: int = 500) -> str:
    """An error message on one line (a library's message may span several), at most `limit` long."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # what a report quotes as its command
    try:
        return args.func(args)
    except EdvaeError as exc:
        print(f"edvae: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # whoever read our output stopped reading (`edvae bench --list | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # 128 + SIGPIPE, what a shell reports for a command the pipe stopped


if __name__ == "__main__":  # python -m edvae.cli, as python -m edvae
    sys.exit(main())
