"""The command line: the parser, the one error boundary (:func:`nodeagent.cli.main.main`)
and the human-readable forms of results (:mod:`nodeagent.cli.render`).

Nothing here may be imported by another layer. Imports are lazy so ``--version`` stays fast.
"""
