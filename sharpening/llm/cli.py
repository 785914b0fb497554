"""`sharpening llm train --config FILE [key=value ...]` and `sharpening llm eval ...`."""

from __future__ import annotations

import sys


def add_parser(subparsers) -> None:
    llm = subparsers.add_parser("llm", help="train and evaluate language models")
    sub = llm.add_subparsers(dest="llm_command", metavar="{train,eval,reproduce}")
    llm.set_defaults(func=lambda args: llm.print_help())

    train = sub.add_parser("train", help="RL-train a model with one regime of the objective",
                           description="Train with the settings of a YAML config; `key=value` overrides come last "
                                       "(e.g. lr=3e-6 regime.alpha=2). Writes out_dir/run_name/{config.yaml,"
                                       "metrics.jsonl,checkpoints/}.")
    train.add_argument("--config", help="YAML config file (see configs/)")
    train.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    train.add_argument("--accept-changes", action="store_true",
                       help="with --resume: accept a changed config beyond the fields that may change on resume "
                            "(steps, eval settings...; docs/run_folder.md); the change is recorded with its step")
    train.add_argument("--dry-run", action="store_true",
                       help="resolve the config and print the per-GPU batch, memory and time estimates and the "
                            "checks; loads no weights and needs no GPU")
    train.add_argument("--gpus", type=int, default=4, help="number of GPUs the dry run plans for (default 4)")
    train.add_argument("--gpu-memory", type=float, default=79.2, metavar="GIB",
                       help="memory per GPU for the dry run, in GiB as torch reports it (default 79.2: an H100 80GB)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    train.set_defaults(func=run_train)

    rep = sub.add_parser("reproduce", help="re-run a finished run from its recorded config and environment and "
                                            "compare it step by step",
                         description="Re-runs RUN_DIR's config (config.yaml) with its recorded thread counts in a "
                                     "temporary folder, compares every metric of every step and the final "
                                     "evaluation, and prints `bit-identical` or the first step and metric that "
                                     "differ, with what differs in the environment (docs/run_folder.md).")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (config.yaml, metrics.jsonl, ...)")
    rep.add_argument("--steps", type=int, default=None, help="check only the first N steps (default: all)")
    rep.add_argument("--threads", type=int, default=None,
                     help="torch threads to re-run with (default: the recorded count)")
    rep.set_defaults(func=run_reproduce)

    ev = sub.add_parser("eval", help="pass@k / maj@k of a model or checkpoint on math benchmarks")
    try:
        from sharpening.llm import evaluation

        evaluation.add_eval_arguments(ev)
        ev.set_defaults(func=evaluation.run_eval)
    except (ImportError, AttributeError) as err:  # the evaluation module is another engineer's
        ev.set_defaults(func=lambda args, err=err: sys.exit(f"sharpening llm eval is unavailable: {err}"))


def run_train(args) -> int:
    from sharpening.messages import first_line
    from sharpening.llm.config import load_config
    from sharpening.llm.runs import Interrupted
    from sharpening.llm.trainer import Trainer, TrainingDiverged

    overrides = (list(args.overrides) + (["resume=true"] if args.resume else [])
                 + (["accept_changes=true"] if args.accept_changes else []))
    try:
        cfg = load_config(args.config, overrides)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"sharpening llm train: {err}")
    if args.dry_run:
        from sharpening.llm.gpu_plan import dry_run

        try:
            print(dry_run(cfg, world_size=args.gpus, gpu_memory_gib=args.gpu_memory))
        except ValueError as err:
            sys.exit(f"sharpening llm train --dry-run: {err}")
        return 0
    try:  # the data, the run folder, the model, the checkpoints to resume: the user's to fix, in one line
        trainer = Trainer(cfg)
    except (ValueError, OSError) as err:
        sys.exit(f"sharpening llm train: {first_line(err)}")
    except KeyboardInterrupt:
        sys.exit(f"sharpening llm train: interrupted while starting; nothing was trained in {cfg.run_dir}")
    try:
        trainer.train()
    except TrainingDiverged as err:
        print(f"sharpening llm train: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(f"sharpening llm train: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"sharpening llm train: interrupted at step {trainer.step + 1}, abandoned; {resume_hint(cfg)}",
              file=sys.stderr)
        return 130
    except OSError as err:  # a full disk (runs.DiskFull), a folder gone read-only...
        print(f"sharpening llm train: {first_line(err)}", file=sys.stderr)
        return 1
    print(f"run folder: {cfg.run_dir}")
    return 0


def resume_hint(cfg) -> str:
    """Where an interrupted run stands and the command that continues it."""
    from sharpening.llm.checkpoint import latest_checkpoint
    from sharpening.llm.runs import RunFolder

    latest = latest_checkpoint(cfg.run_dir)
    saved = f"the newest checkpoint is {latest.name}" if latest is not None else "no checkpoint yet"
    return f"{saved}; continue with: sharpening llm train --config {RunFolder(cfg.run_dir).config_path} --resume"


def run_reproduce(args) -> int:
    from sharpening.messages import first_line
    from sharpening.llm.reproduce import reproduce
    from sharpening.llm.runs import Interrupted

    try:
        report = reproduce(args.run_dir, steps=args.steps, threads=args.threads)
    except (ValueError, OSError) as err:
        sys.exit(f"sharpening llm reproduce: {first_line(err)}")
    except (KeyboardInterrupt, Interrupted):  # the re-run's temp folder goes with it: nothing to resume
        sys.exit("sharpening llm reproduce: interrupted; nothing compared")
    print(report.text)
    return 0 if report.identical else 1
