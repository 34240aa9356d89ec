"""The README's quickstart and .ci/run stay in step; `import kopt` has no side effects."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _quickstart_commands():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", readme, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_quickstart_has_two_commands_and_ci_runs_the_test_one():
    commands = _quickstart_commands()
    assert len(commands) == 2
    assert "kopt demo" in commands[0]
    assert "pytest" in commands[1] and commands[1].endswith('-m "not slow"')
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci
    assert "\n.venv/bin/python -m pytest -q -n 2 -m slow\n" in ci  # the slow tier runs in CI too


def test_import_kopt_has_no_side_effects():
    code = (
        "import os, sys; before = dict(os.environ); import kopt; "
        "assert dict(os.environ) == before, 'environment changed'; "
        "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules, 'heavy import'; "
        "import kopt.sparsity; assert dict(os.environ) == before; "
        "import keras; assert keras.__version__.startswith('3.')"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)


def _run_section_example(heading, check, tmp_path):
    """Runs the first python block after `heading` in the README, plus `check`, in a fresh process."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(heading):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1) + "\n" + check + "\n"
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_distillation_chain_example_runs(tmp_path):
    """The README's prune + distill -> strip -> QAT + distill -> int8 example, as written."""
    _run_section_example("## Knowledge distillation",
                         "import os; assert os.path.getsize('student_int8.tflite') > 0", tmp_path)


def test_search_example_runs(tmp_path):
    """The README's compression search example, as written: front printed, figure and best model."""
    out = _run_section_example("## Compression-aware search",
                               "import os; assert os.path.getsize('front.png') > 0 and isinstance(best, keras.Model)",
                               tmp_path)
    assert "Trial 4/4" in out and "Pareto front" in out


def _tfmot_public_names():
    """Every name tfmot 0.8's public API imports (`python/core/api/**/__init__.py`), read without importing tfmot."""
    import ast
    import importlib.util

    api = pathlib.Path(importlib.util.find_spec("tensorflow_model_optimization").submodule_search_locations[0])
    api = api / "python" / "core" / "api"
    namespaces = {p.name for p in api.rglob("*") if p.is_dir()}
    names = set()
    for init in api.rglob("__init__.py"):
        for node in ast.walk(ast.parse(init.read_text())):
            if isinstance(node, ast.ImportFrom):
                names |= {alias.asname or alias.name for alias in node.names}
    return names - namespaces - {"clusterable_layer"}  # a module the API re-exports next to its class


def test_migration_table_names_every_public_tfmot_name():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Migrating from tfmot", 1)[1].split("\n## ", 1)[0]
    names = _tfmot_public_names()
    assert len(names) >= 65  # the parse found the API (65 distinct names in tfmot 0.8)
    missing = sorted(name for name in names if not re.search(rf"\b{re.escape(name)}\b", section))
    assert not missing, f"tfmot names missing from the README's migration table: {missing}"
