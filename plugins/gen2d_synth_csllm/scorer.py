"""``synth.csllm``: P_synth from CSLLM's synthesizability LLM (a causal LM plus its LoRA adapter).

P_synth is the softmax of the next-token logits of "True" against "False" after CSLLM's own prompt;
it is never parsed from generated text and never replaced by a constant.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Structure

from gen2d.scoring import BaseScorer, PluginUnavailable, Provenance, ScoreResult, device_name, file_sha256
from gen2d_synth_csllm.material import (
    CHAT_TEMPLATE,
    DEFAULT_ANGLE_TOL,
    DEFAULT_SYMPREC,
    QUESTION_TEMPLATE,
    MaterialStringError,
    build_prompt,
    material_string,
)

NAME = "synth.csllm"
MONOLAYER_NOTE = (
    "CSLLM was fine-tuned on 3D bulk crystals (ICSD positives, PU-screened hypothetical negatives); "
    "monolayers are outside its training data and reach it as a 3D cell padded with vacuum."
)
ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class CheckpointNotFound(PluginUnavailable):
    """A configured model path does not exist (or holds no model); the message names the path."""

    def __init__(self, what: str, path: str | Path | None):
        self.path = None if path is None else Path(path)
        if path is None:
            msg = f"no {what} path configured for {NAME} (set it in the scorer config or GEN2D_CSLLM_*)"
        else:
            msg = f"{what} not found: {path}"
        super().__init__(msg)


class CSLLMSettings(BaseModel):
    """Where CSLLM lives and how to ask it. Paths are local folders; nothing is fetched from a hub.

    These are the options of ``synth.csllm``; an unknown key is refused by name.
    """

    model_config = ConfigDict(extra="forbid")

    base_model_path: Path | None = Field(None, description="folder of the base causal LM (config + weights)")
    adapter_path: Path | None = Field(None, description="folder of CSLLM's synthesizability LoRA adapter")
    tokenizer_path: Path | None = Field(None, description="tokenizer folder; default: the base model's")
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(2048, ge=16, description="prompts longer than this (tokens) fail, never truncate")
    symprec: float = Field(DEFAULT_SYMPREC, description="pyxtal symmetry tolerance for the material string")
    angle_tol: float = Field(DEFAULT_ANGLE_TOL)
    true_token: str = "True"
    false_token: str = "False"
    answer_prefix: str = Field(" ", description="text between '###Assistant:' and the answer word")
    add_bos: bool = Field(True, description="start each prompt with the BOS token, as Llama tokenizers do")

    @classmethod
    def from_env_and(cls, **options: Any) -> CSLLMSettings:
        """Options win; the settings' csllm_* paths (GEN2D_CSLLM_BASE, _ADAPTER, _TOKENIZER) fill the rest."""
        from gen2d.settings import get_settings

        settings = get_settings()
        configured = {
            "base_model_path": settings.csllm_base,
            "adapter_path": settings.csllm_adapter,
            "tokenizer_path": settings.csllm_tokenizer,
        }
        for key, value in configured.items():
            if options.get(key) is None and value is not None:
                options[key] = value
        return cls(**options)


def _check_dir(what: str, path: Path | None, must_contain: tuple[str, ...]) -> Path:
    if path is None:
        raise CheckpointNotFound(what, None)
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointNotFound(what, path)
    if must_contain and not any((path / name).is_file() for name in must_contain):
        raise CheckpointNotFound(f"{what} ({' or '.join(must_contain)})", path)
    return path


def load_csllm(settings: CSLLMSettings):
    """Tokenizer and model (base + LoRA) from local folders; fp16 on CUDA, fp32 on the CPU.

    Raises
    ------
    CheckpointNotFound
        Naming the first configured path that is missing or empty.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = _check_dir("CSLLM base model", settings.base_model_path, ("config.json",))
    adapter = _check_dir("CSLLM LoRA adapter", settings.adapter_path, ("adapter_config.json",))
    _check_dir("CSLLM LoRA adapter weights", adapter, ADAPTER_WEIGHT_FILES)
    tok_dir = _check_dir("CSLLM tokenizer", settings.tokenizer_path or base, ())
    device = device_name(settings.device)
    # Half precision only where it is fast and supported; CPU matmuls in fp16 are slow or missing.
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(str(base), local_files_only=True, trust_remote_code=False, dtype=dtype)
    model = PeftModel.from_pretrained(model, str(adapter), local_files_only=True, is_trainable=False)
    model.to(device)
    model.eval()
    return tokenizer, model, device


def encode_prompt(tokenizer, prompt: str, add_bos: bool = True) -> list[int]:
    """Token ids the model reads: [BOS] + the prompt, and never an EOS after it.

    Special tokens are added here rather than by the tokenizer, because some tokenizers append EOS
    (``add_eos_token``), which would put EOS where the answer's logits are read.
    """
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if add_bos and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    return ids


def answer_token_ids(tokenizer, prompt: str, settings: CSLLMSettings) -> tuple[int, int]:
    """Token ids of the first token of the "True" and the "False" answer, tokenized in context.

    The answer is tokenized after the prompt (not alone), so a tokenizer that merges the leading
    space into the word (SentencePiece's "▁True") gives the id the model really predicts.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = []
    for word in (settings.true_token, settings.false_token):
        full = tokenizer(prompt + settings.answer_prefix + word, add_special_tokens=False)["input_ids"]
        if full[: len(prompt_ids)] != prompt_ids or len(full) <= len(prompt_ids):
            raise ValueError(f"the tokenizer does not extend the prompt cleanly with {word!r}")
        ids.append(full[len(prompt_ids)])
    if ids[0] == ids[1]:
        raise ValueError(f"{settings.true_token!r} and {settings.false_token!r} start with the same token")
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        raise ValueError("the answer words are unknown to the tokenizer")
    return ids[0], ids[1]


class CSLLMScorer(BaseScorer):
    """Synthesizability from CSLLM (Song et al., Nat. Commun. 2025) asked its own question.

    Parameters
    ----------
    **options
        Fields of :class:`CSLLMSettings` (``base_model_path``, ``adapter_path``, ``device``, ...).
    """

    Options = CSLLMSettings
    name = NAME
    property = "p_synth"
    unit = "probability"
    requires: tuple[str, ...] = ()

    def __init__(self, **options: Any):
        self.settings = CSLLMSettings.from_env_and(**options)
        self._tokenizer = None
        self._model = None
        self._device: str | None = None
        self._adapter_sha256: str | None = None

    # -- availability and loading ---------------------------------------------------------------
    def available(self) -> tuple[bool, str]:
        try:
            import peft  # noqa: F401
            import pyxtal  # noqa: F401
            import transformers  # noqa: F401
        except ImportError as exc:
            return False, f"install the csllm extra (pip install 'gen2d[csllm]'): {exc}"
        try:
            _check_dir("CSLLM base model", self.settings.base_model_path, ("config.json",))
            adapter = _check_dir("CSLLM LoRA adapter", self.settings.adapter_path, ("adapter_config.json",))
            _check_dir("CSLLM LoRA adapter weights", adapter, ADAPTER_WEIGHT_FILES)
        except CheckpointNotFound as exc:
            return False, str(exc)
        return True, ""

    def load(self) -> None:
        """Load tokenizer, base model and adapter once; raises :class:`CheckpointNotFound`."""
        if self._model is None:
            self._tokenizer, self._model, self._device = load_csllm(self.settings)
            if self._tokenizer.pad_token_id is None:
                # Llama ships without a pad token; padded positions are masked, so any id will do.
                self._tokenizer.pad_token = self._tokenizer.eos_token or self._tokenizer.unk_token
            adapter = Path(self.settings.adapter_path)
            weights = next(adapter / f for f in ADAPTER_WEIGHT_FILES if (adapter / f).is_file())
            self._adapter_sha256 = file_sha256(weights)

    def provenance(self) -> Provenance:
        import gen2d

        s = self.settings
        base_name = Path(s.base_model_path).name if s.base_model_path else "?"
        adapter_name = Path(s.adapter_path).name if s.adapter_path else "?"
        config_sha = None
        if s.base_model_path and (Path(s.base_model_path) / "config.json").is_file():
            config_sha = file_sha256(Path(s.base_model_path) / "config.json")
        return Provenance(
            plugin=NAME,
            version=gen2d.__version__,
            model=f"{base_name} + LoRA {adapter_name}",
            checkpoint_sha256=self._adapter_sha256,
            settings={
                "base_model_path": str(s.base_model_path),
                "adapter_path": str(s.adapter_path),
                "base_config_sha256": config_sha,
                "device": self._device or s.device,
                "dtype": "float16" if (self._device or "").startswith("cuda") else "float32",
                "symprec": s.symprec,
                "angle_tol": s.angle_tol,
                "question": QUESTION_TEMPLATE,
                "chat": CHAT_TEMPLATE,
                "answers": [s.true_token, s.false_token],
                "answer_prefix": s.answer_prefix,
            },
            notes=[MONOLAYER_NOTE, "P_synth = softmax of the next-token logits of True vs False"],
        )

    # -- scoring --------------------------------------------------------------------------------
    def _prompts(self, structures: Sequence[Structure]) -> tuple[list[str | None], list[MaterialStringError | None]]:
        """Material string of each structure, or the named reason it has none."""
        materials: list[str | None] = []
        errors: list[MaterialStringError | None] = []
        for structure in structures:
            try:
                materials.append(material_string(structure, self.settings.symprec, self.settings.angle_tol))
                errors.append(None)
            except MaterialStringError as exc:
                materials.append(None)
                errors.append(exc)
            except Exception as exc:
                materials.append(None)
                errors.append(MaterialStringError("material_string_failed", f"{type(exc).__name__}: {exc}"))
        return materials, errors

    def true_false_logits(self, prompts: Sequence[str]) -> list[tuple[float, float]]:
        """Next-token logits of the True and the False answer for each prompt, in batches."""
        import torch

        self.load()
        tok, model = self._tokenizer, self._model
        true_id, false_id = answer_token_ids(tok, prompts[0], self.settings)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        out: list[tuple[float, float]] = []
        for start in range(0, len(prompts), self.settings.batch_size):
            seqs = [
                encode_prompt(tok, p, self.settings.add_bos) for p in prompts[start : start + self.settings.batch_size]
            ]
            width = max(len(q) for q in seqs)
            # Left padding puts every prompt's last token in the final column, where the answer's
            # logits are read; padded positions are masked out of attention.
            input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for row, q in enumerate(seqs):
                input_ids[row, width - len(q) :] = torch.tensor(q, dtype=torch.long)
                attention_mask[row, width - len(q) :] = 1
            # Positions count real tokens only, so a padded prompt sees the positions it has alone
            # (Llama's rotary embedding is shift-invariant anyway; absolute-position models are not).
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = (
                    model(
                        input_ids=input_ids.to(self._device),
                        attention_mask=attention_mask.to(self._device),
                        position_ids=position_ids.to(self._device),
                    )
                    .logits[:, -1, :]
                    .float()
                )
            for row in logits:
                out.append((float(row[true_id]), float(row[false_id])))
        return out

    def score(
        self, structures: Sequence[Structure], context: Sequence[dict[str, ScoreResult]] | None = None
    ) -> list[ScoreResult]:
        """P_synth of each structure; unreadable structures and missing checkpoints become named failures."""
        import math

        materials, errors = self._prompts(structures)
        results: list[ScoreResult | None] = [None] * len(structures)
        try:
            self.load()
            load_error = None
        except Exception as exc:
            reason = "checkpoint_not_found" if isinstance(exc, CheckpointNotFound) else "model_load_failed"
            load_error = (reason, f"{type(exc).__name__}: {exc}")
        prov = self.provenance()
        todo, prompts = [], []
        for i, (material, err) in enumerate(zip(materials, errors)):
            if err is not None:
                results[i] = ScoreResult.failed(self.property, self.unit, err.reason, str(err), prov)
                continue
            if load_error is not None:
                results[i] = ScoreResult.failed(self.property, self.unit, *load_error, prov, material_string=material)
                continue
            prompt = build_prompt(material)
            n_tokens = len(encode_prompt(self._tokenizer, prompt, self.settings.add_bos))
            if n_tokens > self.settings.max_length:
                results[i] = ScoreResult.failed(
                    self.property,
                    self.unit,
                    "prompt_too_long",
                    f"{n_tokens} tokens > max_length {self.settings.max_length}; truncating would cut the question",
                    prov,
                    material_string=material,
                )
                continue
            todo.append(i)
            prompts.append(prompt)
        if todo:
            try:
                logits = self.true_false_logits(prompts)
            except Exception as exc:  # a tokenizer without True/False, CUDA OOM, ...
                for i in todo:
                    results[i] = ScoreResult.failed(
                        self.property,
                        self.unit,
                        "inference_failed",
                        f"{type(exc).__name__}: {exc}",
                        prov,
                        material_string=materials[i],
                    )
                logits = []
            for i, (l_true, l_false) in zip(todo, logits):
                # Two-way softmax, written as a logistic of the logit difference.
                diff = l_true - l_false
                p_true = 1.0 / (1.0 + math.exp(-diff)) if diff > -700 else 0.0
                results[i] = ScoreResult(
                    property=self.property,
                    value=p_true,
                    unit=self.unit,
                    provenance=prov,
                    extra={
                        "material_string": materials[i],
                        "logit_true": l_true,
                        "logit_false": l_false,
                        "synthesizable": p_true >= 0.5,
                    },
                )
        return results  # type: ignore[return-value]

    def explain(self, structure: Structure) -> dict[str, Any]:
        """The exact prompt and settings for one structure (no model needed)."""
        out: dict[str, Any] = {
            "scorer": NAME,
            "settings": self.settings.model_dump(mode="json"),
            "note": MONOLAYER_NOTE,
        }
        try:
            material = material_string(structure, self.settings.symprec, self.settings.angle_tol)
        except MaterialStringError as exc:
            out["failure"] = {"reason": exc.reason, "message": str(exc)}
            return out
        out["material_string"] = material
        out["prompt"] = build_prompt(material)
        ok, why = self.available()
        out["available"] = ok
        if not ok:
            out["unavailable_reason"] = why
        return out
