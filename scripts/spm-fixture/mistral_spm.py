"""Mistral-7B-v0.1's SentencePiece tokenizer as GGUF metadata, shared by the tokenizer fixture (make_fixture.py) and
the 7B benchmark's random-weight model (scripts/bench-7b/make_gguf.py): the tokenizer.model shipped in the PyPI
package mistral-common (tokenizer.model.v1), laid out as llama.cpp's converter (convert_hf_to_gguf.py,
`_create_vocab_sentencepiece`) writes it, with Mistral-7B-Instruct's chat template.
"""

import os

import mistral_common
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

MODEL = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")

# Mistral-7B-Instruct's chat template, as its Hugging Face tokenizer_config.json holds it (the revision that takes an
# optional system message).
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "\n"
    "{{- bos_token }}\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...') }}\n"
    "    {%- endif %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.first and system_message is defined %}\n"
    "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
    "        {%- else %}\n"
    "            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n"
    "        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {{- ' ' + message['content'] + eos_token}}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial "
    "optional system message!') }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
)


def load():
    """The tokenizer's model proto and a sentencepiece processor on it."""
    proto = sentencepiece_model_pb2.ModelProto()
    with open(MODEL, "rb") as f:
        proto.ParseFromString(f.read())
    return proto, spm.SentencePieceProcessor(model_file=MODEL)


def token_types(proto):
    """Token types as llama.cpp writes them: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte."""
    types = []
    for piece in proto.pieces:
        kind = {
            piece.NORMAL: 1,
            piece.UNKNOWN: 2,
            piece.CONTROL: 3,
            piece.USER_DEFINED: 4,
            piece.UNUSED: 5,
            piece.BYTE: 6,
        }[piece.type]
        types.append(kind)
    return types


def add_tokenizer(w, proto, sp):
    """Writes the tokenizer's keys into the GGUFWriter `w`: tokens, scores, token types, BOS, EOS, UNK, add-BOS and
    the chat template."""
    w.add_tokenizer_model("llama")
    w.add_token_list([p.piece.encode("utf-8") for p in proto.pieces])
    w.add_token_scores([p.score for p in proto.pieces])
    w.add_token_types(token_types(proto))
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)
