"""One function per way of pruning, all on the shared training loop of `workflows.training`.

- `train_gradual` (dense, linear, polynomial, cyclical, FGGP): `kprune.workflows.gradual`
- `train_at_init` (SNIP, GraSP, SynFlow, random): `kprune.workflows.at_init`, scoring the
  model in `kprune.workflows.saliency`
- `run_lottery` (lottery tickets with rewinding): `kprune.workflows.lottery`, one round at a
  time in `kprune.workflows.rounds`

Underneath: `training` (the loop, `train_loop` and `fit_and_evaluate`), `recipe` (config,
optimizer, learning rate, loss) and `checkpoint` (the one checkpoint format).
"""
