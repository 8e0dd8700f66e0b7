"""The multi-task student: golden loss, micro-batching, a tracked run, resume, 2-process training.

Run: pytest tests/test_train.py
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

from distill.batching import build_samples, count_targets, encode, micro_batches, step_loss_terms
from distill.data import load_dataset
from distill.student import PromptFormat

BIN = Path(sys.executable).parent


def rationale_texts(exs, teacher):
    return {ex.id: f"Because {ex.answer_text} fits {teacher}. So the answer is ({ex.answer_letter})." for ex in exs}


@pytest.fixture(params=["before", "after"])
def batch(tiny_student, request):
    tok = transformers.AutoTokenizer.from_pretrained(tiny_student)
    exs = load_dataset("demo").splits["train"][:5]
    rats = {"a": rationale_texts(exs, "a"), "b": rationale_texts(exs[:3], "b")}  # b has rationales for 3 questions only
    per_q = build_samples(exs, rats, tok, PromptFormat(task_position=request.param), seq2seq=False, max_length=256)
    return tok, [s for q in per_q for s in q]


def reference_loss(model, samples, alphas, pad_id):
    """Each task separately, the plain Hugging Face way: labels with -100 on the prompt, mean over targets."""
    total = 0.0
    for task in alphas:
        mine = [s for s in samples if s.task == task]
        n = max(len(s.input_ids) for s in mine)
        ids = torch.tensor([s.input_ids + [pad_id] * (n - len(s.input_ids)) for s in mine])
        att = torch.tensor([[1] * len(s.input_ids) + [0] * (n - len(s.input_ids)) for s in mine])
        labels = torch.tensor([s.labels + [-100] * (n - len(s.labels)) for s in mine])
        total += alphas[task] * model(input_ids=ids, attention_mask=att, labels=labels).loss.item()
    return total


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("share", [True, False])
def test_golden_loss_decoder(tiny_student, batch, share, attn):
    tok, samples = batch
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_student, attn_implementation=attn)
    alphas = {"answer": 1.0, "a": 0.5, "b": 2.0}
    objective = []
    with torch.no_grad():
        terms = step_loss_terms(model, samples, tok.pad_token_id, alphas, max_tokens=10_000,
                                backward=lambda loss: objective.append(float(loss)), share_prompt=share)
    ref = reference_loss(model, samples, alphas, tok.pad_token_id)
    assert sum(objective) == pytest.approx(ref, rel=1e-5)
    assert sum(alphas[t] * v for t, v in terms.items()) == pytest.approx(ref, rel=1e-5)
    # Prompt tokens contribute nothing: count_targets only counts answer/rationale tokens (+ eos) ...
    for s in samples:
        n_prompt = sum(1 for x in s.labels if x == -100)
        assert s.labels[:n_prompt] == [-100] * n_prompt and -100 not in s.labels[n_prompt:]
    # ... and changing prompt labels from -100 to real ids would change the loss.
    leaky = [type(s)(s.task, s.input_ids, list(s.input_ids)) for s in samples]
    with torch.no_grad():
        leaky_terms = step_loss_terms(model, leaky, tok.pad_token_id, alphas, 10_000)
    assert leaky_terms["answer"] != pytest.approx(terms["answer"], rel=1e-3)


def test_golden_loss_seq2seq(tmp_path):
    from conftest import make_tiny_student

    exs = load_dataset("demo").splits["train"][:4]
    from distill.prompts import render_question

    folder = make_tiny_student(tmp_path / "t5", [render_question(e) + " predict: explain_a: Answer: Explanation: Because So the answer is"
                                                 for e in exs], arch="t5")
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.T5ForConditionalGeneration.from_pretrained(folder)
    samples = [s for q in build_samples(exs, {"a": rationale_texts(exs, "a")}, tok, PromptFormat(), True, 256) for s in q]
    alphas = {"answer": 1.0, "a": 0.3}
    with torch.no_grad():
        terms = step_loss_terms(model, samples, tok.pad_token_id, alphas, 10_000)
        ref = 0.0
        for task, alpha in alphas.items():
            mine = [s for s in samples if s.task == task]
            ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(s.input_ids) for s in mine], batch_first=True, padding_value=0)
            labels = torch.nn.utils.rnn.pad_sequence([torch.tensor(s.labels) for s in mine], batch_first=True, padding_value=-100)
            ref += alpha * model(input_ids=ids, attention_mask=(ids != 0).long(), labels=labels).loss.item()
    assert sum(alphas[t] * v for t, v in terms.items()) == pytest.approx(ref, rel=1e-5)


@pytest.mark.slow  # compiling takes a minute on CPU
@pytest.mark.parametrize("share", [True, False])
def test_compiled_student_gives_the_same_losses_and_gradients(tiny_student, batch, share):
    """train.compile: the loss goes through torch.compile'd TargetLogits; losses and gradients equal the
    eager ones within 1e-5 (relative) / 1e-6 (absolute), packed and unpacked."""
    from distill.train import compile_student

    tok, samples = batch
    alphas = {"answer": 1.0, "a": 0.5, "b": 2.0}
    out = []
    for compiled in (False, True):
        model = transformers.AutoModelForCausalLM.from_pretrained(tiny_student)
        if compiled:
            compile_student(model)
        terms = step_loss_terms(model, samples, tok.pad_token_id, alphas, 300, share_prompt=share,
                                backward=lambda loss: loss.backward())
        out.append((terms, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    assert out[1][0] == pytest.approx(out[0][0], rel=1e-5)
    assert torch.allclose(out[0][1], out[1][1], atol=1e-6, rtol=1e-5)


def losses_and_grads(model, samples, pad_id, **kw):
    alphas = {"answer": 1.0, "a": 0.5, "b": 2.0}
    model.zero_grad(set_to_none=True)
    terms = step_loss_terms(model, samples, pad_id, alphas, 300, backward=lambda loss: loss.backward(), **kw)
    return terms, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_chunked_cross_entropy_gives_the_same_losses_and_gradients(tiny_student, batch, share, softcap, precision,
                                                                      monkeypatch):
    """train.ce_chunk_tokens: projection + cross-entropy a few target tokens at a time, gradients taken in the
    forward pass, equal today's one-pass loss: fp32 within 1e-5 (relative) / 1e-6 (absolute); under bf16
    autocast within bf16's own rounding (the chunks' weight gradients are summed in fp32, not in one bf16
    matmul). Packed and unpacked rows, with and without a final logit softcap (Gemma 2 style)."""
    import distill.batching

    tok, samples = batch
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_student)
    model.config.final_logit_softcapping = softcap
    calls, apply = [], distill.batching.ChunkedLinearCrossEntropy.apply
    monkeypatch.setattr(distill.batching.ChunkedLinearCrossEntropy, "apply",
                        lambda hidden, *rest: (calls.append(len(hidden)), apply(hidden, *rest))[1])
    out = []
    for chunk in (0, 7):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out.append(losses_and_grads(model, samples, tok.pad_token_id, share_prompt=share, ce_chunk_tokens=chunk))
    (ref_terms, ref_grad), (terms, grad) = out
    rel, atol = (1e-5, 1e-6) if precision == "fp32" else (2e-2, 2e-3)
    assert terms == pytest.approx(ref_terms, rel=rel)
    assert torch.allclose(grad, ref_grad, atol=atol, rtol=rel)
    assert grad.abs().max() > 1e-3  # gradients are really there
    assert calls and all(n > 7 for n in calls)  # ... and came from the chunked path, several chunks per pass


@pytest.mark.slow  # compiles FlexAttention's kernels (a minute on CPU)
def test_flex_attention_packed_rows_give_the_same_losses(tiny_student, batch):
    """train.attention=flex: the packing layout as a FlexAttention block mask gives the dense mask's losses
    (forward only: torch has no FlexAttention backward on CPU; the GPU script compares gradients)."""
    from distill.batching import use_flex_attention

    tok, samples = batch
    alphas = {"answer": 1.0, "a": 0.5, "b": 2.0}
    out = []
    for flex in (False, True):
        model = transformers.AutoModelForCausalLM.from_pretrained(tiny_student).eval()
        if flex:
            use_flex_attention(model)
        with torch.no_grad():
            out.append(step_loss_terms(model, samples, tok.pad_token_id, alphas, 10_000))
    assert out[1] == pytest.approx(out[0], rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward needs CUDA (torch has none on "
                    "CPU); scripts/gpu_train_bench.sh runs this test on a GPU host")
@pytest.mark.parametrize("chunk", [0, 7])
def test_flex_attention_gives_the_same_gradients_on_cuda(tiny_student, batch, chunk):
    """train.attention=flex on a GPU: losses and gradients equal the dense mask's (fp32, 1e-4 relative,
    1e-5 absolute), also with the chunked cross-entropy."""
    from distill.batching import use_flex_attention

    tok, samples = batch
    out = []
    for flex in (False, True):
        model = transformers.AutoModelForCausalLM.from_pretrained(tiny_student).cuda()
        if flex:
            use_flex_attention(model)
        out.append(losses_and_grads(model, samples, tok.pad_token_id, ce_chunk_tokens=chunk))
    assert out[1][0] == pytest.approx(out[0][0], rel=1e-4)
    assert torch.allclose(out[1][1], out[0][1], atol=1e-5, rtol=1e-4)


def test_kernel_options_the_student_or_device_cannot_run_are_refused(tiny_student):
    from distill.config import TrainConfig
    from distill.errors import UserError
    from distill.train import check_kernels

    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_student)
    with pytest.raises(UserError, match="train.attention=flex needs a CUDA GPU"):
        check_kernels(TrainConfig(attention="flex"), model, torch.device("cpu"))
    with pytest.raises(UserError, match="share_prompt=true"):
        check_kernels(TrainConfig(attention="flex", share_prompt=False), model, torch.device("cuda"))
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(vocab_size=32, d_model=8, d_ff=16, d_kv=4,
                                                                       num_layers=1, num_heads=2))
    with pytest.raises(UserError, match="set train.ce_chunk_tokens=0"):
        check_kernels(TrainConfig(ce_chunk_tokens=64), t5, torch.device("cpu"))
    check_kernels(TrainConfig(ce_chunk_tokens=64), model, torch.device("cpu"))


def test_micro_batching_changes_passes_not_gradients(tiny_student, batch):
    tok, samples = batch
    alphas = {"answer": 1.0, "a": 1.0, "b": 0.5}
    grads = []
    for budget in (10_000, 300):
        model = transformers.AutoModelForCausalLM.from_pretrained(tiny_student)
        passes = len(micro_batches(samples, budget))
        step_loss_terms(model, samples, tok.pad_token_id, alphas, budget, backward=lambda loss: loss.backward())
        grads.append((passes, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    assert grads[0][0] == 1 and grads[1][0] > 2
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)


def test_shared_prompt_same_gradients_fewer_tokens(tiny_student, batch):
    """Packing a question's tasks into one row computes the same objective and gradients as
    separate rows; with the task prefix after the question, the row is much shorter."""
    from distill.batching import packs_for, shared_length

    tok, samples = batch
    alphas = {"answer": 1.0, "a": 1.0, "b": 0.5}
    grads, losses = [], []
    for share in (False, True):
        model = transformers.AutoModelForCausalLM.from_pretrained(tiny_student)
        losses.append(step_loss_terms(model, samples, tok.pad_token_id, alphas, 10_000,
                                      backward=lambda loss: loss.backward(), share_prompt=share))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    packs = packs_for(samples)
    assert len(packs) == 5 and sum(len(p.samples) for p in packs) == len(samples)
    flat, packed = sum(len(s.input_ids) for s in samples), sum(len(p.ids) for p in packs)
    if tok.convert_tokens_to_ids("predict") in samples[0].input_ids[:2]:  # task prefix first: only BOS-like tokens shared
        assert packed > 0.9 * flat
    else:  # question first: shared, so a question of three tasks costs well under three prompts
        assert packed < 0.75 * flat
        assert all(shared_length(p.samples) > 20 for p in packs)


@pytest.mark.parametrize("window", [4096, 16])
def test_shared_prompt_gemma3_sliding_window(tiny_student, batch, window):
    """Gemma 3 (sliding-window layers): packed rows give the unpacked loss while they fit the window,
    and longer rows fall back to one row per task rather than silently dropping the window."""
    from distill.batching import micro_batch_plan

    tok, samples = batch
    cfg = transformers.Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=window,
                                        max_position_embeddings=512, layer_types=["sliding_attention", "full_attention"])
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(cfg).eval()
    alphas = {"answer": 1.0, "a": 1.0, "b": 0.5}
    with torch.no_grad():
        shared = step_loss_terms(model, samples, tok.pad_token_id, alphas, 10_000, share_prompt=True)
        separate = step_loss_terms(model, samples, tok.pad_token_id, alphas, 10_000, share_prompt=False)
    assert shared == pytest.approx(separate, rel=1e-5)
    packed = micro_batch_plan(model, samples, 10_000)[0][0][0]
    assert hasattr(packed, "segments") == (window == 4096)


def test_shared_prompt_never_shares_targets(tiny_student):
    """If one task's prompt is a prefix of another's (a target starts where the other's prompt goes on),
    the shared part stops before the first target token."""
    from distill.batching import Sample, pack, shared_length

    a = Sample("answer", [1, 2, 3, 4, 5], [-100, -100, -100, 4, 5], group=0)
    b = Sample("x", [1, 2, 3, 4, 9, 9, 7], [-100, -100, -100, -100, -100, -100, 7], group=0)
    assert shared_length([a, b]) == 3
    p = pack([a, b])
    assert p.ids == [1, 2, 3, 4, 5, 4, 9, 9, 7] and p.positions == [0, 1, 2, 3, 4, 3, 4, 5, 6]
    # a's targets 4 and 5 are predicted by positions 2 (shared) and 3; b's 7 by its own token before it.
    assert p.targets == [(2, 4, 0), (3, 5, 0), (7, 7, 1)]


def test_option_scores_shared_equal_separate(tiny_student, tmp_path, monkeypatch):
    """Option log-likelihoods computed with the prompt shared equal one row per option; the format
    (with its task position) travels with the student."""
    from distill.inference import option_logprobs
    from distill.prompts import render_question

    tok = transformers.AutoTokenizer.from_pretrained(tiny_student)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_student).eval()
    ex = load_dataset("demo").splits["test"][0]
    fmt = PromptFormat(task_position="after")
    assert fmt.answer_prompt(ex) == render_question(ex) + "\npredict: Answer:"
    shared = option_logprobs(model, tok, [fmt.answer_prompt(ex)], [ex.choices])[0]
    import distill.batching

    monkeypatch.setattr(distill.batching, "can_share", lambda model: False)  # as for attention without 4D masks
    separate = option_logprobs(model, tok, [fmt.answer_prompt(ex)], [ex.choices])[0]
    assert [c for _, c in shared] == [c for _, c in separate]
    assert [t for t, _ in shared] == pytest.approx([t for t, _ in separate], abs=1e-5)
    fmt.save(tmp_path)
    assert PromptFormat.load(tmp_path) == fmt
    assert PromptFormat.load(tmp_path / "none") == PromptFormat()  # students saved before the field: prefix first


def test_eval_records_length_normalised_and_summed_picks(monkeypatch):
    """The reported pick is by mean log-prob per token; the summed pick is kept beside it, and each is
    scored against gold on its own."""
    import distill.inference
    from distill.evaluation import evaluate

    exs = load_dataset("demo").splits["test"][:2]
    # option 0: short and likely per token; option 1: long, more total mass; the rest unlikely
    fake = [[(-2.0, 1), (-3.0, 6)], [(-1.0, 1), (-4.0, 2)]]
    monkeypatch.setattr(distill.inference, "option_logprobs", lambda model, tok, prompts, options, progress: [
        f + [(-99.0, 1)] * (len(o) - 2) for f, o in zip(fake, options)])
    model = torch.nn.Linear(1, 1)
    res = evaluate(model, None, PromptFormat(), exs, "loglik")
    assert [(p["loglik"], p["loglik_sum"]) for p in res["predictions"]] == [(1, 0), (0, 0)]
    golds = [p["gold"] for p in res["predictions"]]
    assert res["accuracy_loglik"] == sum(g == m for g, m in zip(golds, (1, 0))) / 2
    assert res["accuracy_loglik_sum"] == sum(g == 0 for g in golds) / 2
    assert "accuracy_option_match" not in res and "accuracy_em" not in res


def test_micro_batches_respect_budget_and_sort_by_length(batch):
    _, samples = batch
    for mb in micro_batches(samples, 300):
        assert len(mb) == 1 or max(len(s.input_ids) for s in mb) * len(mb) <= 300
    lengths = [len(s.input_ids) for mb in micro_batches(samples, 300) for s in mb]
    assert lengths == sorted(lengths, reverse=True)


def test_long_prompts_keep_prefix_and_target(tiny_student):
    tok = transformers.AutoTokenizer.from_pretrained(tiny_student)
    s = encode(tok, "predict: " + "water " * 300 + "Answer:", " gravity", "answer", False, 64)
    assert len(s.input_ids) == 64
    assert s.input_ids[0] == tok.convert_tokens_to_ids("predict")
    assert tok.decode([x for x in s.labels if x != -100]).split()[0] == "gravity"
    assert count_targets([s]) == {"answer": 2}


# ---------------------------------------------------------------------------------------------
# Whole runs through the CLI: MLflow, checkpoints and resume, two processes.


def write_run_config(tmp_path, tiny_student, teachers=("a", "b"), from_env=False, **train):
    """A run over 24 demo questions with in-test rationales; MLflow in tmp_path, or MLFLOW_TRACKING_URI if from_env."""
    exs = load_dataset("demo").splits["train"]
    teacher_lines = []
    for t in teachers:
        f = tmp_path / f"{t}.jsonl"
        f.write_text("".join(json.dumps({"example_id": i, "text": text}) + "\n" for i, text in rationale_texts(exs, t).items()))
        teacher_lines.append(f"  - {{name: {t}, backend: files, model: {f}, alpha: 0.5}}")
    train_yaml = ", ".join(f"{k}: {v}" for k, v in {"batch_size": 4, "lr": 1e-3, "log_every": 2, "eval_method": "loglik",
                                                    **train}.items())
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""output_dir: {tmp_path / 'out'}
data: {{name: demo, max_train: 24, eval_split: test, max_eval: 8}}
teachers:
{chr(10).join(teacher_lines) if teacher_lines else '  []'}
student: {{model: {tiny_student}}}
train: {{{train_yaml}}}
tracking: {{{'' if from_env else f'uri: "sqlite:///{tmp_path / "mlflow.db"}", '}experiment: test, system_metrics: false}}
""")
    return cfg


def run_cli(*args, cwd, env=None):
    r = subprocess.run([str(BIN / "tinyllm-distill"), *args], capture_output=True, text=True, cwd=cwd,
                       env={**os.environ, **(env or {})}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_tracked_run_logs_terms_saves_student_and_changes_weights(tmp_path, tiny_student):
    import mlflow

    cfg = write_run_config(tmp_path, tiny_student)
    r = run_cli("run", str(cfg), cwd=tmp_path)
    summary = json.loads(r.stdout)
    assert "step 00006/00006" in r.stderr and "answer" in r.stderr
    assert "interpreted in multiple ways" not in r.stderr  # MLflow's dataset-source warning, once per dataset
    student = Path(summary["student_dir"])
    assert (student / "model.safetensors").exists() and (student / "prompt_format.json").exists()
    assert (tmp_path / "out" / "resolved_config.yaml").exists()
    before, after = load_file(str(tiny_student / "model.safetensors")), load_file(str(student / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["test"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    metrics = runs[0].data.metrics
    assert {"loss", "loss_answer", "loss_a", "loss_b", "lr", "tokens_per_s", "eval_accuracy_loglik"} <= set(metrics)
    assert runs[0].data.params["rationales.a"] == "24" and runs[0].data.tags["tinyllm.method"] == "tinyllm"
    # one fingerprint, two names: the rows used (param and the Dataset input agree) and the whole split
    training = next(d for d in runs[0].inputs.dataset_inputs if any(t.value == "training" for t in d.tags))
    assert runs[0].data.params["data.fingerprint.train"] == training.dataset.digest
    assert runs[0].data.params["data.fingerprint.train_split"] != training.dataset.digest  # 24 of 108 rows
    history = mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "loss_answer")
    assert [m.step for m in history] == [1, 2, 4, 6]


def test_artifacts_go_beside_a_sqlite_store_given_by_tracking_uri(tmp_path, tiny_student):
    """tracking.uri=sqlite:///<elsewhere>/mlflow.db used to put the student under ./mlruns of the current folder."""
    import mlflow

    store = tmp_path / "store"
    store.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cfg = write_run_config(tmp_path, tiny_student, teachers=(), max_steps=1)
    run_cli("run", str(cfg), f"tracking.uri=sqlite:///{store / 'mlflow.db'}", cwd=cwd)
    assert not (cwd / "mlruns").exists() and not (cwd / "runs").exists()
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    exp = mlflow.get_experiment_by_name("test")
    assert exp.artifact_location == (store / "mlartifacts").as_uri()
    assert list((store / "mlartifacts").rglob("model.safetensors"))


def test_artifact_location_follows_the_store():
    from types import SimpleNamespace

    from distill.errors import UserError
    from distill.tracking import artifact_location

    def cfg(location=None):
        return SimpleNamespace(tracking=SimpleNamespace(artifact_location=location))

    assert artifact_location(cfg(), "sqlite:////data/x/mlflow.db", False) == "file:///data/x/mlartifacts"
    assert artifact_location(cfg(), "http://127.0.0.1:5000", False) is None  # the server's artifact root
    assert artifact_location(cfg("s3://bucket/tinyllm"), "postgresql://u@h/db", False) == "s3://bucket/tinyllm"
    with pytest.raises(UserError, match="a database store without a server needs tracking.artifact_location"):
        artifact_location(cfg(), "postgresql://u@h/db", False)


def test_answer_only_run_is_tracked(tmp_path, tiny_student):
    """No teachers = answer-only fine-tuning (the paper's baseline), tracked like any run."""
    import mlflow

    cfg = write_run_config(tmp_path, tiny_student, teachers=(), max_steps=2)
    run_cli("run", str(cfg), cwd=tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["test"], output_format="list")
    assert run.info.status == "FINISHED" and run.data.params["teacher_names"] == "none"
    assert "loss_answer" in run.data.metrics and not any(k.startswith("loss_a") and k != "loss_answer" for k in run.data.metrics)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_train_fp32_weights(tmp_path, tiny_student, precision):
    """bf16/fp16 autocast (fp16 with a gradient scaler) on CPU: the step losses stay within 2% of
    fp32's, and the saved student is fp32."""
    cfg = write_run_config(tmp_path, tiny_student, max_steps=2)
    import re

    losses = {}
    for p in ("fp32", precision):
        r = run_cli("run", str(cfg), "--no-mlflow", f"train.precision={p}", f"output_dir={tmp_path / p}", cwd=tmp_path)
        losses[p] = [float(x) for x in re.findall(r"^\[train\] step \d+/\d+ .*?\| loss ([\d.]+)", r.stderr, re.M)]
    assert len(losses["fp32"]) == 2 and losses[precision] == pytest.approx(losses["fp32"], rel=0.02)
    weights = load_file(str(tmp_path / precision / "student" / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in weights.values())
    start = load_file(str(tiny_student / "model.safetensors"))
    assert any(not torch.equal(start[k], weights[k]) for k in start)
    fp32 = load_file(str(tmp_path / "fp32" / "student" / "model.safetensors"))
    assert any(not torch.equal(fp32[k], weights[k]) for k in fp32)  # autocast really ran in low precision


def test_zero_shot_eval_reports_and_keeps_predictions(tmp_path, tiny_student):
    """`tinyllm-distill eval`: the paper's zero-shot row — accuracy, and per-question predictions on disk."""
    cfg = write_run_config(tmp_path, tiny_student)
    r = run_cli("eval", str(cfg), "data.max_test=6", "train.eval_method=loglik", "--no-mlflow", cwd=tmp_path)
    summary = json.loads(r.stdout)
    assert summary["n"] == 6 and 0.0 <= summary["accuracy_loglik"] <= 1.0
    preds = [json.loads(line) for line in (tmp_path / "out" / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and sum(p["loglik"] == p["gold"] for p in preds) / 6 == summary["accuracy_loglik"]
    assert sum(p["loglik_sum"] == p["gold"] for p in preds) / 6 == summary["accuracy_loglik_sum"]


def test_failed_run_ends_failed_not_running(tmp_path, tiny_student):
    import mlflow

    cfg = write_run_config(tmp_path, tiny_student)
    (tmp_path / "a.jsonl").unlink()  # teacher a's rationale file: missing when the run reaches it
    r = subprocess.run([str(BIN / "tinyllm-distill"), "run", str(cfg)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "a.jsonl" in r.stderr, r.stderr[-2000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlflow.search_runs(experiment_names=["test"], output_format="list")
    assert run.info.status == "FAILED"


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, tiny_student):
    cfg = write_run_config(tmp_path, tiny_student, save_every=2, max_steps=6, epochs=2)
    run_cli("run", str(cfg), "--no-mlflow", cwd=tmp_path)
    out = tmp_path / "out"
    full = load_file(str(out / "student" / "model.safetensors"))
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step-000002", "step-000004"]  # the last two are kept
    # What a SIGKILL right after step 4's checkpoint leaves on disk: that checkpoint, nothing later.
    shutil.rmtree(out / "student")
    r = run_cli("run", str(cfg), "--no-mlflow", "--resume", cwd=tmp_path)
    assert "resumed from" in r.stderr and "step-000004" in r.stderr and "step 00005/00006" in r.stderr
    resumed = load_file(str(out / "student" / "model.safetensors"))
    assert all(torch.equal(full[k], resumed[k]) for k in full)


CPU_ONLY = {"CUDA_VISIBLE_DEVICES": ""}  # the multi-process tests compare CPU (gloo) runs, also on a GPU host


def torchrun(*args, cwd):
    import socket

    with socket.socket() as sock:  # torchrun hangs with --master_port 0; take a free port instead
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                        "--master_port", str(port), "--no-python", str(BIN / "tinyllm-distill"), *args],
                       capture_output=True, text=True, cwd=cwd, timeout=600, env={**os.environ, **CPU_ONLY})
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_more_processes_per_node_than_gpus_is_named(monkeypatch):
    """torchrun --nproc_per_node 2 on a one-GPU host: one sentence naming the fix, not a CUDA ordinal error."""
    from distill.errors import UserError
    from distill.train import on_cpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(UserError, match=r"2 training processes .* 1 GPU\(s\).*--nproc_per_node 1"):
        on_cpu()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert on_cpu() is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert on_cpu() is True


@pytest.mark.slow  # 30-70 s: in CI's slow suite, out of the default one (kept under ~10 min)
@pytest.mark.parametrize("sharding", ["none", "fsdp"])
def test_two_processes_log_one_run_and_match_one_process(tmp_path, tiny_student, sharding):
    """Data parallel (whole student per process) and FSDP (sharded): both compute the one-process run."""
    import mlflow

    cfg = write_run_config(tmp_path, tiny_student, max_steps=4, micro_batch_tokens=512, save_every=2)
    run_cli("run", str(cfg), "output_dir=" + str(tmp_path / "single"), "--no-mlflow", cwd=tmp_path, env=CPU_ONLY)
    r = torchrun("run", str(cfg), f"train.sharding={sharding}", cwd=tmp_path)
    assert "2 process(es)" in r.stderr
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["test"], output_format="list")
    assert len(runs) == 1 and runs[0].data.params["train.world_size"] == "2"
    one = load_file(str(tmp_path / "single" / "student" / "model.safetensors"))
    two = load_file(str(tmp_path / "out" / "student" / "model.safetensors"))
    assert set(one) == set(two) and all(torch.allclose(one[k], two[k], atol=1e-5) for k in one)
    # Checkpoints hold whole (gathered) weights either way, and resuming from one reproduces the run.
    ckpt = load_file(str(tmp_path / "out" / "checkpoints" / "step-000002" / "model.safetensors"))
    assert set(ckpt) >= set(one) and all(ckpt[k].shape == one[k].shape for k in one)
    shutil.rmtree(tmp_path / "out" / "student")
    r = torchrun("run", str(cfg), f"train.sharding={sharding}", "--resume", "--no-mlflow", cwd=tmp_path)
    assert "resumed from" in r.stderr and "step-000002" in r.stderr
    resumed = load_file(str(tmp_path / "out" / "student" / "model.safetensors"))
    assert all(torch.allclose(one[k], resumed[k], atol=1e-5) for k in one)


def test_lora_t5_student_registers_and_saves_merged(tmp_path):
    """A FLAN-T5-style (encoder-decoder) student with LoRA: trains, merges on save, registers in MLflow."""
    import mlflow

    from conftest import make_tiny_student
    from distill.prompts import render_question

    exs = load_dataset("demo").splits["train"]
    t5 = make_tiny_student(tmp_path / "t5", [render_question(e) + " predict: explain_a: Answer: Explanation: Because So the answer is"
                                             for e in exs], arch="t5")
    cfg = write_run_config(tmp_path, t5, teachers=("a",), max_steps=3)
    r = run_cli("run", str(cfg), "student.lora=true", "student.lora_r=4", "tracking.register_as=tiny-student", cwd=tmp_path)
    assert "registered the student as models:/tiny-student/1" in r.stderr
    saved = load_file(str(tmp_path / "out" / "student" / "model.safetensors"))
    assert not any("lora" in k for k in saved)  # merged into the base weights
    assert json.loads((tmp_path / "out" / "student" / "config.json").read_text())["is_encoder_decoder"]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    local = mlflow.artifacts.download_artifacts("models:/tiny-student/1")
    assert (Path(local) / "prompt_format.json").exists()


@pytest.mark.slow  # 30-70 s: in CI's slow suite, out of the default one (kept under ~10 min)
def test_killed_runs_never_stay_running(tmp_path, tiny_student):
    """SIGTERM ends the run FAILED; a SIGKILLed run is marked KILLED by the next run on the same output folder."""
    import signal
    import time

    import mlflow

    cfg = write_run_config(tmp_path, tiny_student, max_steps=400, save_every=0, log_every=1)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    statuses = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen([str(BIN / "tinyllm-distill"), "run", str(cfg)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:  # wait until training is under way
            if line.startswith("[train] step 00002"):
                break
        proc.send_signal(sig)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30  # the store may show the SIGTERMed run's end a moment after the exit
        while True:
            seen = sorted(r.info.status for r in mlflow.search_runs(experiment_names=["test"], output_format="list"))
            if sig != signal.SIGTERM or "RUNNING" not in seen or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        statuses.append(seen)
    assert statuses[0] == ["FAILED"]
    assert statuses[1] == ["FAILED", "RUNNING"]  # SIGKILL: nothing in the process could react
    run_cli("run", str(cfg), "train.max_steps=1", cwd=tmp_path)
    final = sorted(r.info.status for r in mlflow.search_runs(experiment_names=["test"], output_format="list"))
    assert final == ["FAILED", "FINISHED", "KILLED"]


def test_resume_without_a_checkpoint_is_refused_before_any_work(tmp_path, tiny_student):
    """It used to fail only after the generate stage, leaving a FAILED MLflow run, with a hint to set a key the
    file already set."""
    cfg = write_run_config(tmp_path, tiny_student, max_steps=2, save_every=5)
    r = subprocess.run([str(BIN / "tinyllm-distill"), "run", str(cfg), "--resume"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and "--resume: no checkpoint under" in r.stderr and "saves every 5 steps" in r.stderr
    assert "Traceback" not in r.stderr and "[generate" not in r.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out").exists()
