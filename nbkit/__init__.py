"""nbkit: fine-tune language models with QLoRA from guided notebooks.

The core never imports ipywidgets or IPython.display, so it runs in scripts, tests,
papermill and accelerate launches; the panels live in `nbkit.widgets`.
"""

__version__ = "0.1.0"
