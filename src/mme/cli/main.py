"""``mme``: the command line (console script ``mme`` and ``python -m mme``).

    mme fit FORMULA --data FILE [options]     one fit from options
    mme run model.toml [options]              one fit from a parameter file
    mme pedigree check FILE                   is this pedigree usable? (report)
    mme pedigree inbreeding FILE --out F.csv  inbreeding coefficients

Exit status: 0 done; 1 bad input (one line naming the culprit on stderr; ``--debug``
shows the traceback); 2 REML did not converge (results written all the same).
"""
from __future__ import annotations

import argparse
import sys
import traceback

from .. import MMEError
from .._errors import DistributedError
from . import params
from .errors import EXIT_INPUT, InputError
from .genomic import MODELS as GENOMIC_MODELS, TUNES, GenomicConfig
from .memory import parse_size

EPILOG = ("exit status: 0 done, 1 bad input (one line naming the problem; --debug for the "
          "traceback), 2 REML did not converge (results written all the same)")


class _Parser(argparse.ArgumentParser):
    """argparse with exit status 1 for a usage error (2 means 'did not converge')."""

    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"mme: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_INPUT)


def _common(p, toml: bool = False):
    g = p.add_argument_group("run")
    g.add_argument("--out", help="output folder" + (" (overrides [output] folder)" if toml
                                                    else " (default: mme_out)"))
    g.add_argument("--checkpoint", metavar="FILE",
                   help="write θ and the iteration log after each REML round (JSON, atomic); "
                        "resume from it when it exists and matches the model and data "
                        "(under MPI and with MC-REML also the PCG state, in FILE.*.npz: "
                        "docs/cluster.md)")
    g.add_argument("--checkpoint-every", type=float, metavar="SECONDS",
                   help="distributed BLUP (PCG under MPI): seconds between two checkpoints "
                        "of the iterate (default 600; 0: every iteration)")
    g.add_argument("--memory-limit", metavar="SIZE",
                   help="memory the fit may use, e.g. 8G or 512M ('off': no forecast; "
                        "default: what the machine or its cgroup has available, or the "
                        "environment variable MME_MEMORY_LIMIT)")
    g.add_argument("--max-iter", type=int, help="most AI-REML rounds (default 200)")
    g.add_argument("--ordering", help="CHOLMOD fill-reducing ordering: auto, amd, metis, "
                                      "nesdis, default")
    g.add_argument("--threads", type=int, metavar="N",
                   help="BLAS threads of the run, in every pool (CHOLMOD's system BLAS and "
                        "NumPy/SciPy's)" + (" (overrides [options] threads)" if toml else
                                            " (default: as the libraries start)"))
    g.add_argument("--samples", type=int, help="MC-REML: simulated data sets solved with the "
                                                 "data (default 50)")
    g.add_argument("--seed", type=int, help="MC-REML: seed of the simulated data (default 1)")
    g.add_argument("--quiet", action="store_true", help="no progress on stderr, no summary")
    g.add_argument("--debug", action="store_true", help="show the traceback of an error")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="mme", description="Linear mixed models and animal models by "
                 "Henderson's mixed-model equations, CHOLMOD and AI-REML.", epilog=EPILOG)
    ap.add_argument("--version", action="version", version=f"mme {_version()}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    f = sub.add_parser("fit", help="fit one model given by options", epilog=EPILOG,
                       description="Fit FORMULA to the data file(s) and write the results "
                       "(fixed_effects.csv, random_effects.csv, variance_components.csv, "
                       "iteration_log.csv, summary.txt, methods.md, mme.log) to --out.")
    f.add_argument("formula", help="lme4-style formula, e.g. \"weight ~ sex + (1|herd) + "
                                   "(1|id)\"")
    f.add_argument("--data", required=True, action="append", metavar="FILE",
                   help="data file: CSV, tab- or whitespace-separated text (BLUPF90), or "
                        ".parquet (needs pyarrow: pip install 'mme[parquet]'); repeat for "
                        "several files with the same columns")
    f.add_argument("--sep", default="auto",
                   help="auto (default), comma, tab, semicolon, whitespace, parquet")
    f.add_argument("--names", help="column names of a data file without a header, "
                                   "comma-separated")
    f.add_argument("--factors", help="columns read as strings (factors, ids), "
                                     "comma-separated; random terms' groups always are")
    f.add_argument("--na", help="extra tokens meaning a missing value, comma-separated")
    f.add_argument("--pedigree", metavar="FILE",
                   help="pedigree file: id, sire, dam (header naming them, or the first three "
                        "columns)")
    f.add_argument("--relmat", action="append", metavar="TERM",
                   help="random term whose covariance is sigma2 A from --pedigree (repeat)")
    f.add_argument("--missing", help="unknown-parent codes of the pedigree, comma-separated "
                                     "(default: '', 0, NA)")
    gg = f.add_argument_group("genomic (the [genomic] keys of a parameter file)")
    gg.add_argument("--genomic", metavar="FILE",
                    help="genotype file: one row per animal, its id then its genotypes "
                         "0/1/2, as BLUPF90 writes them (id 0120112..., 5 missing) or a "
                         "table (id m1 m2 ..., header optional)")
    gg.add_argument("--genomic-model", choices=list(GENOMIC_MODELS),
                    help="single-step: H^-1 from --pedigree and G (default); gblup: G only")
    gg.add_argument("--genomic-term", metavar="TERM",
                    help="the random term the genotypes apply to (default: the --relmat term)")
    gg.add_argument("--blend", type=float, metavar="W",
                    help="G <- (1-W) G + W A22 (W I without a pedigree); default 0.05, 0: none")
    gg.add_argument("--tune", choices=list(TUNES) + ["none"],
                    help="put G on the scale of A22 before blending (needs --pedigree)")
    gg.add_argument("--tau", type=float,
                    help="single-step: H^-1 = A^-1 + [0 0; 0 tau G^-1 - omega A22^-1] "
                         "(default 1)")
    gg.add_argument("--omega", type=float, help="see --tau (default 1)")
    f.add_argument("--method", default="REML", type=str.upper,
                   choices=["REML", "ML", "MC-REML"],
                   help="REML (default), ML, or MC-REML: Monte-Carlo REML by distributed "
                        "PCG, the way to estimate variances under mpiexec -n K > 1 "
                        "(docs/cluster.md)")
    f.add_argument("--variances", help="known variances: BLUP without REML, e.g. "
                                       "\"id=30,Residual=60\" (matrices as [[..],[..]])")
    f.add_argument("--solver", default="direct", choices=["direct", "pcg"],
                   help="direct (CHOLMOD, default) or pcg: BLUP at --variances by conjugate "
                        "gradients, no factorization (no PEV)")
    f.add_argument("--residual", help="residual structure: us(trait), diag(trait), by(col), "
                                      "ar1(col):ar1(row), ...")
    f.add_argument("--weights", metavar="COLUMN", help="prior weights: Var(e_i) = s2/w_i")
    _common(f)

    r = sub.add_parser("run", help="fit the model of a TOML parameter file",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
                       description="Fit the model described by a TOML parameter file.\n"
                       + params.__doc__.split("\n", 1)[1])
    r.add_argument("params", metavar="model.toml", help="the parameter file")
    _common(r, toml=True)

    pd_ = sub.add_parser("pedigree", help="check a pedigree, compute inbreeding")
    psub = pd_.add_subparsers(dest="pedcommand", metavar="ACTION")
    psub.required = True
    for name, helptext in (("check", "report counts, founders, generations, duplicates, "
                                     "loops, sex conflicts, unknown-parent codes, inbreeding"),
                           ("inbreeding", "write id, sire, dam, F to a CSV file")):
        q = psub.add_parser(name, help=helptext, description=helptext, epilog=EPILOG)
        q.add_argument("file", help="pedigree file (id, sire, dam)")
        q.add_argument("--sep", default="auto")
        q.add_argument("--missing", help="unknown-parent codes, comma-separated "
                                         "(default: '', 0, NA)")
        q.add_argument("--columns", default="id,sire,dam",
                       help="names of the id, sire and dam columns in the header")
        if name == "check":
            q.add_argument("--birth-year", metavar="COLUMN",
                           help="check that parents are born before their offspring")
        else:
            q.add_argument("--out", required=True, metavar="F.csv")
        q.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return ap


def _version() -> str:
    from .. import __version__
    return __version__


def _split(text):
    if text is None:
        return None
    return [t.strip() for t in text.split(",")]


def _config(args):
    if args.command == "run":
        cfg = params.load_params(args.params)
    else:
        cfg = params.RunConfig(formula=args.formula, data=list(args.data), sep=args.sep,
                               method=args.method)
        cfg.names = _split(args.names)
        cfg.factors = _split(args.factors) or []
        cfg.missing = _split(args.na)
        cfg.pedigree = args.pedigree
        cfg.pedigree_missing = _split(args.missing)
        cfg.relmat = list(args.relmat or [])
        given = {k: v for k, v in (("term", args.genomic_term), ("model", args.genomic_model),
                                   ("blend", args.blend), ("tune", args.tune),
                                   ("tau", args.tau), ("omega", args.omega)) if v is not None}
        if args.genomic:
            cfg.genomic = GenomicConfig(file=args.genomic, **given)
            params.check_genomic(cfg.genomic, cli=True)
        elif given:
            opt = {"term": "--genomic-term", "model": "--genomic-model"}
            raise InputError(f"{', '.join(opt.get(k, '--' + k) for k in given)} "
                             "without --genomic FILE (the genotypes)")
        params.settle_relmat(cfg, cli=True)
        cfg.residual, cfg.weights, cfg.solver = args.residual, args.weights, args.solver
        if args.variances:
            cfg.variances = params.parse_variances(args.variances)
        cfg.out = "mme_out"
    if args.out:
        cfg.out = args.out
    if args.checkpoint:
        cfg.checkpoint = args.checkpoint
    if args.checkpoint_every is not None:
        cfg.checkpoint_every = args.checkpoint_every
    if cfg.checkpoint_every < 0:
        raise InputError(f"checkpoint_every must be >= 0 seconds, got {cfg.checkpoint_every:g}")
    if args.max_iter is not None:
        cfg.max_iter = args.max_iter
    if args.samples is not None:
        cfg.mc_samples = args.samples
    if args.seed is not None:
        cfg.mc_seed = args.seed
    if cfg.mc_samples < 2:
        raise InputError(f"samples must be at least 2, got {cfg.mc_samples}")
    if args.ordering:
        cfg.ordering = args.ordering
    if args.threads is not None:
        cfg.threads = args.threads
        params.check_threads(cfg.threads, "--threads")
    if args.memory_limit:
        cfg.memory_limit = args.memory_limit
    elif cfg.memory_limit is None:
        import os
        cfg.memory_limit = os.environ.get("MME_MEMORY_LIMIT") or None
    if cfg.memory_limit and str(cfg.memory_limit).lower() not in ("off", "none", "no"):
        parse_size(cfg.memory_limit)   # a bad size is bad input before anything is read
    if cfg.max_iter < 1:
        raise InputError(f"max_iter must be at least 1, got {cfg.max_iter}")
    if cfg.solver == "pcg" and cfg.variances is None:
        raise InputError("--solver pcg solves at known variances: give --variances")
    return cfg


def _dispatch(args) -> int:
    if args.command == "pedigree":
        from . import pedigree
        cols = tuple(_split(args.columns))
        if len(cols) != 3:
            raise InputError(f"--columns must name id, sire and dam, got {args.columns!r}")
        if args.pedcommand == "check":
            return pedigree.check(args.file, sep=args.sep, missing=_split(args.missing),
                                  columns=cols, birth_year=args.birth_year)
        return pedigree.inbreeding(args.file, args.out, sep=args.sep,
                                   missing=_split(args.missing), columns=cols)
    from .progress import Progress
    from .runner import run_fit
    cfg = _config(args)
    return run_fit(cfg, Progress(quiet=args.quiet))


def main(argv=None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit
    status (0 done, 1 bad input, 2 not converged)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:      # --help, --version (0) or a usage error (1)
        return int(exc.code or 0)
    try:
        return _dispatch(args)
    except (InputError, MMEError, OSError, UnicodeDecodeError) as exc:
        from ..distributed.comm import launched
        rank, size = launched()
        if getattr(args, "debug", False):
            traceback.print_exc()
        msg = " ".join(str(exc).split())
        if isinstance(exc, OSError) and exc.filename:
            msg = f"{exc.filename}: {exc.strerror}"
        if rank == 0:
            # under MPI every rank raises the same (agreed) error: rank 0 reports it
            print(f"mme: error: {msg}", file=sys.stderr, flush=True)
        if size > 1 and isinstance(exc, DistributedError) and "no answer" in msg:
            from ..distributed import world
            world().abort(EXIT_INPUT)      # a rank is stuck: end the whole job
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
