"""An OpenGL platform for MuJoCo's offscreen rendering, loaded before anything renders.

MuJoCo (inside envpool and inside dm_control) renders pixels through OpenGL but does not pick a
platform itself: some library providing one (EGL for hardware or Mesa's software rasteriser,
OSMesa for pure software) must already be loaded into the process with RTLD_GLOBAL, or the first
render fails with "an OpenGL platform library has not been loaded into this process".
dm_control and PyOpenGL additionally choose their backend from MUJOCO_GL / PYOPENGL_PLATFORM
when they are first imported, so `load_gl` must run before `dm_control.suite` is imported.

envpool (1.2.5) ships its own copy of libglvnd's libEGL (envpool.libs/libEGL-<hash>.so.1.1.0) and
loads it, privately, on `import envpool`. Loading the system libEGL.so.1 after that leaves two
libglvnd dispatchers in the process and MuJoCo fails with "gladLoadGL error" (then segfaults);
loaded before `import envpool`, the system one works. So the EGL backend first promotes a libEGL
that is already mapped into the process (envpool's copy) to RTLD_GLOBAL, and only then loads one
by name: `load_gl` works whether or not envpool has been imported. dm_control rendering in the
same process works in both cases (checked in either order).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping, Sequence

BACKENDS = ("egl", "osmesa")
# Sonames tried per backend, in order (Debian/Ubuntu: libegl1 -> libEGL.so.1, libosmesa6 -> libOSMesa.so.8).
GL_LIBRARIES: Mapping[str, Sequence[str]] = {
    "egl": ("libEGL.so.1", "libEGL.so"),
    "osmesa": ("libOSMesa.so.8", "libOSMesa.so.6", "libOSMesa.so"),
}
INSTALL_HINT = (
    "install them with `apt-get install -y libegl1 libgl1-mesa-dri libosmesa6` "
    "(EGL needs libegl1 + libgl1-mesa-dri, OSMesa needs libosmesa6; scripts/setup.sh does this)"
)

_loaded: dict[str, ctypes.CDLL] = {}  # backend -> handle kept alive; doubles as the idempotence cache


class GLError(RuntimeError):
    """No OpenGL platform library could be loaded, so MuJoCo cannot render."""


def _mapped_libraries(prefix: str) -> list[str]:
    """Paths of shared objects already mapped into this process whose file name starts with `prefix`."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/" in line}
    except OSError:  # not Linux
        return []
    return sorted(p for p in paths if os.path.basename(p).startswith(prefix) and ".so" in p)


def _try_load(backend: str, names: Sequence[str], tried: list[str]) -> bool:
    for name in names:
        tried.append(name)
        try:
            handle = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        _loaded[backend] = handle
        return True
    return False


def _export(backend: str) -> None:
    """Sets MUJOCO_GL / PYOPENGL_PLATFORM for dm_control and PyOpenGL, keeping values the user chose."""
    os.environ.setdefault("MUJOCO_GL", backend)
    os.environ.setdefault("PYOPENGL_PLATFORM", backend)


def load_gl(backend: str = "auto", *, _libraries: Mapping[str, Sequence[str]] | None = None) -> str:
    """Makes an OpenGL platform available for MuJoCo rendering; returns the backend ("egl" | "osmesa").

    "auto" honours MUJOCO_GL when it is already egl/osmesa (a user who exported MUJOCO_GL=osmesa
    gets OSMesa), else tries EGL, then OSMesa. Idempotent: once a backend is loaded, later calls
    return it without touching the loader. `_libraries` overrides `GL_LIBRARIES` (tests use it to
    simulate a missing library; such calls neither read nor fill the cache).
    Raises ValueError on an unknown backend and GLError when no library loads.
    """
    backend = backend.strip().lower()
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown GL backend {backend!r}; expected 'auto', 'egl' or 'osmesa'")
    env_choice = os.environ.get("MUJOCO_GL", "").strip().lower()
    if backend == "auto":
        candidates = [env_choice] if env_choice in BACKENDS else list(BACKENDS)
    else:
        candidates = [backend]

    use_cache = _libraries is None
    libraries = GL_LIBRARIES if _libraries is None else _libraries
    if use_cache:
        for candidate in candidates:
            if candidate in _loaded:
                _export(candidate)
                return candidate

    tried: list[str] = []
    saved = dict(_loaded)
    for candidate in candidates:
        names = list(libraries.get(candidate, ()))
        if use_cache and candidate == "egl":  # a libEGL already in the process first (see module docstring)
            names = _mapped_libraries("libEGL") + names
        if _try_load(candidate, names, tried):
            if not use_cache:  # a simulated load must not leave a handle behind for real calls
                _loaded.clear()
                _loaded.update(saved)
            _export(candidate)
            return candidate
    raise GLError(
        f"no OpenGL platform library for MuJoCo rendering could be loaded (backend {backend!r}, "
        f"MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}; tried {', '.join(tried)}); {INSTALL_HINT}"
    )
