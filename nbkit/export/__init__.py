"""Export a run: the adapter merged into its base, GGUF files by llama.cpp's converter, an Ollama Modelfile, each
checked for parity with the evaluated model; pushing to the Hub."""

from nbkit.export.exporter import describe_export, export_if_requested, export_run, push_to_hub
from nbkit.export.merge import merge_adapter

__all__ = ["describe_export", "export_if_requested", "export_run", "merge_adapter", "push_to_hub"]
