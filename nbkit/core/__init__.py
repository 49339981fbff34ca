"""The shared base every stage stands on, with no model library in it: errors, settings (`Config`), the
workspace's layout and files (written so a killed runtime loses nothing), runs and their settings, the formats of
the files users bring (readers, schemas, messages, rows) and the task metrics.

Nothing here imports a stage, the model layer or a panel (import-linter checks it: pyproject.toml)."""
