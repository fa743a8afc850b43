"""The CLI's causal commands: ``rnnlens ablate`` (outputs with and without an ablation) and
``rnnlens probe`` (rank a stored layer's units, train a probe with a control task)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..distributed import connect
from ..errors import InputError
from .support import open_model as _open
from .support import units as _units


def _steps(text: str) -> int | slice:
    try:
        if ":" not in text:
            return int(text)
        parts = [int(p) if p.strip() else None for p in text.split(":")]
        if len(parts) > 3:
            raise ValueError
        return slice(*parts)
    except ValueError:
        raise InputError(f"--steps takes a step (5), or a range like 5: or 2:7; received {text!r}.") from None


def _leaves(obj: Any, prefix: str) -> dict[str, Any]:
    import numpy as np

    if isinstance(obj, np.ndarray):
        return {prefix: obj}
    if isinstance(obj, (tuple, list)):
        return {k: v for i, o in enumerate(obj) for k, v in _leaves(o, f"{prefix}_{i}").items()}
    if isinstance(obj, dict):
        return {k: v for key, o in obj.items() for k, v in _leaves(o, f"{prefix}_{key}").items()}
    return {}


def cmd_ablate(args: argparse.Namespace) -> int:
    import numpy as np

    import rnnlens

    if not str(args.out).endswith(".npz"):
        raise InputError(f"-o must name an .npz file; received {args.out!r}.")
    model = _open(args)
    try:
        loaded = np.load(args.data, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"Cannot read {args.data!r} as .npy/.npz: {e}") from None
    x = loaded["x"] if isinstance(loaded, np.lib.npyio.NpzFile) else loaded
    step = _steps(args.steps)
    units = _units(args.units)
    edit = rnnlens.Edit(
        args.layer, step, field=args.field, units=units, direction=args.direction, set=args.value
    )
    edited = rnnlens.intervene(model, x, edit).outputs
    base = rnnlens.intervene(model, x, rnnlens.Edit(args.layer, step, field=args.field, add=0.0)).outputs
    arrays = _leaves(edited, "ablated") | _leaves(base, "baseline")
    np.savez(args.out, **arrays)
    change = max(
        (
            float(np.abs(a - arrays["baseline" + k[len("ablated") :]]).max())
            for k, a in arrays.items()
            if k.startswith("ablated")
        ),
        default=0.0,
    )
    print(
        f"wrote {args.out}: {len(arrays) // 2} output array(s) with and without; max |change| {change:.4g}",
        file=sys.stderr,
    )
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    import contextlib

    import numpy as np

    import rnnlens

    from .support import storage_options

    states = rnnlens.open_states(args.store, storage_options=storage_options(args))

    def load(path: str, what: str) -> Any:
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"Cannot read {what} {path!r} as .npy: {e}") from None

    labels = load(args.labels, "--labels")
    types = None if args.types is None else load(args.types, "--types")
    with contextlib.ExitStack() as stack:
        client = None
        if args.scheduler:
            client = stack.enter_context(connect(args.scheduler))
        ranking = rnnlens.rank_units(
            states, labels, layer=args.layer, field=args.field, permutations=args.permutations, client=client
        )
    print(ranking)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        ax = ranking.plot()
        ax.figure.savefig(args.plot, bbox_inches="tight")
        print(f"wrote {args.plot}", file=sys.stderr)
    found = rnnlens.probe(states, labels, layer=args.layer, field=args.field, kind=args.kind, types=types)
    print(found)
    return 0
