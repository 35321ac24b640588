// SPDX-License-Identifier: Apache-2.0
// Strict JSON parsing for every input that crosses a boundary (engine layer): model configs,
// safetensors headers, tokenizer files, HTTP bodies.
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>

namespace gptqd::engine {

// Parses `text` as one JSON document. Rejects, with Error(invalid_argument) naming `where` and the
// JSON path: syntax errors, invalid UTF-8, duplicate object keys at any depth (nlohmann would keep
// the last one silently) and nesting deeper than `max_depth` (checked while parsing, so a
// "[[[[..." bomb is refused before it is built).
nlohmann::json parse_json_strict(std::string_view text, std::string_view where, int max_depth = 64);

// The JSON type of `j` as a word for error messages ("string", "number", "object", ...).
const char* json_type_name(const nlohmann::json& j);

}  // namespace gptqd::engine
