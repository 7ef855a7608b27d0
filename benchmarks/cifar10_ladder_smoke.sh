#!/usr/bin/env bash
# A small CPU-scale capacity ladder on real CIFAR-10 pixels (single seed, smoke scale):
# teachers resnet14 / resnet32 / resnet56 trained with CE, student resnet8 distilled from
# each with KD and ISATS, plus the student alone; 5,000 training images (500 per class),
# 16x16, 20 epochs, cosine lr 0.05; then the diagnostics of the ladder.
#   bash benchmarks/cifar10_ladder_smoke.sh /tmp/c10 runs/c10-ladder
# /tmp/c10 must hold cifar-10-batches-py/ (official archive, or on the dev machine:
#   python ../shared/data/cifar10_jpeg/to_cifar_python.py /tmp/c10).
set -euo pipefail
ROOT=${1:?cifar root}
OUT=${2:-runs/c10-ladder}
DK=${DK:-.venv/bin/darkknowledge}
COMMON=(data.name=cifar10 "data.root=$ROOT" data.train_per_class=500 data.test_per_class=200 data.image_size=16
        optim.epochs=20 optim.schedule=cosine optim.lr=0.05 optim.warmup_epochs=1 "output_dir=$OUT" engine.progress=false)
for t in resnet14 resnet32 resnet56; do
  $DK train "${COMMON[@]}" model.name=$t name=teacher-$t
done
$DK train "${COMMON[@]}" model.name=resnet8 name=student-resnet8-ce
for t in resnet14 resnet32 resnet56; do
  for m in kd isats; do
    $DK distill "${COMMON[@]}" model.name=resnet8 method.name=$m teacher.checkpoint=$OUT/teacher-$t/last.pt name=student-resnet8-$m-from-$t
  done
done
$DK diagnose -t $OUT/teacher-resnet14/last.pt -t $OUT/teacher-resnet32/last.pt -t $OUT/teacher-resnet56/last.pt \
  -s $OUT/student-resnet8-ce/last.pt --out $OUT/diagnostics --temperatures 1,2,4,8
