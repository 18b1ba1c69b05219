"""Small random models saved as real Hugging Face checkpoints, for tests and benchmarks.

They go through the same ``from_pretrained`` path as any reward model, without a hub:
- ``make_encoder_classifier``: a BERT sequence classifier (1 label) with the bundled MiniLM tokenizer;
- ``make_decoder_classifier``: a Llama sequence classifier with a word-level tokenizer, with or
  without a chat template;
- ``make_encoder`` + ``make_head``: an encoder for the ``encoder_head`` backend and random heads.
Sizes are parameters, so a benchmark can build a larger one on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)


def _minilm_tokenizer():
    from transformers import AutoTokenizer

    from rewardserve.backends.encoder_head import default_encoder_path

    return AutoTokenizer.from_pretrained(default_encoder_path())


def _bert_config(hidden: int, layers: int, heads: int, max_pos: int, **kw):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=30522,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 4,
        max_position_embeddings=max_pos,
        **kw,
    )


def make_encoder_classifier(
    out: str | Path,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_pos: int = 512,
    seed: int = 0,
    num_labels: int = 1,
) -> Path:
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(_bert_config(hidden, layers, heads, max_pos, num_labels=num_labels))
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    _minilm_tokenizer().save_pretrained(out)
    return out


def make_encoder(
    out: str | Path, hidden: int = 32, layers: int = 2, heads: int = 2, max_pos: int = 512, seed: int = 0
) -> Path:
    from transformers import BertModel

    torch.manual_seed(seed)
    model = BertModel(_bert_config(hidden, layers, heads, max_pos))
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    _minilm_tokenizer().save_pretrained(out)
    return out


def make_head(path: str | Path, in_features: int, hidden: int = 0, seed: int = 0) -> Path:
    from rewardserve.backends.encoder_head import RewardHead, save_head

    torch.manual_seed(seed)
    head = RewardHead(in_features, hidden)
    save_head(head, path)
    return Path(path)


def word_tokenizer(chat_template: bool = True):
    """The word-level tokenizer of the tiny decoders (one token per word of a fixed list, special
    tokens <unk> <pad> <s> </s>), with or without the chat template."""
    return _word_tokenizer(chat_template)


def _word_tokenizer(chat_template: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    words = (
        "the a an and or but of to in on for with is are was be it this that you i we he she they "
        "what how why when where who hello hi world dog cat egg water boil help please thanks good bad "
        "user assistant system : ? ! . , 0 1 2 3 4 5 6 7 8 9"
    ).split()
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        [" ".join(words)], trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<s>", "</s>"])
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def _save_tiny_llama(
    model_cls,
    out: str | Path,
    chat_template: bool,
    hidden: int,
    layers: int,
    heads: int,
    max_pos: int,
    seed: int,
    **config,
) -> Path:
    from transformers import LlamaConfig

    tok = _word_tokenizer(chat_template)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_pos,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        **config,
    )
    out = Path(out)
    model_cls(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def make_decoder_classifier(
    out: str | Path,
    chat_template: bool = True,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_pos: int = 512,
    seed: int = 0,
) -> Path:
    from transformers import LlamaForSequenceClassification

    return _save_tiny_llama(
        LlamaForSequenceClassification, out, chat_template, hidden, layers, heads, max_pos, seed, num_labels=1
    )


def make_causal_lm(
    out: str | Path, hidden: int = 32, layers: int = 2, heads: int = 2, max_pos: int = 512, seed: int = 0
) -> Path:
    """A tiny random Llama causal LM with a chat template (a stand-in policy for fast tests)."""
    from transformers import LlamaForCausalLM

    return _save_tiny_llama(LlamaForCausalLM, out, True, hidden, layers, heads, max_pos, seed)


def make_causal_lm_for_tokenizer(
    tokenizer: str | Path,
    out: str | Path,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_pos: int = 512,
    seed: int = 0,
    tie_word_embeddings: bool = False,
    initializer_range: float = 0.02,
) -> Path:
    """A tiny random Llama causal LM over an existing tokenizer folder (e.g. one with a real chat
    template), saved with that tokenizer: a stand-in judge or policy for fast tests. A larger
    ``initializer_range`` than the default 0.02 gives next-token distributions far from uniform."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_pos,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=initializer_range,
    )
    out = Path(out)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
