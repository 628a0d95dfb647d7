"""``qfair groups train|estimate``: a linear group classifier on a frozen face model, and the group
composition of any image set (e.g. a synthetic calibration folder)."""
from __future__ import annotations

import argparse


TRAIN_ONLY = ("epochs", "lr", "holdout")  # settings of `groups train` that `groups estimate` does not take


def register(sub: argparse._SubParsersAction) -> None:
    from ..config import add_config_arguments
    from ..data.config import GroupsConfig

    p = sub.add_parser("groups", help="train a group classifier / estimate the group composition of images",
                       description="Group classifier on a frozen face model. `qfair groups train --model r50.pth "
                       "--data builtin --head groups.pt` trains it and reports held-out accuracy; `qfair groups "
                       "estimate --model r50.pth --head groups.pt --data synth/` prints the group composition.")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    for name, help_, skip in (
            ("train", "Train the linear group head and report its held-out accuracy.", ()),
            ("estimate", "Print the group composition of an image folder, .rec or builtin set.",
             TRAIN_ONLY)):
        a = actions.add_parser(name, help=help_[0].lower() + help_[1:-1], description=help_)
        a.add_argument("--config", metavar="FILE", help="YAML file whose keys are the settings below")
        add_config_arguments(a, GroupsConfig, skip=skip)
        a.set_defaults(func=run, action=name)
    p.set_defaults(func=lambda args: p.error("choose an ACTION: train or estimate (qfair groups ACTION --help)"))


def run(args: argparse.Namespace) -> int:
    from ..config import load_config, overrides_from_args
    from ..data.config import GroupsConfig
    from ..data.groups import GroupClassifier, estimate_groups, train_group_classifier
    from ..utils.errors import ConfigError
    from ._console import console, table
    from .synth import load_face_model

    cfg = load_config(GroupsConfig, args.config, overrides_from_args(args, GroupsConfig))
    if not cfg.model:
        raise ConfigError("groups: --model CHECKPOINT (the frozen face model) is required")
    if not cfg.head:
        raise ConfigError("groups: --head FILE is required (train writes it, estimate reads it; run "
                          "`qfair groups train ... --head groups.pt` first)")
    if args.action == "train":
        from ..utils.io import output_file

        output_file(cfg.head)  # a bad --head fails now, not after the training
    model = load_face_model(cfg.model, cfg.arch, cfg.allow_random)
    if args.action == "train":
        clf = train_group_classifier(model, cfg.data, cfg.n, holdout=cfg.holdout, epochs=cfg.epochs, lr=cfg.lr,
                                     batch_size=cfg.batch_size, seed=cfg.seed)
        clf.save(cfg.head)
        counts = clf.meta.get("heldout_images_per_group", {})
        rows = [[g, f"{100 * clf.heldout_per_group[g]:.1f}" if g in clf.heldout_per_group
                 else "- (no held-out identity; raise --n)", str(counts.get(g, 0))] for g in clf.group_names]
        rows.append(["all", f"{100 * clf.heldout_accuracy:.1f}", str(sum(counts.values()))])
        console().print(table(f"group classifier on {cfg.model} (held-out identities, {cfg.data})",
                              ["group", "accuracy %", "held-out images"], rows))
        console().print(f"saved to {cfg.head}")
        return 0
    from pathlib import Path

    if not Path(cfg.head).is_file():
        raise ConfigError(f"groups estimate: {cfg.head} not found; train one with `qfair groups train --head "
                          f"{cfg.head}`")
    clf = GroupClassifier.load(cfg.head)
    comp, probs = estimate_groups(model, clf, cfg.data, cfg.n, batch_size=cfg.batch_size, seed=cfg.seed)
    rows = [[g, f"{100 * c['share']:.1f}", f"{100 * c['mean_probability']:.1f}"] for g, c in comp.items()]
    console().print(table(f"group composition of {cfg.data} ({len(probs)} images; classifier held-out accuracy "
                          f"{100 * clf.heldout_accuracy:.1f} %)", ["group", "share %", "mean probability %"], rows))
    return 0
