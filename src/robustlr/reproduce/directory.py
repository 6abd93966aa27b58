"""The output directory of an experiment holds that experiment only.

The first invocation of ``robustlr reproduce NAME --out DIR`` records the experiment's identity in
``DIR/experiment.json``: its ``name`` and whether it is the ``--smallest`` variant.  A later invocation with
another name or variant is refused before anything is written, the way a training run of other settings is
(:func:`robustlr.train.reuse.refuse_differences`), so one experiment never overwrites another's ``table.json``
or mixes its runs with another's.  A directory written before ``experiment.json`` existed is identified by its
``table.json``.

A changed config of the *same* experiment is not refused here: every unit it would mix is tied to its own
settings already.  A trained run of other settings is refused by :func:`robustlr.train.ensure_trained` (and
recorded as failed, naming the differing keys); an attack cell or spectrum record of other settings is computed
again (:mod:`robustlr.reproduce.records`); runs added to the config are trained, and the table always lists
the config's current runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from ..train.reuse import refuse_differences
from .experiment import Experiment
from .records import read_object
from .tables import read_table

__all__ = ["IDENTITY_FILE", "claim_directory", "identity"]

IDENTITY_FILE = "experiment.json"
"""The file of an experiment directory that names the experiment it holds."""

_SHOWN = 5  # entries of a foreign directory listed in the error


def identity(exp: Experiment, smallest: bool) -> dict[str, Any]:
    """What ``experiment.json`` records: the experiment's ``name`` and ``smallest`` (the variant)."""
    return {"experiment": exp.name, "smallest": smallest}


def _stored(out: Path) -> tuple[dict[str, Any], Path] | None:
    """The identity recorded in ``out`` and the file it was read from, or ``None`` if none is."""
    if (out / IDENTITY_FILE).exists():
        return read_object(out / IDENTITY_FILE, "experiment record", ("experiment", "smallest")), out / IDENTITY_FILE
    if (out / "table.json").exists():
        table = read_table(out / "table.json")
        return {"experiment": table["experiment"], "smallest": table.get("smallest", False)}, out / "table.json"
    return None


def claim_directory(exp: Experiment, out: Path, smallest: bool) -> None:
    """Make ``out`` the directory of ``exp`` (its ``smallest`` variant or not), or refuse it.

    Checked, before anything is written: ``out`` is a directory or does not exist yet; the identity it records
    (``experiment.json``, or ``table.json`` for an older directory) is ``exp``'s; a directory that records none
    is empty or holds only directories named after ``exp``'s runs (an older, interrupted invocation).  Then
    ``experiment.json`` is written if it is missing.

    Raises:
        ValueError: naming ``--out``, the directory, the experiment it holds (or its entries) and the one asked
            for; ``out`` is left as it was.
    """
    wanted = identity(exp, smallest)
    label = f"{exp.name}{' --smallest' if smallest else ''}"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out must be a directory for experiment {label}; {str(out)!r} is a file")
    stored = _stored(out) if out.is_dir() else None
    if stored is not None:
        found, source = stored
        differences = {key: (found.get(key), value) for key, value in wanted.items() if found.get(key) != value}
        refuse_differences(f"--out {str(out)!r} holds experiment {found.get('experiment')!r} ({source.name}), "
                           f"asked for {label}: an experiment", differences,
                           f"a new or empty directory, or the directory of {label} (it is then resumed)")
        if source.name == IDENTITY_FILE:
            return
    elif out.is_dir():
        runs = {run["id"] for run in exp.runs}
        foreign = sorted(p.name for p in out.iterdir() if not (p.is_dir() and p.name in runs))
        if foreign:
            raise ValueError(f"--out {str(out)!r} is not the directory of an experiment (it holds "
                             f"{foreign[:_SHOWN]}{' ...' if len(foreign) > _SHOWN else ''} and no {IDENTITY_FILE}); "
                             f"allowed for {label}: a new or empty directory, or one written by `robustlr reproduce "
                             f"{exp.name}`")
    atomic_write_text(out / IDENTITY_FILE, json.dumps(wanted, indent=2) + "\n")
