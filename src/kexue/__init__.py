"""kexue — eight techniques from Su Jianlin's *Scientific Spaces* as tested tools.

Modules, one per technique (formulas in SPEC.md): ``vae`` (1), ``eg`` (2), ``unargmax`` (3),
``logsumexp`` (4), ``whitening`` (5), ``exact`` (6), ``ddpm`` (7), ``hubness`` (8).
Shared pieces: ``data`` (offline data sets), ``nets`` (small networks), ``train`` (the training
loop), ``report`` (experiments and reports), ``utils`` (errors, atomic writes, seeding).
"""

__version__ = "0.1.0"
