"""One experiment per technique: ``kexue.experiments.<name>`` defines ``TITLE``, ``SPEC`` and
``run(ctx)``; see :mod:`kexue.report`. Modules are discovered by name, so adding a file here
registers it with ``kexue reproduce``."""
