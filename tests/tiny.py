"""Tiny randomly initialised Llama models with a tiny byte-level BPE tokenizer (no hub, built in ms)."""

from __future__ import annotations

import functools

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tempo_core import wrap_model

CORPUS = ["the cat sat on the mat and the dog ran to the park",
          "once upon a time there was a small robot who liked to read books",
          "hello world, the future of ai is bright and full of questions"] * 20
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@functools.lru_cache(maxsize=None)
def tiny_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=320, min_frequency=1,
                            special_tokens=["<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                  pad_token="</s>")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llama(seed: int = 0, layers: int = 2, chat: bool = True, **overrides):
    """A 2-layer GQA Llama (4 query heads, 2 KV heads) with fp32 random weights, wrapped for TEMPO."""
    tok = tiny_tokenizer(chat)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      **overrides)
    model = LlamaForCausalLM(cfg).float()
    # sharpen the random model so that its distributions have a few clear favourites, like a trained LM
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return wrap_model(model, tok, name=f"tiny-llama-{seed}")
