"""Re-resolves requirements/direct.txt into requirements/lock.txt in a scratch virtualenv.

vLLM's CPU build asks for CUDA builds of torchvision/torchaudio/torchcodec that break
`transformers`; they are removed before freezing, and the lock is installed with --no-deps.
Packages listed on '# no-deps:' lines go in without their dependencies.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIRECT = ROOT / "requirements" / "direct.txt"
LOCK = ROOT / "requirements" / "lock.txt"
EXCLUDED = ("torchvision", "torchaudio", "torchcodec")
HEADER = """\
# Full pinned dependency set, installed with --no-deps (see requirements/direct.txt and 'make lock').
# vLLM's CPU build asks for CUDA builds of torchvision/torchaudio/torchcodec that break transformers:
# they are left out on purpose, and --no-deps keeps them out.
"""


def main() -> int:
    lines = DIRECT.read_text().splitlines()
    wanted = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    no_deps = [p for ln in lines if ln.startswith("# no-deps:") for p in ln.split(":", 1)[1].split()]
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([sys.executable, "-m", "venv", scratch], check=True)
        pip = [f"{scratch}/bin/python", "-m", "pip", "--disable-pip-version-check"]
        subprocess.run([*pip, "install", *wanted], check=True)
        subprocess.run([*pip, "install", "--no-deps", *no_deps], check=True)
        subprocess.run([*pip, "uninstall", "-y", *EXCLUDED], check=True)
        frozen = subprocess.run([*pip, "freeze"], check=True, capture_output=True, text=True).stdout
    pins = [ln for ln in frozen.splitlines() if ln.split("==")[0].lower() not in EXCLUDED]
    LOCK.write_text(HEADER + "\n".join(pins) + "\n")
    print(f"wrote {len(pins)} pins to {LOCK.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
