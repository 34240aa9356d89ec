"""Matplotlib figures for reports: checked paths, and writing atomically (the search's Pareto plot, the
sensitivity report's bar chart, the mixed-precision steps)."""

import os
import tempfile


def save_figure(figure, path, extension, dpi=120):
    """Saves `figure` to a temporary file next to `path`, then renames it: no half-written image is left.

    Args:
        figure: a matplotlib `Figure`.
        path: where to write (its folder must exist).
        extension: the image format, e.g. "png", "svg", "pdf".
        dpi: resolution of raster formats.

    Returns:
        `path`.
    """
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".kopt-", suffix=f".{extension}.part")
    os.close(handle)
    try:
        figure.savefig(temporary, format=extension, dpi=dpi)
        from kopt.convert._files import normal_mode

        normal_mode(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def new_figure(path, figsize, what):
    """A matplotlib `Figure` (without pyplot) and the image format that `path`'s extension picks.

    Args:
        path: where the figure will be written; its folder must exist.
        figsize: the figure's size in inches.
        what: the caller, for the ImportError ("SensitivityReport.plot").

    Raises:
        ValueError: `path` has no extension or its folder does not exist.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{what} needs matplotlib: pip install matplotlib") from e
    extension = os.path.splitext(str(path))[1].lstrip(".").lower()
    if not extension:
        raise ValueError(f"`path` needs an image extension such as .png or .svg, got {path!r}.")
    from kopt.convert._files import check_folder

    check_folder(path)
    return Figure(figsize=figsize, layout="constrained"), extension
