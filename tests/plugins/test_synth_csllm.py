"""synth.csllm: material strings worked out by hand, and a tiny Llama + LoRA loaded like the real CSLLM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gen2d_synth_csllm import CheckpointNotFound, CSLLMScorer, build_prompt, material_string
from pymatgen.core import Lattice, Structure

from gen2d.scoring import PluginUnavailable, file_sha256, get_scorer

# ---------------------------------------------------------------------------------------------------
# Structures and their material strings, derived by hand.
#
# Format: "{spg} |{a:.3f},{b:.3f},{c:.3f},{α:.2f},{β:.2f},{γ:.2f}| ({El}-{mult}{letter}{xyz})->(…)",
# where xyz is pyxtal's representative position printed as NumPy prints a float array (str()):
# 8 significant decimals at most, trailing zeros dropped, every entry padded to the widest one,
# and 0.0 printed as "0.".
# ---------------------------------------------------------------------------------------------------


def rock_salt_nacl() -> Structure:
    """Conventional rock salt, a = 5.64 Å, Na listed first."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


# Fm-3m is No. 225. Its Wyckoff positions 4a = (0,0,0) and 4b = (1/2,1/2,1/2), multiplicity 4 in the
# conventional cell; Na sits on 4a, Cl on 4b. Cell: a = b = c = 5.640, all angles 90.00.
# Positions print as "[0. 0. 0.]" and "[0.5 0.5 0.5]".
NACL_STRING = "225 |5.640,5.640,5.640,90.00,90.00,90.00| (Na-4a[0. 0. 0.])->(Cl-4b[0.5 0.5 0.5])"


def mos2_2h() -> Structure:
    """2H-MoS2 monolayer: a = 3.16 Å, 20 Å cell, Mo at (1/3, 2/3, 1/2), S at (2/3, 1/3, 1/2 ± 1.57/20)."""
    c = 20.0
    return Structure(
        Lattice.hexagonal(3.16, c),
        ["Mo", "S", "S"],
        [[1 / 3, 2 / 3, 0.5], [2 / 3, 1 / 3, 0.5 + 1.57 / c], [2 / 3, 1 / 3, 0.5 - 1.57 / c]],
    )


# The layer in its vacuum cell is the 3D group P-6m2, No. 187 (mirror in the Mo plane, no inversion).
# In 187: 1d = (1/3, 2/3, 1/2) holds Mo (multiplicity 1); 2i = (2/3, 1/3, z), (2/3, 1/3, -z) holds the
# two S with z = 0.5 + 1.57/20 = 0.5785. Cell 3.160, 3.160, 20.000 and 90.00, 90.00, 120.00.
# NumPy prints [1/3, 2/3, 0.5] as "[0.33333333 0.66666667 0.5       ]" (0.5 padded to 10 characters)
# and [2/3, 1/3, 0.5785] as "[0.66666667 0.33333333 0.5785    ]".
MOS2_STRING = (
    "187 |3.160,3.160,20.000,90.00,90.00,120.00| "
    "(Mo-1d[0.33333333 0.66666667 0.5       ])->(S-2i[0.66666667 0.33333333 0.5785    ])"
)


def test_material_string_rock_salt_nacl():
    assert material_string(rock_salt_nacl()) == NACL_STRING


def test_material_string_2h_mos2_monolayer():
    assert material_string(mos2_2h()) == MOS2_STRING


def test_material_string_ignores_global_numpy_print_options():
    with np.printoptions(precision=3, floatmode="fixed"):
        assert material_string(mos2_2h()) == MOS2_STRING


def test_primitive_cell_gives_the_same_crystal_description():
    # pyxtal standardises to the conventional cell, so the primitive fcc cell gives the same lattice
    # and Wyckoff sites; only the site order follows the input (pymatgen sorts the primitive cell's
    # sites by electronegativity, so Cl comes first).
    prim = material_string(rock_salt_nacl().get_primitive_structure())
    assert prim == "225 |5.640,5.640,5.640,90.00,90.00,90.00| (Cl-4b[0.5 0.5 0.5])->(Na-4a[0. 0. 0.])"


def test_prompt_is_the_question_in_the_chat_frame():
    assert build_prompt(rock_salt_nacl()) == (
        f'###Human: Can this material structure be synthesized "{NACL_STRING}"?###Assistant:'
    )


# ---------------------------------------------------------------------------------------------------
# A tiny random Llama and LoRA adapter, saved to disk and loaded through the scorer's own code path.
# ---------------------------------------------------------------------------------------------------


def _build_tokenizer(corpus: list[str]):
    """Offline word-level tokenizer over the corpus, with "True"/"False" as answer words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    words = sorted({w for text in corpus for w, _ in pre.pre_tokenize_str(text)} | {"True", "False"})
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def tiny_csllm(tmp_path_factory):
    """Base model folder and adapter folder, as a user would have them on disk."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("csllm")
    base_dir, adapter_dir = root / "tiny-llama", root / "csllm-synth-lora"
    corpus = [build_prompt(rock_salt_nacl()), build_prompt(mos2_2h())]
    tokenizer = _build_tokenizer(corpus)
    tokenizer.save_pretrained(base_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(base_dir)
    base = LlamaForCausalLM.from_pretrained(base_dir)
    # init_lora_weights=False gives non-zero B matrices, so the adapter really changes the logits.
    lora = get_peft_model(
        base,
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
        ),
    )
    lora.save_pretrained(adapter_dir)
    return base_dir, adapter_dir


def test_tiny_llama_with_lora_scores_from_logits(tiny_csllm):
    base_dir, adapter_dir = tiny_csllm
    scorer = get_scorer(
        "synth.csllm", base_model_path=str(base_dir), adapter_path=str(adapter_dir), device="auto", batch_size=2
    )
    assert scorer.available() == (True, "")
    nacl, mos2 = rock_salt_nacl(), mos2_2h()
    results = scorer.score([nacl, mos2, mos2])
    assert all(r.ok for r in results), [r.failure for r in results]
    p = [r.value for r in results]
    assert all(0.0 <= v <= 1.0 for v in p)
    assert p[0] != pytest.approx(p[1], abs=1e-6)  # two structures, two answers
    # Batched and padded (NaCl's prompt is shorter) equals scored alone.
    (alone,) = scorer.score([nacl])
    assert alone.value == pytest.approx(p[0], abs=1e-5)
    assert p[1] == pytest.approx(p[2], abs=1e-6)
    # The value is the two-way softmax of the True/False logits at the last prompt position.
    for r in results:
        lt, lf = r.extra["logit_true"], r.extra["logit_false"]
        assert r.value == pytest.approx(math.exp(lt) / (math.exp(lt) + math.exp(lf)), rel=1e-9)
    assert results[1].extra["material_string"] == MOS2_STRING
    prov = results[0].provenance
    assert prov.plugin == "synth.csllm"
    assert prov.checkpoint_sha256 == file_sha256(adapter_dir / "adapter_model.safetensors")
    assert any("outside its training data" in note for note in prov.notes)
    assert prov.settings["dtype"] == "float32"  # CPU: no fp16


def test_logits_match_a_direct_forward_pass_and_the_adapter_matters(tiny_csllm):
    from peft import PeftModel
    from transformers import AutoTokenizer, LlamaForCausalLM

    base_dir, adapter_dir = tiny_csllm
    scorer = CSLLMScorer(base_model_path=base_dir, adapter_path=adapter_dir, device="cpu")
    (res,) = scorer.score([mos2_2h()])
    tok = AutoTokenizer.from_pretrained(base_dir)
    # What a Llama tokenizer gives by default: BOS, then the prompt, no EOS.
    ids = torch.tensor([[tok.bos_token_id] + tok(build_prompt(mos2_2h()), add_special_tokens=False)["input_ids"]])
    true_id, false_id = tok.convert_tokens_to_ids(["True", "False"])
    base = LlamaForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        base_logits = base(ids).logits[0, -1]
        adapted = PeftModel.from_pretrained(base, adapter_dir).eval()
        lora_logits = adapted(ids).logits[0, -1]
    assert res.extra["logit_true"] == pytest.approx(float(lora_logits[true_id]), abs=1e-4)
    assert res.extra["logit_false"] == pytest.approx(float(lora_logits[false_id]), abs=1e-4)
    # Without the adapter the answer differs: the LoRA weights were really applied.
    assert float(base_logits[true_id]) != pytest.approx(res.extra["logit_true"], abs=1e-4)


def test_answer_token_is_found_in_context_for_a_sentencepiece_style_tokenizer():
    # Llama's SentencePiece tokenizer folds the space before a word into the token ("▁True"); the
    # answer id must be that token, found by tokenizing the answer after the prompt.
    from gen2d_synth_csllm.scorer import CSLLMSettings, answer_token_ids, encode_prompt
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {
        "<unk>": 0,
        "<s>": 1,
        "</s>": 2,
        "▁###Human:": 3,
        "▁True": 4,
        "▁False": 5,
        "True": 6,
        "False": 7,
        "###Assistant:": 8,
    }
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    prompt = build_prompt(mos2_2h())
    assert answer_token_ids(tok, prompt, CSLLMSettings()) == (4, 5)
    # Without the space, this word-level tokenizer glues "True" onto the prompt's last word: the
    # prompt is no longer a prefix, and the scorer refuses rather than read a wrong position.
    with pytest.raises(ValueError, match="does not extend the prompt cleanly"):
        answer_token_ids(tok, prompt, CSLLMSettings(answer_prefix=""))
    ids = encode_prompt(tok, prompt)
    assert ids[0] == 1 and ids[1] == 3 and 2 not in ids  # BOS first, no EOS


def test_bad_structures_fail_by_name_in_a_scored_batch(tiny_csllm):
    base_dir, adapter_dir = tiny_csllm
    scorer = CSLLMScorer(base_model_path=base_dir, adapter_path=adapter_dir, max_length=2048)
    empty = Structure(Lattice.cubic(4.0), [], [])
    disordered = Structure(Lattice.cubic(4.0), [{"Na": 0.5, "K": 0.5}], [[0, 0, 0]])
    results = scorer.score([empty, rock_salt_nacl(), disordered, None])
    assert [r.ok for r in results] == [False, True, False, False]
    assert [results[i].failure.reason for i in (0, 2, 3)] == ["empty_structure", "partial_occupancy", "not_a_structure"]
    short = CSLLMScorer(base_model_path=base_dir, adapter_path=adapter_dir, max_length=20)
    (too_long,) = short.score([mos2_2h()])
    assert not too_long.ok and too_long.failure.reason == "prompt_too_long"


def test_missing_paths_raise_a_named_error(tmp_path, tiny_csllm, monkeypatch):
    for var in ("GEN2D_CSLLM_BASE", "GEN2D_CSLLM_ADAPTER", "GEN2D_CSLLM_TOKENIZER"):
        monkeypatch.delenv(var, raising=False)
    base_dir, adapter_dir = tiny_csllm
    missing = tmp_path / "no-such-llama"
    scorer = CSLLMScorer(base_model_path=missing, adapter_path=adapter_dir)
    ok, why = scorer.available()
    assert not ok and str(missing) in why
    with pytest.raises(CheckpointNotFound) as info:
        scorer.load()
    assert info.value.path == missing and isinstance(info.value, PluginUnavailable)
    (res,) = scorer.score([mos2_2h()])
    assert not res.ok and res.failure.reason == "checkpoint_not_found" and str(missing) in res.failure.message
    # An adapter folder without adapter weights is named too.
    (tmp_path / "empty-adapter").mkdir()
    (tmp_path / "empty-adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(CheckpointNotFound, match="empty-adapter"):
        CSLLMScorer(base_model_path=base_dir, adapter_path=tmp_path / "empty-adapter").load()
    with pytest.raises(CheckpointNotFound, match="no CSLLM base model path configured"):
        CSLLMScorer().load()


def test_explain_shows_the_exact_prompt_without_a_model(monkeypatch):
    monkeypatch.delenv("GEN2D_CSLLM_BASE", raising=False)
    info = CSLLMScorer().explain(mos2_2h())
    assert info["prompt"] == f'###Human: Can this material structure be synthesized "{MOS2_STRING}"?###Assistant:'
    assert info["available"] is False and "outside its training data" in info["note"]
