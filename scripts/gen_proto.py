"""Generates the Python stubs (messages, .pyi, gRPC) for every proto into gen/python/."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
OUT = ROOT / "gen" / "python"


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={OUT}",
        f"--pyi_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--plugin=protoc-gen-mypy_grpc={plugin}",
        f"--mypy_grpc_out={OUT}",
        *files,
    ]
    code = protoc.main(args)
    if code != 0:
        return int(code)
    for folder in (p for p in OUT.rglob("*") if p.is_dir()):
        (folder / "__init__.py").touch()
    (OUT / "llmmesh" / "py.typed").touch()
    print(f"generated {len(files)} protos into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
