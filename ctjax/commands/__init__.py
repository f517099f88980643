"""The command-line programs, one module per `python -m ctjax.X` verb.

Each parses its flags (and config file) with `ctjax.commands.cli.run`, calls library
functions, and turns every ctjax error into one line on stderr with a documented exit status.
`python -m ctjax.X` runs `ctjax.commands.X.main` (a three-line module of the same name beside
the package's layers):

  train, evaluate, prepare, synth, predict, report, export, crossval, distill, tables,
  reader, weights, backbone_probe
"""
