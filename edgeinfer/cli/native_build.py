"""`edgeinfer native-build`: configure and build the native runner (edgeinfer-run, libedgeinfer).

It runs the README's two commands (``cmake -S . -B build -DOpenVINO_DIR=...`` and
``cmake --build build -j``) against the OpenVINO that the installed ``openvino`` wheel ships, and
prints the path of the ``edgeinfer-run`` binary on stdout. Before running anything it checks for
what the build needs and, when something is missing, says which Debian packages provide it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

#: what each missing piece is called in Debian / Ubuntu
APT_PACKAGES = {
    "cmake": "cmake",
    "c++": "g++",
    "make": "make",
    "jpeglib.h": "libjpeg62-turbo-dev (Ubuntu: libjpeg-turbo8-dev)",
    "png.h": "libpng-dev",
    "nlohmann/json.hpp": "nlohmann-json3-dev",
}
INCLUDE_DIRS = ("/usr/include", "/usr/local/include", "/usr/include/x86_64-linux-gnu",
                "/usr/include/aarch64-linux-gnu", "/opt/homebrew/include")
BINARIES = ("edgeinfer-run", "edgeinfer-c-example")


def add_parser(p) -> None:
    p.add_argument("--build-dir", default=None,
                   help="build directory (default: build/ in the source tree)")
    p.add_argument("--source", default=None,
                   help="source tree with CMakeLists.txt and native/ (default: this checkout)")
    p.add_argument("--build-type", default="Release", choices=("Release", "RelWithDebInfo", "Debug"),
                   help="CMake build type (default Release)")
    p.add_argument("--jobs", "-j", type=int, default=None, help="parallel compile jobs (default: CPU count)")


def source_dir(source: str | os.PathLike | None = None) -> Path:
    """The tree holding CMakeLists.txt and native/ (a source checkout: a wheel does not ship them)."""
    from edgeinfer.errors import NativeBuildError

    root = Path(source) if source else Path(__file__).resolve().parents[2]
    if not (root / "CMakeLists.txt").is_file() or not (root / "native").is_dir():
        raise NativeBuildError(f"{root} has no CMakeLists.txt and native/ folder; the native runner builds "
                               f"from a source checkout of edgeinfer (give it with --source DIR).")
    return root


def openvino_cmake_dir() -> Path:
    from edgeinfer.errors import MissingDependencyError, NativeBuildError

    try:
        import openvino.utils as ov_utils
    except ImportError as e:
        raise MissingDependencyError("openvino", "openvino", "the native runner's engine") from e
    d = Path(ov_utils.get_cmake_path())
    if not (d / "OpenVINOConfig.cmake").is_file():
        raise NativeBuildError(f"the openvino package has no OpenVINOConfig.cmake in {d}; reinstall it "
                               f"with pip install 'edgeinfer[openvino]'.")
    return d


def missing_prerequisites() -> list[str]:
    """Names (keys of APT_PACKAGES) of the tools and headers the build needs but this machine lacks."""
    missing = []
    if not shutil.which("cmake"):
        missing.append("cmake")
    if not (os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        missing.append("c++")
    if not (shutil.which("make") or shutil.which("ninja")):
        missing.append("make")
    for header in ("jpeglib.h", "png.h", "nlohmann/json.hpp"):
        if not any((Path(d) / header).is_file() for d in INCLUDE_DIRS):
            missing.append(header)
    return missing


def _describe_missing(missing: list[str]) -> str:
    pkgs = " ".join(APT_PACKAGES[m].split(" ")[0] for m in missing)
    what = ", ".join(f"{m} ({APT_PACKAGES[m]})" for m in missing)
    return (f"cannot build the native runner: missing {what}. On Debian/Ubuntu: "
            f"sudo apt-get install {pkgs}")


def _run(cmd: list[str], *, verbose: bool, log: Path) -> None:
    from edgeinfer.errors import NativeBuildError

    if verbose:
        print("+ " + " ".join(cmd), file=sys.stderr)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with open(log, "a") as f:
        f.write("+ " + " ".join(cmd) + "\n" + proc.stdout)
    if verbose:
        sys.stderr.write(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-25:])
        raise NativeBuildError(f"`{' '.join(cmd[:3])} ...` failed (exit {proc.returncode}); full log: "
                               f"{log}\n{tail}")


def build_native(*, source: str | os.PathLike | None = None, build_dir: str | os.PathLike | None = None,
                 build_type: str = "Release", jobs: int | None = None, verbose: bool = False) -> Path:
    """Configure (when needed) and build; returns the path of ``edgeinfer-run``.

    A build directory already configured for this source tree and this OpenVINO is only rebuilt
    (make decides what changed), so a second call takes seconds.
    """
    from edgeinfer.errors import NativeBuildError

    src = source_dir(source)
    missing = missing_prerequisites()
    if missing:
        raise NativeBuildError(_describe_missing(missing))
    ov_dir = openvino_cmake_dir()
    out = Path(build_dir) if build_dir else src / "build"
    out.mkdir(parents=True, exist_ok=True)
    log = out / "edgeinfer-native-build.log"
    log.write_text("")
    cache = out / "CMakeCache.txt"
    text = cache.read_text(errors="replace") if cache.is_file() else ""
    configured = (f"OpenVINO_DIR:PATH={ov_dir}" in text and f"CMAKE_BUILD_TYPE:STRING={build_type}" in text
                  and f"CMAKE_HOME_DIRECTORY:INTERNAL={src}" in text)
    if not configured:
        _run(["cmake", "-S", str(src), "-B", str(out), f"-DCMAKE_BUILD_TYPE={build_type}",
              f"-DOpenVINO_DIR={ov_dir}"], verbose=verbose, log=log)
    _run(["cmake", "--build", str(out), "-j", str(jobs or os.cpu_count() or 2)], verbose=verbose, log=log)
    binary = out / "edgeinfer-run"
    if not binary.is_file():
        raise NativeBuildError(f"the build finished but {binary} is missing; see {log}")
    return binary


def run(args) -> int:
    binary = build_native(source=args.source, build_dir=args.build_dir, build_type=args.build_type,
                          jobs=args.jobs, verbose=getattr(args, "verbose", False))
    lib = sorted(binary.parent.glob("libedgeinfer.so*"))
    print(f"built {binary.name} and {lib[0].name if lib else 'libedgeinfer'} in {binary.parent}; "
          f"C header: {source_dir(args.source) / 'native' / 'include' / 'edgeinfer.h'}", file=sys.stderr)
    print(binary.resolve())
    return 0
