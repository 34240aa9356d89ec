"""Every notebook in notebooks/ opens in Colab, installs kopt there, runs top to bottom (small settings) in a fresh
process, and ends with a figure."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
REPOSITORY = "https://github.com/kopt-dev/kopt"
BADGE = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
         "(https://colab.research.google.com/github/kopt-dev/kopt/blob/main/notebooks/{name})")
# Colab installs kopt from the repository (the extras as in pyproject.toml: demo for the data, plot for the figures).
KOPT_INSTALL = re.compile(r'%pip install -q "kopt-keras\[demo(,plot)?\] @ git\+' + re.escape(REPOSITORY) + '"')
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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

    # Opens in Colab: the badge in the first markdown cell points at this very file.
    assert notebook["cells"][0]["cell_type"] == "markdown"
    assert BADGE.format(name=path.name) in _sources(path, "markdown")[0]

    # The first code cell installs kopt in Colab, with magics only (which the run below skips).
    install = [line.strip() for line in _sources(path, "code")[0].splitlines() if line.strip()]
    assert install and all(line.startswith("%pip") for line in install), install
    assert sum(bool(KOPT_INSTALL.fullmatch(line)) for line in install) == 1, install
    assert "-e ./kopt" not in path.read_text()  # the old "clone the repository first" instructions

    # The last code cell draws a figure, shown with pyplot and saved for the run below to check.
    last = _sources(path, "code")[-1]
    assert "plt.show()" in last.splitlines()[-1]
    _figure_file(path)


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
