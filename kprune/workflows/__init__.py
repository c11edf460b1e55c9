"""One function per way of pruning, all on the shared training loop of `workflows.training`.

- `train_gradual` (dense, linear, polynomial, cyclical, FGGP): `kprune.workflows.gradual`
- `train_at_init` (SNIP, GraSP, SynFlow, random): `kprune.workflows.at_init`
- `run_lottery` (lottery tickets with rewinding): `kprune.workflows.lottery`
"""
