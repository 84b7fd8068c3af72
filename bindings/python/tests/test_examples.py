"""The runnable examples in examples/python run and their own checks pass."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gaussskip as gs

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "python"
NAMES = ["kdiffusion_skip", "edm_restart", "diffusers_skip", "choose_skip", "fit_and_convert", "diffusers_pipeline"]
# Examples that need more than NumPy: the packages they import.
NEEDS = {"diffusers_pipeline": ["torch", "diffusers", "transformers"]}


@pytest.mark.parametrize("name", NAMES)
def test_example_runs_and_its_checks_pass(name):
    script = EXAMPLES / f"{name}.py"
    assert script.is_file(), f"missing example {script}"
    missing = [m for m in NEEDS.get(name, []) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    env = dict(os.environ)
    pkg_parent = str(Path(gs.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAILED" not in r.stdout
    assert r.stdout.rstrip().endswith("OK"), r.stdout
