"""Tiny randomly initialised HF models (odd sizes) for reference tests."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ARCHS = ("llama", "bert", "gpt2")


def make_tiny(arch, path, seed=0):
    """Save a tiny random `arch` model with transformers into `path`; return the torch model."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = tf.LlamaConfig(vocab_size=101, hidden_size=72, intermediate_size=100,
                             num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                             max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
                             tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
        model = tf.LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = tf.GPT2Config(vocab_size=101, n_embd=72, n_layer=3, n_head=6, n_positions=128,
                            bos_token_id=1, eos_token_id=2)
        model = tf.GPT2LMHeadModel(cfg)
    elif arch == "bert":
        cfg = tf.BertConfig(vocab_size=101, hidden_size=72, num_hidden_layers=3,
                            num_attention_heads=6, intermediate_size=100,
                            max_position_embeddings=128)
        model = tf.BertModel(cfg, add_pooling_layer=False)
    else:
        raise ValueError(arch)
    # Random init leaves norms at 1/0; perturb every parameter so a wrong op shows.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    return model
