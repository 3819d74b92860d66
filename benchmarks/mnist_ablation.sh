#!/usr/bin/env bash
# The image DDPM's objective x schedule ablation (BENCHMARKS.md, "Image DDPM on MNIST"): train one variant,
# unconditional, 10 epochs at one thread; classifier-FID of 1,000 DDIM-50 samples; then the full bound on the
# first N held-out digits (default all 1,000). From the repository root, in the project's environment:
#   bash benchmarks/mnist_ablation.sh simple linear [N]
#   bash benchmarks/mnist_ablation.sh hybrid linear [N]
#   bash benchmarks/mnist_ablation.sh simple squaredcos_cap_v2 [N]
#   bash benchmarks/mnist_ablation.sh hybrid squaredcos_cap_v2 [N]
# Every step can be run again: a finished run folder resumes at its end, the FID is kept once measured, and the
# bound's finished 100-digit batches are kept in a ledger, so N = 100, 200, ... extends it piece by piece. The FID
# and the ledger live in benchmarks/results/mnist_ablation/ (committed): the training is deterministic at one thread,
# and the ledger names the weights, not the file, so a later session re-trains and goes on where this one stopped.
# The table (it refuses an FID measured on other weights than the ledger's): python benchmarks/mnist_ablation_table.py
set -eu
objective=$1; schedule=$2; n_digits=${3:-1000}; learn=false; [ "$objective" = hybrid ] && learn=true
run=data/outputs/ablation_${objective}_${schedule}
results=benchmarks/results/mnist_ablation/${objective}_${schedule}
mkdir -p data/outputs benchmarks/results/mnist_ablation
python train.py --config-name=mnist_ddpm model.unet.num_classes=null model.objective=$objective \
    model.unet.learn_variance=$learn model.beta_schedule=$schedule training.num_epochs=10 \
    training.rollout_every=0 training.num_threads=1 training.progress=false logging.mode=disabled \
    hydra.run.dir=$run >> $run.train.log 2>&1
if [ ! -f ${results}_fid.json ]; then
    python -m dpstack.generative.evaluate $run/checkpoints/latest.ckpt --n-bpd 0 --n-samples 1000 --threads 1 \
        --no-pictures --out $run/fid >> $run.eval.log 2>&1
    cp $run/fid/eval.json ${results}_fid.json
fi
python -m dpstack.generative.evaluate $run/checkpoints/latest.ckpt --n-bpd $n_digits --n-samples 0 --threads 1 \
    --bpd-ledger ${results}_bpd_ledger.json --no-pictures --out $run/bound >> $run.eval.log 2>&1
echo "$objective $schedule: $n_digits digits done $(date -u +%H:%M)"
