"""Runnable examples: ``python -m mme.examples.rcbd`` (the seed's RCBD, blocks fixed and
random, emmeans with Kenward–Roger df) and ``python -m mme.examples.animal`` (pedigree
CSV → animal model → EBVs with reliabilities → CSV)."""
