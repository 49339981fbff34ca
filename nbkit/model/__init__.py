"""Models below the stages: loading (embedded GGUF models, 4-bit for QLoRA, a run's trained model), the device and
its precision plan, chat templates and loss masks, memory, the model's shape, and generating answers (one home
for generation with end-of-turn stops, used by the replay guard, evaluation, export parity, the playground and
preference sampling). Imports only nbkit.core."""
