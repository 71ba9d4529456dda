"""Checkpoint and resume of a REML run (``--checkpoint FILE`` / ``checkpoint =``).

After every AI-REML round the state is written as JSON, atomically (a temporary
file in the same folder, flushed and fsync'ed, then ``os.replace``), so a job
killed at any moment leaves either the previous or the new checkpoint, never a
torn one:

    {"format": 1, "fingerprint": {...}, "theta": [...], "rounds": [...],
     "ai": [[...], ...] | null, "ai_theta": [...] | null,
     "status": "running" | "converged" | "not converged"}

``rounds`` holds each round's iteration, kind, logLik, step, decrement, seconds and
θ. ``ai`` is the average-information matrix (k × k, θ's order) at ``ai_theta``, in
every checkpoint: after a round, the AI at that round's θ (the matrix AI-REML's next
step uses; its inverse gives the variance parameters' standard errors there), and in
the final checkpoint of a run (status "converged" or "not converged") the AI of the
last evaluation (``Fit.internals.ai``). A resumed run does not read it back: AI-REML
re-evaluates score and AI at the checkpoint's θ before its first step, exactly as
the uninterrupted run did at that θ, so both take the same steps from there; it is
there so a killed job's last state can be inspected (approximate SEs) without
refitting. The fingerprint names the model and its data — formula, method, residual,
weights, relmat, covary, structure, each data, pedigree and genotype file's size and
SHA-256 (with the genomic settings: model, term, blend, tune, tau, omega), the number of records, the MME's dimension and the number of parameters.
On start, an existing checkpoint whose fingerprint matches is resumed: AI-REML
starts at its θ (``mme.fit(start=θ)``) and the iteration log continues its rounds.
A checkpoint of another model or data is refused (exit 1) with the keys that differ.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .errors import InputError

FORMAT = 1


def file_digest(path) -> dict:
    """Size and SHA-256 of a file (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    path = Path(path)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": h.hexdigest()}


def model_keys(config) -> dict:
    """The model's options and its files' digests (a fingerprint without the sizes)."""
    return {
        "formula": config.formula, "method": config.method.upper(),
        "residual": config.residual, "weights": config.weights,
        "relmat": sorted(config.relmat), "covary": config.covary, "structure": config.structure,
        "data": [file_digest(p) for p in config.data],
        "pedigree": file_digest(config.pedigree) if config.pedigree else None,
        "genomic": _genomic(getattr(config, "genomic", None)),
    }


def fingerprint(config, system) -> dict:
    """What a checkpoint must match: the model's options, its files' digests, its sizes."""
    return {**model_keys(config),
            "n_records": int(system.design.n), "dim": int(system.dim), "k": int(system.k)}


def _genomic(g) -> dict | None:
    """The genotype file's digest and the settings that make H⁻¹ or G⁻¹."""
    if g is None:
        return None
    return {**file_digest(g.file), "model": g.model, "term": g.term, "blend": g.blend,
            "tune": g.tune, "tau": g.tau, "omega": g.omega}


def record_dict(rec) -> dict:
    return {"iteration": int(rec.iteration), "kind": rec.kind, "loglik": float(rec.loglik),
            "step": float(rec.step), "decrement": _num(rec.decrement),
            "seconds": float(rec.seconds), "theta": [float(t) for t in rec.theta]}


def _num(x):
    x = float(x)
    return x if np.isfinite(x) else None


def save(path, fp: dict, theta, rounds: list, status: str = "running", ai=None,
         ai_theta=None) -> None:
    """Write the checkpoint atomically (temporary file + fsync + ``os.replace``)."""
    path = Path(path)
    state = {"format": FORMAT, "fingerprint": fp, "theta": [float(t) for t in theta],
             "rounds": rounds,
             "ai": None if ai is None else [[_num(v) for v in row]
                                            for row in np.atleast_2d(ai)],
             "ai_theta": None if ai_theta is None else [float(t) for t in ai_theta],
             "status": status}
    write_json(path, state)


def write_json(path, state: dict) -> None:
    """``state`` as JSON at ``path``, atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda fh: fh.write(json.dumps(state, indent=1).encode("utf-8")))


def atomic_write(path, write) -> None:
    """Write ``path`` atomically: ``write(fh)`` fills a temporary file (binary) in the same
    folder, which is flushed, fsync'ed and renamed over ``path`` (``os.replace``), so a
    job killed at any moment leaves the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = temporary(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def temporary(path) -> Path:
    """The temporary file :func:`atomic_write` fills before renaming it to ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def load(path) -> dict | None:
    """The checkpoint at ``path``, or None when there is none."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"checkpoint {str(path)!r} is not a checkpoint file ({exc}); "
                         "remove it or choose another --checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "theta" not in state:
        raise InputError(f"checkpoint {str(path)!r} is not a checkpoint of this version; "
                         "remove it or choose another --checkpoint")
    return state


def check(state: dict, fp: dict, path) -> None:
    """Refuse a checkpoint written for another model or data."""
    old = state.get("fingerprint", {})
    diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
    if diff:
        raise InputError(f"checkpoint {str(path)!r} was written for another model or data "
                         f"({', '.join(diff)} differ); remove it or choose another "
                         "--checkpoint")
