"""Compile `kernels.c` once per machine with the system C compiler and load it with ctypes.

The library is cached under the user's cache directory, keyed by a hash of the source, the
compiler and the CPU it was built for, and written atomically, so concurrent site processes
(Ray workers) can build and load it at the same time. No C compiler means no native kernels:
`load_kernels` then raises `NativeKernelsUnavailable` saying what to install.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC", "-std=c99")
P, I64, F64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
SIGNATURES = {
    "gnpool_forward": (P, P, P, P, P, P, P, I64, I64, I64, F64, I64, I64, I64, I64),
    "gnpool_backward": (P, P, P, P, P, P, P, P, P, I64, I64, I64, I64, I64, I64, I64),
    "gnpool_double_backward": (P, P, P, P, P, P, P, P, P, P, P, P, I64, I64, I64, I64, I64, I64, I64),
}
SUFFIXES = ("f32", "f64")


class NativeKernelsUnavailable(RuntimeError):
    """The C kernels cannot be built here; the message says why and what to install."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedmeta" / "kernels"


def _compiler() -> str:
    for name in ("cc", "gcc", "clang"):
        if path := shutil.which(name):
            return path
    raise NativeKernelsUnavailable(
        "no C compiler (cc, gcc or clang) on PATH: install one (e.g. `apt install gcc`) for fedmeta's "
        "fused CPU kernels, or set kernels='torch' to use PyTorch's own operators"
    )


def _cpu_signature() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() or platform.machine()


def library_path(cache_dir: Path, compiler: str) -> Path:
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), compiler.encode(), _cpu_signature().encode()):
        key.update(part)
    return cache_dir / f"kernels-{key.hexdigest()[:16]}.so"


def build(cache_dir: Path) -> Path:
    """The compiled library's path, compiling it first if this machine has not yet."""
    compiler = _compiler()
    target = library_path(cache_dir, compiler)
    if target.exists():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".so.tmp")
    except OSError as exc:
        raise NativeKernelsUnavailable(
            f"cannot create the kernel cache {cache_dir}: {exc}; make it writable (it lives under "
            "$XDG_CACHE_HOME, or ~/.cache), or set kernels='torch'"
        ) from exc
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True)
        if done.returncode:
            raise NativeKernelsUnavailable(
                f"{compiler} could not compile {SOURCE}:\n{done.stderr.strip()}\n"
                "fix the compiler set-up, or set kernels='torch' to use PyTorch's own operators"
            )
        os.replace(tmp, target)  # atomic: a concurrent process sees no file or a whole one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


class NativeKernels:
    """The loaded library: `kernels.fn("gnpool_forward", "f32")` is a typed C function."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            lib = ctypes.CDLL(str(path))  # CDLL releases the GIL during calls: tasks run in parallel
        except OSError as exc:
            raise NativeKernelsUnavailable(f"cannot load {path}: {exc}; delete the file to rebuild it") from exc
        self._fns: dict[str, ctypes._CFuncPtr] = {}
        for name, args in SIGNATURES.items():
            for suffix in SUFFIXES:
                fn = getattr(lib, f"{name}_{suffix}")
                fn.argtypes, fn.restype = args, ctypes.c_int
                self._fns[f"{name}_{suffix}"] = fn

    def fn(self, name: str, suffix: str) -> ctypes._CFuncPtr:
        return self._fns[f"{name}_{suffix}"]


def load_kernels(cache_dir: Path | None = None) -> NativeKernels:
    return NativeKernels(build(cache_dir or default_cache_dir()))
