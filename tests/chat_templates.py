"""Tiny tokenizers with the real chat templates of the policy families, saved as real checkpoints.

Each family's Jinja template is the one its models ship (SmolLM2-Instruct's ChatML with its default
system message, Meta-Llama-3-Instruct, Llama-2-chat, Mistral-7B-Instruct-v0.1, Gemma-it,
Phi-3-mini-instruct, Zephyr-7b-beta, Tulu-2), on a byte-level BPE tokenizer (exact decode) with the
family's special tokens added. Tests render prompts with ``apply_chat_template`` and build what
trainers send from the token ids, as OpenRLHF and verl do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"  # injected when none is given
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    + SMOLLM2_SYSTEM
    + "<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
TULU2 = (
    "{% for message in messages %}\n{% if message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] }}\n"
    "{% elif message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
# a house template no family matches: only prompt_format "tokenizer:<path>" can parse it
CUSTOM = (
    "{{ bos_token }}{% for m in messages %}<|turn|>{{ m['role'] }}: {{ m['content'] }}<|/turn|>{% endfor %}"
    "{% if add_generation_prompt %}<|turn|>assistant: {% endif %}"
)


@dataclass(frozen=True)
class TemplateSpec:
    name: str
    family: str | None  # the prompt_format family auto-detection must find (None: none)
    template: str
    bos: str
    eos: str
    pad: str | None
    extra: tuple[str, ...] = ()
    system: bool = True  # the template accepts a system message
    sentencepiece: bool = False  # a SentencePiece-style tokenizer (Llama-2, Mistral): its decode adds a space after BOS
    default_system: str | None = None  # the system message the template injects when none is given

    def as_sent(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """The conversation the template renders: ``messages`` with the injected system message."""
        if self.default_system and messages[0]["role"] != "system":
            return [{"role": "system", "content": self.default_system}, *messages]
        return list(messages)


SPECS = [
    TemplateSpec(
        "smollm2",
        "chatml",
        SMOLLM2,
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        ("<|endoftext|>",),
        default_system=SMOLLM2_SYSTEM,
    ),
    TemplateSpec(
        "llama3",
        "llama3",
        LLAMA3,
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|end_of_text|>",
        ("<|start_header_id|>", "<|end_header_id|>"),
    ),
    TemplateSpec("llama2", "llama2", LLAMA2, "<s>", "</s>", "<unk>", sentencepiece=True),
    TemplateSpec("mistral", "llama2", MISTRAL, "<s>", "</s>", None, system=False, sentencepiece=True),
    TemplateSpec(
        "gemma", "gemma", GEMMA, "<bos>", "<eos>", "<pad>", ("<start_of_turn>", "<end_of_turn>"), system=False
    ),
    TemplateSpec(
        "phi3",
        "phi3",
        PHI3,
        "<s>",
        "<|endoftext|>",
        "<|endoftext|>",
        ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
    ),
    TemplateSpec("zephyr", "zephyr", ZEPHYR, "<s>", "</s>", "</s>", ("<|system|>", "<|user|>", "<|assistant|>")),
    TemplateSpec("tulu2", "zephyr", TULU2, "<s>", "</s>", "</s>", ("<|system|>", "<|user|>", "<|assistant|>")),
    TemplateSpec("custom", None, CUSTOM, "<|doc|>", "<|/turn|>", "<|pad|>", ("<|turn|>",)),
]

CORPUS = (
    "How do I boil an egg? Place the egg in boiling water for nine minutes, then cool it in cold water. "
    "What is the capital of France? Paris is the capital. You are a helpful, terse assistant. Thanks! "
    "Write a haiku about the sea. Waves fold into foam; the tide keeps time.\n"
) * 4


def make_tokenizer(spec: TemplateSpec, out: Path, corpus: str = CORPUS) -> Path:
    """A BPE tokenizer with ``spec``'s special tokens and chat template, saved to ``out``: byte-level
    (exact decode), or SentencePiece-style like Llama-2's (``▁`` for spaces, one prepended to each
    run of text, so ``decode(encode("<s>[INST]"))`` is ``"<s> [INST]"``)."""
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([spec.bos, spec.eos, *([spec.pad] if spec.pad else []), *spec.extra]))
    if spec.sentencepiece:
        tok = Tokenizer(models.BPE(unk_token=spec.pad or spec.eos))
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        alphabet = [*string.ascii_letters, *string.digits, *string.punctuation, "\n", "▁"]
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(
        [corpus], trainers.BpeTrainer(vocab_size=400, special_tokens=specials, initial_alphabet=alphabet)
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        additional_special_tokens=list(spec.extra),
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = spec.template
    fast.save_pretrained(out)
    return out


CONVERSATIONS = [
    [{"role": "user", "content": "How do I boil an egg?"}],
    [
        {"role": "system", "content": "You are a helpful, terse assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    [
        {"role": "user", "content": "Write a haiku about the sea."},
        {"role": "assistant", "content": "Waves fold into foam."},
        {"role": "user", "content": "Another one, please.\nWith two lines."},
    ],
]
RESPONSES = [
    "Place the egg in boiling water for nine minutes, then cool it in cold water.",
    "Paris.",
    "The tide keeps time;\nthe moon keeps the tide.",
]


def conversations(spec: TemplateSpec) -> list[tuple[list[dict[str, str]], str]]:
    return [(c, r) for c, r in zip(CONVERSATIONS, RESPONSES) if spec.system or c[0]["role"] != "system"]


def generated_ids(tok, messages, response: str, pad: int = 0) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) as a policy produces them: the prompt rendered with the generation
    prompt, then the assistant turn as the template renders it, through the first special token
    (the end-of-turn or EOS token generation stops at), then ``pad`` pad tokens."""
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
    assert full.startswith(prompt)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tok(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    special = set(tok.all_special_ids)
    stop = next((i for i, t in enumerate(r_ids) if t in special), len(r_ids) - 1)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return p_ids, r_ids[: stop + 1] + [pad_id] * pad


def openrlhf_sample(tok, messages, response: str, pad: int = 0) -> tuple[str, str]:
    """(query, prompt) as OpenRLHF's SingleTurnAgentExecutor sends them: ``prompt`` rendered with the
    policy's template, ``query = decode(prompt_ids + response_ids, skip_special_tokens=False)``
    (``pad`` trailing pad tokens appended, as a padded batch would decode)."""
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    p_ids, r_ids = generated_ids(tok, messages, response, pad)
    return tok.decode(p_ids + r_ids, skip_special_tokens=False), prompt


def response_with_markup(tok, messages, response: str, pad: int = 0) -> str:
    """The generated response decoded with its special tokens (end-of-turn, EOS, ``pad`` pad tokens)."""
    _, r_ids = generated_ids(tok, messages, response, pad)
    return tok.decode(r_ids, skip_special_tokens=False)


def verl_response(tok, messages, response: str) -> str:
    """The ``solution_str`` verl passes: the response ids decoded with ``skip_special_tokens=True``."""
    _, r_ids = generated_ids(tok, messages, response)
    return tok.decode(r_ids, skip_special_tokens=True)
