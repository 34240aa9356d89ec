"""Writing a matplotlib figure atomically (the search's Pareto plot, the sensitivity report's bar chart)."""

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
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path
