"""cli: the ``reconcile`` command, a thin layer over :mod:`reconcile` and :mod:`journal`."""
