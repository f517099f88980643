"""Experiments over training and the trained runs: k-fold cross-validation (`kfold`) and the
blend-sign detector's self-knowledge distillation rounds (`skd`). The papers' tables, which
run grids of such experiments, are `ctjax.tables`."""
