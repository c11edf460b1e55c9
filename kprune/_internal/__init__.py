"""Support code shared by kprune's modules: not part of the public API."""
