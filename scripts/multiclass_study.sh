#!/usr/bin/env bash
# The multi-class study behind docs/multiclass_3d.md: the paper's objective and the remedies of
# uaseg/losses/dynamics.py against lambda = 0 on both built-in multi-class 3D datasets (and the binary 2D
# check), each arm a multirun over seeds, then one report with learning curves over everything.
#
#   bash scripts/multiclass_study.sh                       # all of it into outputs/study/multiclass
#   bash scripts/multiclass_study.sh outputs/my_study trainer.max_epochs=120   # another folder, longer
#   DATASETS=demo3d ARMS="base steer_balance" SEEDS=1 bash scripts/multiclass_study.sh
#   DATASETS=demo3d_mri bash scripts/multiclass_study.sh outputs/study/mri   # issue 27: 250 epochs, 3 seeds x 2 folds
#   DATASETS=demo3d_mri EPOCHS=80 SEEDS=1,2 FOLDS=0 bash scripts/multiclass_study.sh outputs/study/mri_pilot
#
# Protocol (CPU-sized; docs/multiclass_3d.md gives the wall times): 3D -- unet_small, 48^3 volumes
# (demo3d_abdomen: 48x48x24 with thick slices), 32^3 / 32x32x16 patches, 4 patches per step, Adam lr 1e-3,
# validation every 2 epochs, EPOCHS (default 60) at most, early stop after 10 validations without a rise
# of validation Dice; 2D -- demo2d at its defaults (6 epochs). Extra arguments are Hydra overrides for
# every run and win over the protocol. JOBS (default 2) runs that many jobs at once, one thread each.
# A finished arm (.done) is skipped; an unfinished one is an error (never average fewer seeds silently).
# RETEST=<data seed> trains nothing: it tests every finished run's best checkpoint again on RETEST_CASES
# (default 48) fresh cases of that data seed (the run's fold of them: 24 test cases on demo3d_mri) into
# <out>_retest<seed>/, and prints the paired table (scripts/paired_study.py): more test cases per run than
# the 4 of a demo3d_mri fold, without retraining.
#   RETEST=1 DATASETS=demo3d_mri ARMS="base multiclass" bash scripts/multiclass_study.sh outputs/study/mri250
set -euo pipefail
set -f  # no globbing: the protocol's [32,32,32] must reach Hydra as written
out=${1:-outputs/study/multiclass}
shift $(( $# > 0 ? 1 : 0 ))
datasets=${DATASETS:-demo3d demo3d_abdomen demo2d}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

protocol() {  # protocol <dataset>: the overrides of that dataset's runs
    case $1 in
        demo2d) echo "dataset=demo2d" ;;
        demo3d|demo3d_abdomen)
            local patch='[32,32,32]'
            [ "$1" = demo3d_abdomen ] && patch='[32,32,16]'
            echo "dataset=$1 model=unet_small dataset.image_size=48 dataset.patch_size=$patch" \
                 "dataset.samples_per_image=4 dataset.batch_size=4 model.optimizer.lr=1e-3" \
                 "trainer.max_epochs=${EPOCHS:-60} trainer.check_val_every_n_epoch=2 callbacks=early_stop" \
                 "callbacks.early_stopping.patience=10" ;;
        demo3d_mri)  # the issue-27 protocol: its yaml holds 8 cases in 2 folds (3 train, 1 val, 4 test), 32^3
            # patches, 4 patches per step; lr 1e-3, validation every 5 epochs, EPOCHS (default 250) in full
            echo "dataset=demo3d_mri model=unet_small model.optimizer.lr=1e-3 trainer.max_epochs=${EPOCHS:-250}" \
                 "trainer.check_val_every_n_epoch=5 dataset.fold=${FOLDS:-0,1} eval.scores=[max_softmax,margin,logit_margin]" ;;
        *) echo "multiclass_study: unknown dataset $1 (demo3d, demo3d_abdomen, demo3d_mri, demo2d)" >&2; exit 1 ;;
    esac
}

tested() {  # tested <run folder>: "<seed> <fold> <checkpoint file name>" of its summary.json (the name only:
    # it is looked up in the run's own checkpoints/; last.ckpt where the test used the final weights)
    python -c 'import json, sys, pathlib; d = json.load(open(sys.argv[1]))
print(int(d["seed"]), int(d["fold"]), pathlib.PurePath(str(d.get("checkpoint") or "last.ckpt")).name)' "$1/summary.json"
}

retest() {  # retest <dataset> <name> <overrides...>: each finished run's best checkpoint on fresh cases
    local dataset=$1 name=$2 job seed fold ckpt dest n=0 jobs=() dests=()
    shift 2
    [ -d "$out/$dataset/$name" ] || return 0  # an arm this study did not run
    set +f
    for job in "$out/$dataset/$name"/*/; do [ -f "$job/summary.json" ] && jobs+=("$job"); done
    set -f
    [ "${#jobs[@]}" -gt 0 ] || { echo "multiclass_study: no finished run under $out/$dataset/$name" >&2; exit 1; }
    mkdir -p "$retest_out/$dataset/$name"
    for job in "${jobs[@]}"; do
        seed='' fold='' ckpt=''
        read -r seed fold ckpt < <(tested "$job") || true
        [ -n "$ckpt" ] || { echo "multiclass_study: $job/summary.json names no seed, fold and checkpoint" >&2; exit 1; }
        ckpt="${job}checkpoints/$ckpt"
        case $ckpt in *[\$\'\\]*)  # read from a run folder: Hydra would resolve a ${...} in it
            echo "multiclass_study: $ckpt: a checkpoint path with \$, ' or \\ is not retested" >&2; exit 1 ;;
        esac
        [ -f "$ckpt" ] || { echo "multiclass_study: $ckpt (the checkpoint its test used) is missing" >&2; exit 1; }
        dest="$retest_out/$dataset/$name/s${seed}f${fold}"
        dests+=("$dest")
        [ -f "$dest/summary.json" ] && continue
        if (( n++ >= ${JOBS:-2} )); then wait -n || true; fi
        # shellcheck disable=SC2046
        python train.py train=false "ckpt_path='$ckpt'" seed="$seed" hydra.run.dir="$dest" \
            callbacks.progress_bar=null $(FOLDS=$fold protocol "$dataset") "$@" "${extra[@]}" \
            dataset.data_seed="$RETEST" dataset.num_cases="${RETEST_CASES:-48}" > "$dest.log" 2>&1 &
        if (( n == 1 )); then wait || true; fi  # the first job alone: it writes the fresh cases' cache
    done
    wait
    for dest in "${dests[@]}"; do  # every run retested, or the log that says why not
        [ -f "$dest/summary.json" ] || { echo "multiclass_study: the retest into $dest failed: $dest.log" >&2; exit 1; }
    done
}

arm() {  # arm <dataset> <name> <overrides...>: one multirun folder (RETEST: test its runs on fresh cases)
    local dataset=$1 name=$2
    shift 2
    [ -z "${ARMS:-}" ] || [[ " $ARMS " == *" $name "* ]] || return 0
    if [ -n "${RETEST:-}" ]; then retest "$dataset" "$name" "$@"; return; fi
    local dir="$out/$dataset/$name"
    if [ -e "$dir/.done" ]; then echo "skip $dataset/$name (done)"; return; fi
    if [ -e "$dir" ]; then
        echo "multiclass_study: $dir holds an unfinished arm (killed?); remove it to rerun it" >&2
        exit 1
    fi
    # shellcheck disable=SC2046
    python train.py -m hydra.sweep.dir="$dir" seed="${SEEDS:-1,2,3}" hydra/launcher=joblib \
        hydra.launcher.n_jobs="${JOBS:-2}" callbacks.progress_bar=null $(protocol "$dataset") "$@" "${extra[@]}"
    touch "$dir/.done"
}

extra=("$@")
retest_out="${out%/}_retest${RETEST:-}"
for d in $datasets; do
    if [ "$d" = demo3d_mri ]; then  # lambda = 0 against loss=multiclass and the candidates of issue 27
        l1=(loss=multiclass loss.lambda=1 loss.warmup_epochs=0)   # the pin before issue 27's second study
        arm "$d" base loss.lambda=0
        arm "$d" multiclass loss=multiclass                       # the pin: margin + balance, lambda 0 -> 3
        arm "$d" multiclass_l1 "${l1[@]}"                          # margin + balance, lambda = 1 (the ratio)
        arm "$d" steer_balance "${l1[@]}" loss.score=max_softmax loss.steer=true   # the pin before that
        for l in 3 10; do arm "$d" "multiclass_l$l" loss=multiclass loss.lambda=$l loss.warmup_epochs=0; done
        arm "$d" multiclass_l3_warmup loss=multiclass loss.lambda=3 loss.warmup_epochs=83  # = the pin at 250 epochs
        arm "$d" multiclass_case "${l1[@]}" loss.pairing=case     # pairs within each image
        arm "$d" multiclass_class "${l1[@]}" loss.pairing=class   # pairs within each predicted class
        arm "$d" multiclass_dice_ce "${l1[@]}" loss/seg_loss=dice_ce
        arm "$d" multiclass_temperature "${l1[@]}" loss.score_temperature=4   # the margin of softmax(z / 4)
        arm "$d" multiclass_logit "${l1[@]}" loss.score=logit_margin loss.margin=1   # a margin of 1 logit
        continue
    fi
    warm=20; [ "$d" = demo2d ] && warm=2   # a third of the run
    arm "$d" base loss.lambda=0
    arm "$d" paper loss.lambda=2
    arm "$d" warmup loss.lambda=2 loss.warmup_epochs=$warm
    arm "$d" steer_balance loss.lambda=1 loss.steer=true loss.balance=true
    if [ -n "${ARMS:-}" ]; then  # measured on one seed only (docs/multiclass_3d.md): ARMS="balance steer"
        arm "$d" balance loss.lambda=0.5 loss.balance=true
        arm "$d" steer loss.lambda=2 loss.steer=true
    fi
done
if [ -n "${RETEST:-}" ]; then  # the paired table of the fresh test cases (each run against base)
    for d in $datasets; do
        if [ -d "$retest_out/$d/base" ]; then
            python scripts/paired_study.py "$retest_out/$d" --scores max_softmax,margin,logit_margin
        elif [ -d "$retest_out/$d" ]; then
            echo "no base arm in $retest_out/$d: pair it with another folder's, scripts/paired_study.py <folders>"
        fi
    done
else
    uaseg report "$out" --force
fi
