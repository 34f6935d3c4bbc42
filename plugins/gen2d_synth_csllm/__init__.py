"""gen2d plugin ``synth.csllm``: CSLLM's synthesizability LLM asked in its own training format.

``material_string`` and ``build_prompt`` need only pyxtal; scoring needs the ``csllm`` extra
(transformers, peft) and local folders holding the base model and the LoRA adapter.
"""

from gen2d_synth_csllm.material import build_prompt, build_question, material_string
from gen2d_synth_csllm.scorer import CheckpointNotFound, CSLLMScorer, CSLLMSettings, load_csllm

__all__ = [
    "CSLLMScorer",
    "CSLLMSettings",
    "CheckpointNotFound",
    "build_prompt",
    "build_question",
    "load_csllm",
    "material_string",
]
