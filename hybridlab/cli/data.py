"""`hybridlab data build` (the demo corpus), `hybridlab data ship` (the demo assets), `hybridlab train` and
`hybridlab snapshot` (a committable training snapshot to resume from on another machine)."""

from __future__ import annotations

import argparse

from hybridlab.cli.options import add_options, settings_from_args
from hybridlab.core.errors import UserError
from hybridlab.training.pretrain import TrainSettings


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="build the demo corpus and tokenizer")
    data_sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data_sub.required = True
    build = data_sub.add_parser("build", help="Debian docs -> BPE tokenizer -> uint16 token arrays")
    build.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    build.add_argument("--debs", default=None, help="folder holding (or receiving) the .deb files; default: temp")
    build.add_argument("--vocab-size", type=int, default=8192, help="vocabulary of a newly trained tokenizer")
    build.add_argument(
        "--sources",
        default=None,
        help="comma-separated packages to build from, a subset of the declared sources (default: all of them)",
    )
    build.add_argument(
        "--tokenizer",
        default=None,
        help="reuse this tokenizer unchanged (a tokenizer.json or a folder holding one, e.g. assets/demo/teacher) "
        "instead of training one; --vocab-size is then ignored",
    )
    build.add_argument("--val-fraction", type=float, default=0.02)
    build.set_defaults(func=_build)
    ship = data_sub.add_parser("ship", help="copy a finished teacher run into assets/demo with its model card")
    ship.add_argument("--run", required=True, help="output folder of `hybridlab train`")
    ship.add_argument("--data", required=True, help="corpus folder of `hybridlab data build`")
    ship.add_argument("--dest", default=None, help="default: assets/demo")
    ship.add_argument("--note", default="", help="text added to the model card's training section")
    ship.set_defaults(func=_ship)

    train = subparsers.add_parser("train", help="train a language model from scratch on token arrays")
    train.add_argument("--data", required=True, help="corpus folder from `hybridlab data build`")
    train.add_argument("--out", required=True, help="output folder: checkpoints, metrics.jsonl, final model")
    add_options(train, TrainSettings)
    train.add_argument("--config", default=None, help="JSON file with config overrides for the preset")
    train.add_argument(
        "--resume", action="store_true", help="continue from the latest full checkpoint in --out (same machine)"
    )
    train.add_argument(
        "--resume-weights",
        default=None,
        metavar="SNAPSHOT",
        help="continue from a training snapshot (`hybridlab snapshot`) in a new --out: its weights, fresh AdamW "
        "moments, the same step, schedule and batches",
    )
    train.add_argument(
        "--allow-new-data",
        action="store_true",
        help="resume although --data's train.npy differs from the recorded run's (noted in the run record)",
    )
    train.set_defaults(func=_train)

    snapshot = subparsers.add_parser(
        "snapshot", help="export a training run's latest checkpoint as a committable snapshot (weights + record)"
    )
    snapshot.add_argument("--run", required=True, help="output folder of `hybridlab train`")
    snapshot.add_argument("--out", required=True, help="snapshot folder, replaced atomically (e.g. in the repo)")
    snapshot.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="stored weights")
    snapshot.set_defaults(func=_snapshot)


def _build(args: argparse.Namespace) -> int:
    from hybridlab.data.build import build_corpus
    from hybridlab.data.sources import select_sources

    stats = build_corpus(
        args.out,
        debs_dir=args.debs,
        vocab_size=args.vocab_size,
        val_fraction=args.val_fraction,
        tokenizer=args.tokenizer,
        sources=select_sources(args.sources),
    )
    print(
        f"train tokens {stats['tokens']['train']:,}  val tokens {stats['tokens']['val']:,}  "
        f"val unigram entropy {stats['val_unigram_entropy_nats']:.4f} nats"
    )
    return 0


def _ship(args: argparse.Namespace) -> int:
    from hybridlab.demo.ship import ship_demo

    facts = ship_demo(args.run, args.data, args.dest, notes=args.note)
    print(
        f"val loss {facts['val_loss']:.4f} (unigram entropy {facts['val_unigram_entropy']:.4f})  "
        f"subset {facts['subset_val_loss']:.4f}"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    import json

    from hybridlab.training.pretrain import train_language_model

    settings = settings_from_args(TrainSettings, args)  # a bad value is one line naming its option
    try:
        overrides = json.loads(open(args.config).read()) if args.config else {}
    except (OSError, ValueError) as err:
        raise UserError(
            f"--config {args.config} is not a readable JSON file ({err}); give a JSON object of config values"
        ) from None
    result = train_language_model(
        args.data,
        args.out,
        settings,
        config_overrides=overrides,
        resume=args.resume,
        resume_weights=args.resume_weights,
        allow_new_data=args.allow_new_data,
    )
    print(f"val loss {result['val_loss']:.4f}  perplexity {result['val_perplexity']:.2f}  -> {args.out}/model")
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    from hybridlab.training.snapshot import export_snapshot

    state = export_snapshot(args.run, args.out, dtype=args.dtype)
    print(f"snapshot at step {state['step']:,} ({state['tokens']:,} tokens, {state['dtype']}) -> {args.out}")
    return 0
