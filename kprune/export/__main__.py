"""`python -m kprune.export`: a saved `.keras` model to SavedModel and TFLite (see `--help`)."""

from absl import app

from kprune.export import define_flags, main

if __name__ == "__main__":
    define_flags()
    app.run(main)
