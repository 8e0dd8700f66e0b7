"""Batched questions give what one question at a time gives. Run: pytest tests/test_inference.py"""
from __future__ import annotations

import pytest
import torch
import transformers

from distill import inference
from distill.data import load_dataset
from distill.student import PromptFormat


def _student(folder):
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval(), tok


def _questions(n=6):
    exs = load_dataset("demo").splits["test"][:n]
    fmt = PromptFormat(task_position="after")
    # prompts of different lengths, so batches pad
    return [fmt.answer_prompt(ex) + " word" * (i % 3) for i, ex in enumerate(exs)], [ex.choices for ex in exs]


def test_batched_option_scores_equal_one_question_at_a_time(tiny_student, monkeypatch):
    model, tok = _student(tiny_student)
    prompts, options = _questions()
    batched = inference.option_logprobs(model, tok, prompts, options)
    single = [inference.option_logprobs(model, tok, [p], [o])[0] for p, o in zip(prompts, options)]
    import distill.batching

    monkeypatch.setattr(distill.batching, "can_share", lambda model: False)  # one padded row per option
    unpacked = inference.option_logprobs(model, tok, prompts, options)
    for b, s, u in zip(batched, single, unpacked):
        assert [c for _, c in b] == [c for _, c in s] == [c for _, c in u] and all(c > 0 for _, c in b)
        assert [t for t, _ in b] == pytest.approx([t for t, _ in s], abs=1e-4)
        assert [t for t, _ in b] == pytest.approx([t for t, _ in u], abs=1e-4)


def _greedy_one(model, tok, prompt, max_new_tokens=32, **kw):
    """What evaluation did before batching: one prompt, generate, the first line."""
    enc = tok(prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id, **kw)
    new = out[0] if model.config.is_encoder_decoder else out[0, enc["input_ids"].shape[1]:]
    return tok.decode(new, skip_special_tokens=True).split("\n")[0]


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_batched_answers_equal_one_prompt_at_a_time(tiny_student, tmp_path, arch):
    from conftest import make_tiny_student

    # seed 4: a random T5 whose answers differ between these prompts
    folder = tiny_student if arch == "llama" else make_tiny_student(tmp_path / "t5", _questions()[0], "t5", seed=4)
    auto = transformers.AutoModelForSeq2SeqLM if arch == "t5" else transformers.AutoModelForCausalLM
    model, tok = auto.from_pretrained(folder).eval(), transformers.AutoTokenizer.from_pretrained(folder)
    prompts, _ = _questions()
    expected = [_greedy_one(model, tok, p, 12) for p in prompts]
    assert inference.answers(model, tok, prompts, max_new_tokens=12, batch_size=4) == expected
    assert inference.answers(model, tok, prompts, max_new_tokens=12, batch_size=1) == expected
    assert len(set(expected)) > 1  # the prompts get different answers, so rows cannot be mixed up unseen


def _successor_model(folder):
    """A model whose greedy next token is a fixed permutation of the current one: its blocks add nothing
    and its output row for token u is the embedding of u's predecessor, so it writes distinct tokens in
    a chain (a random tiny model repeats one token)."""
    model, tok = _student(folder)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.get_input_embeddings().weight
        words = torch.arange(4, emb.shape[0])  # specials (pad, unk, bos, eos) are never a successor
        succ = words[torch.randperm(len(words), generator=torch.Generator().manual_seed(0))]
        head = torch.nn.Linear(emb.shape[1], emb.shape[0], bias=False)
        head.weight.zero_()
        head.weight[succ] = emb[words]
    model.config.tie_word_embeddings = False
    model.lm_head = head
    return model, tok


def test_options_as_drafts_give_the_generated_answers(tiny_student):
    """Where an option is exactly what greedy decoding writes before it stops, the log-likelihood pass
    returns it as the answer without generating; the answers equal generation's either way."""
    model, tok = _successor_model(tiny_student)
    prompts, options = _questions()
    drafts, stops = [], set()
    for i, p in enumerate(prompts):  # the first 1-3 greedy tokens become an option, the next a stop token
        ids = tok(p, return_tensors="pt")
        g = model.generate(**ids, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)[0, -4:].tolist()
        k = 1 + i % 3
        drafts.append(tok.decode(g[:k]))
        stops.add(g[k])
    model.generation_config.eos_token_id = sorted(stops)
    tok.add_special_tokens({"additional_special_tokens": tok.convert_ids_to_tokens(sorted(stops))})  # dropped as EOS is
    # the first question's draft is one token short of what greedy writes: it must not be taken
    options = [(d if i else d + " " + d.split()[-1], *o[1:]) for i, (d, o) in enumerate(zip(drafts, options))]
    scores, verified = inference._score(model, tok, prompts, options, 4096, None, 32)
    generated = [_greedy_one(model, tok, p, eos_token_id=sorted(stops | {tok.eos_token_id})) for p in prompts]
    assert verified[0] is None and sum(v is not None for v in verified) >= 3  # the drafts path is taken...
    for v, g in zip(verified, generated):
        assert v is None or v == g  # ...and gives what generation gives
    assert inference.scores_and_answers(model, tok, prompts, options)[1] == generated
    assert scores == inference.option_logprobs(model, tok, prompts, options)
