"""Wheels for the GPU machine (`make gpu-wheels`): what the GPU check needs that the machine lacks.

The GPU machines this project is lent have PyTorch with CUDA, sacrebleu and sentencepiece but no
network, no snakemake, deepspeed or ctranslate2 (benchmarks/device-packages.txt: the packages
that machine holds, as listed on 2026-11-17). This walks the requirements of a2d, snakemake,
deepspeed and ctranslate2 as installed here, at the versions installed here (the project's pins), leaves out
what the machine has, and puts one wheel of each of the rest in --out: a binary wheel for the
machine's Python (3.12, manylinux x86-64) from PyPI, or, for a pure-Python package PyPI has only
as source, one built here. PuLP is left out (Snakemake's ILP scheduler; the check runs the
greedy one). The whole must stay under the 64 MiB that travels with the working tree.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

HERE = Path(__file__).resolve().parent
ROOTS = ("a2d", "snakemake", "deepspeed", "ctranslate2")  # a2d itself travels as the working tree
LEFT_OUT = {"pulp", "torch", "triton", "setuptools", "pip"}
PYTHON, PLATFORMS = "3.12", ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                             "manylinux2014_x86_64", "manylinux1_x86_64")
LIMIT_MIB = 60


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def device_packages() -> set[str]:
    lines = (HERE / "device-packages.txt").read_text().splitlines()
    return {normalised(line) for line in lines if line.strip() and not line.startswith("#")}


def closure(roots, have: set[str]) -> dict[str, str]:
    """name -> installed version of every distribution the roots need on the machine, minus `have`."""
    needed, todo = {}, list(roots)
    while todo:
        name = normalised(todo.pop())
        if name in needed or name in have or name in LEFT_OUT or name.startswith("nvidia-"):
            continue
        needed[name] = None if name == "a2d" else metadata.version(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)  # its marker for the machine's Python, no extras
            if requirement.marker is None or requirement.marker.evaluate({"python_version": PYTHON, "extra": ""}):
                todo.append(requirement.name)
    return needed


def fetch(name: str, version: str, out: Path) -> None:
    """A binary wheel for the machine's Python from PyPI, else a wheel built here from the source."""
    platforms = [flag for platform in PLATFORMS for flag in ("--platform", platform)]
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    got = subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON,
                          "--implementation", "cp", *platforms, "-d", str(out), f"{name}=={version}"],
                         capture_output=True, text=True)
    if got.returncode != 0:
        subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), f"{name}=={version}"],
                       check=True, capture_output=True, text=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.wheels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=".whl")
    args = p.parse_args(argv)
    out = Path(args.out)
    needed = {name: version for name, version in closure(ROOTS, device_packages()).items() if version}
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name, version in sorted(needed.items()):
        fetch(name, version, partial)
    wheels = sorted(partial.glob("*.whl"), key=lambda w: w.stat().st_size, reverse=True)
    total = sum(w.stat().st_size for w in wheels) / 2 ** 20
    if total > LIMIT_MIB:
        biggest = ", ".join(f"{w.name} ({w.stat().st_size / 2 ** 20:.1f} MiB)" for w in wheels[:3])
        raise SystemExit(f"{len(wheels)} wheels of {total:.1f} MiB, over the {LIMIT_MIB} MiB that can travel; "
                         f"largest: {biggest}")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    print(f"{len(wheels)} wheels, {total:.1f} MiB, in {out}: " + " ".join(sorted(needed)))


if __name__ == "__main__":
    main()
