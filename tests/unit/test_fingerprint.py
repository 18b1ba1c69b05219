import hashlib

from rewardclient import prompt_fingerprint
from rewardserve.references import prompt_fingerprint as server_fingerprint
from rewardserve.schemas import Message


def test_string_prompt_hashes_its_json_string():
    assert prompt_fingerprint("Hi") == hashlib.sha256(b'"Hi"').hexdigest()
    assert prompt_fingerprint("é") == hashlib.sha256('"é"'.encode()).hexdigest()  # no ASCII escaping


def test_chat_prompt_is_canonical():
    chat = [{"role": "user", "content": "Hi", "name": "ignored"}]
    expected = hashlib.sha256(b'[{"content":"Hi","role":"user"}]').hexdigest()
    assert prompt_fingerprint(chat) == expected
    assert prompt_fingerprint([{"content": "Hi", "role": "user"}]) == expected  # key order irrelevant
    assert prompt_fingerprint([Message(role="user", content="Hi")]) == expected  # wire models too
    assert prompt_fingerprint("Hi") != expected  # a string and a chat are different prompts


def test_server_uses_the_sdk_function():
    assert server_fingerprint is prompt_fingerprint
