#!/usr/bin/env bash
# The multi-class 3D study (docs/multiclass_3d.md): the paper's objective and the multi-class remedies of
# uaseg/losses/dynamics.py against lambda = 0, each arm a multirun over seeds, then one report with
# learning curves.
#
#   bash scripts/multiclass_study.sh demo3d outputs/study/multiclass_demo3d
#   SEEDS=1 ARMS="base paper steer" bash scripts/multiclass_study.sh demo3d_abdomen outputs/study/abd trainer.max_epochs=60
#
# The default protocol is CPU-sized (unet_small, 48^3 volumes, 32^3 patches, lr 1e-3, validation every
# 2 epochs, at most 80 epochs, early stop when validation Dice has not risen for 10 validations).
# Extra arguments are Hydra overrides for every run (not the protocol keys above). EPOCHS (default 80) caps
# the epochs; JOBS (default 2) runs that many jobs at once, each on
# one thread. A finished arm (.done) is skipped; an unfinished one is an error (never average fewer seeds
# silently).
set -euo pipefail
dataset=$1
out=$2
shift 2
seeds=${SEEDS:-1,2,3}
jobs=${JOBS:-2}
protocol=(dataset="$dataset" model=unet_small dataset.image_size=48 'dataset.patch_size=[32,32,32]'
          dataset.samples_per_image=4 dataset.batch_size=4 model.optimizer.lr=1e-3
          trainer.max_epochs="${EPOCHS:-80}" trainer.check_val_every_n_epoch=2 callbacks=early_stop
          callbacks.early_stopping.patience=10 callbacks.progress_bar=null)
common=(seed="$seeds" hydra/launcher=joblib hydra.launcher.n_jobs="$jobs" "${protocol[@]}" "$@")
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

arm() {  # arm <name> <overrides...>: one multirun folder
    local name=$1
    shift
    [ -z "${ARMS:-}" ] || [[ " $ARMS " == *" $name "* ]] || return 0
    if [ -e "$out/$name/.done" ]; then echo "skip $name (done)"; return; fi
    if [ -e "$out/$name" ]; then
        echo "multiclass_study: $out/$name holds an unfinished arm (killed?); remove it to rerun it" >&2
        exit 1
    fi
    python train.py -m hydra.sweep.dir="$out/$name" "${common[@]}" "$@"
    touch "$out/$name/.done"
}

arm base loss.lambda=0
arm paper loss.lambda=2
arm warmup loss.lambda=2 loss.warmup_epochs=20
arm balance loss.lambda=2 loss.balance=0.5
arm steer loss.lambda=2 loss.steer=true
arm steer_balance loss.lambda=2 loss.steer=true loss.balance=1
uaseg report "$out" --force
