"""The soak: a mixed load on a distributed Celeriac while its processes and its broker are
killed and started again at random, then an account of every task (``python -m tests.soak``).

A script, not a test: it runs for the minutes it is given and prints what it saw. Its parts:
``stack`` starts the processes, ``workflow`` is the code they run, ``load`` submits and
answers tasks, ``faults`` injects the faults, ``accounting`` watches and counts.
"""
