"""Compile `kernels.c` once per machine with the system C compiler and load it with ctypes.

`kernels.c` is written once in terms of a scalar type `real`; it is compiled twice, once per
entry of `VARIANTS` (-DFEDMETA_REAL=float -DFEDMETA_SUFFIX=f32, and double/f64), and the two
objects are linked into one shared library exporting `<name>_f32` and `<name>_f64` for every
name in `SIGNATURES`. The library is cached under the user's cache directory, keyed by a hash of
the source, the flags, the compiler and the CPU it was built for, and written atomically, so
concurrent site processes (Ray workers) can build and load it at the same time. No C compiler
means no native kernels: `load_kernels` then raises `NativeKernelsUnavailable` saying what to
install.

A Flower app bundle (FAB) carries only Python, TOML, Markdown, YAML and JSON files, never a `.c`
file. So the same text also ships as `kernels_source.py` (generated from `kernels.c` by
`python -m common.native.embed`; a test fails when the two differ), and a ClientApp
loaded from a FAB compiles that copy: the same library, the same cache key.
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _ctypes import CFuncPtr  # ctypes' stub keeps its alias `ctypes._CFuncPtr` private

SOURCE = Path(__file__).with_name("kernels.c")  # the source: read at build time, so tests can point it elsewhere
EMBEDDED = Path(__file__).with_name("kernels_source.py")  # its copy for FABs
CFLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-fPIC", "-std=c99")
LDFLAGS = ("-shared",)
LIBS = ("-lm",)
VARIANTS = {"f32": "float", "f64": "double"}  # function suffix -> the C type `real` stands for
P, I64, F64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
SIGNATURES = {
    "gnpool_forward": (P, P, P, P, P, P, P, I64, I64, I64, F64, I64, I64, I64, I64),
    "gnpool_backward": (P, P, P, P, P, P, P, P, P, I64, I64, I64, I64, I64, I64, I64),
    "gnpool_double_backward": (P, P, P, P, P, P, P, P, P, P, P, P, I64, I64, I64, I64, I64, I64, I64),
}
SUFFIXES = tuple(VARIANTS)


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


def _defines(suffix: str) -> tuple[str, ...]:
    return (f"-DFEDMETA_REAL={VARIANTS[suffix]}", f"-DFEDMETA_SUFFIX={suffix}")


def source_text() -> str:
    """kernels.c where it is installed (a checkout, a wheel), else its embedded copy (a FAB)."""
    if SOURCE.is_file():
        return SOURCE.read_text(encoding="utf-8")
    try:
        from common.native.kernels_source import TEXT
    except ImportError:
        raise NativeKernelsUnavailable(
            f"neither {SOURCE} nor its copy {EMBEDDED} is installed: reinstall fedmeta, or set kernels='torch'"
        ) from None
    return TEXT


def library_path(cache_dir: Path, compiler: str) -> Path:
    key = hashlib.sha256()
    flags = [*CFLAGS, *(f for suffix in VARIANTS for f in _defines(suffix)), "|", *LDFLAGS, *LIBS]
    for part in (source_text().encode(), " ".join(flags).encode(), compiler.encode(), _cpu_signature().encode()):
        key.update(part)
        key.update(b"\0")
    return cache_dir / f"kernels-{key.hexdigest()[:16]}.so"


def _failed(compiler: str, what: str, words: str) -> NativeKernelsUnavailable:
    return NativeKernelsUnavailable(
        f"{compiler} could not {what}:\n{words.strip()}\n"
        "fix the compiler set-up, or set kernels='torch' to use PyTorch's own operators"
    )


def _compile_and_link(compiler: str, work: Path, library: Path) -> None:
    """Compile SOURCE once per variant into an object in `work` (both at once), then link the
    objects into `library`; a failure raises with the compiler's own messages."""
    objects = {suffix: work / f"kernels_{suffix}.o" for suffix in VARIANTS}
    source = SOURCE
    if not source.is_file():  # a FAB: compile the embedded copy, written out under the same name
        source = work / SOURCE.name
        source.write_text(source_text(), encoding="utf-8")
    jobs: dict[str, subprocess.Popen] = {}
    try:
        for suffix, obj in objects.items():
            command = [compiler, *CFLAGS, *_defines(suffix), "-c", "-o", str(obj), str(source)]
            jobs[suffix] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        words = {suffix: job.communicate()[0] for suffix, job in jobs.items()}
    finally:
        for job in jobs.values():  # only left running if we were interrupted
            if job.poll() is None:
                job.kill()
                job.wait()
    for suffix, job in jobs.items():
        if job.returncode:
            raise _failed(
                compiler, f"compile {source} (as {VARIANTS[suffix]}, -DFEDMETA_SUFFIX={suffix})", words[suffix]
            )
    done = subprocess.run(
        [compiler, *LDFLAGS, "-o", str(library), *map(str, objects.values()), *LIBS], capture_output=True, text=True
    )
    if done.returncode:
        raise _failed(compiler, f"link the objects compiled from {source}", done.stderr or done.stdout)


def build(cache_dir: Path) -> Path:
    """The compiled library's path, compiling it first if this machine has not yet."""
    compiler = _compiler()
    target = library_path(cache_dir, compiler)
    if target.exists():
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".build-"))  # private: objects and the unfinished library
    except OSError as exc:
        raise NativeKernelsUnavailable(
            f"cannot create the kernel cache {cache_dir}: {exc}; make it writable (it lives under "
            "$XDG_CACHE_HOME, or ~/.cache), or set kernels='torch'"
        ) from exc
    try:
        tmp = work / target.name
        _compile_and_link(compiler, work, tmp)
        os.replace(tmp, target)  # atomic: a concurrent process sees no file or a whole one
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


class NativeKernels:
    """The loaded library: `kernels.fn("gnpool_forward", "f32")` is a typed C function."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            lib = ctypes.CDLL(str(path))  # CDLL releases the GIL during calls: tasks run in parallel
        except OSError as exc:
            raise NativeKernelsUnavailable(f"cannot load {path}: {exc}; delete the file to rebuild it") from exc
        self._fns: dict[str, CFuncPtr] = {}
        for name, args in SIGNATURES.items():
            for suffix in SUFFIXES:
                fn = getattr(lib, f"{name}_{suffix}")
                fn.argtypes, fn.restype = args, ctypes.c_int
                self._fns[f"{name}_{suffix}"] = fn

    def fn(self, name: str, suffix: str) -> CFuncPtr:
        return self._fns[f"{name}_{suffix}"]


def load_kernels(cache_dir: Path | None = None) -> NativeKernels:
    return NativeKernels(build(cache_dir or default_cache_dir()))
