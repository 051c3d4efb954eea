"""A tiny random-weight llama model in GGUF, written with the ``gguf`` package (no downloads).

2 layers, 64-dim, 4 heads, an SPM vocabulary of <unk>/<s>/</s>, the 256 byte tokens and a few
merge pieces, and a chat template. Random weights, with two deliberate properties so a test can
compare counts exactly:

- one embedding dimension is a large constant, so after the final norm the hidden state always
  points the same way on it; the output rows of the "safe" tokens (byte tokens of letters that no
  merge piece uses) are pushed up along it, all others down. Greedy decoding therefore only ever
  picks safe tokens and never EOS: a completion is exactly ``max_tokens`` tokens, and its text
  tokenizes back to the same number of tokens;
- ``add_space_prefix`` is off, so tokenizing a completion's text adds no leading ``▁``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
PIECES = ["\u2581", "\u2581t", "he", "\u2581the", "ll", "llo", "in", "\u2581a", "<|", "|>"]
SAFE_LETTERS = "bcdfgjkmpqrsuvwxyz"  # no piece contains these


def write_model(path: Path, seed: int = 1234) -> Path:
    import gguf

    rng = np.random.default_rng(seed)
    n_embd, n_ff, n_layer, n_head = 64, 128, 2, 4
    tokens: list[str] = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    scores = [0.0, 0.0, 0.0]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(gguf.TokenType.BYTE)
        scores.append(0.0)
    for i, piece in enumerate(PIECES):
        tokens.append(piece)
        types.append(gguf.TokenType.NORMAL)
        scores.append(-1.0 - i * 0.1)
    n_vocab = len(tokens)
    safe = {3 + ord(c) for c in SAFE_LETTERS}

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-random-llama")
    w.add_context_length(1024)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(CHAT_TEMPLATE)

    def rand(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    embd = rand(n_vocab, n_embd, scale=0.1)
    embd[:, 0] = 8.0  # the constant direction
    out = rand(n_vocab, n_embd, scale=0.5)
    out[:, 0] = -2.0
    for t in safe:
        out[t, 0] = 2.0
    w.add_tensor("token_embd.weight", embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", out)
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", rand(n_embd, n_embd))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(n_ff, n_embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
