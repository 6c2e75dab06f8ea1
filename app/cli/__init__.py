"""The ``celeriac`` command line (click), one module per area."""
