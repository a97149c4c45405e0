"""A tiny random Llama with a BPE tokenizer trained on local text, for the real vLLM engine on CPU."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The Normans gave their name to Normandy, a region in the north of France.",
    "Paris is the capital of France and Lyon is a large city in the south east.",
    "Question: what is the capital of France? Answer: Paris.",
    "Routing sends easy questions to a small model and hard questions to a large model.",
    "Signals such as entropy, log probability and answer length measure confidence.",
] * 20


def build_tiny_llama(directory: Path, vocab_size: int = 384, max_positions: int = 512) -> Path:
    """Write a 2-layer Llama (head_dim 32) with random weights and its tokenizer to ``directory``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.set_num_threads(1)
    torch.manual_seed(0)
    directory.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(directory)

    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).to(torch.float32).save_pretrained(directory, safe_serialization=True)
    return directory
