"""A figure of a compression search: accuracy against size and latency, the Pareto front highlighted."""

import os

from kopt._keras.figures import save_figure


def plot_pareto(results, front, path, title=None):
    """Writes accuracy vs .tflite size and vs latency for completed trials, the front highlighted and labelled.

    Args:
        results: `TrialResult`s (failed ones are left out).
        front: the `TrialResult`s on the Pareto front (drawn larger, joined, and
            labelled with their compression).
        path: the image file; its extension picks the format (.png, .svg, .pdf).
            Written atomically.
        title: the figure's title.

    Returns:
        `path`.

    Example:

    ```python
    result = kopt.search.TrialResult("0", "COMPLETED", None, {}, {"accuracy": 0.97, "size": 9000, "latency": 0.02},
                                     None, {"sparsity": 0.5, "quantization": "int8", "qat": True})
    kopt.search.plot_pareto([result], [result], "front.png")
    ```
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, ScalarFormatter
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("plot_pareto needs matplotlib: pip install matplotlib") from e
    extension = os.path.splitext(str(path))[1].lstrip(".").lower()
    if not extension:
        raise ValueError(f"`path` needs an image extension such as .png or .svg, got {path!r}.")
    from kopt.search.pareto import pareto_front

    completed = [r for r in results if r.completed]
    on_front = {r.trial_id for r in front}
    figure = Figure(figsize=(12, 5), layout="constrained")
    axes = figure.subplots(1, 2)
    for ax, metric, unit in ((axes[0], "size", ".tflite size"), (axes[1], "latency", "latency (ms, median)")):
        shown = [r for r in completed if metric in r.metrics]
        others = [r for r in shown if r.trial_id not in on_front]
        best = [r for r in shown if r.trial_id in on_front]
        ax.scatter([r.metrics[metric] for r in others], [r.metrics["accuracy"] for r in others],
                   c="0.6", s=25, label="trial")
        ax.scatter([r.metrics[metric] for r in best], [r.metrics["accuracy"] for r in best],
                   c="C3", s=50, label="Pareto front", zorder=3)
        # The trade-off in this plane alone: the best accuracy reachable at each size (or latency).
        plane = sorted(pareto_front(shown, ("accuracy", metric)), key=lambda r: r.metrics[metric])
        ax.step([r.metrics[metric] for r in plane], [r.metrics["accuracy"] for r in plane], where="post",
                c="C3", alpha=0.5, lw=1)
        for r in best:
            ax.annotate(r.label, (r.metrics[metric], r.metrics["accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7)
        if metric == "size":  # sizes span decades: log scale, ticks at 1, 2, 5 x 10^k, in kB
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g} kB"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.xaxis.set_major_formatter(ScalarFormatter(useOffset=False))
            ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel(unit)
        ax.set_ylabel("accuracy of the .tflite file")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path, extension)
