"""Draw every diagram the notebooks link, into notebooks/figures/ (or another folder).

Each module figures/figNN.py (NN: the notebook's number) lists its pictures in a dict
FIGURES = {"NN_name.png": function}, each function returning a matplotlib Figure. This script
collects them all and saves each one; the committed PNGs are its output, and
tests/test_course.py checks that it still draws every one of them, the same.
Run from the repository's root:  python figures/make_figures.py [--out DIR] [NAME ...]
"""

import argparse
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = ROOT / "notebooks" / "figures"
DPI = 110
sys.path[:0] = [str(HERE), str(ROOT)]  # `common` and `previous_chapters` for the modules


def all_figures() -> dict:
    """{file name: drawing function} from every figures/figNN.py, in notebook order."""
    figures = {}
    for path in sorted(HERE.glob("fig[0-9][0-9].py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name, draw in module.FIGURES.items():
            if not name.startswith(path.stem[3:5] + "_") or name in figures:
                raise ValueError(f"{path.name}: {name} must start with its notebook's number "
                                 "and be unique")
            figures[name] = draw
    return figures


def save(fig, path: Path) -> None:
    """Save without the metadata that changes from run to run (software version, date)."""
    import matplotlib.pyplot as plt

    kind = path.suffix.lstrip(".")
    metadata = {"Software": None} if kind == "png" else {"Date": None, "Creator": None}
    fig.savefig(path, dpi=DPI, metadata=metadata, facecolor="white")
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="only these files (default: all)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"folder (default: {OUT})")
    args = parser.parse_args(argv)
    figures = all_figures()
    unknown = sorted(set(args.names) - set(figures))
    if unknown:
        sys.exit(f"no figure module draws {unknown}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or figures:
        save(figures[name](), args.out / name)
        print(f"wrote {args.out.name}/{name}")


if __name__ == "__main__":
    main()
