"""A model's shape from its config alone (instantiated on the meta device, no weights read): layers, hidden
sizes, vocabulary, parameter counts and the LoRA parameters a rank adds. The fit estimate and the export's memory
check both size things by it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelShape:
    """Parameter counts and sizes that memory and compute depend on."""

    total: int
    linear: int  # in nn.Linear layers other than the output head: what 4-bit quantizes
    embedding: int
    lora: int  # trainable parameters LoRA adds for the given rank and targets
    hidden: int
    intermediate: int
    layers: int
    vocab: int


def model_shape(base_model: str, lora_r: int = 16, target_modules: str = "all-linear") -> ModelShape:
    """Shapes of `base_model` from its config only (instantiated on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from nbkit.model.loader import quiet_library_notices, resolve_model

    with quiet_library_notices():
        cfg = AutoConfig.from_pretrained(resolve_model(base_model))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
    head = model.get_output_embeddings()
    targets = None if target_modules.strip() == "all-linear" else {t.strip() for t in target_modules.split(",")}
    total = sum(p.numel() for p in model.parameters())
    linear = lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            linear += module.weight.numel()
            if targets is None or name.rsplit(".", 1)[-1] in targets:
                lora += lora_r * (module.in_features + module.out_features)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    return ModelShape(
        total=total,
        linear=linear,
        embedding=total - linear,
        lora=lora,
        hidden=text.hidden_size,
        intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size),
        layers=text.num_hidden_layers,
        vocab=text.vocab_size,
    )
