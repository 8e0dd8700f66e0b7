"""Shared fixtures. Run: pytest  (fast suite); pytest -m slow  (real models)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("TINYLLM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is absent: the real datasets live in ../shared/data beside the checkout")
    return SHARED_DATA


def make_tiny_student(folder: Path, texts: list[str], arch: str = "llama", seed: int = 0) -> Path:
    """A random-init student small enough to train in seconds, with a word-level tokenizer over `texts`."""
    import re

    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t)})
    vocab = {w: i for i, w in enumerate(specials + words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                               eos_token="</s>", model_input_names=["input_ids", "attention_mask"])
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                       pad_token_id=0, bos_token_id=2, eos_token_id=3, tie_word_embeddings=True)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.T5Config(vocab_size=len(vocab), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
                                    pad_token_id=0, eos_token_id=3, decoder_start_token_id=0, dropout_rate=0.0)
        model = transformers.T5ForConditionalGeneration(cfg)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_student(tmp_path_factory) -> Path:
    from distill.data import load_dataset
    from distill.prompts import render_question

    texts = [render_question(ex) + " " + " ".join(ex.choices) for ex in load_dataset("demo").splits["train"]]
    texts.append("predict: explain_a: explain_b: Answer: Explanation: Because So the answer is")
    return make_tiny_student(tmp_path_factory.mktemp("tiny") / "llama", texts)


def make_tiny_bpe_student(folder: Path, texts: list[str], hidden: int = 256, seed: int = 0,
                          intermediate: int | None = None) -> Path:
    """A random-init llama student with a byte-level BPE tokenizer (what GGUF export needs).
    Width 256 so llama.cpp's K-quants apply to every matrix instead of falling back; MLP width 2 x hidden
    unless `intermediate` is given."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                               pad_token="<|endoftext|>", model_input_names=["input_ids", "attention_mask"],
                                               gguf_pre="gpt-2")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                                   num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                   pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                   eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    return save_with_decisive_weights(transformers.LlamaForCausalLM(cfg), tok, folder)


def save_with_decisive_weights(model, tok, folder: Path) -> Path:
    """Matrices drawn larger than the default init, so logits are decisive and parity numbers are not
    trivially tiny; then the model and tokenizer saved as a student folder."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.25)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bpe_student(tmp_path_factory) -> Path:
    from distill.data import load_dataset
    from distill.prompts import render_question

    texts = [render_question(ex) for ex in load_dataset("demo").splits["train"]]
    texts.append("predict: explain_a: Answer: Explanation: Because So the answer is")
    return make_tiny_bpe_student(tmp_path_factory.mktemp("tinybpe") / "student", texts)


def make_tiny_gemma3_student(folder: Path, texts: list[str], seed: int = 0) -> Path:
    """A random-init Gemma 3 student with a SentencePiece-style tokenizer (BPE over "▁" with byte fallback, as
    TinyLLM rebuilds Gemma's from its GGUF). Weights larger than the default init, so logits are decisive."""
    import json

    import torch
    import transformers
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors, trainers

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    probe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    probe.normalizer = normalizers.Replace(" ", "▁")
    probe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=700, special_tokens=specials + byte_tokens,
                                                         show_progress=False))
    data = json.loads(probe.to_str())
    vocab, merges = data["model"]["vocab"], data["model"]["merges"]
    tk = Tokenizer(models.BPE(vocab, [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges],
                              unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tk.normalizer = normalizers.Replace(" ", "▁")
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                      special_tokens=[("<bos>", vocab["<bos>"])])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                               unk_token="<unk>", model_input_names=["input_ids", "attention_mask"])
    torch.manual_seed(seed)
    cfg = transformers.Gemma3TextConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=128, sliding_window=64,
                                        max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        tie_word_embeddings=True)
    return save_with_decisive_weights(transformers.Gemma3ForCausalLM(cfg), tok, folder)
