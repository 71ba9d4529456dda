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

    [genomic]
    file = "genotypes.txt"       # one row per animal: id, then its genotypes 0/1/2, as
                                 # BLUPF90 writes them ("id 0120112...", one digit per
                                 # marker, 5 = missing) or a table (id m1 m2 ..., with or
                                 # without a header); missing genotypes are refused
    sep = "auto"                 # of a table: auto | comma | tab | semicolon | whitespace
    model = "single-step"        # single-step: H^-1 from [pedigree] and G | gblup: G only
    term = "id"                  # the random term it applies to (default: the relmat term)
    blend = 0.05                 # G <- (1 - w) G + w A22 (w I without a pedigree); 0: none
    tune = "diag-offdiag"        # put G on A22's scale first: diag-offdiag | mean | none
    tau = 1.0                    # single-step: H^-1 = A^-1 + [0 0; 0 tau G^-1 - omega A22^-1]
    omega = 1.0

    [options]
    max_iter = 200               # most AI-REML rounds
    ordering = "auto"            # CHOLMOD ordering: auto | amd | metis | nesdis | default
    checkpoint = "fit.ckpt.json" # write theta after each round; resume when it exists
    checkpoint_every = 600       # distributed BLUP (PCG): seconds between checkpoints
    memory_limit = "8G"          # memory the fit may use (default: what the machine or
                                 # its cgroup has available); "off" skips the forecast
    solver = "direct"            # direct (CHOLMOD) | pcg: BLUP by conjugate gradients at
                                 # known [model.variances], no factorization (no PEV)
    threads = 2                  # BLAS threads of the run, every pool (default: as is)
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
from .genomic import MODELS as GENOMIC_MODELS, TUNES, GenomicConfig

#: the sections and keys a parameter file may have
SCHEMA = {
    "data": {"files", "file", "sep", "names", "factors", "missing"},
    "model": {"formula", "method", "relmat", "residual", "weights", "covary", "structure",
              "variances"},
    "pedigree": {"file", "sep", "missing", "columns"},
    "genomic": {"file", "sep", "term", "model", "blend", "tune", "tau", "omega"},
    "options": {"max_iter", "ordering", "checkpoint", "checkpoint_every", "memory_limit",
                "solver", "threads", "samples", "seed"},
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
    genomic: GenomicConfig | None = None
    max_iter: int = 200
    ordering: str = "auto"
    checkpoint: str | None = None
    checkpoint_every: float = 600.0
    memory_limit: str | None = None
    solver: str = "direct"
    threads: int | None = None
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
    gen = doc.get("genomic")
    if gen is not None:
        cfg.genomic = _genomic(where, gen, rel)
    settle_relmat(cfg, where)
    cfg.max_iter = _type(where, opt.get("max_iter", 200), int, "[options] max_iter")
    cfg.ordering = _type(where, opt.get("ordering", "auto"), str, "[options] ordering")
    if "checkpoint" in opt:
        cfg.checkpoint = rel(_type(where, opt["checkpoint"], str, "[options] checkpoint"))
    if "checkpoint_every" in opt:
        cfg.checkpoint_every = float(_type(where, opt["checkpoint_every"], (int, float),
                                           "[options] checkpoint_every"))
    if "memory_limit" in opt:
        cfg.memory_limit = str(_type(where, opt["memory_limit"], (str, int),
                                     "[options] memory_limit"))
    cfg.solver = _type(where, opt.get("solver", "direct"), str, "[options] solver").lower()
    if cfg.solver not in ("direct", "pcg"):
        raise InputError(f"{where}: [options] solver must be direct or pcg, got {cfg.solver!r}")
    if "threads" in opt:
        cfg.threads = _type(where, opt["threads"], int, "[options] threads")
        check_threads(cfg.threads, f"{where}: [options] threads")
    cfg.mc_samples = _type(where, opt.get("samples", 50), int, "[options] samples")
    cfg.mc_seed = _type(where, opt.get("seed", 1), int, "[options] seed")
    cfg.out = rel(_type(where, out.get("folder", "mme_out"), str, "[output] folder"))
    return cfg


def check_threads(n, what: str) -> None:
    if isinstance(n, bool) or n < 1:
        raise InputError(f"{what} must be a whole number of at least 1, got {n!r}")


def _genomic(where, sec: dict, rel) -> GenomicConfig:
    if "file" not in sec:
        raise InputError(f"{where}: missing key 'file' in [genomic] (the genotype file)")
    g = GenomicConfig(file=rel(_type(where, sec["file"], str, "[genomic] file")))
    g.sep = _type(where, sec.get("sep", "auto"), str, "[genomic] sep")
    g.model = _type(where, sec.get("model", g.model), str, "[genomic] model").lower()
    if "term" in sec:
        g.term = _type(where, sec["term"], str, "[genomic] term")
    for key in ("blend", "tau", "omega"):
        if key in sec:
            v = _type(where, sec[key], (int, float), f"[genomic] {key}")
            setattr(g, key, float(v))
    if "tune" in sec:
        g.tune = _type(where, sec["tune"], str, "[genomic] tune").lower()
    check_genomic(g, where)
    return g


def check_genomic(g: GenomicConfig, where: str = "", cli: bool = False) -> None:
    """Values of the genomic settings; messages name the key (or the option, ``cli``)."""
    pre = f"{where}: " if where else ""

    def key(k):
        return ({"model": "--genomic-model"}.get(k, f"--{k}") if cli else f"[genomic] {k}")

    if g.model not in GENOMIC_MODELS:
        raise InputError(f"{pre}{key('model')} must be {' or '.join(GENOMIC_MODELS)}, got "
                         f"{g.model!r}")
    if g.tune in ("none", ""):
        g.tune = None
    if g.tune is not None and g.tune not in TUNES:
        raise InputError(f"{pre}{key('tune')} must be {', '.join(TUNES)} or none, got "
                         f"{g.tune!r}")
    if not 0.0 <= g.blend < 1.0:
        raise InputError(f"{pre}{key('blend')} must be in [0, 1), got {g.blend:g}")
    if not g.tau > 0:
        raise InputError(f"{pre}{key('tau')} must be positive, got {g.tau:g}")
    if g.model == "gblup" and (g.tau != 1.0 or g.omega != 1.0):
        raise InputError(f"{pre}{key('tau')} and {key('omega')} scale G^-1 and A22^-1 in "
                         "single-step's H^-1; GBLUP does not use them")


def settle_relmat(cfg: RunConfig, where: str = "", cli: bool = False) -> None:
    """The terms that follow a relationship matrix: the genomic term (default: the single
    relmat term) joins ``cfg.relmat``; a pedigree needs a term to follow it, and a relmat
    term a pedigree (unless it is the GBLUP term, whose matrix is G). ``cli``: name the
    command line's options in the messages, else the parameter file's keys."""
    pre = f"{where}: " if where else ""
    ped_key = "--pedigree FILE" if cli else "a [pedigree] file"
    term_key = "--genomic-term TERM" if cli else "[genomic] term = \"id\""
    gblup_key = "--genomic-model gblup" if cli else "model = \"gblup\" in [genomic]"
    g = cfg.genomic
    if g is not None:
        if g.model == "single-step" and not cfg.pedigree:
            raise InputError(f"{pre}single-step needs {ped_key}; with genotypes only use "
                             f"{gblup_key}")
        if g.term is None:
            if len(cfg.relmat) == 1:
                g.term = cfg.relmat[0]
            elif not cfg.relmat:
                raise InputError(f"{pre}name the random term the genotypes apply to: "
                                 f"{term_key}")
            else:
                raise InputError(f"{pre}several relmat terms ({', '.join(cfg.relmat)}): name "
                                 f"the one the genotypes apply to: {term_key}")
        elif g.term not in cfg.relmat:
            cfg.relmat = list(cfg.relmat) + [g.term]
        if g.tune is not None and not cfg.pedigree:
            raise InputError(f"{pre}tune puts G on the scale of the pedigree's A22: it needs "
                             f"{ped_key}")
    if cfg.pedigree and not cfg.relmat:
        raise InputError(f"{pre}--pedigree needs --relmat TERM (the random term that follows "
                         "the pedigree, e.g. --relmat id)" if cli else
                         f"{pre}a [pedigree] is given but no term follows it: set "
                         "relmat = [\"id\"] in [model]")
    without = [r for r in cfg.relmat if g is None or r != g.term]
    if not cfg.pedigree and without:
        raise InputError(f"{pre}--relmat needs --pedigree FILE" if cli else
                         f"{pre}[model] relmat needs a [pedigree] file")


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
