#!/usr/bin/env bash
# The image DDPM's objective x schedule ablation (BENCHMARKS.md, "Image DDPM on MNIST"): train one variant,
# unconditional, 10 epochs at one thread, then the full bound on 100 held-out digits and classifier-FID of
# 1,000 DDIM-50 samples. From the repository root, in the project's environment:
#   bash benchmarks/mnist_ablation.sh simple linear
#   bash benchmarks/mnist_ablation.sh hybrid linear
#   bash benchmarks/mnist_ablation.sh simple squaredcos_cap_v2
#   bash benchmarks/mnist_ablation.sh hybrid squaredcos_cap_v2
set -u
objective=$1; schedule=$2; learn=false; [ "$objective" = hybrid ] && learn=true
run=data/outputs/ablation_${objective}_${schedule}
mkdir -p data/outputs
# A finished run folder resumes at its end, so running the script again only re-evaluates.
python train.py --config-name=mnist_ddpm model.unet.num_classes=null model.objective=$objective \
    model.unet.learn_variance=$learn model.beta_schedule=$schedule training.num_epochs=10 \
    training.rollout_every=0 training.num_threads=1 training.progress=false logging.mode=disabled \
    hydra.run.dir=$run > $run.train.log 2>&1
python -m dpstack.generative.evaluate $run/checkpoints/latest.ckpt --n-bpd 100 --n-samples 1000 --threads 1 \
    --out $run/eval > $run.eval.log 2>&1
echo "$objective $schedule done $(date)"
