#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Talks to gptqd with the official `openai` Python client over its Unix socket (httpx UDS
transport) and prints what came back as one JSON object, for tests/e2e/serving_test.cpp.

    openai_client_check.py SOCKET MODEL
"""
import json
import sys

import httpx
import openai


def main():
    socket, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(
        base_url="http://gptqd/v1",
        api_key="not-needed",
        http_client=httpx.Client(transport=httpx.HTTPTransport(uds=socket), timeout=120),
        max_retries=0,
    )
    out = {}
    out["models"] = [m.id for m in client.models.list().data]

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0)
    out["chat"] = {
        "content": r.choices[0].message.content,
        "role": r.choices[0].message.role,
        "finish_reason": r.choices[0].finish_reason,
        "usage": r.usage.model_dump() if r.usage else None,
    }

    pieces, finish = [], None
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0, stream=True)
    for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            if delta.content:
                pieces.append(delta.content)
            if chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
    out["chat_stream"] = {"content": "".join(pieces), "n_chunks": len(pieces), "finish_reason": finish}

    c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
    out["completion"] = {"text": c.choices[0].text, "finish_reason": c.choices[0].finish_reason}
    text = []
    for chunk in client.completions.create(model=model, prompt="The capital of France is", max_tokens=8,
                                           temperature=0, stream=True):
        if chunk.choices and chunk.choices[0].text:
            text.append(chunk.choices[0].text)
    out["completion_stream"] = {"text": "".join(text)}

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        out["missing_model"] = "no error"
    except openai.NotFoundError as e:
        out["missing_model"] = {"status": e.status_code, "message": str(e)}
    try:
        client.chat.completions.create(model=model, messages=[], max_tokens=4)
        out["empty_messages"] = "no error"
    except openai.BadRequestError as e:
        out["empty_messages"] = {"status": e.status_code, "message": str(e)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
