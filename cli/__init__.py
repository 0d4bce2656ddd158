"""The ``snap`` command-line interface (installed as ``snapstore.cli``)."""
