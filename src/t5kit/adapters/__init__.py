"""Parameter-efficient adapters over a :class:`t5kit.T5Model`: LoRA (``lora``), saved in peft's layout
(``peft_io``).

Layering: this package imports the model and the checkpoint name table; the pipeline, the trainer, the
server and the CLI may import it. The kernels do not: they tell an adapted projection from a plain one by
its type (``type(m) is nn.Linear``), so neither package knows the other.
"""

from t5kit.adapters.lora import (
    TARGETS,
    LoRAConfig,
    LoRALinear,
    add_lora,
    lora_config,
    lora_layers,
    lora_parameters,
    merge_lora,
    remove_lora,
    trainable_parameters,
)
from t5kit.adapters.peft_io import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    adapter_info,
    load_adapter,
    load_adapter_state,
    merge_adapter,
    read_adapter_config,
    read_adapter_tensors,
    save_adapter,
)

__all__ = [
    "CONFIG_NAME", "TARGETS", "WEIGHTS_NAME", "LoRAConfig", "LoRALinear", "adapter_info", "add_lora", "load_adapter",
    "load_adapter_state",
    "lora_config", "lora_layers", "lora_parameters", "merge_adapter", "merge_lora", "read_adapter_config",
    "read_adapter_tensors", "remove_lora", "save_adapter", "trainable_parameters",
]
