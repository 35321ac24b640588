# SPDX-License-Identifier: Apache-2.0
# Renders chat templates with jinja2 the way Hugging Face transformers' apply_chat_template does,
# the reference for tests/engine/chat_template_test.cpp (tests).
#
#   chat_template_reference.py TEMPLATE.jinja CASES.json OUT.json
#
# CASES.json: a list of {"messages": [{"role", "content"}...], "add_generation_prompt": bool,
#                        "bos_token": str, "eos_token": str}
# OUT.json:   one entry per case, {"text": rendered} or {"error": message} when the template
#             raises (raise_exception) or fails to render.
#
# Only what a template defines for itself is left undefined (tools, date_string, strftime_now,
# custom_tools, builtin_tools), so Llama 3.x templates keep their own defaults.
import json
import sys

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def main():
    template_path, cases_path, out_path = sys.argv[1:4]
    with open(template_path, encoding="utf-8") as f:
        source = f.read()
    with open(cases_path, encoding="utf-8") as f:
        cases = json.load(f)

    # transformers' _compile_jinja_template: these options, tojson without key sorting and
    # raise_exception as a global.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(source)

    results = []
    for case in cases:
        try:
            text = template.render(
                messages=case["messages"],
                add_generation_prompt=case["add_generation_prompt"],
                bos_token=case["bos_token"],
                eos_token=case["eos_token"],
            )
            results.append({"text": text})
        except jinja2.exceptions.TemplateError as e:
            results.append({"error": str(e)})
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(results, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
