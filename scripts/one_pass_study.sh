#!/usr/bin/env bash
# The one-pass objective study behind README "Training objectives beyond the paper": each loss variant
# (3 seeds, the paper's lambda = 2) against lambda = 0 (one pass and flip TTA), the paper's objective
# and 3-seed ensembles, in one multirun folder per arm, then one report over all of them.
#
#   bash scripts/one_pass_study.sh demo2d outputs/study/demo2d
#   ARMS="base pairing_case dice_weights entropy" bash scripts/one_pass_study.sh demo3d outputs/study/demo3d \
#        loss.consistency_view=noise model=unet_small dataset.image_size=64 'dataset.patch_size=[48,48,48]' \
#        model.optimizer.lr=1e-3 trainer.max_epochs=20
#
# Extra arguments are Hydra overrides applied to every run (the demo3d line is the CPU-sized protocol
# behind the README's 3D table: at the default 6 epochs and lr 2e-4 the 3D network is still near Dice 0.2).
# ARMS (optional) names the arms to run; EVAL_SCORES (optional, default max_softmax,tta) the test-time scores of
# every run (the one-pass rivals of docs/methods.md: EVAL_SCORES=max_softmax,entropy,margin,doctor,max_logit,energy,tcp,tta
# with the override confidence_head=tcp); SEEDS (optional, default 1,2,3) the seeds of every arm
# (`SEEDS=1,2` with tiny overrides is the test suite's smoke run). A finished arm (marked .done) is skipped; an unfinished one
# (a killed multirun) is an error, so a report never silently averages fewer seeds.
set -euo pipefail
dataset=$1
out=$2
shift 2
common=(dataset="$dataset" seed="${SEEDS:-1,2,3}" callbacks.progress_bar=null "eval.scores=[${EVAL_SCORES:-max_softmax,tta}]" "$@")

arm() {  # arm <name> <overrides...>: one multirun folder
    local name=$1
    shift
    [ -z "${ARMS:-}" ] || [[ " $ARMS " == *" $name "* ]] || return 0
    if [ -e "$out/$name/.done" ]; then echo "skip $name (done)"; return; fi
    if [ -e "$out/$name" ]; then
        echo "one_pass_study: $out/$name holds an unfinished arm (killed?); remove it to rerun it" >&2
        exit 1
    fi
    python train.py -m hydra.sweep.dir="$out/$name" "${common[@]}" "$@"
    touch "$out/$name/.done"
}

arm base loss.lambda=0,2
arm pairing_case loss.pairing=case
arm pairing_class loss.pairing=class
arm hinge_squared loss.hinge_power=2
arm dice_weights loss.wrong_weight=dice
arm consistency loss.consistency=1
arm entropy loss.score=entropy
arm margin loss.score=margin
[ -d "$out/base/ensembles" ] || uaseg ensemble "$out/base"
uaseg report "$out" --force
