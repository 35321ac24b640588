// SPDX-License-Identifier: Apache-2.0
// Strict JSON parsing: duplicate keys and depth bombs are errors (engine layer).
#include "engine/json_strict.h"

#include <string>
#include <unordered_set>
#include <vector>

#include "engine/error.h"

namespace gptqd::engine {
namespace {

struct Frame {
  bool is_object = false;
  std::unordered_set<std::string> keys;
  std::string last_key;
  size_t n_items = 0;
};

std::string path_of(const std::vector<Frame>& stack) {
  std::string path;
  for (const Frame& f : stack) {
    if (f.is_object) {
      if (!f.last_key.empty() || f.n_items > 0) path += "/" + f.last_key;
    } else {
      path += "/" + std::to_string(f.n_items == 0 ? 0 : f.n_items - 1);
    }
  }
  return path.empty() ? "/" : path;
}

struct StrictFailure {
  std::string message;
};

}  // namespace

const char* json_type_name(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: return "null";
    case nlohmann::json::value_t::object: return "object";
    case nlohmann::json::value_t::array: return "array";
    case nlohmann::json::value_t::string: return "string";
    case nlohmann::json::value_t::boolean: return "boolean";
    case nlohmann::json::value_t::number_integer:
    case nlohmann::json::value_t::number_unsigned: return "integer";
    case nlohmann::json::value_t::number_float: return "number";
    case nlohmann::json::value_t::binary: return "binary";
    case nlohmann::json::value_t::discarded: return "discarded";
  }
  return "unknown";
}

nlohmann::json parse_json_strict(std::string_view text, std::string_view where, int max_depth) {
  using nlohmann::json;
  std::vector<Frame> stack;
  auto on_event = [&](int /*depth*/, json::parse_event_t event, json& parsed) -> bool {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (!stack.empty() && !stack.back().is_object) ++stack.back().n_items;
        if (static_cast<int>(stack.size()) >= max_depth) {
          throw StrictFailure{cat("nesting deeper than ", max_depth, " levels at ", path_of(stack))};
        }
        stack.push_back(Frame{event == json::parse_event_t::object_start, {}, {}, 0});
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!stack.empty()) stack.pop_back();
        break;
      case json::parse_event_t::key: {
        Frame& f = stack.back();
        std::string key = parsed.get<std::string>();
        if (!f.keys.insert(key).second) {
          f.last_key = key;
          throw StrictFailure{cat("duplicate key \"", key, "\" at ", path_of(stack))};
        }
        f.last_key = std::move(key);
        ++f.n_items;
        break;
      }
      case json::parse_event_t::value:
        if (!stack.empty() && !stack.back().is_object) ++stack.back().n_items;
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), on_event, /*allow_exceptions=*/true,
                       /*ignore_comments=*/false);
  } catch (const StrictFailure& e) {
    fail(ErrorCode::invalid_argument, where, ": invalid JSON: ", e.message);
  } catch (const json::parse_error& e) {
    std::string msg = e.what();
    // "[json.exception.parse_error.101] parse error at line 1, column 2: ..." -> "parse error at ..."
    if (auto pos = msg.find("] "); pos != std::string::npos) msg = msg.substr(pos + 2);
    fail(ErrorCode::invalid_argument, where, ": invalid JSON: ", msg);
  } catch (const json::out_of_range& e) {
    // nlohmann throws out_of_range.406 ("number overflow parsing '1e999'") while lexing a number
    // no double holds, before the value event: the number belongs at the next array slot.
    std::string number = e.what();
    const size_t open = number.find('\''), close = number.rfind('\'');
    number = open != std::string::npos && close > open ? number.substr(open + 1, close - open - 1) : "";
    if (!stack.empty() && !stack.back().is_object) ++stack.back().n_items;
    fail(ErrorCode::invalid_argument, where, ": invalid JSON: number ", number, " at ", path_of(stack),
         " is out of range (numbers must fit a 64-bit float)");
  }
}

}  // namespace gptqd::engine
