"""ipywidget panels for the nbkit notebooks."""
