"""Console table shaped like a row of the paper's Table 1 (values in percent)."""
from __future__ import annotations

import io


def _rows(result: dict, name: str) -> list[list[str]]:
    rows = []
    cov = {"1.00": {"dice_mean": result["dice_full"]["mean"],
                    "dice_std": result["dice_full"]["std"],
                    "dice_p5": result["dice_full"]["p5"], "achieved_coverage": 1.0},
           **result["at_coverage"]}
    first = True
    for key, v in cov.items():
        rows.append([name if first else "", f"{result['aurc_dice']:.3f}" if first else "",
                     key, f"{v['achieved_coverage']:.4f}",
                     f"{100 * v['dice_mean']:.2f} ± {100 * v['dice_std']:.2f}",
                     f"{100 * v['dice_p5']:.2f}"])
        first = False
    return rows


def format_table(result: dict, title: str = "Selective segmentation") -> str:
    """AURC (%), then per coverage: achieved coverage, Dice mean ± std (%), Dice@5PCTL (%)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("set", "AURC (%)", "coverage", "achieved", "Dice (%)", "Dice@5PCTL (%)"):
        table.add_column(col, justify="right")
    groups = result.get("groups") or {}
    for row in _rows(result, "all"):
        table.add_row(*row)
    for g, res in groups.items():
        for row in _rows(res, g):
            table.add_row(*row)
    vox = (f"voxel AURC {result['aurc']:.4f}  E-AURC {result['eaurc']:.4f}  "
           f"AUGRC {result['augrc']:.4f}  |  case AURC ({result['case_level']['aggregation']}) "
           f"{result['case_level']['aurc']:.2f} %  95% CI [{result['case_level']['ci95'][0]:.2f}, "
           f"{result['case_level']['ci95'][1]:.2f}]")
    buf = io.StringIO()
    console = Console(file=buf, width=110, force_terminal=False, color_system=None)
    console.print(table)
    console.print(vox)
    return buf.getvalue()
