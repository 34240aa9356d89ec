"""Every notebook in notebooks/ installs kopt from what exists (a checkout's wheel, uploaded), runs top to bottom
(small settings) in a fresh process, and ends with a figure."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

import kopt

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# The wheel `python -m build --wheel` makes in a checkout (the distribution name normalized as in wheel file names);
# kopt has no public repository or package index entry, so Colab installs it from that file, uploaded.
PYPROJECT = (ROOT / "pyproject.toml").read_text()
DISTRIBUTION = re.search(r'^name = "([^"]+)"', PYPROJECT, re.M).group(1)
WHEEL = f"{re.sub(r'[-_.]+', '_', DISTRIBUTION).lower()}-{kopt.__version__}-py3-none-any.whl"
# The extras as in pyproject.toml: demo for the data, plot for the figures.
KOPT_INSTALL = re.compile(r'%pip install -q "' + re.escape(WHEEL) + r'\[demo(,plot)?\]"')
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_no_invented_urls():
    """No repository that does not exist: no link to a kopt repository on GitHub, no Colab badge opening one."""
    for path in [ROOT / "README.md", ROOT / "pyproject.toml", *NOTEBOOKS]:
        text = path.read_text()
        assert not re.search(r"github\.com/[\w.-]+/kopt\b", text), path.name
        assert "colab.research.google.com/github" not in text, path.name
        assert "git+https://" not in text, path.name
    assert "[project.urls]" not in PYPROJECT


def test_readme_installs_what_exists():
    install = (ROOT / "README.md").read_text().split("## Installing", 1)[1].split("\n## ", 1)[0]
    assert 'pip install -e ".[demo]"' in install  # a checkout
    assert "python -m build" in install and f"dist/{WHEEL}" in install  # the wheel a checkout builds
    assert f'pip install "{WHEEL}[demo]"' in install


def _notebook(path):
    return json.loads(path.read_text())


def _sources(path, cell_type):
    return ["".join(cell["source"]) for cell in _notebook(path)["cells"] if cell["cell_type"] == cell_type]


def _script(path):
    lines = []
    for source in _sources(path, "code"):
        # IPython magics and shell escapes are Colab setup, not the notebook's logic.
        lines += [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    return "\n".join(lines)


def _figure_file(path):
    """The .png file that the notebook's last code cell saves its figure to."""
    names = re.findall(r"""savefig\(\s*["']([^"']+\.png)["']""", _sources(path, "code")[-1])
    assert len(names) == 1, f"the last code cell of {path.name} should save one figure as .png: {names}"
    return names[0]


def test_there_is_a_notebook():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_layout(path):
    notebook = _notebook(path)
    assert notebook["nbformat"] == 4 and notebook["nbformat_minor"] >= 5
    for cell in notebook["cells"]:
        assert cell["cell_type"] in ("markdown", "code") and cell["id"] and isinstance(cell["source"], list)
        if cell["cell_type"] == "code":  # committed without outputs
            assert cell["outputs"] == [] and cell["execution_count"] is None
    ids = [cell["id"] for cell in notebook["cells"]]
    assert len(set(ids)) == len(ids)

    # The first markdown cell says where the wheel comes from; the first code cell installs it, with magics only
    # (which the run below skips: the test venv has kopt installed from the checkout).
    assert notebook["cells"][0]["cell_type"] == "markdown"
    setup = _sources(path, "markdown")[0]
    assert "python -m build --wheel" in setup and f"dist/{WHEEL}" in setup and "checkout" in setup
    install = [line.strip() for line in _sources(path, "code")[0].splitlines() if line.strip()]
    assert install and all(line.startswith("%pip") for line in install), install
    assert sum(bool(KOPT_INSTALL.fullmatch(line)) for line in install) == 1, install
    assert "-e ./kopt" not in path.read_text()  # the old "clone the repository first" instructions

    # The last code cell draws a figure, shown with pyplot and saved for the run below to check.
    last = _sources(path, "code")[-1]
    assert "plt.show()" in last.splitlines()[-1]
    _figure_file(path)


@pytest.mark.slow  # each notebook runs top to bottom in its own process (slow tier, run by CI)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    env = dict(os.environ, KOPT_NOTEBOOK_SMALL="1", TF_CPP_MIN_LOG_LEVEL="2", MPLBACKEND="Agg")
    env.pop("TF_USE_LEGACY_KERAS", None)
    proc = subprocess.run([sys.executable, "-c", _script(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accuracy" in proc.stdout

    # The figure of the last cell: a non-empty, valid PNG that matplotlib reads back.
    import matplotlib.image

    figure = tmp_path / _figure_file(path)
    assert figure.is_file(), f"{figure.name} not written; files: {sorted(p.name for p in tmp_path.iterdir())}"
    assert figure.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(figure)
    assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0
    assert image.std() > 0  # something drawn, not a blank canvas
