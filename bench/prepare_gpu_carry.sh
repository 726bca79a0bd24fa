#!/usr/bin/env bash
# Builds .gpu_carry/ (git-ignored) for bench/gpu_check.sh on a machine that cannot download anything:
#   .gpu_carry/site/omegaconf       this project's one dependency that a stock CUDA PyTorch image may lack
#                                   (pure Python; copied from the local environment)
#   .gpu_carry/reference/           the model files of hustvl/LightningDiT (MIT licence), for the side-by-side
#                                   step time (bench/stage2_throughput.py --reference_repo); not committed
#   .gpu_carry/site/fairscale/      an import stub: the reference's models/rmsnorm.py imports fairscale's
#                                   model-parallel layers at module level but its RMSNorm never uses them
#
#   bash bench/prepare_gpu_carry.sh PATH_TO_LightningDiT_CHECKOUT_OR_GIT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:?usage: bench/prepare_gpu_carry.sh PATH_TO_hustvl_LightningDiT (checkout or bare git dir)}
rm -rf .gpu_carry && mkdir -p .gpu_carry/site .gpu_carry/reference
omegaconf_dir=$(python -c "import omegaconf, os; print(os.path.dirname(omegaconf.__file__))")
cp -r "$omegaconf_dir" .gpu_carry/site/
find .gpu_carry/site -name __pycache__ -prune -exec rm -rf {} +
if [ -d "$src/models" ]; then
  cp -r "$src/models" "$src/LICENSE" .gpu_carry/reference/
else
  git --git-dir="$src" archive HEAD models LICENSE | tar -x -C .gpu_carry/reference
fi
mkdir -p .gpu_carry/site/fairscale/nn/model_parallel
: > .gpu_carry/site/fairscale/__init__.py
: > .gpu_carry/site/fairscale/nn/__init__.py
: > .gpu_carry/site/fairscale/nn/model_parallel/__init__.py
: > .gpu_carry/site/fairscale/nn/model_parallel/initialize.py
printf 'ColumnParallelLinear = ParallelEmbedding = RowParallelLinear = None\n' \
  > .gpu_carry/site/fairscale/nn/model_parallel/layers.py
du -sh .gpu_carry
