"""``uaseg`` console script: a small argparse dispatcher, one subcommand per module.

Each subcommand registers its arguments in ``add_<name>`` and runs in ``run_<name>``, so a new one
(predict, check-dataset, ...) is two functions and one line in ``COMMANDS``.
"""
from __future__ import annotations

import argparse
import sys


def add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="a multirun folder (searched recursively for summary.json)")
    p.add_argument("--out", default=None, help="write the report here (default: the folder)")
    p.add_argument("--force", action="store_true",
                   help="overwrite report.md/report.csv/figures/ instead of writing report-N.md")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")


def run_report(args) -> int:
    """Exit 0 when at least one summary was found, 1 when none (nothing written then)."""
    from .report import build_report

    rep = build_report(args.folder, out_dir=args.out, force=args.force,
                       make_figures=not args.no_figures)
    print(rep.markdown)
    if rep.n_runs == 0:
        print(f"no summary.json found under {args.folder}", file=sys.stderr)
        return 1
    print(f"wrote {rep.md_path}, {rep.csv_path}"
          + (f" and {len(rep.figures)} figures" if rep.figures else ""))
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
              f"(Dice {100 * summary['dice_full']['mean']:.2f})")
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
    p.add_argument("--split", default="test", help="test (default: the cases a run with these settings tests), "
                                                   "val, train or all")
    p.add_argument("--cache-dir", default=None, help="the demo cache (default: $UASEG_CACHE, else ./.cache as train.py)")
    p.add_argument("--force", action="store_true", help="write into a folder that holds other files (default: refused "
                                                        "unless it holds an earlier export of the same cases)")


def run_export_demo(args) -> int:
    """Exit 0 when the files were written, 2 on a user error."""
    from .data.datasets.export_demo import export_demo
    from .errors import UserError
    from .io import WriteError

    try:
        files = export_demo(args.folder, args.dataset, args.split, args.overrides, args.cache_dir, force=args.force)
    except (UserError, WriteError) as e:
        print(f"uaseg export-demo: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} {args.dataset} {args.split} case(s) to {args.folder} "
          f"(ground truth in {args.folder.rstrip('/')}/labels/), e.g. {files[0].name if files else '-'}; segment them with:\n"
          f"  python predict.py ckpt=<run folder> input={args.folder} output=<folder> coverage=0.9")
    return 0


COMMANDS = {
    "report": (add_report, run_report, "Table 1, paired tests and figures from a (partial) multirun"),
    "ensemble": (add_ensemble, run_ensemble, "deep ensembles of the runs of a multirun that differ only in seed"),
    "calibrate": (add_calibrate, run_calibrate, "calibrate a run's selected checkpoint for a risk level alpha (Dice, per structure, tail, FNR), with a guarantee"),
    "export-demo": (add_export_demo, run_export_demo, "write the built-in dataset's test cases as PNG / NIfTI files for predict.py"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uaseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add, _, help_) in COMMANDS.items():
        add(sub.add_parser(name, help=help_, description=help_))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command][1](args)


if __name__ == "__main__":
    sys.exit(main())
