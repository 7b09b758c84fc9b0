#!/usr/bin/env bash
# Creates .venv and installs the package in place with its dependency ranges (pyproject.toml; CPU JAX)
# and the development tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# OpenGL platform libraries for MuJoCo's offscreen rendering (DMC from pixels, psrl_jax/envs/gl.py):
# EGL = libegl1 + libgl1-mesa-dri (Mesa's EGL vendor library and drivers), OSMesa = libosmesa6.
# Installed only when one is missing; without them the rendering tests fail with a GLError naming them.
GL_PACKAGES="libegl1 libgl1-mesa-dri libosmesa6"
gl_libraries_present() {
  command -v ldconfig >/dev/null 2>&1 || return 1
  local cache
  cache=$(ldconfig -p 2>/dev/null) || return 1
  for lib in libEGL.so.1 libOSMesa.so.8; do
    grep -q "$lib" <<<"$cache" || return 1
  done
  grep -q -e libEGL_mesa.so.0 -e libGLX_mesa.so.0 <<<"$cache"
}
if ! gl_libraries_present; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
  fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    echo "installing OpenGL libraries for MuJoCo rendering: $GL_PACKAGES"
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $GL_PACKAGES >/dev/null 2>&1; then
      # the package lists may be stale or absent (fresh container): refresh once and retry
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $GL_PACKAGES >/dev/null ||
        echo "WARNING: could not install $GL_PACKAGES; DMC pixel rendering will fail until they are installed" >&2
    fi
  else
    echo "WARNING: OpenGL libraries missing and no root/sudo apt-get available; install $GL_PACKAGES" \
      "(e.g. apt-get install -y $GL_PACKAGES) or DMC pixel rendering will fail" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
