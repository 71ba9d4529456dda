"""The ``mme`` command line: batch fits from a parameter file or from options.

    mme fit "weight ~ sex + (1|herd) + (1|id)" --data records.csv \\
        --pedigree pedigree.csv --relmat id --out results/
    mme run model.toml
    mme pedigree check pedigree.txt
    mme pedigree inbreeding pedigree.txt --out F.csv
    python -m mme ...                      (the same entry point)

Modules, one concept each:

    main        argparse: the sub-commands and their options, exit statuses
    params      the TOML parameter file of ``mme run`` (its keys are documented there)
    io          readers: CSV, whitespace-separated text (BLUPF90), Parquet; pedigrees
    genomic     genotype files (BLUPF90's layout or a table) → G → single-step H⁻¹ or G⁻¹
    formulas    the allow-list a formula from a file or the command line must pass
    runner      one fit: read, build, forecast memory, estimate, write
    progress    progress lines (a tqdm bar on a terminal) and the log file
    checkpoint  θ and the iteration log after each REML round; resume
    memory      the memory forecast after CHOLMOD's symbolic analysis
    outputs     the result files written to the output folder
    methods     the Materials-and-Methods paragraph (methods.md)
    pedigree    ``mme pedigree check`` and ``mme pedigree inbreeding``
    errors      exit statuses and the error the command line reports in one line
"""
from .main import main

__all__ = ["main"]
