"""``uaseg`` console script: a small argparse dispatcher, one subcommand per module.

Each subcommand registers its arguments in ``add_<name>`` and runs in ``run_<name>``, so a new one
(predict, check-dataset, ...) is two functions and one line in ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import sys

from .predict import add_predict, run_predict  # argparse only; torch is imported when it runs

#: ``uaseg --help``: for users (what each command is for, examples), not for developers
DESCRIPTION = """uaseg: segment medical images and refer the voxels the network is unsure about.

Training is `python train.py` (README 'Quick start'); these commands work with its run folders."""
EPILOG = """examples:
  uaseg predict -m outputs/train/runs/<run> -i scans/ -o pred/ --coverage 0.9
  uaseg export-demo outputs/demo_input              # the quick-start run's test tiles as PNG
  uaseg report outputs/train/multiruns/<date_time>  # Table 1, paired tests and figures of a sweep
  uaseg calibrate outputs/train/runs/<run> alpha=0.05
  uaseg <command> --help                            # a command's options"""


def add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a multirun folder (searched recursively for summary.json)")
    p.add_argument("--out", default=None, help="write the report here (default: the folder)")
    p.add_argument("--force", action="store_true",
                   help="overwrite report.md/report.csv/figures/ instead of writing report-N.md")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")


def run_report(args) -> int:
    """Exit 0 when at least one summary was found, 1 when none (nothing written then)."""
    from .report import build_report

    from .report.summary import console_summary

    rep = build_report(args.folder, out_dir=args.out, force=args.force,
                       make_figures=not args.no_figures)
    print(console_summary(rep, args.folder))  # a few lines; the whole report is report.md
    if rep.n_runs == 0:
        print(f"no summary.json found under {args.folder}", file=sys.stderr)
        return 1
    return 0


def add_ensemble(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a multirun folder; runs that differ only in seed become ensembles")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--force", action="store_true", help="rebuild ensemble folders that already exist")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load checkpoints that name classes uaseg does not configure (only files you trust)")


def run_ensemble(args) -> int:
    """One ensemble run folder per group of seeds under <folder>/ensembles/; exit 1 when none."""
    import shutil
    from pathlib import Path

    from .errors import UserError
    from .inference.ensemble import write_ensemble
    from .report.collect import collect
    from .report.grouping import seed_groups

    root = Path(args.folder)
    try:
        groups = seed_groups(collect(root)[0])
    except UserError as e:
        print(f"uaseg ensemble: error: {e}", file=sys.stderr)
        return 2
    if not groups:
        print(f"no group of runs that differ only in seed under {root}", file=sys.stderr)
        return 1
    for i, (label, members) in enumerate(groups, 1):
        first = members[0].identity
        folder = root / "ensembles" / f"{i}_lambda={first.get('lambda')}_fold={first.get('fold')}"
        if folder.exists() and args.force:
            shutil.rmtree(folder)
        try:
            summary = write_ensemble(folder, [(r.path, r.summary) for r in members], members[0].overrides,
                                     device=args.device, trust_checkpoint=args.trust_checkpoint)
        except (UserError, FileExistsError) as e:
            print(f"uaseg ensemble: error: {e}", file=sys.stderr)
            return 2
        print(f"{folder} ({label}): {len(members)} members, AURC {summary['aurc_dice']:.3f} % "
              f"(Dice {100 * summary['dice_full']['mean']:.2f} %)")
    return 0


CALIBRATE_KEYS = ("alpha", "risk", "method", "delta", "pvalue", "unit", "overwrite", "device", "trust_checkpoint")


def add_calibrate(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder (its selected checkpoint: the one it tested, per summary.json, else its "
                               "single checkpoints/best-*.ckpt) or a checkpoint file")
    p.add_argument("options", nargs="*", metavar="key=value",
                   help="alpha=0.05 or alpha=[0.02,0.05] (required), risk=dice|structure|tail@0.15|fnr or a list "
                        "(dice), method=crc|ltt|[crc,ltt] (crc), delta=0.1 (ltt), pvalue=hb|wsr|binom (ltt; hb), "
                        "unit=patient|case (patient: when the dataset names patients), overwrite=true (replace an existing calibration), device=cpu|cuda, "
                        "trust_checkpoint=true (a checkpoint naming classes uaseg does not configure)")


def run_calibrate(args) -> int:
    """Exit 0 when the checkpoint was calibrated, 2 on a user error (one line, no traceback)."""
    from omegaconf import OmegaConf

    from .config.check import check_config
    from .errors import UserError
    from .inference.files import find_best_checkpoint
    from .selective.risk_settings import RiskControlSettings
    from .stages.risk_calibration import calibrate_checkpoint
    from .selective.risk_control import Calibration, alpha_key

    try:
        bad = [o for o in args.options if "=" not in o or o.split("=", 1)[0] not in CALIBRATE_KEYS]
        if bad:
            raise UserError(f"unknown option(s) {bad}; use key=value with keys {list(CALIBRATE_KEYS)}")
        opts = OmegaConf.to_container(OmegaConf.from_dotlist(args.options))
        settings = RiskControlSettings.from_config(
            {"alpha": opts.get("alpha"), "method": opts.get("method", "crc"), "delta": opts.get("delta", 0.1),
             "risk": opts.get("risk", "dice"), "pvalue": opts.get("pvalue", "hb"), "unit": opts.get("unit", "patient")},
            where="uaseg calibrate")
        if settings is None:
            raise UserError("uaseg calibrate needs alpha=<risk level in (0, 1)> (or a list, alpha=[0.02,0.05])")
        check_config({k: opts[k] for k in ("overwrite", "trust_checkpoint") if k in opts})  # true or false
        ckpt = find_best_checkpoint(args.run)
        record, changes = calibrate_checkpoint(ckpt, settings, device=opts.get("device", "cpu"),
                                               overwrite=bool(opts.get("overwrite", False)),
                                               trust_checkpoint=opts.get("trust_checkpoint", False))
    except (UserError, FileNotFoundError) as e:
        print(f"uaseg calibrate: error: {e}", file=sys.stderr)
        return 2
    print(f"{ckpt}: calibrated on {record['n_calibration']} validation cases; everything else in the file kept")
    for c in changes:
        print(f"  {c}")
    for k, m, a in settings.triples():
        cal = Calibration.from_dict(record["calibrations"][m][alpha_key(a, k)])
        print(f"  {cal.statement}")
        if cal.warning:
            print(f"  warning: {cal.warning}")
    print("  (the run's summary.json is unchanged: its test report was written before this calibration)")
    return 0


def add_export_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="where to write the image files (labels go to <folder>/labels/)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dataset keys as in training, e.g. num_cases=120 num_folds=2 (same values -> same cases)")
    p.add_argument("--dataset", default="demo2d", help="demo2d (PNG tiles, default) or demo3d (NIfTI volumes)")
    p.add_argument("--split", default=None, help="test (default: the cases a run with these settings tests), "
                                                 "val, train or all")
    p.add_argument("--layout", default="files", choices=("files", "nnunet"),
                   help="files (default): the images in <folder>, labels in <folder>/labels/; nnunet: an nnU-Net "
                        "raw dataset folder (dataset.json, imagesTr/labelsTr: train and val cases, imagesTs/labelsTs: "
                        "test cases) for dataset=nnunet dataset.root=<folder> and scripts/check_dataset.py")
    p.add_argument("--cache-dir", default=None, help="the demo cache (default: $UASEG_CACHE, else ./.cache as train.py)")
    p.add_argument("--force", action="store_true", help="write into a folder that holds other files (default: refused "
                                                        "unless it holds an earlier export of the same cases)")
    p.add_argument("--shift", default=None, metavar="KIND:SEVERITY",
                   help="write the cases corrupted as the shift testbed corrupts them, e.g. noise:3 (docs/shift.md)")
    p.add_argument("--shift-seed", type=int, default=0, help="eval.shift.seed of the run to match (default 0)")


def run_export_demo(args) -> int:
    """Exit 0 when the files were written, 2 on a user error."""
    from .data.datasets.export_demo import export_demo
    from .errors import UserError
    from .io import WriteError

    try:
        if args.layout == "nnunet":
            return _export_nnunet(args)
        args.split = args.split or "test"
        files = export_demo(args.folder, args.dataset, args.split, args.overrides, args.cache_dir, force=args.force,
                            shift=args.shift, shift_seed=args.shift_seed)
    except (UserError, WriteError) as e:
        print(f"uaseg export-demo: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} {args.dataset} {args.split} case(s) to {args.folder} "
          f"(ground truth in {args.folder.rstrip('/')}/labels/), e.g. {files[0].name if files else '-'}; segment them with:\n"
          f"  python predict.py ckpt=<run folder> input={args.folder} output=<folder> coverage=0.9")
    return 0


def _export_nnunet(args) -> int:
    from .data.datasets.export_nnunet import export_nnunet
    from .errors import ConfigError

    if args.shift is not None:
        raise ConfigError("export-demo --shift writes corrupted test inputs for predict (--layout files); an nnU-Net "
                          "layout is for training, where the testbed corrupts the test split itself (eval.shift)")
    if args.split is not None:
        raise ConfigError("export-demo --layout nnunet writes every split (train and val to imagesTr, test to "
                          "imagesTs); leave out --split")
    files = export_nnunet(args.folder, args.dataset, args.overrides, args.cache_dir, force=args.force)
    ts = sum(f.parent.name == "imagesTs" for f in files)
    print(f"wrote an nnU-Net raw dataset of {len(files)} {args.dataset} cases to {args.folder} "
          f"({len(files) - ts} in imagesTr/labelsTr, {ts} in imagesTs/labelsTs); try:\n"
          f"  python scripts/check_dataset.py --dataset nnunet --root {args.folder}\n"
          f"  python train.py dataset=nnunet dataset.root={args.folder}")
    return 0


COMMANDS = {
    "predict": (add_predict, run_predict,
                "segment new images with a run's checkpoint; refer uncertain voxels (same as predict.py)"),
    "export-demo": (add_export_demo, run_export_demo,
                    "write the built-in data's test cases as files (PNG, NIfTI or nnU-Net layout) to try predict"),
    "report": (add_report, run_report, "compare the runs of a sweep: Table 1, paired tests, figures (report.md)"),
    "calibrate": (add_calibrate, run_calibrate,
                  "fit a referral threshold with a guarantee: Dice risk <= alpha on new cases"),
    "ensemble": (add_ensemble, run_ensemble, "combine the runs of a sweep that differ only in seed into ensembles"),
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="uaseg", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"uaseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="<command>")
    for name, (add, _, help_) in COMMANDS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and all("=" in e for e in extra):
        args.overrides += extra  # key=value after an option (`export-demo OUT --dataset demo3d num_cases=12`)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return COMMANDS[args.command][1](args)


if __name__ == "__main__":
    sys.exit(main())
