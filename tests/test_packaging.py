"""The distribution's layout: import names, the wheel's contents, light client imports."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_client_import_loads_no_heavy_modules() -> None:
    code = (
        "import sys, laser.client, laser.bandit\n"
        "heavy = {'torch', 'vllm', 'fastapi', 'transformers', 'uvicorn'} & set(sys.modules)\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bandit_needs_numpy_only() -> None:
    code = (
        "import sys, laser.bandit\n"
        "mods = {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(mods & {'httpx', 'pydantic', 'torch', 'scipy', 'fastapi'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_wheel_maps_folders_to_laser_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("laser_server-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in ("bandit", "client", "server"):
        assert f"laser/{pkg}/__init__.py" in names
        assert not any(n.startswith(f"{pkg}/") for n in names)  # no bare top-level packages
    assert "laser/bandit/linucb.py" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "laser-server = laser.server.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
