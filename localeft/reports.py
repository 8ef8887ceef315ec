"""What `score`, `eval` and `generate --html` write: tables of totals and per-token log-probs,
the accuracy table, the accuracy-against-beta plot, the token view's page."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from . import tokenview
from .errors import LocaleftError
from .results import Generation

if TYPE_CHECKING:
    from .engine import Emulator

ROLE_NAMES = {"base": "large_base", "ft": "small_ft", "ref": "small_base"}


def model_names(em: Emulator) -> dict[str, str]:
    return {label: ROLE_NAMES.get(label, label) for label in em.models}


def totals_table(sc, em: Emulator) -> str:
    rows = [("EFT (beta %g)" % sc.beta, sc.totals["eft"])]
    rows += [(model_names(em)[k], v) for k, v in sc.totals.items() if k != "eft"]
    lines = [f"{'':<20}{'tokens':>8}{'log-prob':>12}{'mean':>10}{'perplexity':>12}"]
    for name, t in rows:
        lines.append(
            f"{name:<20}{t.tokens:>8}{t.logprob:>12.3f}{t.mean:>10.3f}{t.perplexity:>12.2f}"
        )
    return "\n".join(lines)


def token_table(sc, em: Emulator) -> str:
    labels = [k for k in sc.totals if k != "eft"]
    head = f"{'token':<18}{'EFT':>9}{'rank':>6}" + "".join(f"{k:>9}" for k in labels)
    lines = [head + "  (* EFT's top choice differs from the large base's)"]
    for r in sc.tokens:
        cells = "".join(f"{r.models[k]:>9.3f}" for k in labels)
        star = " *" if r.top_differs else ""
        lines.append(f"{repr(r.text)[:18]:<18}{r.logprob:>9.3f}{r.rank:>6}{cells}{star}")
    return "\n".join(lines)


def eval_table(rows, n: int) -> str:
    lines = [f"{'':<26}{'accuracy':>10}{'length-normalised':>19}   ({n} items)"]
    for r in rows:
        lines.append(f"{r.name:<26}{r.accuracy:>10.3f}{r.accuracy_norm:>19.3f}")
    return "\n".join(lines)


def plot_format(path: str) -> str:
    """The image format `--plot PATH` asks for (its extension; none: PNG), checked before any
    work: matplotlib must be there and write that format."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise LocaleftError(
            "--plot needs matplotlib: pip install 'localeft[plot]' (or pip install matplotlib)"
        ) from None
    fmt = Path(path).suffix[1:].lower() or "png"
    formats = FigureCanvasBase.get_supported_filetypes()
    if fmt not in formats:
        raise LocaleftError(
            f"--plot {path}: matplotlib cannot write .{fmt} files "
            f"(use .png, .svg, .pdf, or: {', '.join(sorted(formats))})"
        )
    return fmt


def plot_accuracy(rows, path: str, title: str) -> None:
    """Accuracy against beta for EFT, the two models alone as horizontal lines (the paper's
    figure, on the user's data). Drawn in memory, then written: a failed write is an error
    (matplotlib's own writer let a full disk pass silently)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fmt = plot_format(path)
    eft = [r for r in rows if r.beta is not None]
    alone = [r for r in rows if r.beta is None]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, attr, name in zip(axes, ("accuracy", "accuracy_norm"), ("summed", "length-normalised")):
        ax.plot([r.beta for r in eft], [getattr(r, attr) for r in eft], "o-", label="EFT")
        for r, style in zip(alone, ("--", ":")):
            ax.axhline(
                getattr(r, attr),
                linestyle=style,
                color="gray" if style == "--" else "k",
                label=r.name,
            )
        ax.set_xlabel("beta")
        ax.set_title(f"{name} log-likelihood")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    image = io.BytesIO()
    try:
        fig.savefig(image, dpi=110, format=fmt)
    finally:
        plt.close(fig)
    try:
        with open(path, "wb") as f:
            f.write(image.getvalue())
    except OSError as e:
        raise LocaleftError(f"cannot write {path}: {e.strerror or e}") from None


def write_page(path: str, g: Generation, request, em: Emulator, beta: float) -> None:
    prompt = request if isinstance(request, str) else request[-1]["content"]
    meta = f"beta {beta:g}; " + ", ".join(
        f"{label}: {m.path.name}" for label, m in em.models.items()
    )
    try:
        Path(path).write_text(
            tokenview.html_page(g.logprobs or [], "localeft token view", prompt, meta),
            encoding="utf-8",
        )
    except OSError as e:
        raise LocaleftError(f"cannot write {path}: {e.strerror or e}") from None
