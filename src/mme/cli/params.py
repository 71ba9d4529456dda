"""The parameter file of ``mme run`` (TOML, read with the standard library's tomllib).

A parameter file is data, not code: its formula passes the allow-list of
:mod:`mme.cli.formulas` before anything is fitted, unknown keys are refused (a typo
is not silently ignored) and relative paths are read from the parameter file's folder.

Keys (only ``data.files`` and ``model.formula`` are required)::

    [data]
    files = ["records.csv"]      # one file or several with the same columns (stacked);
                                 # "file" = "records.csv" is accepted too. CSV, tab- or
                                 # whitespace-separated text (BLUPF90), .parquet (pyarrow)
    sep = "auto"                 # auto | comma | tab | semicolon | whitespace | parquet
    names = ["id", "herd", "y"]  # column names of a file without a header line
    factors = ["herd", "sex"]    # columns read as strings (factors, ids); the grouping
                                 # columns of random terms always are
    missing = ["NA", "-999"]     # tokens that mean a missing value

    [model]
    formula = "weight ~ sex + (1|herd) + (1|id)"
    method = "REML"              # REML | ML | MC-REML (Monte-Carlo REML, also under MPI)
    relmat = ["id"]              # random terms whose covariance is sigma2 A (pedigree)
    residual = "us(trait)"       # us(trait) | diag(trait) | by(col) | ar1(col):ar1(row) ...
    weights = "w"                # column of prior weights: Var(e_i) = sigma2 / w_i
    covary = {genetic = ["animal", "dam"]}   # terms joined into one unstructured G0
    structure = {gen = "fa(2)"}  # factor-analytic G0 for a term
    [model.variances]            # known variances: BLUE/BLUP at them, no REML
    id = 30.0
    Residual = 60.0              # a d x d list of lists for a term with several columns

    [pedigree]
    file = "pedigree.txt"        # id, sire, dam (a header naming them, or the first
                                 # three columns of a file without one, as BLUPF90)
    sep = "auto"
    missing = ["0"]              # unknown-parent codes (default: "", "0", "NA")
    columns = ["id", "sire", "dam"]   # their names in the file's header

    [options]
    max_iter = 200               # most AI-REML rounds
    ordering = "auto"            # CHOLMOD ordering: auto | amd | metis | nesdis | default
    checkpoint = "fit.ckpt.json" # write theta after each round; resume when it exists
    memory_limit = "8G"          # memory the fit may use (default: what the machine or
                                 # its cgroup has available); "off" skips the forecast
    solver = "direct"            # direct (CHOLMOD) | pcg: BLUP by conjugate gradients at
                                 # known [model.variances], no factorization (no PEV)
    samples = 50                 # MC-REML: simulated data sets (right-hand sides)
    seed = 1                     # MC-REML: seed of the simulated data

    [output]
    folder = "results"           # default: "mme_out" beside the parameter file
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

#: the sections and keys a parameter file may have
SCHEMA = {
    "data": {"files", "file", "sep", "names", "factors", "missing"},
    "model": {"formula", "method", "relmat", "residual", "weights", "covary", "structure",
              "variances"},
    "pedigree": {"file", "sep", "missing", "columns"},
    "options": {"max_iter", "ordering", "checkpoint", "memory_limit", "solver", "samples",
                "seed"},
    "output": {"folder"},
}
REQUIRED = (("data", "files"), ("model", "formula"))


@dataclass
class RunConfig:
    """Everything one fit of the command line needs (from options or a parameter file)."""

    formula: str
    data: list
    sep: str = "auto"
    names: list | None = None
    factors: list = field(default_factory=list)
    missing: list | None = None
    method: str = "REML"
    relmat: list = field(default_factory=list)
    residual: str | None = None
    weights: str | None = None
    covary: dict | None = None
    structure: dict | None = None
    variances: dict | None = None
    pedigree: str | None = None
    pedigree_sep: str = "auto"
    pedigree_missing: list | None = None
    pedigree_columns: tuple = ("id", "sire", "dam")
    max_iter: int = 200
    ordering: str = "auto"
    checkpoint: str | None = None
    memory_limit: str | None = None
    solver: str = "direct"
    mc_samples: int = 50
    mc_seed: int = 1
    out: str = "mme_out"
    source: str = "command line"


def _type(where, value, types, what):
    if not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise InputError(f"{where}: {what} must be {names}, got {value!r}")
    return value


def _str_list(where, value, what) -> list:
    if isinstance(value, str):
        return [value]
    _type(where, value, list, what)
    for v in value:
        _type(where, v, str, what + " entries")
    return list(value)


def load_params(path) -> RunConfig:
    """Read and check a parameter file; raise :class:`InputError` naming the key at fault."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"parameter file {str(path)!r} not found")
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    where = str(path)
    for sec, val in doc.items():
        if sec not in SCHEMA:
            raise InputError(f"{where}: unknown section [{sec}] (sections: "
                             f"{', '.join(SCHEMA)})")
        _type(where, val, dict, f"[{sec}]")
        for key in val:
            if key not in SCHEMA[sec]:
                raise InputError(f"{where}: unknown key {key!r} in [{sec}] (keys: "
                                 f"{', '.join(sorted(SCHEMA[sec]))})")
    data, model = doc.get("data", {}), doc.get("model", {})
    ped, opt, out = doc.get("pedigree", {}), doc.get("options", {}), doc.get("output", {})
    if "file" in data and "files" in data:
        raise InputError(f"{where}: [data] has both 'file' and 'files'")
    files = data.get("files", data.get("file"))
    if files is None:
        raise InputError(f"{where}: missing key 'files' in [data] (the data file(s))")
    if "formula" not in model:
        raise InputError(f"{where}: missing key 'formula' in [model]")
    base = path.parent

    def rel(p):
        return str(p if Path(p).is_absolute() else base / p)

    cfg = RunConfig(formula=_type(where, model["formula"], str, "[model] formula"),
                    data=[rel(p) for p in _str_list(where, files, "[data] files")],
                    source=where)
    cfg.sep = _type(where, data.get("sep", "auto"), str, "[data] sep")
    if "names" in data:
        cfg.names = _str_list(where, data["names"], "[data] names")
    cfg.factors = _str_list(where, data.get("factors", []), "[data] factors")
    if "missing" in data:
        cfg.missing = [str(v) for v in _type(where, data["missing"], list, "[data] missing")]
    cfg.method = _type(where, model.get("method", "REML"), str, "[model] method").upper()
    if cfg.method not in ("REML", "ML", "MC-REML"):
        raise InputError(f"{where}: [model] method must be REML, ML or MC-REML, got "
                         f"{cfg.method!r}")
    cfg.relmat = _str_list(where, model.get("relmat", []), "[model] relmat")
    cfg.residual = _type(where, model.get("residual"), (str, type(None)), "[model] residual")
    cfg.weights = _type(where, model.get("weights"), (str, type(None)), "[model] weights")
    if "covary" in model:
        cv = _type(where, model["covary"], dict, "[model] covary")
        cfg.covary = {k: _str_list(where, v, f"[model] covary.{k}") for k, v in cv.items()}
    if "structure" in model:
        st = _type(where, model["structure"], dict, "[model] structure")
        cfg.structure = {k: _type(where, v, str, f"[model] structure.{k}")
                         for k, v in st.items()}
    if "variances" in model:
        cfg.variances = _type(where, model["variances"], dict, "[model.variances]")
    if ped:
        if "file" not in ped:
            raise InputError(f"{where}: missing key 'file' in [pedigree]")
        cfg.pedigree = rel(_type(where, ped["file"], str, "[pedigree] file"))
        cfg.pedigree_sep = _type(where, ped.get("sep", "auto"), str, "[pedigree] sep")
        if "missing" in ped:
            cfg.pedigree_missing = [str(v) for v in
                                    _type(where, ped["missing"], list, "[pedigree] missing")]
        if "columns" in ped:
            cols = _str_list(where, ped["columns"], "[pedigree] columns")
            if len(cols) != 3:
                raise InputError(f"{where}: [pedigree] columns must name id, sire and dam")
            cfg.pedigree_columns = tuple(cols)
        if not cfg.relmat:
            raise InputError(f"{where}: a [pedigree] is given but no term follows it: set "
                             "relmat = [\"id\"] in [model]")
    elif cfg.relmat:
        raise InputError(f"{where}: [model] relmat needs a [pedigree] file")
    cfg.max_iter = _type(where, opt.get("max_iter", 200), int, "[options] max_iter")
    cfg.ordering = _type(where, opt.get("ordering", "auto"), str, "[options] ordering")
    if "checkpoint" in opt:
        cfg.checkpoint = rel(_type(where, opt["checkpoint"], str, "[options] checkpoint"))
    if "memory_limit" in opt:
        cfg.memory_limit = str(_type(where, opt["memory_limit"], (str, int),
                                     "[options] memory_limit"))
    cfg.solver = _type(where, opt.get("solver", "direct"), str, "[options] solver").lower()
    if cfg.solver not in ("direct", "pcg"):
        raise InputError(f"{where}: [options] solver must be direct or pcg, got {cfg.solver!r}")
    cfg.mc_samples = _type(where, opt.get("samples", 50), int, "[options] samples")
    cfg.mc_seed = _type(where, opt.get("seed", 1), int, "[options] seed")
    cfg.out = rel(_type(where, out.get("folder", "mme_out"), str, "[output] folder"))
    return cfg


def parse_variances(text: str) -> dict:
    """``"id=30,Residual=60"`` → {"id": 30.0, "Residual": 60.0}; a value may be a JSON
    matrix: ``"genetic=[[150,-40],[-40,90]],Residual=60"``."""
    import json
    out, i, s = {}, 0, text.strip()
    dec = json.JSONDecoder()
    while i < len(s):
        j = s.find("=", i)
        if j < 0:
            raise InputError(f"--variances {text!r}: expected name=value pairs")
        name = s[i:j].strip()
        if not name:
            raise InputError(f"--variances {text!r}: a value without a name")
        k = j + 1
        while k < len(s) and s[k] == " ":
            k += 1
        try:
            value, k = dec.raw_decode(s, k)
        except json.JSONDecodeError:
            raise InputError(f"--variances {text!r}: the value of {name!r} is not a "
                             "number or a [[...]] matrix") from None
        if not isinstance(value, (int, float, list)) or isinstance(value, bool):
            raise InputError(f"--variances {text!r}: the value of {name!r} is not a number")
        out[name] = value
        while k < len(s) and s[k] in " ,":
            k += 1
        i = k
    if not out:
        raise InputError(f"--variances {text!r}: expected name=value pairs")
    return out
