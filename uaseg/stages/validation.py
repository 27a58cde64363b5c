"""The run's validation cases as the stages after training read them: whole images (trainer batch
limits do not apply), segmented as prediction segments them (``module.segment``, float32), annotated
voxels only."""

from __future__ import annotations

import torch

from uaseg.selective.case_stats import CaseStats, make_case_stats


def validation_batches(module, datamodule, device: str | torch.device = "cpu"):
    """Every validation case (whole images; trainer batch limits do not apply): ``(image on device,
    label (B, *spatial), case ids)``, with ``module`` in inference mode on ``device``."""
    from uaseg.data.base import as_tensor

    datamodule.setup()
    module.eval().to(device)
    for batch in datamodule.val_dataloader():
        yield as_tensor(batch["image"]).to(device), as_tensor(batch["label"])[:, 0].long(), list(batch["case_id"])


def validation_stats(module, datamodule, device: str | torch.device = "cpu") -> list[CaseStats]:
    """Every validation case, segmented as prediction segments it, reduced to its exact stats (its
    annotated voxels only, with an ignore label)."""
    stats, ignore = [], getattr(module, "ignore_label", None)
    for image, label, case_ids in validation_batches(module, datamodule, device):
        u, pred, _ = module.segment(image)
        for i, cid in enumerate(case_ids):
            if ignore is not None and not bool((label[i] != ignore).any()):
                continue  # a case without annotated voxels (nnU-Net's ignore label everywhere) has no Dice
            stats.append(make_case_stats(u[i], pred[i], label[i], num_classes=module.num_classes,
                                         case_id=cid, group="val", aggregations=(), ignore_index=ignore))
    return stats


def validation_curves(module, datamodule, scores, device: str | torch.device = "cpu") -> dict:
    """score -> the validation risk-coverage ThresholdGrid of each one-pass score (as prediction
    segments: :meth:`SelectiveSegModule.segment`), so ``predict.py score=<name> coverage=c`` can turn
    ``c`` into that score's threshold; empty without validation cases. One network pass per case serves
    every score (with ``tcp``, the pass of network + head); annotated voxels only, as
    :func:`validation_stats`."""
    from uaseg.selective import SelectiveSegmentationMetric
    from uaseg.data.base import as_tensor
    from uaseg.uncertainty.scores import deterministic_scores

    datamodule.setup()
    if not scores or not len(datamodule.splits["val"]):
        return {}
    ignore = getattr(module, "ignore_label", None)
    metrics = {s: SelectiveSegmentationMetric(num_classes=module.num_classes, bootstrap=0, ignore_index=ignore)
               for s in scores}
    for image, label, case_ids in validation_batches(module, datamodule, device):
        if "tcp" in metrics:
            logits, u_tcp = module._tcp_pass(image)
        else:
            logits = module.inferer(image, module.net)
        maps = deterministic_scores(as_tensor(logits), None)
        if "tcp" in metrics:
            maps["tcp"] = (u_tcp, maps["max_softmax"][1])
        for s, metric in metrics.items():
            if s not in maps:
                module.segment(image, score=s)  # raises the one-line error naming the unknown score
            u, pred = maps[s]
            for i, cid in enumerate(case_ids):
                if ignore is not None and not bool((label[i] != ignore).any()):
                    continue  # a case without annotated voxels has no Dice
                metric.update(u[i].cpu(), pred[i].cpu(), label[i], case_id=cid, group="val")
    return {s: m.compute().threshold_grid for s, m in metrics.items()}
